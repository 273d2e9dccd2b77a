import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, link, lstat, mkdir, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { VmError } from '../util/errors.js';
import { syncDir } from '../util/fs.js';
import { run } from '../util/process.js';
import { displayName, FILES, writeRecord, type DiskState, type WorkspaceRecord } from './state.js';

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

/** The size a disk really has: whole MiB, at least 64 (what mke2fs is given, and every overlay of it). */
export function diskImageBytes(bytes: number): number {
  return Math.max(64, Math.floor(bytes / (1024 * 1024))) * 1024 * 1024;
}

/** A sparse ext4 file: costs what is written to it, not its size. */
export async function makeDisk(path: string, bytes: number): Promise<void> {
  const mib = diskImageBytes(bytes) / (1024 * 1024);
  await run('mke2fs', ['-q', '-t', 'ext4', '-F', '-m', '0', '-E', 'lazy_itable_init=1,lazy_journal_init=1', '-L', 'cs-workspace', path, `${mib}M`]);
}

/** A new workspace's disk: an empty ext4 base in `dir/disk/`. */
export async function newDisk(dir: string, bytes: number): Promise<DiskState> {
  await mkdir(join(dir, DISK_DIR), { mode: 0o700, recursive: true });
  const base = newName('base');
  await makeDisk(join(dir, DISK_DIR, base), bytes);
  await chmod(join(dir, DISK_DIR, base), 0o600);
  await syncDir(join(dir, DISK_DIR));
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
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', parent, '-F', formatOf(parent), '-o', `cluster_size=${CLUSTER_SIZE}`, path, String(diskImageBytes(bytes))]);
  await chmod(path, 0o600);
  // The record that names it is fsynced; the file's name must be on disk before that.
  await syncDir(join(dir, DISK_DIR));
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
  await syncDir(join(toDir, DISK_DIR));
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
  await syncDir(join(dir, DISK_DIR));
  return { ...record, disk: { top: base, parents: { [base]: null } } };
}

/** Bytes a file really holds on the host (its allocated blocks), and its identity for counting hard links once. */
export async function allocated(path: string): Promise<{ bytes: number; id: string; links: number } | undefined> {
  const st = await lstat(path, { bigint: true }).catch(() => undefined);
  if (!st || !st.isFile()) return undefined;
  return { bytes: Number(st.blocks) * 512, id: `${st.dev}:${st.ino}`, links: Number(st.nlink) };
}

/**
 * Before the disk is used (the workspace stopped and locked): an older
 * record's disk moves into the chain layout, and the chain is checked.
 *
 * Files missing from the chain (deleted by hand, a lost volume) are
 * recovered only before a boot, with a warning, and nothing is deleted on
 * the way: when the newest files are gone, the disk goes on from the
 * newest state still whole (a new overlay on it); when the base itself is
 * gone, the workspace starts from an empty disk (its first-boot steps, an
 * imported repository's clone among them, run again) and what is left of
 * the old chain is moved aside into `disk/lost-TIME/`. Other callers get
 * an error telling them to start the workspace once.
 *
 * Before a boot, the top stops being pristine (the VM will write to it).
 * Writes the record when it changed, and returns it.
 */
export async function prepareDisk(dir: string, record: WorkspaceRecord, options: { boot: boolean; warn?: (line: string) => void }): Promise<WorkspaceRecord> {
  const warn = options.warn ?? (() => undefined);
  let next = await migrateLegacyDisk(dir, record);
  const name = `${record.sandbox}/${record.name}`;
  const chain = next.disk ? chainOf(next.disk, next.disk.top) : [];
  const present = chain.map((f) => existsSync(join(dir, DISK_DIR, f)));
  if (chain.length === 0 || present.includes(false)) {
    if (!options.boot) {
      throw new VmError(`files of the disk of ${name} are missing (${chain.filter((_, i) => !present[i]).join(', ') || 'disk.ext4'})`, {
        code: 'DISK_MISSING',
        suggestions: [`start it once (\`cs workspace start ${displayName({ sandbox: record.sandbox, workspace: record.name }, record.standalone)}\`): cs recovers what it can and says what was lost`],
      });
    }
    // The deepest run of files that are all there, down to the base.
    let whole = chain.length;
    while (whole > 0 && present[whole - 1]) whole--;
    if (next.disk && whole < chain.length) {
      const from = chain[whole] as string;
      warn(`the newest ${whole} file(s) of the disk of ${name} are missing: it goes on from ${from}, and what was written after it is lost`);
      const top = await overlayOn(dir, from, next.diskBytes);
      next = { ...next, disk: { top, parents: { ...next.disk.parents, [top]: from } } };
    } else {
      warn(`the disk of ${name} is gone (${chain.length > 0 ? chain.filter((_, i) => !present[i]).join(', ') : 'disk.ext4'} missing): it starts again from an empty disk`);
      await setAside(dir);
      const fresh = await newDisk(dir, next.diskBytes);
      next = { ...next, disk: fresh, restorePoints: [] };
    }
    const disk = next.disk as DiskState;
    next = { ...next, restorePoints: (next.restorePoints ?? []).filter((p) => chainOf(disk, p.layer).every((f) => existsSync(join(dir, DISK_DIR, f)))) };
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

/** Moves every chain file of `dir/disk/` into `dir/disk/lost-TIME/`, for a person to look at; nothing is deleted. */
async function setAside(dir: string): Promise<void> {
  const names = (await readdir(join(dir, DISK_DIR)).catch(() => [] as string[])).filter((n) => FILE_NAME.test(n));
  if (names.length === 0) return;
  const aside = join(dir, DISK_DIR, `lost-${new Date().toISOString().replace(/[:.]/g, '-')}`);
  await mkdir(aside, { recursive: true, mode: 0o700 });
  for (const n of names) await rename(join(dir, DISK_DIR, n), join(aside, n));
}
