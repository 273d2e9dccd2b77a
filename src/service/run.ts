import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { CsError, InputError, UsageError } from '../util/errors.js';
import type { Env } from '../util/paths.js';
import { execInWorkspace } from '../workspace/exec.js';
import { resolveWorkspace } from '../workspace/lifecycle.js';
import { createStandalone, ownerOf, removeWorkspace } from '../workspace/standalone.js';
import { displayName, listWorkspaces, readRecord, type WorkspaceRecord, type WorkspaceRef } from '../workspace/state.js';
import type { Principal } from './keys.js';

/**
 * Running a command for an API caller: in one of the caller's workspaces,
 * or in an ephemeral one (a fresh workspace from an image, removed after
 * the command whatever happens: exit, timeout, error or a client that went
 * away). The same functions `cs exec` and `cs workspace create` use.
 */

export interface RunRequest {
  workspace?: string;
  ephemeral?: boolean;
  image?: string;
  /** A shell command line (run with /bin/sh -c), or an argv. */
  command: string | string[];
  cwd?: string;
  env?: Record<string, string>;
  timeout_ms?: number;
}

export interface RunResult {
  workspace: string;
  ephemeral: boolean;
  exit_code: number;
  timed_out: boolean;
  duration_ms: number;
}

/** Where output goes; a returned promise holds the command's output back until it settles. */
export interface OutputSink {
  stdout(chunk: Buffer): void | Promise<void> | undefined;
  stderr(chunk: Buffer): void | Promise<void> | undefined;
}

/** A workspace the caller may use: theirs, or (for anyone else's, or none) not found, the same answer either way. */
export async function ownedWorkspace(principal: Principal, id: string, env?: Env): Promise<{ ref: WorkspaceRef; record: WorkspaceRecord; id: string }> {
  const notFound = new InputError(`no workspace "${id}"`, { code: 'NOT_FOUND' });
  const ref = await resolveWorkspace(id, env).catch(() => {
    throw notFound;
  });
  const record = await readRecord(ref.dir);
  if (!record || ownerOf(record) !== principal.owner) throw notFound;
  return { ref, record, id: displayName(ref, record.standalone) };
}

/** Where a request runs, and with what (`cwd`, `env`): checked alike for exec and jobs; `label` names a field in messages. */
export function checkWhere(b: Record<string, unknown>, label: (field: string) => string): Pick<RunRequest, 'workspace' | 'ephemeral' | 'image' | 'cwd' | 'env'> {
  const out: Pick<RunRequest, 'workspace' | 'ephemeral' | 'image' | 'cwd' | 'env'> = {};
  for (const field of ['workspace', 'image', 'cwd'] as const) {
    const value = b[field];
    if (value === undefined) continue;
    if (typeof value !== 'string') throw new UsageError(`${label(field)} must be a string`);
    out[field] = value;
  }
  if (b['ephemeral'] === true) out.ephemeral = true;
  if (out.workspace !== undefined && (out.image !== undefined || out.ephemeral)) {
    throw new UsageError(`give either ${label('workspace')} or ${label('ephemeral')} with ${label('image')}, not both`);
  }
  if (out.workspace === undefined && !(out.ephemeral && out.image !== undefined)) {
    throw new UsageError(`say where to run: ${label('workspace')}, or ${label('ephemeral')}: true with ${label('image')}`);
  }
  const env = b['env'];
  if (env !== undefined) {
    if (typeof env !== 'object' || env === null || Array.isArray(env) || Object.entries(env).some(([k, v]) => !/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) || typeof v !== 'string')) {
      throw new UsageError(`${label('env')} must be an object of NAME: "value" strings`);
    }
    out.env = env as Record<string, string>;
  }
  return out;
}

export function checkCommand(value: unknown, label: string): string | string[] {
  if (typeof value === 'string' && value.trim() !== '') return value;
  if (Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === 'string')) return value as string[];
  throw new UsageError(`${label} must be a non-empty string (run with /bin/sh -c) or an array of strings`);
}

export function checkTimeout(value: unknown, label: string): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0 || value > 24 * 3_600_000) throw new UsageError(`${label} must be a positive whole number of milliseconds (at most a day)`);
  return value;
}

export function checkRunRequest(body: unknown): RunRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new UsageError('the body must be a JSON object');
  const b = body as Record<string, unknown>;
  const command = checkCommand(b['command'], '"command"');
  const where = checkWhere(b, (field) => `"${field}"`);
  const timeout = checkTimeout(b['timeout_ms'], '"timeout_ms"');
  return { ...where, command, ...(timeout ? { timeout_ms: timeout } : {}) };
}

/** Output kept for a JSON answer: up to `max` bytes per stream, then only counted. */
export class Captured implements OutputSink {
  readonly out: Buffer[] = [];
  readonly err: Buffer[] = [];
  outBytes = 0;
  errBytes = 0;
  constructor(readonly max: number) {}
  stdout(chunk: Buffer): void {
    if (this.outBytes < this.max) this.out.push(chunk.subarray(0, this.max - this.outBytes));
    this.outBytes += chunk.length;
  }
  stderr(chunk: Buffer): void {
    if (this.errBytes < this.max) this.err.push(chunk.subarray(0, this.max - this.errBytes));
    this.errBytes += chunk.length;
  }
  result(): { stdout: string; stderr: string; stdout_truncated: boolean; stderr_truncated: boolean } {
    return {
      stdout: Buffer.concat(this.out).toString('utf8'),
      stderr: Buffer.concat(this.err).toString('utf8'),
      stdout_truncated: this.outBytes > this.max,
      stderr_truncated: this.errBytes > this.max,
    };
  }
}

