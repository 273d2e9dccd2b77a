/**
 * The guest agent (guest/agent) and its host-side client, without a VM: the
 * agent is compiled with buildAgent() and runs on this machine as
 * `cs-agent --stdio`, which speaks cs-agent/1 over its stdin/stdout exactly
 * as it does over the virtio-serial port as process 1. Every program it runs
 * is a real process on this machine.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isAlive } from '../../src/util/lock.js';
import { buildAgent } from '../../src/vm/agent-build.js';
import { AgentError, type AgentClient } from '../../src/vm/agent-client.js';
import { VmError } from '../../src/util/errors.js';
import { buildTestAgent, startAgent, type BuiltAgent, type ClientAgent } from './agent-harness.js';

const isRoot = process.getuid?.() === 0;

let built: BuiltAgent;
let scratch: string;
const agents: ClientAgent[] = [];

beforeAll(async () => {
  built = await buildTestAgent();
  scratch = await mkdtemp(join(tmpdir(), 'cs-agent-files-'));
});

afterAll(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  await built?.cleanup();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

async function connect(): Promise<{ client: AgentClient; agent: ClientAgent }> {
  const agent = startAgent(built.binary);
  agents.push(agent);
  await agent.client.hello();
  return { client: agent.client, agent };
}

let shared: AgentClient | undefined;
/** One agent for the tests that need nothing of their own. */
async function client(): Promise<AgentClient> {
  shared ??= (await connect()).client;
  return shared;
}

function text(buffer: Buffer): string {
  return buffer.toString('utf8');
}


async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

