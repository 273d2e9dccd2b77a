import { createServer } from 'node:net';
import type { Port } from '../definition/model.js';
import type { PortMapping } from './state.js';

/**
 * Host ports for a workspace's `ports`: the same number as in the guest when
 * it is free on 127.0.0.1 (so `localhost:8080` just works), else one the
 * kernel picks. Ports other workspaces already hold are never reused.
 */

export function canListen(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen({ port: 0, host, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export async function pickHostPort(guestPort: number, taken: ReadonlySet<number>): Promise<number> {
  if (guestPort >= 1024 && !taken.has(guestPort) && (await canListen(guestPort))) return guestPort;
  for (let i = 0; i < 20; i++) {
    const port = await freePort();
    if (!taken.has(port)) return port;
  }
  throw new Error('no free port on 127.0.0.1');
}

export async function allocatePorts(ports: readonly Port[], taken: Set<number>): Promise<PortMapping[]> {
  const out: PortMapping[] = [];
  for (const port of ports) {
    const hostPort = await pickHostPort(port.port, taken);
    taken.add(hostPort);
    out.push({ name: port.name, protocol: port.protocol, guestPort: port.port, hostPort });
  }
  return out;
}

export function qemuProtocol(protocol: string): 'tcp' | 'udp' {
  return protocol === 'UDP' ? 'udp' : 'tcp';
}