function sinkStream(write: (chunk: Buffer) => void | Promise<void> | undefined): Writable {
  return new Writable({
    write(chunk: Buffer, _encoding, callback) {
      const pending = write(chunk);
      if (pending) pending.then(() => callback(), callback);
      else callback();
    },
  });
}

/** Runs one command in a workspace the caller may use (by its id, checked already). */
export async function execIn(target: string, command: string | string[], sink: OutputSink, options: { cwd?: string; env?: Record<string, string>; timeoutMs?: number; signal?: AbortSignal; envOverride?: Env }): Promise<{ exit_code: number; timed_out: boolean }> {
  const argv = typeof command === 'string' ? ['/bin/sh', '-c', command] : command;
  const result = await execInWorkspace({
    target,
    argv,
    ...(options.cwd ? { cwd: options.cwd } : {}),
    env: Object.entries(options.env ?? {}).map(([k, v]) => `${k}=${v}`),
    stdout: sinkStream((c) => sink.stdout(c)),
    stderr: sinkStream((c) => sink.stderr(c)),
    ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.envOverride ? { envOverride: options.envOverride } : {}),
  });
  return { exit_code: result.code, timed_out: result.timedOut };
}

/**
 * A fresh workspace from `image`, owned by the caller, for `fn`; removed
 * after it whatever happens (its result, an error, a timeout, a client that
 * went away).
 */
export async function withEphemeral<T>(principal: Principal, image: string, fn: (name: string) => Promise<T>, options: { env?: Env; signal?: AbortSignal; onLeak?: (line: string) => void } = {}): Promise<T> {
  const name = `ephemeral-${randomBytes(5).toString('hex')}`;
  try {
    // Never with the service user's personal snapshot: it holds their own files.
    await createStandalone({ name, image, owner: principal.owner, ephemeral: true, personal: 'NONE', start: true, ...(options.env ? { env: options.env } : {}) });
    if (options.signal?.aborted) throw new InputError('the client went away before the command started', { code: 'CANCELLED' });
    return await fn(name);
  } finally {
    await removeWorkspace({ target: name, force: true, ...(options.env ? { env: options.env } : {}) }).catch((error: Error) => {
      // Not there (its creation failed) is fine; anything else is swept when the service starts again.
      if (!(error instanceof CsError && error.code === 'NOT_FOUND')) options.onLeak?.(`ephemeral workspace ${name} could not be removed: ${error.message}`);
    });
  }
}

/** Ephemeral workspaces a crashed service left behind: removed when it starts again. */
export async function sweepEphemeral(options: { env?: Env; log?: (line: string) => void } = {}): Promise<string[]> {
  const removed: string[] = [];
  for (const ref of await listWorkspaces(options.env)) {
    const record = await readRecord(ref.dir);
    if (!record?.ephemeral) continue;
    const name = displayName(ref, record.standalone);
    await removeWorkspace({ target: name, force: true, ...(options.env ? { env: options.env } : {}) }).then(
      () => removed.push(name),
      (error: Error) => options.log?.(`ephemeral workspace ${name} could not be removed: ${error.message}`),
    );
  }
  return removed;
}

/** Where a request runs: the caller's workspace (its id), or an ephemeral one around `fn`. */
export async function inTarget<T>(principal: Principal, where: { workspace?: string; image?: string }, fn: (target: string, ephemeral: boolean) => Promise<T>, options: { env?: Env; signal?: AbortSignal } = {}): Promise<T> {
  if (where.workspace !== undefined) {
    const { id } = await ownedWorkspace(principal, where.workspace, options.env);
    return fn(id, false);
  }
  if (!where.image) throw new UsageError('say where to run: a workspace, or an image for an ephemeral workspace');
  return withEphemeral(principal, where.image, (name) => fn(name, true), options);
}

export async function runCommand(principal: Principal, request: RunRequest, sink: OutputSink, options: { signal?: AbortSignal; env?: Env; onWorkspace?: (id: string) => void } = {}): Promise<RunResult> {
  const started = Date.now();
  return inTarget(
    principal,
    { ...(request.workspace !== undefined ? { workspace: request.workspace } : {}), ...(request.image !== undefined ? { image: request.image } : {}) },
    async (target, ephemeral) => {
      options.onWorkspace?.(target);
      const result = await execIn(target, request.command, sink, {
        ...(request.cwd ? { cwd: request.cwd } : {}),
        ...(request.env ? { env: request.env } : {}),
        ...(request.timeout_ms ? { timeoutMs: request.timeout_ms } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.env ? { envOverride: options.env } : {}),
      });
      return { workspace: target, ephemeral, ...result, duration_ms: Date.now() - started };
    },
    { ...(options.env ? { env: options.env } : {}), ...(options.signal ? { signal: options.signal } : {}) },
  );
}
