import { createReadStream, existsSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import type { AgentClient } from '../vm/agent-client.js';
import { WORKSPACE_HOME, WORKSPACE_USER } from '../definition/model.js';
import { InputError, UsageError, VmError } from '../util/errors.js';
import { withLock } from '../util/lock.js';
import type { Env } from '../util/paths.js';
import { openAgent, requestForward } from './control.js';
import { DAEMON_LOG_DIR, GUEST_BUSYBOX, parsePasswd, workspaceEnv } from './guest-env.js';
import { withCommandLease } from './busy.js';
import { ensureRunning, portsInUse, resolveWorkspace, waitUntil } from './lifecycle.js';
import { canListen, pickHostPort } from './ports.js';
import { displayName, FILES, hasOwnerAccount, readRecord, readRun, writeRecord, type PortMapping, type WorkspaceRef } from './state.js';

/** `cs exec`, `cs ssh`, `cs log` and `cs port-forward`: what people do with a running workspace. */

export interface ExecOptions {
  target: string;
  argv: string[];
  user?: string;
  cwd?: string;
  /** Extra NAME=VALUE variables. */
  env?: string[];
  stdin?: Readable;
  stdout: Writable;
  stderr: Writable;
  tty?: { rows: number; cols: number; onResize?: (resize: (rows: number, cols: number) => void) => void };
  timeoutMs?: number;
  envOverride?: Env;
  /** Told when the workspace was stopped and is started for this command (and the start-up's phases). */
  onStart?: (line: string) => void;
  /** Aborting it kills the command's process group (a client that went away). */
  signal?: AbortSignal;
}

export interface ExecResult {
  code: number;
  signal?: number;
  timedOut: boolean;
}

export async function execInWorkspace(options: ExecOptions): Promise<ExecResult> {
  if (options.argv.length === 0) throw new UsageError('give the command to run after --, e.g. `cs exec -W demo/dev -- uname -a`');
  const ws = await resolveWorkspace(options.target, options.envOverride);
  const record = await readRecord(ws.dir);
  if (!record) throw new InputError(`workspace ${options.target} does not exist`);
  const user = options.user ?? WORKSPACE_USER;
  const env = workspaceEnv({ sandbox: record.sandbox, workspace: record.name }, record.spec, user);
  if (options.tty) env['TERM'] = process.env['TERM'] ?? 'xterm-256color';
  for (const pair of options.env ?? []) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new UsageError(`--env takes NAME=VALUE, not "${pair}"`);
    env[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  const shown = displayName(ws, record.standalone);
  // The lease comes first: a removal or restore must see a command that is still starting its workspace.
  return withCommandLease(ws.dir, options.argv.join(' '), async () => {
    await startForCommand(ws, shown, options.envOverride, options.onStart, user);
    return runIn(ws.dir, shown, user, env, options);
  });
}

async function runIn(dir: string, shown: string, user: string, env: Record<string, string>, options: ExecOptions): Promise<ExecResult> {
  const client = await openAgent(dir, shown);
  try {
    // The user's own home and login shell, as the image's passwd file says.
    const account = await guestAccount(client, user);
    if (account) {
      env['HOME'] = account.home;
      env['SHELL'] = account.shell;
    }
    const handle = client.exec({
      argv: options.argv,
      env,
      cwd: options.cwd ?? account?.home ?? (user === 'root' ? '/root' : user === WORKSPACE_USER ? WORKSPACE_HOME : '/'),
      user,
      ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}),
      ...(options.tty ? { tty: { rows: options.tty.rows, cols: options.tty.cols } } : {}),
      stdin: options.stdin !== undefined,
    });
    await handle.started;
    const kill = (): void => handle.signal('SIGKILL');
    if (options.signal?.aborted) kill();
    options.signal?.addEventListener('abort', kill, { once: true });
    handle.stdout.pipe(options.stdout, { end: false });
    handle.stderr.pipe(options.stderr, { end: false });
    if (options.stdin && handle.stdin) {
      // Input the command no longer takes (it exited) is dropped, not an error.
      handle.stdin.on('error', () => undefined);
      options.stdin.pipe(handle.stdin);
    }
    options.tty?.onResize?.((rows, cols) => handle.resize(rows, cols));
    const exit = await handle.exit;
    options.signal?.removeEventListener('abort', kill);
    options.stdin?.unpipe();
    await Promise.all([drained(handle.stdout), drained(handle.stderr)]);
    return exit;
  } finally {
    client.close();
  }
}

