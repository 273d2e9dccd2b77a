import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, link, lstat, mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { VmError } from '../util/errors.js';
import { run } from '../util/process.js';
import { FILES, writeRecord, type DiskState, type WorkspaceRecord } from './state.js';

/**
 * A workspace's disk as a chain of files in its `disk/` folder.
 *
 * The first file is a raw, sparse ext4 image made by mke2fs. A workspace
 * with no restore points and no clones writes straight into it, at raw
 * speed. Taking a restore point or cloning freezes the file the VM writes
 * (the "top"): it becomes read-only for good, and a new, empty qcow2
 * overlay backed by it becomes the top. A restore point is the name of a
 * frozen file; restoring puts a new empty overlay on it. So creating,
 * restoring and cloning cost a header write whatever the disk holds, and a
 * restore point costs only the blocks written after it.
 *
 * The host's file system decides nothing here: reflinks would do the same
 * where they exist (btrfs, XFS), but ext4, the usual host, has none, and
 * qcow2 backing chains work everywhere QEMU does.
 *
 * Frozen files never change, so a clone shares them by hard link: each
 * workspace's folder holds links to every file of its chain, and the file
 * system frees a file's blocks when the last workspace using it lets go.
 * Every backing name is a plain file name in the same folder, so links
 * resolve in every workspace that holds them.
 *
 * The chain is recorded in workspace.json (`disk`): the top and each file's
 * backing file. The files' own headers say the same (QEMU follows them);
 * the record is what cs trusts to decide what may be deleted.
 */

export const DISK_DIR = 'disk';

/** qcow2 clusters: QEMU's default; big enough that the tables stay small, small enough that a changed byte copies little. */
const CLUSTER_SIZE = 65536;

const FILE_NAME = /^(base|layer)-[0-9a-f]{16}\.(ext4|qcow2)$/;

export function isDiskFile(name: string): boolean {
  return FILE_NAME.test(name);
}

function newName(kind: 'base' | 'layer'): string {
  return `${kind}-${randomBytes(8).toString('hex')}.${kind === 'base' ? 'ext4' : 'qcow2'}`;
}

export function formatOf(file: string): 'raw' | 'qcow2' {
  return file.endsWith('.qcow2') ? 'qcow2' : 'raw';
}

/** The file the VM writes, relative to the workspace folder; older records kept one raw disk next to workspace.json. */
export function topPath(record: Pick<WorkspaceRecord, 'disk'>): string {
  return record.disk ? join(DISK_DIR, record.disk.top) : FILES.disk;
}

/** A sparse ext4 file: costs what is written to it, not its size. */
export async function makeDisk(path: string, bytes: number): Promise<void> {
  const mib = Math.max(64, Math.floor(bytes / (1024 * 1024)));
  await run('mke2fs', ['-q', '-t', 'ext4', '-F', '-m', '0', '-E', 'lazy_itable_init=1,lazy_journal_init=1', '-L', 'cs-workspace', path, `${mib}M`]);
}

/** A new workspace's disk: an empty ext4 base in `dir/disk/`. */
export async function newDisk(dir: string, bytes: number): Promise<DiskState> {
  await mkdir(join(dir, DISK_DIR), { mode: 0o700, recursive: true });
  const base = newName('base');
  await makeDisk(join(dir, DISK_DIR, base), bytes);
  await chmod(join(dir, DISK_DIR, base), 0o600);
  return { top: base, parents: { [base]: null } };
}

/**
 * An empty qcow2 overlay on `parent` (both in `dir/disk/`). `-u` leaves the
 * parent closed: a running QEMU holds a lock on it, and the virtual size is
 * given rather than read from it.
 */
export async function overlayOn(dir: string, parent: string, bytes: number): Promise<string> {
  const name = newName('layer');
  const path = join(dir, DISK_DIR, name);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', parent, '-F', formatOf(parent), '-o', `cluster_size=${CLUSTER_SIZE}`, path, String(bytes)]);
  await chmod(path, 0o600);
  return name;
}

/** The files `file` reads through, itself first and the raw base last. */
export function chainOf(state: DiskState, file: string): string[] {
  const out: string[] = [];
  for (let at: string | null | undefined = file; at; at = state.parents[at]) {
    if (out.includes(at)) throw new VmError(`the disk chain recorded for ${file} loops at ${at}`);
    out.push(at);
  }
  return out;
}

/** Every file the workspace still needs: the top's chain and each restore point's. */
export function neededFiles(record: Pick<WorkspaceRecord, 'disk' | 'restorePoints'>): Set<string> {
  const state = record.disk;
  if (!state) return new Set();
  const needed = new Set(chainOf(state, state.top));
  for (const point of record.restorePoints ?? []) for (const f of chainOf(state, point.layer)) needed.add(f);
  return needed;
}

/** The record's chain with only the files still needed (what `gc` leaves on disk). */
export function prunedState(record: Pick<WorkspaceRecord, 'disk' | 'restorePoints'>): DiskState | undefined {
  if (!record.disk) return undefined;
  const needed = neededFiles(record);
  const parents: Record<string, string | null> = {};
  for (const [file, parent] of Object.entries(record.disk.parents)) if (needed.has(file)) parents[file] = parent;
  return { ...record.disk, parents };
}

