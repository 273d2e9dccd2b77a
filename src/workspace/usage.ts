import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { loadConfig } from '../oci/config.js';
import { InputError } from '../util/errors.js';
import type { Env } from '../util/paths.js';
import { formatSize } from '../util/progress.js';
import { allocated, chainOf, DISK_DIR } from './disk.js';
import { displayName, listWorkspaces, readRecord } from './state.js';

/**
 * `cs usage` and the cap on what one user's workspaces hold.
 *
 * What counts is what the host really stores: allocated blocks of every
 * file in the workspaces' folders (disks, restore points, logs), not the
 * disks' virtual sizes, which are sparse. A file hard linked into several
 * workspaces (a clone shares its template's frozen disk files) counts
 * once in the total, and is shown as shared in each.
 *
 * The cap is checked before every operation that adds a workspace, a
 * restore point or imported files. A running workspace can still write
 * until its own disk is full; the next operation that adds something is
 * then refused until space is freed.
 */

export interface WorkspaceUsage {
  /** SANDBOX/WORKSPACE, or the name alone for a workspace made by `cs workspace create`. */
  workspace: string;
  /** Every byte its folder holds, shared files included. */
  bytes: number;
  /** Of those, the bytes of files other workspaces link too. */
  sharedBytes: number;
  /** Of those, the bytes only its restore points need (freed by deleting them). */
  restorePointBytes: number;
  restorePoints: number;
  /** The disk's size as the workspace sees it. */
  diskBytes: number;
}

export interface UsageReport {
  workspaces: WorkspaceUsage[];
  /** What all workspaces hold together, each shared file once. */
  totalBytes: number;
  quotaBytes: number;
  /** The config file the cap comes from. */
  config: string;
}

interface FileUse {
  path: string;
  bytes: number;
  id: string;
}

async function filesUnder(dir: string): Promise<FileUse[]> {
  const out: FileUse[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await filesUnder(path)));
    else {
      const use = await allocated(path);
      if (use) out.push({ path, ...use });
    }
  }
  return out;
}

export async function usageReport(env?: Env): Promise<UsageReport> {
  const config = await loadConfig(env ? { env } : {});
  const perWorkspace: { use: WorkspaceUsage; files: FileUse[]; restoreOnly: Set<string> }[] = [];
  const holders = new Map<string, number>();
  for (const ref of await listWorkspaces(env)) {
    const record = await readRecord(ref.dir).catch(() => undefined);
    const files = await filesUnder(ref.dir);
    const restoreOnly = new Set<string>();
    if (record?.disk) {
      const live = new Set(chainOf(record.disk, record.disk.top));
      for (const point of record.restorePoints ?? []) {
        for (const f of chainOf(record.disk, point.layer)) if (!live.has(f)) restoreOnly.add(join(ref.dir, DISK_DIR, f));
      }
    }
    for (const id of new Set(files.map((f) => f.id))) holders.set(id, (holders.get(id) ?? 0) + 1);
    perWorkspace.push({
      use: {
        workspace: displayName(ref, record?.standalone),
        bytes: 0,
        sharedBytes: 0,
        restorePointBytes: 0,
        restorePoints: record?.restorePoints?.length ?? 0,
        diskBytes: record?.diskBytes ?? 0,
      },
      files,
      restoreOnly,
    });
  }
  const counted = new Set<string>();
  let totalBytes = 0;
  for (const { use, files, restoreOnly } of perWorkspace) {
    for (const file of files) {
      use.bytes += file.bytes;
      if ((holders.get(file.id) ?? 0) > 1) use.sharedBytes += file.bytes;
      if (restoreOnly.has(file.path)) use.restorePointBytes += file.bytes;
      if (!counted.has(file.id)) {
        counted.add(file.id);
        totalBytes += file.bytes;
      }
    }
  }
  return { workspaces: perWorkspace.map((w) => w.use), totalBytes, quotaBytes: config.workspaces.quotaBytes, config: config.file };
}

/** What mke2fs writes for an empty disk of this size (measured: about 4 MiB for 10 GiB), rounded up. */
export function freshDiskBytes(diskBytes: number): number {
  return 1024 ** 2 + Math.ceil(diskBytes / 2048);
}

/** What a new qcow2 overlay costs before anything is written to it (measured: 196 KiB). */
export const OVERLAY_BYTES = 256 * 1024;

/** Refuses, before it starts, an operation that would take the user's workspaces over their cap. */
export async function checkQuota(options: { adding: number; what: string; env?: Env }): Promise<UsageReport> {
  const report = await usageReport(options.env);
  if (report.totalBytes + options.adding > report.quotaBytes) {
    throw new InputError(
      `${options.what} would exceed your workspace quota: your workspaces hold ${formatSize(report.totalBytes)}, ` +
        `this adds about ${formatSize(options.adding)}, and the cap is ${formatSize(report.quotaBytes)}`,
      {
        code: 'QUOTA_EXCEEDED',
        suggestions: [
          'see what takes the space with `cs usage`',
          'free some: `cs workspace snapshots delete NAME POINT` or `cs workspace remove NAME`',
          `or raise \`workspaces.quota\` in ${report.config}`,
        ],
      },
    );
  }
  return report;
}