/**
 * A stopped workspace is started for a command (saying so) and left running
 * for the next one. One still starting (`sandbox create` without --wait) is
 * waited for until its owner account exists: the default user.
 */
async function startForCommand(ws: WorkspaceRef, label: string, env: Env | undefined, onStart: ((line: string) => void) | undefined, user: string = WORKSPACE_USER): Promise<void> {
  const started = await ensureRunning(ws, { label, ...(env ? { env } : {}), ...(onStart ? { notify: onStart, onPhase: (p: string) => onStart(`… ${p}`) } : {}) });
  // root is there from the first moment (and is how one looks into a start-up that hangs).
  if (started || user === 'root' || user === '0') return;
  const run = await readRun(ws.dir);
  const waiting = run?.phase === 'booting' || (run?.phase === 'starting' && !hasOwnerAccount(run));
  if (!waiting) return;
  onStart?.(`workspace ${label} is still starting; waiting for its owner account`);
  await waitUntil(ws.dir, 'account', env ? { env } : {});
}

function drained(stream: Readable): Promise<void> {
  if (stream.readableEnded) return Promise.resolve();
  return new Promise((resolve) => {
    stream.once('end', resolve);
    stream.once('close', resolve);
  });
}

/** A user's home and login shell from the image's passwd file (by name or uid). */
async function guestAccount(client: AgentClient, user: string): Promise<{ home: string; shell: string } | undefined> {
  const passwd = await client.readFile('/etc/passwd').then((b) => b.toString('utf8'), () => '');
  const numeric = /^\d+$/.test(user);
  const entry = parsePasswd(passwd).find((e) => e.home !== undefined && (numeric ? String(e.uid) === user : e.name === user));
  return entry?.home !== undefined && entry.shell !== undefined ? { home: entry.home, shell: entry.shell } : undefined;
}

/** The user's login shell from the image's passwd file, else sh. */
export async function loginShell(target: string, user: string = WORKSPACE_USER, env?: Env, onStart?: (line: string) => void): Promise<string> {
  const ws = await resolveWorkspace(target, env);
  const shown = displayName(ws, (await readRecord(ws.dir))?.standalone);
  await startForCommand(ws, shown, env, onStart, user);
  const client = await openAgent(ws.dir, shown);
  try {
    return (await guestAccount(client, user))?.shell ?? '/bin/sh';
  } finally {
    client.close();
  }
}

export interface LogOptions {
  target: string;
  follow: boolean;
  source: 'workspace' | 'console' | { daemon: string };
  out: Writable;
  lines?: number;
  signal?: AbortSignal;
  env?: Env;
}

