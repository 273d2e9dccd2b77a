import { spawn } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { readFile, readlink, realpath, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { packageRoot } from '../util/package-root.js';
import { InputError, UsageError, VmError } from '../util/errors.js';
import { isAlive, withLock } from '../util/lock.js';
import { prepareDisk } from './disk.js';
import type { Env } from '../util/paths.js';
import {
  FILES,
  hasOwnerAccount,
  listWorkspaces,
  readRecord,
  readRun,
  sandboxesDir,
  statusOf,
  supervisorAlive,
  writeRecord,
  type RunRecord,
  type Status,
  type WorkspaceRecord,
  type WorkspaceRef,
} from './state.js';

/**
 * A workspace's life on the host: create (resolve its snapshots to shared
 * read-only images, make its own sparse disk, start its supervisor), suspend
 * (stop the VM, keep the disk), resume, remove. The supervisor (one detached
 * process per running workspace, see supervisor.ts) owns the VM and the
 * start-up steps; these functions only change what is wanted and wait for it.
 */

export interface LifecycleOptions {
  env?: Env;
  onPhase?: (phase: string) => void;
}

export interface WorkspaceSummary {
  sandbox: string;
  workspace: string;
  status: Status;
  phase?: string;
  step?: string;
  error?: string;
  accel: string;
  cpus: number;
  memoryMiB: number;
  diskBytes: number;
  ports: WorkspaceRecord['ports'];
  createdAt: string;
  file: string;
  dir: string;
  pid?: number;
  timings?: Record<string, number>;
}

export interface SandboxResult {
  sandbox: string;
  file: string;
  workspaces: WorkspaceSummary[];
}

export async function portsInUse(env?: Env): Promise<Set<number>> {
  const taken = new Set<number>();
  for (const ref of await listWorkspaces(env)) {
    const record = await readRecord(ref.dir);
    for (const p of record?.ports ?? []) taken.add(p.hostPort);
  }
  return taken;
}

/**
 * A workspace boots the current initramfs (agent, init) and boot image of
 * its kernel: after an upgrade of cs, a resume picks them up. Both are
 * cached by content, so this costs a hash when nothing changed.
 */
async function refreshBootFiles(dir: string, env?: Env): Promise<void> {
  const record = await readRecord(dir);
  if (!record) return;
  const { bootImage, readKernel } = await import('../vm/kernel.js');
  const { ensureInitramfs } = await import('../vm/initramfs.js');
  const kernel = await readKernel(dirname(record.kernel.vmlinuz));
  if (!kernel) return;
  const boot = await bootImage(kernel);
  const initramfs = (await ensureInitramfs({ kernel, ...(env ? { env } : {}) })).path;
  if (boot !== record.kernel.boot || initramfs !== record.initramfs) {
    await writeRecord(dir, { ...record, kernel: { ...record.kernel, boot }, initramfs });
  }
}

/**
 * Where the supervisor's entry point is: built under dist/, or run through
 * tsx from src/ (found from the package root: this code also runs from the
 * one-file bundle dist/cs.mjs).
 */
function supervisorEntry(): { file: string; args: string[] } {
  const js = join(packageRoot(), 'dist', 'workspace', 'supervisor-main.js');
  if (existsSync(js)) return { file: js, args: [] };
  return { file: join(packageRoot(), 'src', 'workspace', 'supervisor-main.ts'), args: ['--import', 'tsx'] };
}

/** Starts the detached supervisor of a workspace (it outlives this process); returns its pid. */
export async function startSupervisor(dir: string, env?: Env): Promise<number | undefined> {
  const entry = supervisorEntry();
  // A stale run record from the previous boot must not be read as this boot's.
  await rm(join(dir, FILES.run), { force: true });
  const log = openSync(join(dir, FILES.supervisorLog), 'a');
  try {
    const child = spawn(process.execPath, [...entry.args, entry.file, dir], {
      cwd: dir,
      detached: true,
      stdio: ['ignore', log, log],
      env: { ...process.env, ...(env ?? {}) },
    });
    child.unref();
    return child.pid;
  } finally {
    closeSync(log);
  }
}

/**
 * Waits for a workspace to be booted (agent answering), to have its owner
 * account (the start-up's first step: a command run as the owner before it
 * would find no such user; a failed start-up ends this wait too), or to be ready (start-up done).
 */
export async function waitUntil(dir: string, goal: 'booted' | 'account' | 'ready', options: LifecycleOptions & { waitTimeoutMs?: number } = {}): Promise<RunRecord> {
  const phase = options.onPhase ?? (() => undefined);
  const deadline = Date.now() + (options.waitTimeoutMs ?? 15 * 60_000);
  const started = Date.now();
  let lastStep = '';
  for (;;) {
    const runRecord = await readRun(dir);
    if (runRecord) {
      const step = runRecord.steps[runRecord.steps.length - 1];
      const label = runRecord.phase === 'starting' && step ? `${step.name}` : runRecord.phase;
      if (label !== lastStep) {
        phase(label);
        lastStep = label;
      }
      // A failed start-up is the caller's to judge when it waits for the account: a command may be how one looks into it.
      if (runRecord.phase === 'failed') {
        if (goal === 'account') return runRecord;
        throw await failure(dir, runRecord);
      }
      if (runRecord.phase === 'ready') return runRecord;
      if (goal === 'booted' && runRecord.phase === 'starting') return runRecord;
      if (goal === 'account' && runRecord.phase === 'starting' && hasOwnerAccount(runRecord)) return runRecord;
      if (runRecord.exit || !supervisorAlive(runRecord)) throw await failure(dir, runRecord);
    } else if (Date.now() - started > 10_000) {
      throw new VmError(`the supervisor of ${dir} did not start`, { suggestions: [`see ${join(dir, FILES.supervisorLog)}`] });
    }
    if (Date.now() > deadline) throw new VmError(`gave up waiting for the workspace ${goal === 'account' ? 'to have its owner account' : `to be ${goal}`}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function tailFile(path: string, lines: number): Promise<string> {
  const text = await readFile(path, 'utf8').catch(() => '');
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

async function failure(dir: string, runRecord: RunRecord): Promise<VmError> {
  const error = runRecord.error ?? (runRecord.exit ? `the VM stopped (exit ${runRecord.exit.code ?? runRecord.exit.signal})` : 'the supervisor stopped');
  const console = await tailFile(join(dir, FILES.console), 15);
  return new VmError(error + (runRecord.error || !console ? '' : `\nlast lines of the console:\n${console}`), {
    code: 'WORKSPACE_FAILED',
    suggestions: [`see the log with \`cs log -W ${dir.split('/').slice(-2).join('/')}\``],
  });
}

