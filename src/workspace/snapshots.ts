import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Ext4Image, walkTree } from '../layers/ext4.js';
import { BASE_SNAPSHOT_EXCLUDES, excludedBy } from '../layers/overlay-upper.js';
import { checkSnapshotName, findSnapshot, type SnapshotKind, type SnapshotRecord } from '../snapshot/catalogue.js';
import { clash, createSnapshot, type CreateSnapshotOptions, type CreateSnapshotResult } from '../snapshot/create.js';
import { removeSnapshot, snapshotDetails, type Namespace, type SnapshotDetails } from '../snapshot/manage.js';
import { InputError, LayerError, UsageError, VmError } from '../util/errors.js';
import type { TreeEntry } from '../layers/tree-entry.js';
import { withLock } from '../util/lock.js';
import type { Env } from '../util/paths.js';
import type { AgentClient } from '../vm/agent-client.js';
import { openAgent } from './control.js';
import { GUEST_BUSYBOX } from './guest-env.js';
import { formatOf, topPath } from './disk.js';
import { stageWorkspaceHome } from './home-snapshot.js';
import { WORKSPACE_HOME } from '../definition/model.js';
import { resolveWorkspace } from './lifecycle.js';
import { FILES, listWorkspaces, readRecord, readRun, statusOf, supervisorAlive, type WorkspaceRecord } from './state.js';

/**
 * Snapshots that involve workspaces: a base snapshot of a workspace's
 * changed files, and the catalogue questions only workspaces can answer
 * (who uses a snapshot).
 *
 * A workspace's changes are the overlayfs upper folder on its ext4 disk.
 * cs reads that disk image directly (layers/ext4.ts): no mount, no root, and
 * time in proportion to what changed. A running workspace's file system is
 * frozen for the read (FIFREEZE through the agent), which flushes it and
 * holds writers still, so the image on the host is consistent; a watchdog
 * in the guest thaws it if this process dies mid-way.
 */

/** Where init keeps a read-only view of the workspace disk for the agent (guest/init.sh). */
export const GUEST_DISK = '/run/cs/disk';

export interface SnapshotCreateOptions extends Omit<CreateSnapshotOptions, 'source' | 'parentImage'> {
  /** SANDBOX/WORKSPACE; default the workspace cs runs in ($CS_SANDBOX/$CS_WORKSPACE). */
  workspace?: string;
}

export async function snapshotCreate(options: SnapshotCreateOptions): Promise<CreateSnapshotResult> {
  const env = options.env ?? process.env;
  checkSnapshotName(options.name);
  const { workspace: target, ...rest } = options;
  if (options.kind !== 'base') {
    if (!target) return createSnapshot(rest);
    const ws = await resolveWorkspace(target, options.env);
    const label = `${ws.sandbox}/${ws.workspace}`;
    const wsRecord = await readRecord(ws.dir);
    if (!wsRecord) throw new InputError(`workspace ${label} does not exist`);
    const client = await openAgent(ws.dir, label);
    try {
      (options.onPhase ?? (() => undefined))(`copy the selected files out of ${label}`);
      const staged = await stageWorkspaceHome(client, options.kind, label, wsRecord.diskBytes);
      try {
        return await createSnapshot({ ...rest, home: staged.dir, selection: staged.selection, homeLabel: `${label}:${WORKSPACE_HOME}`, homeWorkspace: label });
      } finally {
        await staged.cleanup();
      }
    } finally {
      client.close();
    }
  }
  if (options.fromDir) {
    if (target) throw new UsageError('give either -W SANDBOX/WORKSPACE or --from-dir DIR, not both');
    return createSnapshot(rest);
  }
  const name = target ?? (env['CS_SANDBOX'] && env['CS_WORKSPACE'] ? `${env['CS_SANDBOX']}/${env['CS_WORKSPACE']}` : undefined);
  if (!name) {
    const all = await listWorkspaces(options.env);
    throw new UsageError('say which workspace to snapshot with -W SANDBOX/WORKSPACE (or make one from a folder with --from-dir DIR)', {
      suggestions: all.length > 0 ? [`workspaces: ${all.map((w) => `${w.sandbox}/${w.workspace}`).join(', ')}`] : ['create one with `cs sandbox create`'],
    });
  }
  const ws = await resolveWorkspace(name, options.env);
  const label = `${ws.sandbox}/${ws.workspace}`;
  const record = await readRecord(ws.dir);
  if (!record) throw new InputError(`workspace ${label} does not exist`);
  const base = await baseImageOf(record, options.env);
  // A name clash is found before the guest is frozen for nothing (createSnapshot checks again under its lock).
  const taken = await findSnapshot(options.name, options.env, ['base', 'home']);
  if (taken && !options.force) throw clash(taken);
  return withWorkspaceDisk(ws.dir, label, record, options.onPhase ?? (() => undefined), async (image, upper, release) =>
    createSnapshot({
      ...rest,
      source: {
        entries: boundedBy(walkTree(image, upper, { exclude: excludedBy(BASE_SNAPSHOT_EXCLUDES) }), record.diskBytes, label),
        overlay: true,
        describe: { workspace: label },
      },
      parentImage: base,
      // The guest is thawed as soon as the layer is stored: the image, the catalogue and a push need no frozen disk.
      afterLayer: release,
    }),
  );
}

