import { join } from 'node:path';
import type { Workspace } from '../definition/model.js';
import { resolvePersonal, resolveSnapshot, type ResolvedSnapshot } from '../snapshot/resolve.js';
import { InputError } from '../util/errors.js';
import { withLock } from '../util/lock.js';
import type { Env } from '../util/paths.js';
import { kernelFields, rootImage } from './create.js';
import { launchWorkspace, pruneUnusedRootImages, stopSupervisor, waitUntil } from './lifecycle.js';
import { syncPorts } from './live.js';
import { createRestorePoint } from './restore-points.js';
import { FILES, readRecord, readRun, supervisorAlive, writeRecord, type AppliedSource, type WorkspaceImage, type WorkspaceRecord, type WorkspaceRef } from './state.js';

/**
 * Changing an existing workspace to a new spec, one kind of change at a
 * time, for `cs apply`: the record (what later boots and commands read),
 * the port forwards, and the root images. Each function re-reads the record
 * under the workspace's lock, so it acts on what is there, not on what a
 * plan saw earlier.
 */

async function mustRead(ws: WorkspaceRef): Promise<WorkspaceRecord> {
  const record = await readRecord(ws.dir);
  if (!record) throw new InputError(`workspace ${ws.sandbox}/${ws.workspace} does not exist`, { code: 'NOT_FOUND' });
  return record;
}

function lock<T>(ws: WorkspaceRef, purpose: string, fn: () => Promise<T>): Promise<T> {
  return withLock(join(ws.dir, FILES.lock), { purpose: `${purpose} ${ws.sandbox}/${ws.workspace}` }, fn);
}

/**
 * Records a new spec and what follows from it without a boot: cpus, memory
 * and kernel (in effect at the next start), and where it came from. The
 * disk size is not changed: a disk is never shrunk or grown under its files.
 */
export async function recordSpec(ws: WorkspaceRef, spec: Workspace, applied: AppliedSource, options: { env?: Env; onPhase?: (phase: string) => void } = {}): Promise<WorkspaceRecord> {
  // The kernel is resolved (maybe pulled) before the lock: that can take a while.
  const before = await mustRead(ws);
  const kernel = JSON.stringify(before.spec.kernel) === JSON.stringify(spec.kernel) ? undefined : await kernelFields(spec, options);
  return lock(ws, 'updating', async () => {
    const record = await mustRead(ws);
    const next: WorkspaceRecord = {
      ...record,
      file: applied.file,
      spec: { ...spec, resources: { ...spec.resources, diskBytes: record.spec.resources.diskBytes } },
      cpus: spec.resources.cpus,
      memoryMiB: spec.resources.memoryMiB,
      ...(kernel ?? {}),
      applied,
    };
    await writeRecord(ws.dir, next);
    return next;
  });
}

/** Makes the record's (and, when it runs, QEMU's) port forwards match the spec's `ports`. */
export async function updatePorts(ws: WorkspaceRef, spec: Workspace, options: { env?: Env } = {}): Promise<string[]> {
  return lock(ws, 'changing the ports of', async () => {
    const record = await mustRead(ws);
    const running = supervisorAlive(await readRun(ws.dir));
    const { ports, changed } = await syncPorts(ws, record, spec, { running, ...(options.env ? { env: options.env } : {}) });
    await writeRecord(ws.dir, { ...record, ports });
    return changed;
  });
}

/** Whether the record's `ports` (those from the definition) are the spec's. */
export function portsMatch(record: WorkspaceRecord, spec: Workspace): boolean {
  const have = record.ports.filter((p) => !p.adhoc).map((p) => `${p.name}:${p.guestPort}/${p.protocol}`);
  const want = spec.ports.map((p) => `${p.name}:${p.port}/${p.protocol}`);
  return JSON.stringify(have) === JSON.stringify(want);
}

/** A snapshot the root keeps, found again by its tag (its digest is read from the store, as it is now). */
function fromRecord(image: WorkspaceImage): ResolvedSnapshot {
  return { reference: image.reference, kind: image.kind, ...(image.snapshot ? { snapshot: image.snapshot } : {}) };
}

/**
 * The snapshots a workspace's root is rebuilt from: the spec's base when
 * `base`, the spec's home when `home` (else those it has now), and its
 * personal snapshot by name. Kept snapshots are found by their tags, and a
 * store keeps one version per tag: one that has a newer version since comes
 * back at that version (the plan says so).
 */