export async function summarize(dir: string): Promise<WorkspaceSummary | undefined> {
  const record = await readRecord(dir);
  if (!record) return undefined;
  const runRecord = await readRun(dir);
  const status = statusOf(record, runRecord);
  const step = runRecord?.steps[runRecord.steps.length - 1];
  const summary: WorkspaceSummary = {
    sandbox: record.sandbox,
    workspace: record.name,
    status,
    accel: record.accel,
    cpus: record.cpus,
    memoryMiB: record.memoryMiB,
    diskBytes: record.diskBytes,
    ports: record.ports,
    createdAt: record.createdAt,
    file: record.file,
    dir,
  };
  if (runRecord) {
    summary.phase = runRecord.phase;
    if (step) summary.step = step.name;
    if (runRecord.timings) summary.timings = runRecord.timings;
    if (supervisorAlive(runRecord) && runRecord.qemuPid) summary.pid = runRecord.qemuPid;
  }
  if (status === 'crashed') {
    const how = runRecord?.exit ? `QEMU exited (${runRecord.exit.signal ? `signal ${runRecord.exit.signal}` : `code ${runRecord.exit.code}`})` : 'its supervisor is gone';
    summary.error = `${how}; last console lines:\n${await tailFile(join(dir, FILES.console), 10)}`;
  } else if (runRecord?.error) {
    summary.error = runRecord.error;
  }
  return summary;
}

export async function listSandboxes(options: LifecycleOptions = {}): Promise<WorkspaceSummary[]> {
  const out: WorkspaceSummary[] = [];
  for (const ref of await listWorkspaces(options.env)) {
    const summary = await summarize(ref.dir);
    if (summary) out.push(summary);
  }
  return out;
}

