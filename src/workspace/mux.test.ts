/**
 * The supervisor's multiplexer over real unix sockets. The agent end is a
 * socket this test drives by hand (a stand-in for the VM's virtio port,
 * which cannot exist without a VM): it records what the mux forwards and
 * answers as the agent would.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { decodeFields, encodeFields, encodeFrame, fieldText, FrameDecoder, FrameType, Tag, type Frame } from '../vm/protocol.js';
import { ControlType, Mux } from './mux.js';

interface Peer {
  socket: Socket;
  frames: Frame[];
  next: (predicate: (f: Frame) => boolean) => Promise<Frame>;
}

function peer(socket: Socket): Peer {
  const decoder = new FrameDecoder();
  socket.on('error', () => undefined);
  const frames: Frame[] = [];
  const waiters: { predicate: (f: Frame) => boolean; resolve: (f: Frame) => void }[] = [];
  socket.on('data', (chunk: Buffer) => {
    for (const frame of decoder.push(chunk)) {
      frames.push(frame);
      const i = waiters.findIndex((w) => w.predicate(frame));
      if (i >= 0) waiters.splice(i, 1)[0]?.resolve(frame);
    }
  });
  return {
    socket,
    frames,
    next: (predicate) =>
      new Promise((resolve) => {
        const found = frames.find(predicate);
        if (found) resolve(found);
        else waiters.push({ predicate, resolve });
      }),
  };
}

describe('the supervisor multiplexer', () => {
  let dir: string;
  let servers: Server[];
  let agent: Peer;
  let mux: Mux;
  let controls: number[];
  let clientPath: string;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cs-mux-'));
    servers = [];
    controls = [];
    // The agent end.
    const agentPath = join(dir, 'agent.sock');
    const agentSide = new Promise<Socket>((resolve) => {
      const server = createServer(resolve);
      servers.push(server);
      server.listen(agentPath);
    });
    await new Promise((r) => setTimeout(r, 10));
    const toAgent = connect(agentPath);
    // As the supervisor does: a peer gone at teardown is not an error here.
    toAgent.on('error', () => undefined);
    agent = peer(await agentSide);
    mux = new Mux(toAgent, async (type) => {
      controls.push(type);
      if (type === 0x2f) throw new Error('not today');
    });
    clientPath = join(dir, 'control.sock');
    const control = createServer((s) => mux.attach(s));
    servers.push(control);
    await new Promise<void>((r) => control.listen(clientPath, r));
    // The agent answers the supervisor's HELLO.
    const hello = mux.hello();
    await agent.next((f) => f.type === FrameType.hello);
    agent.socket.write(encodeFrame(FrameType.hello, 0, encodeFields([[Tag.version, '1'], [Tag.agent, 'fake']])));
    await hello;
  });

  afterEach(async () => {
    mux.closeClients();
    agent.socket.destroy();
    for (const s of servers) s.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function client(): Promise<Peer> {
    const socket = connect(clientPath);
    await new Promise((r) => socket.once('connect', r));
    return peer(socket);
  }

  it("answers a client's HELLO with the agent's, without bothering the agent", async () => {
    const a = await client();
    const before = agent.frames.length;
    a.socket.write(encodeFrame(FrameType.hello, 0, encodeFields([[Tag.version, '1']])));
    const hello = await a.next((f) => f.type === FrameType.hello);
    expect(fieldText(decodeFields(hello.payload), Tag.agent)).toBe('fake');
    expect(agent.frames.length).toBe(before);
  });

  it('keeps two clients apart when they use the same stream id', async () => {
    const [a, b] = [await client(), await client()];
    a.socket.write(encodeFrame(FrameType.exec, 1, encodeFields([[Tag.arg, 'a']])));
    b.socket.write(encodeFrame(FrameType.exec, 1, encodeFields([[Tag.arg, 'b']])));
    const execA = await agent.next((f) => f.type === FrameType.exec && fieldText(decodeFields(f.payload), Tag.arg) === 'a');
    const execB = await agent.next((f) => f.type === FrameType.exec && fieldText(decodeFields(f.payload), Tag.arg) === 'b');
    expect(execA.stream).not.toBe(execB.stream);
    agent.socket.write(encodeFrame(FrameType.stdout, execB.stream, Buffer.from('for b')));
    agent.socket.write(encodeFrame(FrameType.stdout, execA.stream, Buffer.from('for a')));
    agent.socket.write(encodeFrame(FrameType.exit, execA.stream, encodeFields([[Tag.code, '0']])));
    expect((await a.next((f) => f.type === FrameType.stdout)).payload.toString()).toBe('for a');
    expect((await b.next((f) => f.type === FrameType.stdout)).payload.toString()).toBe('for b');
    expect((await a.next((f) => f.type === FrameType.exit)).stream).toBe(1);
    // Follow-ups reach the right stream too.
    b.socket.write(encodeFrame(FrameType.stdin, 1, Buffer.from('typed')));
    const stdin = await agent.next((f) => f.type === FrameType.stdin);
    expect(stdin.stream).toBe(execB.stream);
    expect(stdin.payload.toString()).toBe('typed');
  });

  it("kills a departed client's running commands", async () => {
    const a = await client();
    a.socket.write(encodeFrame(FrameType.exec, 7, encodeFields([[Tag.arg, 'sleep']])));
    const exec = await agent.next((f) => f.type === FrameType.exec);
    a.socket.destroy();
    const kill = await agent.next((f) => f.type === FrameType.signal);
    expect(kill.stream).toBe(exec.stream);
    expect(fieldText(decodeFields(kill.payload), Tag.signal)).toBe('9');
  });

  it('refuses POWEROFF and reused stream ids from clients, and runs control requests', async () => {
    const a = await client();
    a.socket.write(encodeFrame(FrameType.poweroff, 3));
    const refused = await a.next((f) => f.stream === 3);
    expect(refused.type).toBe(FrameType.error);
    expect(fieldText(decodeFields(refused.payload), Tag.message)).toContain('cs sandbox suspend');
    a.socket.write(encodeFrame(FrameType.exec, 4, encodeFields([[Tag.arg, 'x']])));
    a.socket.write(encodeFrame(FrameType.exec, 4, encodeFields([[Tag.arg, 'y']])));
    const reused = await a.next((f) => f.stream === 4 && f.type === FrameType.error);
    expect(fieldText(decodeFields(reused.payload), Tag.message)).toContain('already in use');
    a.socket.write(encodeFrame(ControlType.FORWARD, 5));
    expect((await a.next((f) => f.stream === 5)).type).toBe(FrameType.exit);
    a.socket.write(encodeFrame(0x2f, 6));
    const failed = await a.next((f) => f.stream === 6);
    expect(fieldText(decodeFields(failed.payload), Tag.message)).toBe('not today');
    expect(controls).toEqual([ControlType.FORWARD, 0x2f]);
  });

  it('pauses the agent while a client leaves output unread, and resumes when it reads', async () => {
    const a = await client();
    a.socket.pause();
    a.socket.write(encodeFrame(FrameType.exec, 1, encodeFields([[Tag.arg, 'yes']])));
    const exec = await agent.next((f) => f.type === FrameType.exec);
    const chunk = encodeFrame(FrameType.stdout, exec.stream, Buffer.alloc(64 * 1024, 0x79));
    // Write until the agent's writes stop draining: the mux has stopped reading.
    let written = 0;
    for (let i = 0; i < 2000; i++) {
      written += chunk.length;
      if (!agent.socket.write(chunk)) {
        const drained = await Promise.race([new Promise((r) => agent.socket.once('drain', () => r(true))), new Promise((r) => setTimeout(() => r(false), 300))]);
        if (!drained) break;
      }
    }
    expect(written).toBeLessThan(2000 * chunk.length);
    expect(written).toBeGreaterThan(8 * 1024 * 1024);
    // The client reads: the agent connection flows again.
    const drained = new Promise((r) => agent.socket.once('drain', () => r(true)));
    a.socket.resume();
    expect(await drained).toBe(true);
  }, 30_000);
});