/**
 * What goes into a base snapshot from the disk. A file on the disk cannot hold more than the disk: a larger size is a
 * forged sparse file (the guest controls its disk), which would stream
 * terabytes of zeros into the layer.
 */
async function* boundedBy(entries: AsyncIterable<TreeEntry>, diskBytes: number, label: string): AsyncGenerator<TreeEntry> {
  let total = 0;
  for await (const entry of entries) {
    total += entry.size;
    if (total > diskBytes) {
      throw new LayerError(`workspace ${label}: its changed files claim more bytes than its whole disk (${diskBytes}); cs does not snapshot it`, { code: 'LAYER_TOO_LARGE' });
    }
    // The link init makes to the in-workspace `cs` belongs to every workspace's boot, not to the snapshot.
    if (entry.path === 'usr/local/bin/cs' && entry.type === 'symlink' && entry.linkname === '/run/cs/bin/cs') continue;
    if (entry.size > diskBytes) {
      throw new LayerError(`workspace ${label}: /${entry.path} claims ${entry.size} bytes, more than its whole disk (${diskBytes}); cs does not snapshot it`, { code: 'LAYER_TOO_LARGE' });
    }
    yield entry;
  }
}

/** The base image a workspace booted from, as recorded at creation (or, for older records, as its definition names it now). */
async function baseImageOf(record: WorkspaceRecord, env?: Env): Promise<{ reference: string; digest?: string; name?: string }> {
  const recorded = record.images?.find((i) => i.kind === 'base');
  if (recorded) return { reference: recorded.reference, ...(recorded.digest ? { digest: recorded.digest } : {}), ...(recorded.snapshot ? { name: recorded.snapshot } : {}) };
  if (!record.spec.baseSnapshot) throw new InputError(`workspace ${record.sandbox}/${record.name} has no base snapshot`);
  const { resolveSnapshot } = await import('../snapshot/resolve.js');
  const resolved = await resolveSnapshot(record.spec.baseSnapshot, 'base', env);
  return { reference: resolved.reference, ...(resolved.snapshot ? { name: resolved.snapshot } : {}) };
}

/**
 * Run `fn` on the workspace's disk image, consistent: frozen in the guest
 * when the workspace runs, and under the workspace's lock either way (no
 * resume, suspend or remove meanwhile). `fn` calls `release` once it has
 * read what it needs (the disk is closed and thawed then); release fails
 * if the guest thawed by itself before that, since the read may then be
 * inconsistent.
 */
async function withWorkspaceDisk<T>(
  dir: string,
  label: string,
  record: WorkspaceRecord,
  phase: (p: string) => void,
  fn: (image: Ext4Image, upper: number, release: () => Promise<void>) => Promise<T>,
): Promise<T> {
  return withLock(join(dir, FILES.lock), { purpose: `snapshotting ${label}` }, async () => {
    const run = await readRun(dir);
    let thaw: (() => Promise<void>) | undefined;
    if (supervisorAlive(run)) {
      phase(`freeze ${label}'s disk`);
      thaw = await freeze(await openAgent(dir, label), label);
    } else if (statusOf(record, run) === 'creating') {
      throw new VmError(`workspace ${label} has not booted yet`, { code: 'NOT_READY' });
    }
    let image: Ext4Image | undefined;
    let released = false;
    const release = async (): Promise<void> => {
      if (released) return;
      released = true;
      try {
        await image?.close();
      } finally {
        if (thaw) await thaw();
      }
    };
    try {
      const top = topPath((await readRecord(dir)) ?? record);
      image = await Ext4Image.open(join(dir, top), { format: formatOf(top) }).catch((error: Error) => {
        if ((error as { code?: string }).code === 'LAYER_NEEDS_RECOVERY') {
          throw Object.assign(error, { suggestions: [`resume it once (\`cs sandbox resume ${record.sandbox}\`), then snapshot it again`] });
        }
        throw error;
      });
      const upper = await image.lookup('upper');
      if (upper === undefined) throw new InputError(`workspace ${label} has no changes on its disk yet (no /upper)`);
      phase('read the changed files');
      const result = await fn(image, upper, release);
      await release();
      return result;
    } finally {
      // On failure: thaw, and let the first error be the one reported.
      await release().catch(() => undefined);
    }
  });
}

/**
 * Freeze the guest's workspace disk. The script starts a watchdog first
 * (in its own session, so it outlives a killed exec) that thaws the disk
 * when the script is gone; the script itself thaws on end of input.
 */
