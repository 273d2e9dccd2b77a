import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { SNAPSHOT_NAME, SNAPSHOT_NAME_RULE } from '../definition/names.js';
import { InputError, UsageError, VmError } from '../util/errors.js';
import { withLock } from '../util/lock.js';
import type { Env } from '../util/paths.js';
import { activeCommands, describeCommands } from './busy.js';
import { openAgent, requestDiskSwitch } from './control.js';
import { allocated, chainOf, collectGarbage, DISK_DIR, freezeTop, overlayOn, prepareDisk, prunedState, sealed } from './disk.js';
import { killOrphanQemu, resolveWorkspace, startWorkspace, stopSupervisor, type LifecycleOptions } from './lifecycle.js';
import { freeze } from './snapshots.js';
import { displayName, FILES, readRecord, readRun, rootOf, supervisorAlive, writeRecord, type RestorePoint, type WorkspaceRecord, type WorkspaceRef } from './state.js';
import { checkQuota, OVERLAY_BYTES } from './usage.js';

/**
 * Restore points: the whole disk of a workspace at a moment, kept as a
 * frozen file of its disk chain (see disk.ts), so taking and restoring one
 * costs the same on a full disk as on an empty one. Memory is not kept: a
 * restored workspace boots.
 *
 * On a running workspace the guest's file system is frozen (flushed and
 * held still, as for a snapshot) while the VM switches to a new overlay,
 * so the point is what a clean unmount would have left.
 */

export interface RestorePointInfo extends RestorePoint {
  /** Bytes written between the previous point and this one (what its frozen file holds). */
  bytes: number;
}

async function checkPointName(name: string): Promise<void> {
  if (!SNAPSHOT_NAME.test(name)) throw new UsageError(`invalid restore point name "${name}": ${SNAPSHOT_NAME_RULE.replace('a snapshot name', 'a name')}`);
}

function label(ws: WorkspaceRef, record: WorkspaceRecord): string {
  return displayName(ws, record.standalone);
}

async function mustRead(ws: WorkspaceRef): Promise<WorkspaceRecord> {
  const record = await readRecord(ws.dir);
  if (!record) throw new InputError(`workspace ${ws.sandbox}/${ws.workspace} does not exist`, { code: 'NOT_FOUND' });
  return record;
}

function findPoint(record: WorkspaceRecord, ws: WorkspaceRef, name: string): RestorePoint {
  const point = (record.restorePoints ?? []).find((p) => p.name.toLowerCase() === name.toLowerCase());
  if (!point) {
    const names = (record.restorePoints ?? []).map((p) => p.name);
    throw new InputError(`workspace ${label(ws, record)} has no restore point "${name}"`, {
      code: 'NOT_FOUND',
      suggestions: [names.length > 0 ? `it has: ${names.join(', ')}` : `take one with \`cs workspace snapshots create ${label(ws, record)} --name NAME\``],
    });
  }
  return point;
}

function withWorkspaceLock<T>(ws: WorkspaceRef, purpose: string, fn: () => Promise<T>): Promise<T> {
  return withLock(join(ws.dir, FILES.lock), { purpose }, fn);
}

export async function createRestorePoint(options: LifecycleOptions & { target: string; name: string }): Promise<RestorePointInfo> {
  await checkPointName(options.name);
  const ws = await resolveWorkspace(options.target, options.env);
  const what = `restore point ${options.name} of ${options.target}`;
  await checkQuota({ adding: OVERLAY_BYTES, what: `taking ${what}`, ...(options.env ? { env: options.env } : {}) });
  const point = await withWorkspaceLock(ws, `taking ${what}`, async () => {
    let record = await mustRead(ws);
    if ((record.restorePoints ?? []).some((p) => p.name.toLowerCase() === options.name.toLowerCase())) {
      throw new InputError(`workspace ${label(ws, record)} already has a restore point "${options.name}"`, {
        code: 'EXISTS',
        suggestions: [`delete it first with \`cs workspace snapshots delete ${label(ws, record)} ${options.name}\`, or pick another name`],
      });
    }
    const runRecord = await readRun(ws.dir);
    if (supervisorAlive(runRecord)) return takeLive(ws, record, options);
    // A VM whose supervisor died still writes to the top: it is stopped before the top is frozen.
    await killOrphanQemu(ws.dir, runRecord);
    record = await prepareDisk(ws.dir, record, { boot: false });
    const disk = record.disk as NonNullable<WorkspaceRecord['disk']>;
    const { state, frozen } = await freezeTop(ws.dir, disk, record.diskBytes);
    const taken: RestorePoint = { name: options.name, layer: frozen, createdAt: new Date().toISOString(), state: 'ready', live: false, root: rootOf(record) };
    await writeRecord(ws.dir, { ...record, disk: state, restorePoints: [...(record.restorePoints ?? []), taken] });
    await sealed(ws.dir, frozen);
    return taken;
  });
  return { ...point, bytes: (await allocated(join(ws.dir, DISK_DIR, point.layer)))?.bytes ?? 0 };
}

