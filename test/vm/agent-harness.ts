/**
 * The real guest agent on the host: built once per test file with
 * buildAgent() into a temporary cs home, started as `cs-agent --stdio`, and
 * spoken to through AgentClient or raw frames.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { buildAgent } from '../../src/vm/agent-build.js';
import { AgentClient } from '../../src/vm/agent-client.js';
import { FrameDecoder, type Frame } from '../../src/vm/protocol.js';

export interface BuiltAgent {
  home: string;
  binary: string;
  cleanup(): Promise<void>;
}

export async function buildTestAgent(): Promise<BuiltAgent> {
  const home = await mkdtemp(join(tmpdir(), 'cs-agent-test-'));
  const binary = await buildAgent({ env: { CS_HOME: home } });
  return { home, binary, cleanup: () => rm(home, { recursive: true, force: true }) };
}

export interface RunningAgent {
  child: ChildProcessWithoutNullStreams;
  /** The agent's exit code (or signal name) once it has exited. */
  exited: Promise<number | string>;
  stderr(): string;
}

export function spawnAgent(binary: string): RunningAgent {
  const child = spawn(binary, ['--stdio'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8');
  });
  child.stdin.on('error', () => undefined);
  const exited = new Promise<number | string>((resolve) => {
    child.on('exit', (code, signal) => resolve(code ?? signal ?? -1));
  });
  return { child, exited, stderr: () => stderr };
}

export interface ClientAgent extends RunningAgent {
  client: AgentClient;
  /** Closes the connection and waits for the agent to exit. */
  stop(): Promise<number | string>;
}

export function startAgent(binary: string): ClientAgent {
  const agent = spawnAgent(binary);
  const client = new AgentClient(Duplex.from({ readable: agent.child.stdout, writable: agent.child.stdin }));
  return {
    ...agent,
    client,
    async stop() {
      client.close();
      const timer = setTimeout(() => agent.child.kill('SIGKILL'), 5000);
      try {
        return await agent.exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** Collects the frames an agent writes on stdout, for tests that speak raw bytes. */
export class FrameReader {
  readonly frames: Frame[] = [];
  readonly #decoder = new FrameDecoder();
  #waiters: (() => void)[] = [];

  constructor(readable: NodeJS.ReadableStream) {
    readable.on('data', (chunk: Buffer) => {
      this.frames.push(...this.#decoder.push(chunk));
      for (const wake of this.#waiters.splice(0)) wake();
    });
  }

  /** Waits for the first frame matching `match` (already received or to come). */
  async next(match: (frame: Frame) => boolean, timeoutMs = 5000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.frames.find(match);
      if (found) return found;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no matching frame within ${timeoutMs} ms; got ${JSON.stringify(this.frames.map((f) => [f.type, f.stream]))}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }
}
