import { InputError, UsageError } from '../util/errors.js';
import type { Env } from '../util/paths.js';
import {
  checkSnapshotName,
  findSnapshot,
  listSnapshots,
  recordsDir,
  personalDefault,
  readRecordAt,
  removeRecordAt,
  withCatalogue,
  writePersonalDefault,
  type SnapshotKind,
  type SnapshotRecord,
} from './catalogue.js';

/** `cs snapshot list|show|remove` and `cs snapshot personal get-default|set-default`. */

export interface SnapshotSummary {
  name: string;
  kind: SnapshotKind;
  size: number;
  layers: number;
  created: string;
  /** The base it extends (a snapshot's name, or an image). */
  base?: string;
  digest: string;
  /** Personal: the user's default. */
  default: boolean;
  pushed?: string;
}

function summaryOf(record: SnapshotRecord, defaultKey: string | undefined): SnapshotSummary {
  const base = record.parent ? (record.parent.name ?? record.parent.reference) : undefined;
  return {
    name: record.name,
    kind: record.kind,
    size: record.size,
    layers: record.layers.length,
    created: record.created,
    ...(base ? { base } : {}),
    digest: record.digest,
    default: record.kind === 'personal' && record.name.toLowerCase() === defaultKey,
    ...(record.pushed ? { pushed: record.pushed } : {}),
  };
}

export async function listSnapshotSummaries(options: { env?: Env } = {}): Promise<SnapshotSummary[]> {
  const defaultKey = await personalDefault(options.env);
  return (await listSnapshots(options.env)).map((r) => summaryOf(r, defaultKey));
}

/** Which namespace a name is looked up in: either (the default), the shared one, or the user's own. */
export type Namespace = 'any' | 'shared' | 'personal';

/**
 * The snapshot a command names. A name that is both a shared snapshot and
 * one of the user's personal ones is ambiguous unless the namespace is given:
 * removing the team's snapshot when one meant one's own must not happen.
 */
export async function requireSnapshot(name: string, env?: Env, namespace: Namespace = 'any'): Promise<SnapshotRecord> {
  const shared = namespace === 'personal' ? undefined : await findSnapshot(name, env, ['base', 'home']);
  const personal = namespace === 'shared' ? undefined : await findSnapshot(name, env, ['personal']);
  if (shared && personal) {
    throw new UsageError(`"${name}" is both a ${shared.kind} snapshot and one of your personal snapshots`, { suggestions: ['add --personal or --shared to say which'] });
  }
  const record = shared ?? personal;
  if (!record) throw new InputError(`no ${namespace === 'any' ? '' : `${namespace} `}snapshot "${name}"`, { code: 'NOT_FOUND', suggestions: ['see `cs snapshot list`'] });
  return record;
}

export interface SnapshotDetails extends SnapshotSummary {
  reference: string;
  layerList: SnapshotRecord['layers'];
  source: SnapshotRecord['source'];
  createdBy: SnapshotRecord['createdBy'];
  includes?: string[];
  excludes?: string[];
}

export async function snapshotDetails(options: { name: string; namespace?: Namespace; env?: Env }): Promise<SnapshotDetails> {
  const record = await requireSnapshot(options.name, options.env, options.namespace);
  return {
    ...summaryOf(record, await personalDefault(options.env)),
    reference: record.reference,
    layerList: record.layers,
    source: record.source,
    createdBy: record.createdBy,
    ...(record.includes ? { includes: record.includes } : {}),
    ...(record.excludes ? { excludes: record.excludes } : {}),
  };
}

export interface RemoveSnapshotOptions {
  name: string;
  force?: boolean;
  /** Who uses it (definitions and workspaces), as the caller finds out. */
  usedBy?: (record: SnapshotRecord) => Promise<readonly string[]>;
  namespace?: Namespace;
  env?: Env;
}

export async function removeSnapshot(options: RemoveSnapshotOptions): Promise<{ removed: string; kind: SnapshotKind; wasUsedBy: string[] }> {
  const record = await requireSnapshot(options.name, options.env, options.namespace);
  const users = [...((await options.usedBy?.(record)) ?? [])];
  if (users.length > 0 && !options.force) {
    throw new InputError(`snapshot "${record.name}" is in use by ${users.join(', ')}`, {
      code: 'SNAPSHOT_IN_USE',
      suggestions: ['remove those first, or add -f to remove the snapshot anyway (running workspaces keep their images)'],
    });
  }
  const key = record.name.toLowerCase();
  await withCatalogue(record.kind, options.env, `removing snapshot ${record.name}`, async (location) => {
    // Re-read under the lock: a `create -f` meanwhile may have replaced it, and that one was not checked for users.
    const current = await readRecordAt(location.dir, key);
    if (current?.digest !== record.digest) throw new InputError(`snapshot "${record.name}" changed while it was being removed; try again`, { code: 'SNAPSHOT_CHANGED' });
    const store = await location.store();
    await removeRecordAt(location.dir, key);
    await store.untag([record.reference]);
    if (record.kind === 'personal') {
      if ((await personalDefault(options.env)) === key) await writePersonalDefault(location.dir, undefined);
      // A private store has no other user: what no personal snapshot needs goes now.
      await store.prune();
    }
  });
  return { removed: record.name, kind: record.kind, wasUsedBy: users };
}

export async function getPersonalDefault(options: { env?: Env } = {}): Promise<{ default: string | null }> {
  const key = await personalDefault(options.env);
  if (key === undefined) return { default: null };
  const dir = recordsDir('personal', options.env);
  const record = dir === undefined ? undefined : await readRecordAt(dir, key);
  return { default: record ? record.name : null };
}

/** NAME or NONE (any case) to have no default. */
export async function setPersonalDefault(options: { name: string; env?: Env }): Promise<{ default: string | null }> {
  if (options.name.toUpperCase() === 'NONE') {
    await withCatalogue('personal', options.env, 'clearing the default personal snapshot', (location) => writePersonalDefault(location.dir, undefined));
    return { default: null };
  }
  const key = checkSnapshotName(options.name);
  return withCatalogue('personal', options.env, 'setting the default personal snapshot', async (location) => {
    const record = await readRecordAt(location.dir, key);
    if (!record) {
      const shared = await findSnapshot(options.name, options.env, ['base', 'home']);
      throw new InputError(shared ? `"${shared.name}" is a ${shared.kind} snapshot; only personal snapshots can be the default` : `you have no personal snapshot "${options.name}"`, {
        code: 'NOT_FOUND',
        suggestions: ['see `cs snapshot list`'],
      });
    }
    await writePersonalDefault(location.dir, key);
    return { default: record.name };
  });
}