/**
 * A restore point of a running workspace. The record names the new top
 * and the point (still `creating`) before QEMU switches: a crash before
 * the switch leaves the new top an empty overlay on a file the VM kept
 * writing, which reads exactly as that file did, so nothing is lost; the
 * point stays `creating` and cannot be restored.
 */
async function takeLive(ws: WorkspaceRef, record: WorkspaceRecord, options: LifecycleOptions & { name: string }): Promise<RestorePoint> {
  const name = label(ws, record);
  const disk = record.disk;
  if (!disk) {
    throw new VmError(`workspace ${name} was started by an older cs, whose disk cannot take restore points while it runs`, {
      code: 'NEEDS_RESTART',
      suggestions: [`stop and start it once (\`cs workspace stop ${name}\`, \`cs workspace start ${name}\`), or take the point while it is stopped`],
    });
  }
  options.onPhase?.(`freeze ${name}'s disk`);
  const thaw = await freeze(await openAgent(ws.dir, name), name);
  const old = disk.top;
  let top: string | undefined;
  const taken: RestorePoint = { name: options.name, layer: old, createdAt: new Date().toISOString(), state: 'creating', live: true, root: rootOf(record) };
  try {
    top = await overlayOn(ws.dir, old, record.diskBytes);
    await writeRecord(ws.dir, { ...record, disk: { top, parents: { ...disk.parents, [top]: old } }, restorePoints: [...(record.restorePoints ?? []), taken] });
    options.onPhase?.('switch the disk to a new overlay');
    await requestDiskSwitch(ws.dir, top).catch(async (error: Error) => {
      // An error does not prove QEMU did not switch (the supervisor may fail after it did): the record keeps
      // the new top, which is right either way (see above), and only the point is dropped.
      await writeRecord(ws.dir, { ...record, disk: { top: top as string, parents: { ...disk.parents, [top as string]: old } } });
      throw new VmError(`workspace ${name}: QEMU did not confirm the switch to a new overlay, so no restore point was taken: ${error.message}`, { code: 'RESTORE_POINT_FAILED', cause: error });
    });
  } catch (error) {
    await thaw().catch(() => undefined);
    throw error;
  }
  const switched = { ...record, disk: { top, parents: { ...disk.parents, [top]: old } } };
  try {
    await thaw();
  } catch (error) {
    // The guest thawed before the switch was done: the file may hold a half-written moment. The disk itself is fine.
    await writeRecord(ws.dir, { ...switched, restorePoints: record.restorePoints ?? [] });
    throw error;
  }
  const ready = { ...taken, state: 'ready' as const };
  await writeRecord(ws.dir, { ...switched, restorePoints: [...(record.restorePoints ?? []), ready] });
  await sealed(ws.dir, old);
  return ready;
}

export async function listRestorePoints(options: { target: string; env?: Env }): Promise<{ workspace: string; restorePoints: RestorePointInfo[] }> {
  const ws = await resolveWorkspace(options.target, options.env);
  const record = await mustRead(ws);
  const out: RestorePointInfo[] = [];
  for (const p of record.restorePoints ?? []) out.push({ ...p, bytes: (await allocated(join(ws.dir, DISK_DIR, p.layer)))?.bytes ?? 0 });
  return { workspace: label(ws, record), restorePoints: out };
}

/**
 * Puts the disk back as it was at a restore point: a new empty overlay on
 * the point's file becomes the top, and what was written since is
 * dropped. A running workspace is refused unless `force`, which stops it
 * first and starts it again after.
 */
