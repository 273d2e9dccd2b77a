import { createHash } from 'node:crypto';
import { appendFileSync, existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Workspace } from '../definition/model.js';
import { InputError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs.js';
import { isAlive } from '../util/lock.js';
import { dataDir, type Env } from '../util/paths.js';
import type { Accelerator } from '../vm/qemu.js';

/**
 * What cs knows about a workspace, on disk. Two files in its folder:
 * `workspace.json`, written by the commands (the desired state and the
 * resolved inputs: images, kernel, ports), and `run.json`, written only by
 * the workspace's supervisor while it runs (pids, phase, step, exit). The
 * split means a command and the supervisor never write the same file.
 */

export type DesiredState = 'running' | 'suspended';

export interface PortMapping {
  name: string;
  protocol: string;
  guestPort: number;
  hostPort: number;
  /** Added with `cs port-forward`, not from the definition. */
  adhoc?: boolean;
}

/** An image a workspace's root was assembled from, as resolved when it was created. */
export interface WorkspaceImage {
  kind: 'base' | 'home' | 'personal';
  /** Its tag in the store it came from. */
  reference: string;
  /** The catalogue name, when the definition named a snapshot. */
  snapshot?: string;
  digest?: string;
}

/** A workspace's disk chain (see disk.ts): the file the VM writes and each file's backing file, all in `disk/`. */
export interface DiskState {
  top: string;
  parents: Record<string, string | null>;
  /** The top, while nothing has booted on it since it was made. */
  pristine?: string;
}

/** A restore point: the whole disk as it was, kept as a frozen file of the chain. */
export interface RestorePoint {
  name: string;
  layer: string;
  createdAt: string;
  /** `creating` until the running VM has switched to a new top: such a point cannot be restored. */
  state: 'creating' | 'ready';
  /** Whether the workspace was running (its file system frozen) when it was taken. */
  live: boolean;
  /** The root the disk was used with (a disk's changes belong to their root): restoring the point brings it back. */
  root?: PointRoot;
}

export interface PointRoot {
  lowers: string[];
  images?: WorkspaceImage[];
  chainId: string;
  generation: number;
}

export function rootOf(record: WorkspaceRecord): PointRoot {
  return { lowers: record.lowers, ...(record.images ? { images: record.images } : {}), chainId: record.chainId, generation: record.rootGeneration ?? 0 };
}

/** Where a workspace's files came from, when cs put them there. */
export interface WorkspaceOrigin {
  clonedFrom?: string;
  git?: { url: string; ref?: string; commit: string; path: string };
}

export interface WorkspaceRecord {
  version: 1;
  sandbox: string;
  name: string;
  /** The definition file it was created from; empty for a workspace made by `cs workspace create`. */
  file: string;
  /** Made by `cs workspace create` (no definition): its sandbox holds it alone, under the same name. */
  standalone?: boolean;
  /** A free-form label for people (`cs workspace label`). */
  label?: string;
  /** Whose workspace it is for `cs serve`'s API keys; absent: the local user's. */
  owner?: string;
  /** Made by `cs serve` for one command: removed after it, or when the service starts again after a crash. */
  ephemeral?: boolean;
  /** A template: meant to be cloned (`cs workspace create --clone-from`). */
  template?: boolean;
  origin?: WorkspaceOrigin;
  /** The disk chain; absent in records of older cs versions, whose disk is `disk.ext4` beside the record. */
  disk?: DiskState;
  restorePoints?: RestorePoint[];
  /**
   * Raised each time the root is refreshed from a new base snapshot: a boot
   * that sees a number its disk has not seen yet drops the disk's changes
   * outside /home before stacking the new root (see guest/init.sh).
   */
  rootGeneration?: number;
  /** The definition this record's spec was last applied from (`cs apply`), with its content hash and git commit. */
  applied?: AppliedSource;
  createdAt: string;
  desired: DesiredState;
  /** The workspace from the definition, as validated. */
  spec: Workspace;
  /** Read-only snapshot images, top first. */
  lowers: string[];
  /** What the root was assembled from, base first (absent in records of older cs versions). */
  images?: WorkspaceImage[];
  chainId: string;
  /** `boot` is what QEMU loads: the PVH vmlinux when there is one, else `vmlinuz`. */
  kernel: { version: string; vmlinuz: string; boot?: string };
  initramfs: string;
  accel: Accelerator;
  cpus: number;
  memoryMiB: number;
  diskBytes: number;
  ports: PortMapping[];
}

export interface AppliedSource {
  file: string;
  sha256: string;
  commit?: string;
  at: string;
}

/** What a boot really started with: a record changed since is not in effect until the next boot. */
export interface BootedSpec {
  lowers: string[];
  cpus: number;
  memoryMiB: number;
  kernel: string;
  rootGeneration: number;
  /** sha256 of the spec it started with. */
  spec: string;
}

/** The start-up step that creates the owner account; commands wait for it. */
export const ACCOUNT_STEP = 'account';

/** Whether this boot's start-up has made the owner account. */
export function hasOwnerAccount(run: RunRecord): boolean {
  return run.steps.some((s) => s.name === ACCOUNT_STEP && s.ok);
}

export type Phase = 'booting' | 'starting' | 'ready' | 'failed' | 'stopping' | 'stopped';

export interface StepRecord {
  name: string;
  startedAt: string;
  endedAt?: string;
  ok?: boolean;
  error?: string;
}

export interface RunRecord {
  supervisorPid: number;
  qemuPid?: number;
  bootId?: string;
  startedAt: string;
  boot?: BootedSpec;
  /** Host wall-clock milestones of this boot, in ms since startedAt. */
  timings: Record<string, number>;
  phase: Phase;
  steps: StepRecord[];
  error?: string;
  exit?: { code: number | null; signal: string | null; at: string; expected: boolean };
}

export type Status = 'creating' | 'starting' | 'running' | 'failed' | 'suspended' | 'crashed' | 'stopping';

export function sandboxesDir(env?: Env): string {
  return join(dataDir(env), 'sandboxes');
}

export function workspaceDir(sandbox: string, workspace: string, env?: Env): string {
  return join(sandboxesDir(env), sandbox, workspace);
}

export const FILES = {
  record: 'workspace.json',
  run: 'run.json',
  disk: 'disk.ext4',
  console: 'console.log',
  log: 'workspace.log',
  supervisorLog: 'supervisor.log',
  agentSocket: 'agent.sock',
  hostSocket: 'host.sock',
  qmpSocket: 'qmp.sock',
  controlSocket: 'control.sock',
  lock: '.lock',
} as const;

export async function readRecord(dir: string): Promise<WorkspaceRecord | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, FILES.record), 'utf8')) as WorkspaceRecord;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new InputError(`${join(dir, FILES.record)} is unreadable: ${(error as Error).message}`, { cause: error });
  }
}