/** Prints a log, and with `follow` keeps printing what is appended until aborted. */
export async function showLog(options: LogOptions): Promise<void> {
  const ws = await resolveWorkspace(options.target, options.env);
  if (typeof options.source === 'object') {
    const name = options.source.daemon;
    if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new UsageError(`bad daemon name "${name}"`);
    const path = `${DAEMON_LOG_DIR}/${name}.log`;
    const client = await openAgent(ws.dir, `${ws.sandbox}/${ws.workspace}`);
    try {
      const argv = options.follow ? [GUEST_BUSYBOX, 'tail', '-n', String(options.lines ?? 100), '-f', path] : [GUEST_BUSYBOX, 'tail', '-n', String(options.lines ?? 100), path];
      const handle = client.exec({ argv, env: { PATH: '/usr/bin:/bin' }, user: 'root' });
      await handle.started;
      handle.stdout.pipe(options.out, { end: false });
      const stderr: Buffer[] = [];
      handle.stderr.on('data', (c: Buffer) => stderr.push(c));
      options.signal?.addEventListener('abort', () => handle.signal(15));
      const exit = await handle.exit;
      if (exit.code !== 0 && !options.signal?.aborted) throw new InputError(`no log for daemon "${name}" in ${ws.sandbox}/${ws.workspace}: ${Buffer.concat(stderr).toString('utf8').trim()}`);
    } finally {
      client.close();
    }
    return;
  }
  const file = join(ws.dir, options.source === 'console' ? FILES.console : FILES.log);
  if (!existsSync(file)) {
    if (!options.follow) return;
  }
  let position = 0;
  const emit = async (): Promise<void> => {
    if (!existsSync(file)) return;
    const size = statSync(file).size;
    if (size < position) position = 0;
    if (size === position) return;
    await new Promise<void>((resolve, reject) => {
      const stream = createReadStream(file, { start: position, end: size - 1 });
      stream.on('error', reject);
      stream.on('end', resolve);
      stream.pipe(options.out, { end: false });
    });
    position = size;
  };
  if (options.lines !== undefined && existsSync(file)) {
    // Start at the last N lines.
    const handle = await open(file, 'r');
    try {
      const size = (await handle.stat()).size;
      const chunk = Buffer.alloc(Math.min(size, 256 * 1024));
      await handle.read(chunk, 0, chunk.length, size - chunk.length);
      const text = chunk.toString('utf8');
      const lines = text.split('\n');
      const keep = lines.slice(-(options.lines + 1)).join('\n');
      position = size - Buffer.byteLength(keep);
    } finally {
      await handle.close();
    }
  }
  await emit();
  while (options.follow && !options.signal?.aborted) {
    await new Promise((r) => setTimeout(r, 200));
    await emit();
  }
}

export interface ForwardResult {
  sandbox: string;
  workspace: string;
  mapping: PortMapping;
}

/** Adds a forward 127.0.0.1:LOCAL -> guest REMOTE to a running workspace; it is kept across suspend and resume. */
export async function addPortForward(options: { target: string; spec: string; env?: Env }): Promise<ForwardResult> {
  const match = /^(?:(\d+):)?(\d+)(?:\/(tcp|udp))?$/.exec(options.spec);
  if (!match) throw new UsageError(`port-forward takes LOCAL:REMOTE (or REMOTE), e.g. 8080:80, not "${options.spec}"`);
  const guestPort = Number(match[2]);
  const protocol = (match[3] ?? 'tcp') as 'tcp' | 'udp';
  if (guestPort < 1 || guestPort > 65535) throw new UsageError(`port ${guestPort} is out of range`);
  const ws = await resolveWorkspace(options.target, options.env);
  return withLock(join(ws.dir, FILES.lock), { purpose: `changing ${ws.sandbox}/${ws.workspace}` }, async () => {
    const record = await readRecord(ws.dir);
    if (!record) throw new InputError(`workspace ${options.target} does not exist`);
    const taken = await portsInUse(options.env);
    let hostPort: number;
    if (match[1]) {
      hostPort = Number(match[1]);
      if (hostPort < 1 || hostPort > 65535) throw new UsageError(`port ${hostPort} is out of range`);
      if (taken.has(hostPort) || (protocol === 'tcp' && !(await canListen(hostPort)))) throw new InputError(`127.0.0.1:${hostPort} is already in use`);
    } else {
      hostPort = await pickHostPort(guestPort, taken);
    }
    await requestForward(ws.dir, { protocol, hostPort, guestPort }).catch((error: Error) => {
      throw new VmError(`QEMU did not add the forward: ${error.message}`, { cause: error });
    });
    const mapping: PortMapping = { name: `forward-${hostPort}`, protocol: protocol.toUpperCase(), guestPort, hostPort, adhoc: true };
    await writeRecord(ws.dir, { ...record, ports: [...record.ports, mapping] });
    return { sandbox: ws.sandbox, workspace: ws.workspace, mapping };
  });
}
