/**
 * The agent (`cs-agent --stdio`) spoken to in raw frames, the way a broken or
 * hostile host could: cut frames, oversized frames, malformed requests,
 * reused stream ids, and a host that stops reading.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isAlive } from '../../src/util/lock.js';
import { FrameType, MAX_PAYLOAD, Tag, decodeFields, encodeFields, encodeFrame, fieldNumber, fieldText, type FieldInput, type Frame } from '../../src/vm/protocol.js';
import { buildTestAgent, FrameReader, spawnAgent, type BuiltAgent, type RunningAgent } from './agent-harness.js';

let built: BuiltAgent;
const agents: RunningAgent[] = [];

beforeAll(async () => {
  built = await buildTestAgent();
});

afterAll(async () => {
  for (const a of agents) if (a.child.exitCode === null) a.child.kill('SIGKILL');
  await built?.cleanup();
});

function start(): { agent: RunningAgent; reader: FrameReader; send(type: number, stream: number, fields?: FieldInput[]): void } {
  const agent = spawnAgent(built.binary);
  agents.push(agent);
  const reader = new FrameReader(agent.child.stdout);
  return {
    agent,
    reader,
    send: (type, stream, fields = []) => {
      agent.child.stdin.write(encodeFrame(type, stream, encodeFields(fields)));
    },
  };
}

const on = (type: number, stream: number) => (f: Frame) => f.type === type && f.stream === stream;
const message = (f: Frame) => fieldText(decodeFields(f.payload), Tag.message);

async function rssKiB(pid: number): Promise<number> {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]);
}

describe('framing', () => {
  it('a frame arriving one byte at a time is still one frame', async () => {
    const { agent, reader } = start();
    const hello = encodeFrame(FrameType.hello, 0, encodeFields([[Tag.version, '1']]));
    for (const byte of hello) {
      agent.child.stdin.write(Buffer.from([byte]));
      await sleep(2);
    }
    const reply = await reader.next(on(FrameType.hello, 0));
    expect(fieldText(decodeFields(reply.payload), Tag.version)).toBe('1');
  });

  it('accepts a payload of exactly 1 MiB', async () => {
    const { reader, send, agent } = start();
    send(FrameType.exec, 1, [[Tag.arg, 'wc'], [Tag.arg, '-c'], [Tag.stdin, '1']]);
    await reader.next(on(FrameType.started, 1));
    agent.child.stdin.write(encodeFrame(FrameType.stdin, 1, Buffer.alloc(MAX_PAYLOAD, 7)));
    send(FrameType.stdin, 1);
    await reader.next(on(FrameType.exit, 1));
    const out = Buffer.concat(reader.frames.filter(on(FrameType.stdout, 1)).map((f) => f.payload)).toString();
    expect(out.trim()).toBe(String(MAX_PAYLOAD));
  });

  it('a frame over 1 MiB is a protocol error: ERROR on stream 0, programs killed, exit 1', async () => {
    const { agent, reader, send } = start();
    send(FrameType.exec, 1, [[Tag.arg, 'sleep'], [Tag.arg, '30']]);
    const pid = fieldNumber(decodeFields((await reader.next(on(FrameType.started, 1))).payload), Tag.pid) as number;
    const header = Buffer.alloc(9);
    header.writeUInt32BE(0xffff_ffff, 0);
    header.writeUInt8(FrameType.exec, 4);
    header.writeUInt32BE(2, 5);
    agent.child.stdin.write(header);
    const error = await reader.next(on(FrameType.error, 0));
    expect(message(error)).toBe('protocol error: a frame of 4294967295 bytes exceeds the limit of 1048576');
    expect(await agent.exited).toBe(1);
    for (let i = 0; i < 100 && isAlive(pid); i++) await sleep(20); // SIGKILL lands a moment later
    expect(isAlive(pid)).toBe(false);
  });

  it('one byte over the limit is refused too', async () => {
    const { agent, reader } = start();
    const header = Buffer.alloc(9);
    header.writeUInt32BE(MAX_PAYLOAD + 1, 0);
    header.writeUInt8(FrameType.stdin, 4);
    agent.child.stdin.write(header);
    expect(message(await reader.next(on(FrameType.error, 0)))).toMatch(/1048577 bytes exceeds/);
    expect(await agent.exited).toBe(1);
  });
});

describe('malformed requests', () => {
  it('get an ERROR on their own stream, and the agent carries on', async () => {
    const { reader, send, agent } = start();
    send(FrameType.exec, 5, [[Tag.env, 'A=1']]);
    expect(message(await reader.next(on(FrameType.error, 5)))).toBe('EXEC needs at least one ARG');

    send(FrameType.exec, 6, [[Tag.arg, 'true'], [Tag.timeoutMs, 'soon']]);
    expect(message(await reader.next(on(FrameType.error, 6)))).toMatch(/TIMEOUT_MS/);

    send(0x7f, 7);
    expect(message(await reader.next(on(FrameType.error, 7)))).toBe('unknown request type 0x7f');

    const cut = Buffer.from([Tag.arg, 0, 0, 0, 100, 0x61, 0x62]);
    agent.child.stdin.write(encodeFrame(FrameType.exec, 8, cut));
    expect(message(await reader.next(on(FrameType.error, 8)))).toBe('malformed fields in request type 0x02');

    send(FrameType.exec, 0, [[Tag.arg, 'true']]);
    expect(message(await reader.next(on(FrameType.error, 0)))).toMatch(/stream 0, which carries only HELLO/);

    // Input, signals and resizes for streams that do not exist are dropped.
    send(FrameType.signal, 99, [[Tag.signal, 9]]);
    agent.child.stdin.write(encodeFrame(FrameType.stdin, 99, Buffer.from('lost')));
    send(FrameType.resize, 99, [[Tag.rows, 1], [Tag.cols, 1]]);

    // Unknown field tags are ignored.
    send(FrameType.exec, 9, [[Tag.arg, 'echo'], [200, 'future'], [Tag.arg, 'ok']]);
    await reader.next(on(FrameType.exit, 9));
    expect(Buffer.concat(reader.frames.filter(on(FrameType.stdout, 9)).map((f) => f.payload)).toString()).toBe('ok\n');

    send(FrameType.info, 10);
    await reader.next(on(FrameType.info, 10));
    expect(reader.frames.some((f) => f.stream === 99)).toBe(false);
    expect(agent.child.exitCode).toBeNull();
  });

  it('a request on a stream id in use aborts that stream: ERROR is its only final frame', async () => {
    const { reader, send } = start();
    send(FrameType.exec, 3, [[Tag.arg, 'sleep'], [Tag.arg, '30']]);
    const pid = fieldNumber(decodeFields((await reader.next(on(FrameType.started, 3))).payload), Tag.pid) as number;
    send(FrameType.exec, 3, [[Tag.arg, 'true']]);
    expect(message(await reader.next(on(FrameType.error, 3)))).toBe('stream 3 is already in use; it was aborted');
    for (let i = 0; i < 50 && isAlive(pid); i++) await sleep(20);
    expect(isAlive(pid)).toBe(false);
    send(FrameType.info, 4);
    await reader.next(on(FrameType.info, 4));
    expect(reader.frames.filter((f) => f.stream === 3).map((f) => f.type)).toEqual([FrameType.started, FrameType.error]);
  });
});

describe('file transfers', () => {
  it('SIGNAL cancels a WRITE_FILE in progress: ERROR, no temporary file left, target untouched', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cs-agent-cancel-'));
    try {
      const { reader, send, agent } = start();
      const target = join(dir, 'target.txt');
      send(FrameType.writeFile, 1, [[Tag.path, target]]);
      agent.child.stdin.write(encodeFrame(FrameType.stdin, 1, Buffer.from('partial')));
      send(FrameType.info, 2);
      await reader.next(on(FrameType.info, 2)); // the agent has seen the data
      expect((await readdir(dir)).length).toBe(1); // the temporary file
      send(FrameType.signal, 1, [[Tag.signal, 15]]);
      expect(message(await reader.next(on(FrameType.error, 1)))).toBe(`write ${target}: cancelled`);
      expect(await readdir(dir)).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('a host that stops reading', () => {
  it('makes the agent stop reading the program: memory stays bounded and nothing is lost', async () => {
    const agent = spawnAgent(built.binary);
    agents.push(agent);
    const total = 48 * 1024 * 1024;
    // Nothing reads the agent's stdout until the reader below is attached.
    const send = (type: number, stream: number, fields: FieldInput[]) => agent.child.stdin.write(encodeFrame(type, stream, encodeFields(fields)));
    send(FrameType.exec, 1, [[Tag.arg, 'head'], [Tag.arg, '-c'], [Tag.arg, String(total)], [Tag.arg, '/dev/zero']]);
    await sleep(700);
    const rss = await rssKiB(agent.child.pid as number);
    expect(rss).toBeLessThan(16 * 1024);

    const reader = new FrameReader(agent.child.stdout);
    const exit = await reader.next(on(FrameType.exit, 1), 15_000);
    expect(fieldNumber(decodeFields(exit.payload), Tag.code)).toBe(0);
    const frames = reader.frames.filter(on(FrameType.stdout, 1));
    expect(frames.reduce((n, f) => n + f.payload.length, 0)).toBe(total);
    expect(Math.max(...frames.map((f) => f.payload.length))).toBeLessThanOrEqual(64 * 1024);
  });
});
