import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/fs.js';
import { isAlive } from '../util/lock.js';
import type { WorkspaceRecord } from '../workspace/state.js';
import { sha256 } from './desired.js';

/**
 * What the reconciler says about each workspace it works on, in the
 * workspace's folder (`reconcile.json`, written only by the reconciler, as
 * `workspace.json` is by commands and `run.json` by the supervisor), and the
 * one-line answer `cs sandbox list` gives: does it match its definition?
 */

export const SYNC_FILE = 'reconcile.json';

export interface SyncRecord {
  state: 'applying' | 'retrying' | 'synced' | 'failed';
  /** The reconciler's pid: `applying` from a process that is gone was interrupted. */
  pid: number;
  at: string;
  attempts: number;
  reason?: string;
  /** Changes the definition makes that are deliberately not applied to this workspace. */
  held?: string[];
}

export async function readSync(dir: string): Promise<SyncRecord | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, SYNC_FILE), 'utf8')) as SyncRecord;
  } catch {
    return undefined;
  }
}

export async function writeSync(dir: string, sync: Omit<SyncRecord, 'pid' | 'at'>): Promise<void> {
  await writeFileAtomic(join(dir, SYNC_FILE), JSON.stringify({ ...sync, pid: process.pid, at: new Date().toISOString() }, null, 2) + '\n').catch(() => undefined);
}

export type SyncState = 'in-sync' | 'reconciling' | 'failed' | 'out-of-date' | 'interrupted' | 'definition-gone' | 'unmanaged';

export interface SyncSummary {
  state: SyncState;
  /** The definition version it is at: the git commit, else the file's sha256 (12 characters). */
  version?: string;
  file?: string;
  reason?: string;
  held?: string[];
}

export async function syncSummary(dir: string, record: WorkspaceRecord): Promise<SyncSummary> {
  const sync = await readSync(dir);
  const applied = record.applied;
  const version = applied ? (applied.commit ?? applied.sha256).slice(0, 12) : undefined;
  const base = { ...(version ? { version } : {}), ...(applied ? { file: applied.file } : {}), ...(sync?.held?.length ? { held: sync.held } : {}) };
  if (sync && (sync.state === 'applying' || sync.state === 'retrying')) {
    if (isAlive(sync.pid)) return { ...base, state: 'reconciling', ...(sync.reason ? { reason: sync.reason } : {}) };
    return { ...base, state: 'interrupted', reason: 'the reconciler stopped while applying; run `cs apply` again' };
  }
  if (sync?.state === 'failed') return { ...base, state: 'failed', ...(sync.reason ? { reason: sync.reason } : {}) };
  if (!applied) return { state: 'unmanaged' };
  const bytes = await readFile(applied.file).catch(() => undefined);
  if (!bytes) return { ...base, state: 'definition-gone', reason: `${applied.file} is gone` };
  if (!applied.commit && sha256(bytes) !== applied.sha256) return { ...base, state: 'out-of-date', reason: `${applied.file} changed since it was applied` };
  return { ...base, state: 'in-sync' };
}

/** A short cell for tables. */
export function syncCell(s: SyncSummary): string {
  switch (s.state) {
    case 'unmanaged':
      return '-';
    case 'in-sync':
      return `in sync @${s.version ?? '?'}${s.held?.length ? ` (held: ${s.held.join(', ')})` : ''}`;
    case 'failed':
      return `failed: ${s.reason ?? 'unknown'}`;
    default:
      return s.reason ? `${s.state}: ${s.reason}` : s.state;
  }
}