const FREEZE_SCRIPT = `
BB=${GUEST_BUSYBOX}
D=${GUEST_DISK}
[ -d "$D/upper" ] || { echo "the workspace disk is not visible at $D" >&2; exit 3; }
me=$$
$BB setsid $BB sh -c "while $BB kill -0 $me 2>/dev/null; do $BB sleep 1; done; $BB fsfreeze --unfreeze $D 2>/dev/null" </dev/null >/dev/null 2>&1 &
wd=$!
$BB fsfreeze --freeze "$D" || { $BB kill $wd; exit 4; }
echo frozen
read -t 1800 line
$BB fsfreeze --unfreeze "$D"; rc=$?
$BB kill $wd 2>/dev/null
[ $rc -eq 0 ] || exit 5
echo thawed
`;

export async function freeze(client: AgentClient, label: string): Promise<() => Promise<void>> {
  const handle = client.exec({ argv: [GUEST_BUSYBOX, 'sh', '-c', FREEZE_SCRIPT], stdin: true, timeoutMs: 15 * 60 * 1000 });
  let out = '';
  let err = '';
  handle.stderr.on('data', (chunk: Buffer) => (err += chunk.toString('utf8')));
  const frozen = new Promise<void>((resolve, reject) => {
    handle.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
      if (out.includes('frozen\n')) resolve();
    });
    void handle.exit.then((status) => {
      const why = err.trim() || `exit ${status.code}`;
      reject(
        new VmError(`cannot freeze the disk of workspace ${label}: ${why}`, {
          code: 'FREEZE_FAILED',
          suggestions: status.code === 3 ? [`it booted with an older cs: suspend and resume it, then try again`] : [],
        }),
      );
    }, reject);
  });
  try {
    await frozen;
  } catch (error) {
    client.close();
    throw error;
  }
  // The script ends only after its input does; an exit before that means the disk thawed early (a timeout, a killed script).
  let exitedEarly = false;
  void handle.exit.then(() => (exitedEarly = true), () => (exitedEarly = true));
  return async () => {
    const early = exitedEarly;
    handle.stdin?.end();
    const status = await handle.exit.catch(() => undefined);
    client.close();
    if (early || status?.code !== 0 || !out.includes('thawed\n')) {
      throw new VmError(`the disk of workspace ${label} was thawed before cs finished reading it, so the copy may be inconsistent; try again`, { code: 'FREEZE_LOST' });
    }
  };
}

/** Who uses a snapshot: workspaces built from it, and the definitions of cs's sandboxes that name it. */
export async function snapshotUsers(record: Pick<SnapshotRecord, 'name' | 'kind'>, env?: Env): Promise<string[]> {
  const key = record.name.toLowerCase();
  const users: string[] = [];
  const files = new Set<string>();
  for (const ws of await listWorkspaces(env)) {
    const wsRecord = await readRecord(ws.dir).catch(() => undefined);
    if (!wsRecord) continue;
    files.add(wsRecord.file);
    if (usesSnapshot(wsRecord, record.kind, key)) users.push(`workspace ${ws.sandbox}/${ws.workspace}`);
  }
  if (record.kind === 'personal') return users;
  // The definition reader (JSON Schema compiling) is loaded only when there is a definition to read.
  const { loadSandbox } = await import('../definition/load.js');
  for (const file of [...files].sort()) {
    if (!existsSync(file)) continue;
    const sandbox = await loadSandbox({ file }).catch(() => undefined);
    const field = record.kind === 'base' ? 'baseSnapshot' : 'homeSnapshot';
    if (sandbox?.workspaces.some((w) => { const ref = w[field]; return ref?.kind === 'name' && ref.name.toLowerCase() === key; })) users.push(`definition ${file}`);
  }
  return users;
}

function usesSnapshot(record: WorkspaceRecord, kind: SnapshotKind, key: string): boolean {
  if (record.images) return record.images.some((i) => i.kind === kind && i.snapshot?.toLowerCase() === key);
  const ref = kind === 'base' ? record.spec.baseSnapshot : kind === 'home' ? record.spec.homeSnapshot : undefined;
  return ref?.kind === 'name' && ref.name.toLowerCase() === key;
}

export async function snapshotRemove(options: { name: string; force?: boolean; namespace?: Namespace; env?: Env }): Promise<{ removed: string; kind: SnapshotKind; wasUsedBy: string[] }> {
  return removeSnapshot({ ...options, usedBy: (record) => snapshotUsers(record, options.env) });
}

export async function snapshotShow(options: { name: string; namespace?: Namespace; env?: Env }): Promise<SnapshotDetails & { usedBy: string[] }> {
  const details = await snapshotDetails(options);
  return { ...details, usedBy: await snapshotUsers(details, options.env) };
}