export async function restoreRestorePoint(options: LifecycleOptions & { target: string; name: string; force?: boolean }): Promise<{ workspace: string; restored: string; restarted: boolean }> {
  const ws = await resolveWorkspace(options.target, options.env);
  const restart = await withWorkspaceLock(ws, `restoring ${options.target} to ${options.name}`, async () => {
    let record = await mustRead(ws);
    const point = findPoint(record, ws, options.name);
    if (point.state !== 'ready') {
      throw new InputError(`restore point "${point.name}" of ${label(ws, record)} was never completed (cs stopped while taking it)`, {
        code: 'INCOMPLETE',
        suggestions: [`delete it with \`cs workspace snapshots delete ${label(ws, record)} ${point.name}\``],
      });
    }
    const runRecord = await readRun(ws.dir);
    const running = supervisorAlive(runRecord);
    const busy = await activeCommands(ws.dir);
    if (busy.length > 0) {
      throw new InputError(`commands are running in ${label(ws, record)}, and restoring would replace the disk under them: ${describeCommands(busy)}`, {
        code: 'BUSY',
        suggestions: ['wait for them to finish (or stop them), then restore'],
      });
    }
    if (running && !options.force) {
      throw new InputError(`workspace ${label(ws, record)} is running; restoring replaces its disk, so it must be stopped first`, {
        code: 'RUNNING',
        suggestions: [`stop it with \`cs workspace stop ${label(ws, record)}\`, or pass --force to stop it, restore and start it again`],
      });
    }
    const missing = record.disk ? chainOf(record.disk, point.layer).filter((f) => !existsSync(join(ws.dir, DISK_DIR, f))) : [];
    if (missing.length > 0) throw new VmError(`restore point "${point.name}" of ${label(ws, record)} is damaged: ${missing.join(', ')} missing`, { code: 'DISK_MISSING' });
    if (running) {
      options.onPhase?.(`stop ${label(ws, record)}`);
      await stopSupervisor(ws.dir, { graceful: true });
    } else await killOrphanQemu(ws.dir, runRecord);
    record = await prepareDisk(ws.dir, record, { boot: false });
    const disk = record.disk as NonNullable<WorkspaceRecord['disk']>;
    const top = await overlayOn(ws.dir, point.layer, record.diskBytes);
    const next = { ...record, ...pointRoot(point, record, options.onPhase), disk: { top, parents: { ...disk.parents, [top]: point.layer }, pristine: top } };
    const pruned = { ...next, disk: prunedState(next) ?? next.disk };
    await writeRecord(ws.dir, pruned);
    await collectGarbage(ws.dir, pruned);
    return running;
  });
  if (restart) await startWorkspace(ws, options);
  const record = await mustRead(ws);
  return { workspace: label(ws, record), restored: options.name, restarted: restart };
}

/**
 * The root a point's disk goes back onto: the one it was taken on, so that
 * its changes outside /home are neither shadowed by nor dropped for another
 * base (see rootGeneration). When that root's image is gone, the disk goes
 * on the current root, keeping the point's generation so nothing is dropped.
 */
function pointRoot(point: RestorePoint, record: WorkspaceRecord, warn?: (line: string) => void): Partial<WorkspaceRecord> {
  const root = point.root;
  if (!root) return {};
  if (root.lowers.every((file) => existsSync(file))) {
    return { lowers: root.lowers, ...(root.images ? { images: root.images } : {}), chainId: root.chainId, rootGeneration: root.generation };
  }
  if (root.generation !== (record.rootGeneration ?? 0)) warn?.(`the root image restore point "${point.name}" was taken on is gone; its disk goes on the current root`);
  return { rootGeneration: root.generation };
}

export async function deleteRestorePoint(options: { target: string; name: string; env?: Env }): Promise<{ workspace: string; deleted: string; freedBytes: number }> {
  const ws = await resolveWorkspace(options.target, options.env);
  return withWorkspaceLock(ws, `deleting restore point ${options.name} of ${options.target}`, async () => {
    const record = await mustRead(ws);
    const point = findPoint(record, ws, options.name);
    const next = { ...record, restorePoints: (record.restorePoints ?? []).filter((p) => p !== point) };
    const pruned = { ...next, ...(next.disk ? { disk: prunedState(next) ?? next.disk } : {}) };
    const before = new Map<string, number>();
    // A file a clone also links frees nothing when this workspace lets go of it.
    for (const f of Object.keys(record.disk?.parents ?? {})) {
      const use = await allocated(join(ws.dir, DISK_DIR, f));
      before.set(f, use && use.links === 1 ? use.bytes : 0);
    }
    await writeRecord(ws.dir, pruned);
    const removed = await collectGarbage(ws.dir, pruned);
    return { workspace: label(ws, record), deleted: point.name, freedBytes: removed.reduce((sum, f) => sum + (before.get(f) ?? 0), 0) };
  });
}
