import { createServer, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { allocatePorts, canListen, freePort, pickHostPort, qemuProtocol } from './ports.js';

/** Host ports, with real listening sockets on 127.0.0.1 standing in for other programs. */

const servers: Server[] = [];

function listen(port: number, host = '127.0.0.1'): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen({ port, host }, () => {
      servers.push(server);
      resolve(server);
    });
  });
}

function portOf(server: Server): number {
  const address = server.address();
  if (typeof address !== 'object' || !address) throw new Error('not listening on TCP');
  return address.port;
}

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

describe('canListen', () => {
  it('is true for a free port and false for one another program holds', async () => {
    const port = await freePort();
    expect(await canListen(port)).toBe(true);
    // It did not keep the port: a real server can take it right after.
    await listen(port);
    expect(await canListen(port)).toBe(false);
  });

  it('is false for an address this host does not have', async () => {
    expect(await canListen(await freePort(), '192.0.2.1')).toBe(false);
  });
});

describe('freePort', () => {
  it('gives a port in the unprivileged range that can then be listened on', async () => {
    const port = await freePort();
    expect(port).toBeGreaterThanOrEqual(1024);
    expect(port).toBeLessThanOrEqual(65535);
    expect(portOf(await listen(port))).toBe(port);
  });
});

describe('pickHostPort', () => {
  it('keeps the guest\'s port number when it is free, so localhost:PORT just works', async () => {
    const port = await freePort();
    expect(await pickHostPort(port, new Set())).toBe(port);
  });

  it('picks another free port when another program holds that number', async () => {
    const held = portOf(await listen(0));
    const picked = await pickHostPort(held, new Set());
    expect(picked).not.toBe(held);
    expect(await canListen(picked)).toBe(true);
  });

  it('never hands out a port another workspace already holds, even when nothing listens on it', async () => {
    const port = await freePort();
    const picked = await pickHostPort(port, new Set([port]));
    expect(picked).not.toBe(port);
  });

  it('does not try privileged guest ports on the host', async () => {
    const picked = await pickHostPort(80, new Set());
    expect(picked).not.toBe(80);
    expect(picked).toBeGreaterThanOrEqual(1024);
  });
});

describe('allocatePorts', () => {
  it('gives each declared port its own host port and records what it took', async () => {
    const a = await freePort();
    const held = portOf(await listen(0));
    const taken = new Set<number>();
    const mappings = await allocatePorts(
      [
        { name: 'web', port: a, protocol: 'HTTP' },
        { name: 'db', port: held, protocol: 'TCP' },
        { name: 'again', port: a, protocol: 'TCP' },
      ],
      taken,
    );
    expect(mappings.map((m) => [m.name, m.guestPort, m.protocol])).toEqual([
      ['web', a, 'HTTP'],
      ['db', held, 'TCP'],
      ['again', a, 'TCP'],
    ]);
    expect(mappings[0]?.hostPort).toBe(a);
    expect(mappings[1]?.hostPort).not.toBe(held);
    // The second use of the same guest port cannot have the same host port.
    expect(new Set(mappings.map((m) => m.hostPort)).size).toBe(3);
    expect([...taken].sort()).toEqual(mappings.map((m) => m.hostPort).sort());
  });
});

describe('qemuProtocol', () => {
  it('forwards UDP as udp and every TCP-based protocol as tcp', () => {
    expect(qemuProtocol('UDP')).toBe('udp');
    for (const p of ['TCP', 'HTTP', 'HTTPS', 'GRPC']) expect(qemuProtocol(p)).toBe('tcp');
  });
});