export async function writeRecord(dir: string, record: WorkspaceRecord): Promise<void> {
  await writeFileAtomic(join(dir, FILES.record), JSON.stringify(record, null, 2) + '\n');
}

/** The workspace log (`cs log`): what each start-up step and live update did. */
export function appendWorkspaceLog(dir: string, line: string): void {
  appendFileSync(join(dir, FILES.log), `${new Date().toISOString()} ${line}\n`);
}

export async function readRun(dir: string): Promise<RunRecord | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, FILES.run), 'utf8')) as RunRecord;
  } catch {
    return undefined;
  }
}

export async function writeRun(dir: string, run: RunRecord): Promise<void> {
  await writeFileAtomic(join(dir, FILES.run), JSON.stringify(run, null, 2) + '\n');
}

/** A supervisor that is alive: its pid exists and it wrote the run record this boot. */
export function supervisorAlive(run: RunRecord | undefined): boolean {
  return run !== undefined && run.exit === undefined && isAlive(run.supervisorPid);
}

/** The one honest answer to "what is this workspace doing", from both files and the process table. */
export function statusOf(record: WorkspaceRecord, run: RunRecord | undefined): Status {
  if (run && supervisorAlive(run)) {
    if (run.phase === 'ready') return 'running';
    if (run.phase === 'failed') return 'failed';
    if (run.phase === 'stopping') return 'stopping';
    return 'starting';
  }
  if (record.desired === 'suspended') return 'suspended';
  if (!run) return 'creating';
  if (run.exit?.expected) return 'suspended';
  return 'crashed';
}

export interface WorkspaceRef {
  sandbox: string;
  workspace: string;
  dir: string;
}

/** The name a person uses for a workspace: SANDBOX/WORKSPACE, or its own name for one made by `cs workspace create`. */
export function specHash(spec: Workspace): string {
  return createHash('sha256').update(JSON.stringify(spec)).digest('hex');
}

export function displayName(ref: { sandbox: string; workspace: string }, standalone: boolean | undefined): string {
  return standalone ? ref.sandbox : `${ref.sandbox}/${ref.workspace}`;
}

export async function listWorkspaces(env?: Env): Promise<WorkspaceRef[]> {
  const out: WorkspaceRef[] = [];
  const root = sandboxesDir(env);
  for (const sandbox of (await readdir(root).catch(() => [] as string[])).sort()) {
    if (sandbox.startsWith('.')) continue;
    for (const workspace of (await readdir(join(root, sandbox)).catch(() => [] as string[])).sort()) {
      const dir = join(root, sandbox, workspace);
      if (!workspace.startsWith('.') && existsSync(join(dir, FILES.record))) out.push({ sandbox, workspace, dir });
    }
  }
  return out;
}