export async function showSandbox(options: LifecycleOptions & { name: string }): Promise<SandboxResult> {
  const name = options.name.toLowerCase();
  const all = (await listSandboxes(options)).filter((w) => w.sandbox === name);
  if (all.length === 0) throw new InputError(`no sandbox "${options.name}"`, { code: 'NOT_FOUND', suggestions: ['see `cs sandbox list`'] });
  return { sandbox: name, file: all[0]?.file ?? '', workspaces: all };
}

/** SANDBOX/WORKSPACE, or SANDBOX alone when it has one workspace. */
export async function resolveWorkspace(target: string, env?: Env): Promise<WorkspaceRef> {
  const parts = target.toLowerCase().split('/');
  if (parts.length > 2 || parts.some((p) => p === '')) throw new UsageError(`-W takes SANDBOX/WORKSPACE, not "${target}"`);
  const inSandbox = await sandboxWorkspaces(parts[0] as string, env);
  if (parts.length === 1) {
    if (inSandbox.length === 1) return inSandbox[0] as WorkspaceRef;
    throw new UsageError(`sandbox "${parts[0]}" has several workspaces (${inSandbox.map((w) => w.workspace).join(', ')}); say which with -W ${parts[0]}/WORKSPACE`);
  }
  const found = inSandbox.find((w) => w.workspace === parts[1]);
  if (!found) throw new InputError(`sandbox "${parts[0]}" has no workspace "${parts[1]}" (it has: ${inSandbox.map((w) => w.workspace).join(', ')})`, { code: 'NOT_FOUND' });
  return found;
}

async function sandboxWorkspaces(name: string, env?: Env): Promise<WorkspaceRef[]> {
  const list = (await listWorkspaces(env)).filter((w) => w.sandbox === name.toLowerCase());
  if (list.length === 0) throw new InputError(`no sandbox "${name}"`, { code: 'NOT_FOUND', suggestions: ['see `cs sandbox list`'] });
  return list;
}

export async function suspendSandbox(options: LifecycleOptions & { name: string }): Promise<SandboxResult> {
  for (const ws of await sandboxWorkspaces(options.name, options.env)) await stopWorkspace(ws, options);
  return showSandbox(options);
}

/** Stops one workspace (its hook runs, the guest powers off) and keeps it stopped; its disk stays. */
export async function stopWorkspace(ws: WorkspaceRef, options: LifecycleOptions = {}): Promise<void> {
  await withLock(join(ws.dir, FILES.lock), { purpose: `stopping ${ws.sandbox}/${ws.workspace}` }, async () => {
    const record = await readRecord(ws.dir);
    if (!record) return;
    await writeRecord(ws.dir, { ...record, desired: 'suspended' });
    options.onPhase?.(`stop ${ws.workspace}`);
    await stopSupervisor(ws.dir, { graceful: true });
  });
}

export async function resumeSandbox(options: LifecycleOptions & { name: string; wait?: boolean; waitTimeoutMs?: number }): Promise<SandboxResult> {
  const list = await sandboxWorkspaces(options.name, options.env);
  for (const ws of list) await launchWorkspace(ws, options);
  for (const ws of list) await waitUntil(ws.dir, options.wait ? 'ready' : 'booted', options);
  return showSandbox(options);
}

/** Starts one workspace and waits until it is booted (or, with `wait`, ready). True when it had to be started. */
export async function startWorkspace(ws: WorkspaceRef, options: LifecycleOptions & { wait?: boolean; waitTimeoutMs?: number } = {}): Promise<boolean> {
  const started = await launchWorkspace(ws, options);
  await waitUntil(ws.dir, options.wait ? 'ready' : 'booted', options);
  return started;
}

/**
 * Starts a stopped workspace for a command that needs it running (`cs
 * exec`, `cs ssh`), telling `notify` first, and waits until it is ready;
 * false when it was running (or starting, or failed with its VM up).
 */
export async function ensureRunning(ws: WorkspaceRef, options: LifecycleOptions & { label: string; notify?: (line: string) => void; waitTimeoutMs?: number }): Promise<boolean> {
  const summary = await summarize(ws.dir);
  if (!summary) throw new VmError(`workspace ${options.label} does not exist`);
  if (summary.status === 'running' || summary.status === 'starting' || summary.status === 'failed') return false;
  if (summary.status !== 'stopping') options.notify?.(`workspace ${options.label} is stopped; starting it`);
  return startWorkspace(ws, { ...options, wait: true });
}