/**
 * Remove the disk files the record no longer needs: the old top after a
 * restore, a deleted restore point's file, what a crash left half made.
 * Runs under the workspace's lock, after the record is written, so a file
 * named by the record is never removed. A removed file that a clone also
 * links stays alive there.
 */
export async function collectGarbage(dir: string, record: Pick<WorkspaceRecord, 'disk' | 'restorePoints'>): Promise<string[]> {
  if (!record.disk) return [];
  const needed = neededFiles(record);
  const removed: string[] = [];
  if (existsSync(join(dir, FILES.disk))) {
    await rm(join(dir, FILES.disk), { force: true });
    removed.push(FILES.disk);
  }
  for (const name of await readdir(join(dir, DISK_DIR)).catch(() => [] as string[])) {
    if (!FILE_NAME.test(name) || needed.has(name)) continue;
    await rm(join(dir, DISK_DIR, name), { force: true });
    removed.push(name);
  }
  return removed;
}

/**
 * The disk after freezing its top: a new empty overlay on top of it. The
 * caller writes the record; the old top is made read-only once the record
 * names the new one (see `sealed`). When the top is an overlay nobody has
 * written since it was made (`pristine`), its parent is frozen already and
 * serves as is: cloning a template ten times adds no ten layers.
 */
export async function freezeTop(dir: string, state: DiskState, bytes: number): Promise<{ state: DiskState; frozen: string }> {
  if (state.pristine === state.top) {
    const parent = state.parents[state.top];
    if (parent) return { state, frozen: parent };
  }
  const frozen = state.top;
  const top = await overlayOn(dir, frozen, bytes);
  return { state: { top, parents: { ...state.parents, [top]: frozen }, pristine: top }, frozen };
}

/** A frozen file is read-only from now on, for every workspace linking it. */
export async function sealed(dir: string, file: string): Promise<void> {
  await chmod(join(dir, DISK_DIR, file), 0o400);
}

/** Links `file`'s chain from `fromDir` into `toDir` (same file system: both are under cs's data folder). */
export async function linkChain(fromDir: string, toDir: string, state: DiskState, file: string): Promise<Record<string, string | null>> {
  await mkdir(join(toDir, DISK_DIR), { mode: 0o700, recursive: true });
  const parents: Record<string, string | null> = {};
  for (const f of chainOf(state, file)) {
    await link(join(fromDir, DISK_DIR, f), join(toDir, DISK_DIR, f));
    parents[f] = state.parents[f] ?? null;
  }
  return parents;
}

/**
 * Records from before disk chains kept `disk.ext4` next to workspace.json.
 * It moves into `disk/` (the workspace stopped and locked) the first time
 * the workspace starts; `collectGarbage` drops the old name once the
 * record names the new one.
 */
export async function migrateLegacyDisk(dir: string, record: WorkspaceRecord): Promise<WorkspaceRecord> {
  if (record.disk || !existsSync(join(dir, FILES.disk))) return record;
  await mkdir(join(dir, DISK_DIR), { mode: 0o700, recursive: true });
  const base = newName('base');
  // A link, not a rename: until the caller has written the record, the old name is the one it names.
  await link(join(dir, FILES.disk), join(dir, DISK_DIR, base));
  return { ...record, disk: { top: base, parents: { [base]: null } } };
}

/** Bytes a file really holds on the host (its allocated blocks), and its identity for counting hard links once. */
export async function allocated(path: string): Promise<{ bytes: number; id: string } | undefined> {
  const st = await lstat(path, { bigint: true }).catch(() => undefined);
  if (!st || !st.isFile()) return undefined;
  return { bytes: Number(st.blocks) * 512, id: `${st.dev}:${st.ino}` };
}

/**
 * Before the disk is used (the workspace stopped and locked): an older
 * record's disk moves into the chain layout; a disk whose files are gone
 * (deleted by hand, a lost volume) is replaced by an empty one, with a
 * warning, so the workspace boots and its first-boot steps (an imported
 * repository's clone among them) run again. Before a boot (`boot`), the
 * top stops being pristine, since the VM will write to it. Writes the
 * record when it changed, and returns it.
 */
export async function prepareDisk(dir: string, record: WorkspaceRecord, options: { boot: boolean; warn?: (line: string) => void }): Promise<WorkspaceRecord> {
  const warn = options.warn ?? (() => undefined);
  let next = await migrateLegacyDisk(dir, record);
  const missing = next.disk ? chainOf(next.disk, next.disk.top).filter((f) => !existsSync(join(dir, DISK_DIR, f))) : ['disk.ext4'];
  if (missing.length > 0) {
    warn(`the disk of ${record.sandbox}/${record.name} is gone (${missing.join(', ')} missing): it starts again from an empty disk`);
    const fresh = await newDisk(dir, next.diskBytes);
    const base = fresh.top;
    const kept = (next.restorePoints ?? []).filter((p) => next.disk && chainOf(next.disk, p.layer).every((f) => existsSync(join(dir, DISK_DIR, f))));
    next = { ...next, disk: { top: base, parents: { ...next.disk?.parents, [base]: null } }, restorePoints: kept };
  }
  if (options.boot && next.disk?.pristine) {
    const { pristine: _unused, ...rest } = next.disk;
    next = { ...next, disk: rest };
  }
  if (next !== record) {
    const disk = prunedState(next);
    next = disk ? { ...next, disk } : next;
    await writeRecord(dir, next);
    await collectGarbage(dir, next);
  }
  return next;
}