export async function rootSnapshots(record: WorkspaceRecord, spec: Workspace, options: { base: boolean; home: boolean; env?: Env }): Promise<ResolvedSnapshot[]> {
  const images = record.images ?? [];
  const have = (kind: WorkspaceImage['kind']): WorkspaceImage | undefined => images.find((i) => i.kind === kind);
  const out: ResolvedSnapshot[] = [];
  const oldBase = have('base');
  if (options.base || !oldBase) {
    if (!spec.baseSnapshot) throw new InputError(`workspace ${record.sandbox}/${record.name} has no base_snapshot`);
    out.push(await resolveSnapshot(spec.baseSnapshot, 'base', options.env));
  } else {
    out.push(fromRecord(oldBase));
  }
  const oldHome = have('home');
  if (options.home) {
    if (spec.homeSnapshot) out.push(await resolveSnapshot(spec.homeSnapshot, 'home', options.env));
  } else if (oldHome) {
    out.push(fromRecord(oldHome));
  }
  const personal = have('personal');
  if (personal?.snapshot) {
    const resolved = await resolvePersonal(personal.snapshot, options.env).catch(() => undefined);
    // A personal snapshot deleted since is dropped from the root rather than failing it.
    if (resolved) out.push(resolved);
  }
  return out;
}

/**
 * The restore point taken before a root refresh drops the disk's changes
 * outside /home. One an interrupted try took already is kept when nothing
 * was written since (the disk's top is still the empty overlay made on
 * it); otherwise a new one is taken beside it (a point costs a header
 * write). Returns the point's name.
 */
async function pointBeforeRoot(ws: WorkspaceRef, generation: number, envOpt: { env?: Env }): Promise<string> {
  const record = await mustRead(ws);
  const disk = record.disk;
  let name = `before-root-${generation}`;
  const earlier = (record.restorePoints ?? []).find((p) => p.name === name);
  if (earlier) {
    if (earlier.state === 'ready' && disk && disk.pristine === disk.top && disk.parents[disk.top] === earlier.layer) return name;
    name = `${name}-${Date.now().toString(36)}`;
  }
  await createRestorePoint({ target: `${ws.sandbox}/${ws.workspace}`, name, ...envOpt });
  return name;
}

/**
 * Rebuilds a workspace's root from new snapshots and boots it on them.
 * With `base` the root is refreshed: a restore point of the disk is taken
 * (`before-root-N`) and the next boot drops the disk's changes outside /home
 * (see guest/init.sh), as they belong to the old base. Without it (a new
 * home or personal snapshot) the disk is kept whole: its files stay on top
 * of the new images. Returns the restore point's name when one was taken.
 */
export async function rebuildRoot(
  ws: WorkspaceRef,
  spec: Workspace,
  options: { base: boolean; home: boolean; wait?: boolean; env?: Env; onPhase?: (phase: string) => void },
): Promise<{ restorePoint?: string }> {
  const envOpt = options.env ? { env: options.env } : {};
  const before = await mustRead(ws);
  // The new images are built while the workspace still runs: it is down only for the restart.
  const root = await rootImage(spec, await rootSnapshots(before, spec, options), { ...envOpt, ...(options.onPhase ? { onPhase: options.onPhase } : {}) });
  const wasRunning = await lock(ws, 'stopping', async () => {
    const running = supervisorAlive(await readRun(ws.dir));
    if (running) await stopSupervisor(ws.dir, { graceful: true });
    return running;
  });
  let restorePoint: string | undefined;
  const generation = (before.rootGeneration ?? 0) + (options.base ? 1 : 0);
  if (options.base) restorePoint = await pointBeforeRoot(ws, generation, envOpt);
  const record = await lock(ws, 'updating', async () => {
    const current = await mustRead(ws);
    const next: WorkspaceRecord = { ...current, ...root, rootGeneration: generation };
    await writeRecord(ws.dir, next);
    return next;
  });
  if (wasRunning || record.desired === 'running') {
    await launchWorkspace(ws, envOpt);
    await waitUntil(ws.dir, options.wait ? 'ready' : 'booted', envOpt);
  }
  await pruneUnusedRootImages({ ...envOpt, ...(options.onPhase ? { onPhase: options.onPhase } : {}) });
  return restorePoint ? { restorePoint } : {};
}