/**
 * Stops a workspace and starts it again with what its record says now
 * (cpus, memory, kernel, root images), keeping its disk; it stays wanted.
 */
export async function restartWorkspace(ws: WorkspaceRef, options: LifecycleOptions & { wait?: boolean; waitTimeoutMs?: number } = {}): Promise<void> {
  await withLock(join(ws.dir, FILES.lock), { purpose: `restarting ${ws.sandbox}/${ws.workspace}` }, async () => {
    options.onPhase?.(`stop ${ws.workspace}`);
    await stopSupervisor(ws.dir, { graceful: true });
  });
  await startWorkspace(ws, options);
}

/**
 * A root image that went away (deleted by hand, or by a prune that had no
 * way to know of this workspace) is built again from the snapshots the
 * record names, when they still give the same chain. If they give another
 * (a tag moved on since), starting on it would put the disk's changes on a
 * root they were not made on: that is `cs apply`'s work, with its restore
 * point, and the start is refused.
 */
async function restoreRootImage(ws: WorkspaceRef, record: WorkspaceRecord, options: LifecycleOptions): Promise<WorkspaceRecord> {
  const shown = `${ws.sandbox}/${ws.workspace}`;
  options.onPhase?.(`the root image of ${shown} is missing; building it again`);
  const [{ rootImage }, { rootSnapshots }] = await Promise.all([import('./create.js'), import('./update.js')]);
  const envOpt = options.env ? { env: options.env } : {};
  const root = await rootImage(record.spec, await rootSnapshots(record, record.spec, { base: false, home: false, ...envOpt }), { ...envOpt, ...(options.onPhase ? { onPhase: options.onPhase } : {}) });
  if (root.chainId !== record.chainId) {
    throw new VmError(`the root image of ${shown} is missing, and its snapshots now make another root (chain ${root.chainId.slice(7, 19)}, not ${record.chainId.slice(7, 19)})`, {
      suggestions: ['run `cs apply` on its definition: it moves the workspace to the new root and keeps a restore point of the disk'],
    });
  }
  const next = { ...record, ...root };
  await writeRecord(ws.dir, next);
  return next;
}

/** Marks a workspace wanted and starts its supervisor unless one runs; true when it started one. */
export async function launchWorkspace(ws: WorkspaceRef, options: LifecycleOptions): Promise<boolean> {
  return withLock(join(ws.dir, FILES.lock), { purpose: `starting ${ws.sandbox}/${ws.workspace}` }, async () => {
    let record = await readRecord(ws.dir);
    if (!record) return false;
    const runRecord = await readRun(ws.dir);
    if (supervisorAlive(runRecord)) {
      if (record.desired !== 'running') await writeRecord(ws.dir, { ...record, desired: 'running' });
      return false;
    }
    await killOrphanQemu(ws.dir, runRecord);
    if (record.lowers.some((path) => !existsSync(path))) record = await restoreRootImage(ws, record, options);
    options.onPhase?.(`start ${ws.workspace}`);
    record = await prepareDisk(ws.dir, record, { boot: true, ...(options.onPhase ? { warn: options.onPhase } : {}) });
    await writeRecord(ws.dir, { ...record, desired: 'running' });
    await refreshBootFiles(ws.dir, options.env);
    const pid = await startSupervisor(ws.dir, options.env);
    // Held until the new supervisor has written its run record: until then another starter (a second
    // `cs exec` on the stopped workspace) would read "nothing runs" and start a second supervisor,
    // whose start removes the first one's record.
    await supervisorStarted(ws.dir, pid);
    return true;
  });
}