describe('building the agent', () => {
  it('compiles once into $CS_HOME/agent/<16 hex>/cs-agent and reuses that build', async () => {
    expect(built.binary).toMatch(new RegExp(`^${built.home}/agent/[0-9a-f]{16}/cs-agent$`));
    const before = statSync(built.binary).mtimeMs;
    const again = await buildAgent({ env: { CS_HOME: built.home } });
    expect(again).toBe(built.binary);
    expect(statSync(again).mtimeMs).toBe(before);
    // Nothing half-built is left beside it.
    expect((await readdir(join(built.home, 'agent'))).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  it('without a C compiler, says what to install and leaves nothing behind', async () => {
    const home = await mkdtemp(join(tmpdir(), 'cs-agent-nocc-'));
    const path = process.env['PATH'];
    process.env['PATH'] = join(home, 'no-bin'); // run() finds programs on this process's PATH
    try {
      const error = await buildAgent({ env: { CS_HOME: home } }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(VmError);
      expect(error).toMatchObject({ code: 'AGENT_BUILD', message: 'cannot build the guest agent: no C compiler (cc) found' });
      expect((error as VmError).suggestions.join()).toMatch(/install gcc and libc6-dev.*cs setup/);
      expect(await readdir(join(home, 'agent'))).toEqual([]);
    } finally {
      process.env['PATH'] = path;
      await rm(home, { recursive: true, force: true });
    }
  });
});

describe('connection', () => {
  it('answers HELLO with the protocol version, its name and the uptime', async () => {
    const { client: c } = await connect();
    const hello = await c.hello();
    expect(hello.version).toBe('1');
    expect(hello.agent).toMatch(/^cs-agent \d/);
    expect(hello.uptimeMs).toBeGreaterThan(0);
  });

  it('reports INFO: version, uptime, not process 1 here, load averages', async () => {
    const info = await (await client()).info();
    expect(info).toMatchObject({ version: '1', pid1: false });
    expect(info.uptimeMs).toBeGreaterThan(0);
    expect(info.loadavg).toMatch(/^\d+\.\d+ \d+\.\d+ \d+\.\d+$/);
  });

  it('exits 0 when the host closes the connection, killing the programs it started', async () => {
    const { client: c, agent } = await connect();
    const handle = c.exec({ argv: ['sleep', '30'] });
    const { pid } = await handle.started;
    expect(isAlive(pid)).toBe(true);
    expect(await agent.stop()).toBe(0);
    await waitFor('the program to be killed', () => !isAlive(pid));
    await expect(handle.exit).rejects.toThrow(/agent connection closed/);
  });

  it('a new HELLO kills what the connection had started; its requests reject', async () => {
    const { client: c } = await connect();
    const handle = c.exec({ argv: ['sleep', '30'] });
    const { pid } = await handle.started;
    await c.hello();
    await expect(handle.exit).rejects.toMatchObject({ code: 'AGENT_RESET' });
    await waitFor('the program to be killed', () => !isAlive(pid));
    expect((await c.run({ argv: ['echo', 'still serving'] })).stdout.toString()).toBe('still serving\n');
  });

  it('POWEROFF outside a VM acknowledges and exits 0', async () => {
    const { client: c, agent } = await connect();
    await c.poweroff();
    expect(await agent.exited).toBe(0);
    expect(c.closed).toBe(true);
  });
});

describe('exec', () => {
  it('keeps stdout and stderr apart', async () => {
    const r = await (await client()).run({ argv: ['sh', '-c', 'echo out; echo err >&2; echo out2'] });
    expect(text(r.stdout)).toBe('out\nout2\n');
    expect(text(r.stderr)).toBe('err\n');
    expect(r).toMatchObject({ code: 0, timedOut: false });
    expect(r.signal).toBeUndefined();
  });

  it('reports exit codes, and 128+N with SIGNAL for a program killed by a signal', async () => {
    const c = await client();
    expect((await c.run({ argv: ['true'] })).code).toBe(0);
    expect((await c.run({ argv: ['sh', '-c', 'exit 3'] })).code).toBe(3);
    const killed = await c.run({ argv: ['sh', '-c', 'kill -9 $$'] });
    expect(killed).toMatchObject({ code: 137, signal: 9, timedOut: false });
  });

  it('signal() reaches the process group', async () => {
    const c = await client();
    const handle = c.exec({ argv: ['sh', '-c', 'sleep 30; echo not reached'] });
    await handle.started;
    handle.signal('SIGTERM');
    expect(await handle.exit).toEqual({ code: 143, signal: 15, timedOut: false });
  });

  it('pipes stdin: 1 MiB through cat comes back byte for byte', async () => {
    const input = randomBytes(1024 * 1024);
    const r = await (await client()).run({ argv: ['cat'], input });
    expect(r.code).toBe(0);
    expect(r.stdout.length).toBe(input.length);
    expect(r.stdout.equals(input)).toBe(true);
  });

  it('streams stdin written piece by piece, and end() is end-of-file', async () => {
    const handle = (await client()).exec({ argv: ['wc', '-c'], stdin: true });
    const out: Buffer[] = [];
    handle.stdout.on('data', (b: Buffer) => out.push(b));
    const ended = new Promise((resolve) => handle.stdout.once('end', resolve));
    handle.stdin?.write('abc');
    handle.stdin?.write(Buffer.alloc(0)); // an empty write is not end-of-file
    handle.stdin?.write('defg');
    handle.stdin?.end();
    expect((await handle.exit).code).toBe(0);
    await ended;
    expect(text(Buffer.concat(out)).trim()).toBe('7');
  });

  it('a program that exits while its stdin is being written does not hurt the agent', async () => {
    const c = await client();
    const r = await c.run({ argv: ['head', '-c', '10'], input: randomBytes(4 * 1024 * 1024) });
    expect(r.code).toBe(0);
    expect(r.stdout.length).toBe(10);
    expect((await c.run({ argv: ['echo', 'alive'] })).stdout.toString()).toBe('alive\n');
  });

  it('delivers 8 MiB of output intact', async () => {
    const data = randomBytes(8 * 1024 * 1024);
    const file = join(scratch, 'big.bin');
    await writeFile(file, data);
    const r = await (await client()).run({ argv: ['cat', file] });
    expect(r.code).toBe(0);
    expect(r.stdout.length).toBe(data.length);
    expect(r.stdout.equals(data)).toBe(true);
  });

  it('pauses the connection while a reading consumer falls behind, instead of buffering everything', async () => {
    const total = 8 * 1024 * 1024;
    const handle = (await client()).exec({ argv: ['head', '-c', String(total), '/dev/zero'] });
    const stdout = handle.stdout;
    stdout.on('readable', () => undefined); // the consumer pulls with read()
    let most = 0;
    let received = 0;
    // 256 KiB every 10 ms: far slower than the agent can send.
    while (!stdout.readableEnded) {
      most = Math.max(most, stdout.readableLength);
      const chunk = (stdout.read(256 * 1024) ?? stdout.read()) as Buffer | null;
      if (chunk) received += chunk.length;
      await sleep(10);
    }
    expect(received).toBe(total);
    expect(most).toBeGreaterThan(0);
    expect(most).toBeLessThan(3 * 1024 * 1024);
    expect((await handle.exit).code).toBe(0);
  });

  it('output nobody has started to read does not stall the connection', async () => {
    const c = await client();
    const unread = c.exec({ argv: ['head', '-c', String(4 * 1024 * 1024), '/dev/zero'] });
    expect((await c.run({ argv: ['echo', 'meanwhile'] })).stdout.toString()).toBe('meanwhile\n');
    expect((await unread.exit).code).toBe(0);
    expect(unread.stdout.readableLength).toBe(4 * 1024 * 1024);
  });

  it('gives the program exactly the environment sent, and finds programs on that PATH', async () => {
    const c = await client();
    const r = await c.run({ argv: ['/usr/bin/env'], env: { A: '1', B: 'two words' } });
    expect(text(r.stdout)).toBe('A=1\nB=two words\n');
    const none = await c.run({ argv: ['/usr/bin/env'] });
    expect(text(none.stdout)).toBe('');
    await expect(c.run({ argv: ['true'], env: ['PATH=/nonexistent'] })).rejects.toThrow('exec true: No such file or directory');
  });

  it('starts programs in their own session, with default signals and no descriptors but 0-2', async () => {
    const c = await client();
    const signals = await c.run({ argv: ['grep', '-E', '^Sig(Blk|Ign)', '/proc/self/status'] });
    expect(text(signals.stdout)).toBe('SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n');
    const session = text((await c.run({ argv: ['sh', '-c', 'echo $$; cut -d" " -f6 /proc/$$/stat'] })).stdout).split('\n');
    expect(session[1]).toBe(session[0]);
    // ls itself holds 3, the folder it lists.
    expect(text((await c.run({ argv: ['ls', '/proc/self/fd'] })).stdout)).toBe('0\n1\n2\n3\n');
  });

  it('runs in the requested folder, / by default', async () => {
    const c = await client();
    expect(text((await c.run({ argv: ['pwd'], cwd: scratch })).stdout)).toBe(`${scratch}\n`);
    expect(text((await c.run({ argv: ['pwd'] })).stdout)).toBe('/\n');
  });

  it.runIf(isRoot)('switches to a user from /etc/passwd, by name or uid, with its groups', async () => {
    const c = await client();
    const byName = await c.run({ argv: ['sh', '-c', 'id -u; id -g; id -G'], user: 'nobody' });
    expect(text(byName.stdout)).toBe('65534\n65534\n65534\n');
    expect(text((await c.run({ argv: ['id', '-u'], user: 65534 })).stdout)).toBe('65534\n');
    // HOME, USER and LOGNAME are the host's business.
    expect(text((await c.run({ argv: ['/usr/bin/env'], user: 'nobody' })).stdout)).toBe('');
  });

  it('rejects an unknown user before starting anything', async () => {
    const handle = (await client()).exec({ argv: ['true'], user: 'no-such-user-cs' });
    await expect(handle.started).rejects.toThrow('unknown user no-such-user-cs (not in /etc/passwd)');
    await expect(handle.exit).rejects.toBeInstanceOf(AgentError);
  });

  it('kills a program at its timeout and says so', async () => {
    const started = Date.now();
    const r = await (await client()).run({ argv: ['sh', '-c', 'sleep 10; echo late'], timeoutMs: 300 });
    expect(r).toMatchObject({ code: 137, signal: 9, timedOut: true });
    expect(text(r.stdout)).toBe('');
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it('reports a program that cannot be executed as an error naming it', async () => {
    const c = await client();
    const handle = c.exec({ argv: ['/bin/nope-cs-agent'] });
    const error = await handle.started.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AgentError);
    expect(error).toBeInstanceOf(VmError);
    expect((error as AgentError).message).toBe('exec /bin/nope-cs-agent: No such file or directory');
    expect((error as AgentError).errnoCode).toBe('ENOENT');
    await expect(handle.exit).rejects.toThrow('exec /bin/nope-cs-agent');
    await expect(c.run({ argv: ['nope-cs-agent'] })).rejects.toThrow('exec nope-cs-agent: No such file or directory');
    await expect(c.run({ argv: [scratch] })).rejects.toThrow(`exec ${scratch}: Permission denied`);
  });

  it('reports a missing working folder as an error', async () => {
    await expect((await client()).run({ argv: ['true'], cwd: '/nonexistent-cs-dir' }))
      .rejects.toThrow('chdir /nonexistent-cs-dir: No such file or directory');
  });

  it('does not wait for a background grandchild that holds stdout open', async () => {
    const c = await client();
    const started = Date.now();
    const handle = c.exec({ argv: ['sh', '-c', 'sleep 5 & echo hi'] });
    const { pid } = await handle.started;
    const out: Buffer[] = [];
    handle.stdout.on('data', (b: Buffer) => out.push(b));
    expect(await handle.exit).toEqual({ code: 0, timedOut: false });
    const elapsed = Date.now() - started;
    process.kill(-pid, 'SIGKILL'); // the sleep, left in the program's process group
    expect(elapsed).toBeLessThan(1500);
    expect(text(Buffer.concat(out))).toBe('hi\n');
  });

  it('runs 64 programs at once on one connection', async () => {
    const c = await client();
    const results = await Promise.all(
      Array.from({ length: 64 }, (_, i) => c.run({ argv: ['sh', '-c', 'sleep 0.2; echo "$0"; echo "e$0" >&2; exit $(($0 % 7))', String(i)] })),
    );
    results.forEach((r, i) => {
      expect(text(r.stdout)).toBe(`${i}\n`);
      expect(text(r.stderr)).toBe(`e${i}\n`);
      expect(r.code).toBe(i % 7);
    });
  });
});

describe('exec on a terminal', () => {
  it('runs on a new pseudo-terminal of the requested size', async () => {
    const c = await client();
    const tty = await c.run({ argv: ['tty'], tty: { rows: 33, cols: 101 } });
    expect(text(tty.stdout)).toMatch(/^\/dev\/pts\/\d+\r\n$/);
    const size = await c.run({ argv: ['stty', 'size'], tty: { rows: 33, cols: 101 } });
    expect(text(size.stdout)).toBe('33 101\r\n');
  });

  it('sends stderr through the terminal, as stdout', async () => {
    const r = await (await client()).run({ argv: ['sh', '-c', 'echo to-err >&2'], tty: { rows: 24, cols: 80 } });
    expect(text(r.stdout)).toBe('to-err\r\n');
    expect(text(r.stderr)).toBe('');
  });

  it('resizes the terminal', async () => {
    const handle = (await client()).exec({ argv: ['sh', '-c', 'read line; stty size'], tty: { rows: 24, cols: 80 }, stdin: true });
    const out: Buffer[] = [];
    handle.stdout.on('data', (b: Buffer) => out.push(b));
    await handle.started;
    handle.resize(50, 120);
    handle.stdin?.write('go\n');
    expect((await handle.exit).code).toBe(0);
    expect(text(Buffer.concat(out))).toMatch(/50 120\r\n$/);
  });

  it('end of input reaches a program reading the terminal', async () => {
    const r = await (await client()).run({ argv: ['cat'], tty: { rows: 24, cols: 80 }, input: 'typed\n' });
    expect(r.code).toBe(0);
    expect(text(r.stdout)).toContain('typed');
  });
});

describe('detached programs', () => {
  it('return at once, append their output to the log (creating its folders), and outlive the connection', async () => {
    const { client: c, agent } = await connect();
    const log = join(scratch, 'logs', 'deep', 'daemon.log');
    const handle = c.exec({
      argv: ['sh', '-c', 'echo started; echo to-stderr >&2; sleep 1; echo survived'],
      detach: { log },
    });
    const { pid } = await handle.started;
    expect(pid).toBeGreaterThan(0);
    expect(await handle.exit).toEqual({ code: 0, timedOut: false });
    // EXIT came while the daemon still runs.
    expect(isAlive(pid)).toBe(true);
    expect(existsSync(log) ? await readFile(log, 'utf8') : '').not.toContain('survived');
    expect(await agent.stop()).toBe(0);
    await waitFor('the daemon to finish', async () => existsSync(log) && (await readFile(log, 'utf8')).includes('survived'));
    expect(await readFile(log, 'utf8')).toBe('started\nto-stderr\nsurvived\n');
  });
});

describe('files', () => {
  it('writes a file atomically with its mode, creating parent folders, and reads it back', async () => {
    const c = await client();
    const path = join(scratch, 'a', 'b', 'c.bin');
    const data = randomBytes(300 * 1024);
    await c.writeFile(path, data, { mode: 0o600, mkdirs: true });
    expect((await stat(path)).mode & 0o7777).toBe(0o600);
    expect((await readFile(path)).equals(data)).toBe(true);
    expect((await c.readFile(path)).equals(data)).toBe(true);

    await c.writeFile(path, 'replaced');
    expect(await readFile(path, 'utf8')).toBe('replaced');
    expect((await stat(path)).mode & 0o7777).toBe(0o644);
    expect(await readdir(join(scratch, 'a', 'b'))).toEqual(['c.bin']); // no temporary file left

    await c.writeFile(path, '');
    expect((await c.readFile(path)).length).toBe(0);
  });

  it.runIf(isRoot)('sets the owner of the file and of the folders it creates', async () => {
    const c = await client();
    const path = join(scratch, 'owned', 'sub', 'f.txt');
    await c.writeFile(path, 'x', { uid: 65534, gid: 65534, mkdirs: true });
    expect(statSync(path)).toMatchObject({ uid: 65534, gid: 65534 });
    expect(statSync(join(scratch, 'owned', 'sub'))).toMatchObject({ uid: 65534, gid: 65534 });
  });

  it('reports missing files, folders and missing parents as errors naming the path', async () => {
    const c = await client();
    const missing = join(scratch, 'missing.txt');
    const error = await c.readFile(missing).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).message).toBe(`read ${missing}: No such file or directory`);
    expect((error as AgentError).errnoCode).toBe('ENOENT');
    await expect(c.readFile(scratch)).rejects.toMatchObject({ errnoCode: 'EISDIR' });
    await expect(c.writeFile(join(scratch, 'no', 'such', 'dir.txt'), 'x')).rejects.toMatchObject({ errnoCode: 'ENOENT' });
    await expect(c.writeFile(scratch, 'x')).rejects.toMatchObject({ errnoCode: 'EISDIR' });
    await expect(c.readFile('relative/path')).rejects.toThrow('READ_FILE needs an absolute PATH');
  });
});

describe('readiness probes', () => {
  async function listen(server: Server): Promise<number> {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return (server.address() as AddressInfo).port;
  }

  it('probe-tcp succeeds against a listening port and fails on a closed one', async () => {
    const c = await client();
    const server = createNetServer((socket) => socket.destroy());
    const port = await listen(server);
    try {
      const ok = await c.run({ argv: [built.binary, 'probe-tcp', '127.0.0.1', String(port), '2000'] });
      expect(ok.code).toBe(0);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
    const closed = await c.run({ argv: [built.binary, 'probe-tcp', '127.0.0.1', String(port), '2000'] });
    expect(closed.code).toBe(1);
    expect(text(closed.stderr)).toBe(`probe-tcp: connect 127.0.0.1:${port}: Connection refused\n`);
  });

  it('probe-http wants a 2xx or 3xx answer', async () => {
    const c = await client();
    const server = createHttpServer((req, res) => {
      res.statusCode = req.url === '/ok' ? 200 : req.url === '/moved' ? 302 : 500;
      res.end('body');
    });
    const port = await new Promise<number>((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
    try {
      const probe = (path: string) => c.run({ argv: [built.binary, 'probe-http', String(port), path, '2000'] });
      expect((await probe('/ok')).code).toBe(0);
      expect((await probe('/moved')).code).toBe(0);
      const bad = await probe('/bad');
      expect(bad.code).toBe(1);
      expect(text(bad.stderr)).toBe(`probe-http: GET /bad from 127.0.0.1:${port}: status 500\n`);
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