/** Until the supervisor `pid` wrote its run record, or died without one (waitUntil then says so), at most 10 s. */
async function supervisorStarted(dir: string, pid: number | undefined, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && pid !== undefined && isAlive(pid)) {
    const run = await readRun(dir);
    if (run?.supervisorPid === pid) return;
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function removeSandbox(options: LifecycleOptions & { name: string }): Promise<{ sandbox: string; removed: string[] }> {
  const removed: string[] = [];
  const list = await sandboxWorkspaces(options.name, options.env);
  for (const ws of list) {
    await retireWorkspace(ws, options);
    removed.push(ws.workspace);
  }
  await discardFolder(join(sandboxesDir(options.env), options.name.toLowerCase()), options.name.toLowerCase(), options.env);
  await pruneUnusedRootImages(options);
  return { sandbox: options.name.toLowerCase(), removed };
}

/** Root images no workspace uses any more go when a workspace goes or moves to a new root; a failure to prune is said, not fatal. */
export async function pruneUnusedRootImages(options: LifecycleOptions): Promise<void> {
  try {
    const { pruneRootImages } = await import('./root-images.js');
    await pruneRootImages(options.env ? { env: options.env } : {});
  } catch (error) {
    const line = `root images were not pruned: ${(error as Error).message}`;
    if (options.onPhase) options.onPhase(line);
    else process.stderr.write(`cs: ${line}\n`);
  }
}

/**
 * The first half of removing a workspace, under its lock: the on_delete
 * hook runs, the VM stops, and the record goes, so a command that takes
 * the lock next (an exec starting the workspace) finds nothing to start in
 * a folder about to be deleted.
 */
export async function retireWorkspace(ws: WorkspaceRef, options: LifecycleOptions = {}): Promise<void> {
  await withLock(join(ws.dir, FILES.lock), { purpose: `removing ${ws.sandbox}/${ws.workspace}` }, async () => {
    options.onPhase?.(`stop ${ws.workspace}`);
    await stopSupervisor(ws.dir, { graceful: true, deleting: true });
    await rename(join(ws.dir, FILES.record), join(ws.dir, `${FILES.record}.removed`)).catch(() => undefined);
  });
}

/** Deletes a sandbox's or workspace's folder, renamed away first: a crash in the middle leaves nothing half-removed in sight. */
export async function discardFolder(dir: string, label: string, env?: Env): Promise<void> {
  const trash = join(sandboxesDir(env), `.removed-${label}-${Date.now()}`);
  await rename(dir, trash);
  await rm(trash, { recursive: true, force: true });
}

/**
 * Stops a workspace's supervisor and VM: asks the supervisor (which runs the
 * on_suspend or on_delete hook and powers the guest off cleanly), then falls
 * back to signals if it does not finish in time.
 */
export async function stopSupervisor(dir: string, options: { graceful: boolean; deleting?: boolean; timeoutMs?: number }): Promise<void> {
  const runRecord = await readRun(dir);
  if (!runRecord || !supervisorAlive(runRecord)) {
    await killOrphanQemu(dir, runRecord);
    return;
  }
  const { requestStop } = await import('./control.js');
  const ok = options.graceful ? await requestStop(dir, { deleting: options.deleting ?? false }).then(() => true, () => false) : false;
  let deadline = Date.now() + (options.timeoutMs ?? 60_000);
  let signalled = !ok;
  if (signalled) killQuietly(runRecord.supervisorPid, 'SIGTERM');
  while (supervisorAlive(await readRun(dir))) {
    if (Date.now() > deadline) {
      if (signalled) {
        killQuietly(runRecord.supervisorPid, 'SIGKILL');
        if (runRecord.qemuPid) killQuietly(runRecord.qemuPid, 'SIGKILL');
        break;
      }
      killQuietly(runRecord.supervisorPid, 'SIGTERM');
      signalled = true;
      deadline = Date.now() + 10_000;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * A QEMU whose supervisor was killed keeps running and holds the disk's
 * lock. It is ours when its working directory is the workspace folder (a
 * recycled pid would not be); it is stopped before anything boots again.
 */
export async function killOrphanQemu(dir: string, runRecord: RunRecord | undefined): Promise<void> {
  const pid = runRecord?.qemuPid;
  if (!pid || runRecord.exit) return;
  const real = await realpath(dir).catch(() => dir);
  const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => undefined);
  if (cwd !== real) return;
  killQuietly(pid, 'SIGKILL');
  for (let i = 0; i < 100 && (await readlink(`/proc/${pid}/cwd`).catch(() => undefined)) === real; i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}
