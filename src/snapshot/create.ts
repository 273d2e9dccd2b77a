import { stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../oci/config.js';
import type { ContentStore } from '../oci/store.js';
import { formatReference } from '../oci/reference.js';
import { SNAPSHOT_NAME } from '../definition/names.js';
import { BASE_SNAPSHOT_EXCLUDES, excludedBy } from '../layers/overlay-upper.js';
import { hostEntries, packEntries } from '../layers/pack.js';
import type { TreeEntry } from '../layers/tree-entry.js';
import { InputError, UsageError } from '../util/errors.js';
import type { Env } from '../util/paths.js';
import {
  checkSnapshotName,
  currentUser,
  findSnapshot,
  listRecordsAt,
  locationOf,
  personalDefault,
  readRecordAt,
  recordsDir,
  tagOf,
  withCatalogue,
  writePersonalDefault,
  writeRecordAt,
  type SnapshotKind,
  type SnapshotRecord,
} from './catalogue.js';
import { readParent, storeLayer, writeSnapshotImage, type ParentImage } from './image-build.js';
import { readSelection, selectedEntries } from './includes.js';

/**
 * `cs snapshot create`: one new layer, from a workspace's changed files, a
 * folder, or a home folder's selection, stored as an image and named in
 * the catalogue.
 *
 * Determinism policy (so an unchanged snapshot re-created stores nothing
 * new): entries depth-first in bytewise name order; mtimes kept to the
 * second, clamped to SOURCE_DATE_EPOCH when it is set; no atime or ctime;
 * home and personal files owned by the workspace owner (uid and gid 1000)
 * whoever made them, and their folders dated 0 (or SOURCE_DATE_EPOCH), since
 * a folder's mtime moves when anything in it changes, selected or not; gzip
 * at level 6 with no name or time in its header; no creation time and no
 * snapshot name in the image (the catalogue keeps those).
 */

/**
 * Set (to SANDBOX/WORKSPACE) in the environment of a `cs snapshot` the host
 * runs because a workspace asked for it: such a snapshot may replace only
 * snapshots that workspace made, and never becomes a default by itself.
 */
export const GUEST_REQUEST_ENV = 'CS_GUEST_REQUEST';

/** The uid and gid of the workspace owner account (see workspace/steps.ts). */
export const OWNER_IDS = { uid: 1000, gid: 1000 } as const;

export interface LayerSource {
  /** What the layer holds, in pack order. */
  entries: AsyncIterable<TreeEntry>;
  /** The entries are an overlayfs upper (whiteouts and opaque folders to convert). */
  overlay?: boolean;
  /** Where the files come from, for the catalogue. */
  describe: SnapshotRecord['source'];
}

export interface CreateSnapshotOptions {
  name: string;
  kind: SnapshotKind;
  /** Replace an existing snapshot of that name. */
  force?: boolean;
  /** Personal: make it the default even when there already is one. */
  setPersonalDefault?: boolean;
  /** Base: the image (or catalogue name) the new layer goes on; none makes a one-layer base. */
  parent?: string;
  /** Base: a folder whose contents are the new layer (`--from-dir`). */
  fromDir?: string;
  /** The layer's files, when the caller (a workspace) reads them itself. */
  source?: LayerSource;
  /** Called once the new layer is stored (a workspace thaws its disk then). */
  afterLayer?: () => Promise<void>;
  /** The parent as already resolved by the caller (a workspace's own base image). */
  parentImage?: { reference: string; digest?: string; name?: string };
  /** Home and personal: the home folder to read (default $HOME). */
  home?: string;
  /** Home and personal: the lists, already read and checked (a workspace's); default: read from `home`. */
  selection?: { includes: string[]; excludes: string[] };
  /** How to describe `home` in the catalogue (default its path). */
  homeLabel?: string;
  /** The workspace whose home `home` holds a copy of (SANDBOX/WORKSPACE). */
  homeWorkspace?: string;
  env?: Env;
  onPhase?: (phase: string) => void;
}

export interface CreateSnapshotResult {
  name: string;
  kind: SnapshotKind;
  reference: string;
  digest: string;
  layers: number;
  /** Compressed bytes of the new layer. */
  layerSize: number;
  size: number;
  /** The same image as the one the name had before (nothing new stored). */
  unchanged: boolean;
  replaced: boolean;
  parent?: string;
  pushed?: string;
  /** Personal: whether it is now the default. */
  isDefault?: boolean;
  seconds: number;
}

function clampOf(env: Env): number | undefined {
  const text = env['SOURCE_DATE_EPOCH'];
  if (text === undefined || text === '') return undefined;
  if (!/^[0-9]{1,12}$/.test(text)) throw new UsageError(`SOURCE_DATE_EPOCH must be a number of seconds, not "${text}"`);
  return Number(text);
}

function clamped(entries: AsyncIterable<TreeEntry>, clamp: number | undefined): AsyncIterable<TreeEntry> {
  if (clamp === undefined) return entries;
  return (async function* () {
    for await (const entry of entries) yield entry.mtime > clamp ? { ...entry, mtime: clamp } : entry;
  })();
}

/**
 * A parent given by the user: a base snapshot's name, or an image
 * reference. A bare name (no `/`, `:` or `@`) must be in the catalogue;
 * an image that looks like one is written `oci://NAME`, so a typo never
 * turns into a pull from Docker Hub.
 */
async function resolveParent(text: string, store: ContentStore, env: Env | undefined, phase: (p: string) => void): Promise<{ image: ParentImage; name?: string }> {
  if (!text.startsWith('oci://') && SNAPSHOT_NAME.test(text)) {
    const record = await findSnapshot(text, env, ['base']);
    if (record) return { image: await readParent(store, record.reference), name: record.name };
    if (!/[/:@]/.test(text)) {
      const other = await findSnapshot(text, env, ['home', 'personal']);
      throw new InputError(other ? `--parent "${text}" is a ${other.kind} snapshot; a base snapshot extends a base snapshot or an image` : `--parent "${text}" is not a base snapshot in the catalogue`, {
        code: 'NOT_FOUND',
        suggestions: ['see `cs snapshot list`', `for an image, write oci://${text}`],
      });
    }
  }
  const bare = text.replace(/^oci:\/\//, '');
  // The registry client is loaded only when an image has to be pulled or pushed.
  const { openImageContext, pullImage, userReference } = await import('../oci/image.js');
  const reference = formatReference(userReference(bare));
  if (!(await store.resolveTag(reference))) {
    phase(`pull ${reference}`);
    await pullImage({ reference, context: await openImageContext(env ? { env } : {}) });
  }
  return { image: await readParent(store, reference) };
}

export async function createSnapshot(options: CreateSnapshotOptions): Promise<CreateSnapshotResult> {
  const started = performance.now();
  const env = options.env ?? process.env;
  const phase = options.onPhase ?? (() => undefined);
  const key = checkSnapshotName(options.name);
  const kind = options.kind;
  if (kind === 'personal' && key === 'none') throw new UsageError('"none" cannot name a personal snapshot: NONE means "no personal snapshot" wherever one is chosen');
  if (kind !== 'base' && (options.fromDir || options.parent)) throw new UsageError('--from-dir and --parent make base snapshots; leave out --home and --personal');
  if (options.parent && !options.fromDir && !options.source) throw new UsageError('--parent goes with --from-dir (a workspace snapshot extends the workspace\'s own base)');

  // A clash is found before any work, and again under the lock before the name is taken.
  const location = await locationOf(kind, env);
  const fromGuest = env[GUEST_REQUEST_ENV];
  const mayReplace = (record: SnapshotRecord | undefined): void => {
    if (!record) return;
    if (!options.force) throw clash(record);
    if (fromGuest !== undefined && record.source.workspace !== fromGuest) {
      throw new InputError(`snapshot "${record.name}" was not made by this workspace; from inside a workspace, -f replaces only its own snapshots`, { code: 'SNAPSHOT_EXISTS' });
    }
  };
  const before = await existing(kind, key, env);
  mayReplace(before);

  const store = await location.store();
  const lease = await store.lease();
  try {
    let parent: { image: ParentImage; name?: string } | undefined;
    let source: LayerSource;
    let owner: { uid: number; gid: number } | undefined;
    let selection: { includes: string[]; excludes: string[] } | undefined;
    if (options.source) {
      source = options.source;
      if (options.parentImage) {
        parent = { image: await readParent(store, options.parentImage.reference, options.parentImage.digest), ...(options.parentImage.name ? { name: options.parentImage.name } : {}) };
      }
    } else if (kind === 'base') {
      if (!options.fromDir) throw new UsageError('a base snapshot comes from a workspace (-W SANDBOX/WORKSPACE) or a folder (--from-dir DIR [--parent REF])');
      const info = await stat(options.fromDir).catch(() => undefined);
      if (!info?.isDirectory()) throw new InputError(`${options.fromDir}: not a folder`);
      if (options.parent) parent = await resolveParent(options.parent, store, env, phase);
      source = { entries: hostEntries(options.fromDir, { exclude: excludedBy(BASE_SNAPSHOT_EXCLUDES), xattrs: true }), overlay: true, describe: { dir: options.fromDir } };
    } else {
      const home = options.home ?? env['HOME'] ?? homedir();
      const folder = join(home, kind === 'home' ? '.snapshot' : '.snapshot.personal');
      selection = options.selection ?? (await readSelection({ home, folder }));
      source = { entries: selectedEntries(home, selection), describe: { home: options.homeLabel ?? home, ...(options.homeWorkspace ? { workspace: options.homeWorkspace } : {}) } };
      owner = OWNER_IDS;
    }

    phase('pack the layer');
    const clamp = clampOf(env);
    const tar = packEntries(clamped(source.entries, clamp), {
      ...(source.overlay ? { overlay: true } : {}),
      // Home and personal: owner and folder times fixed, so unrelated changes beside the selection change nothing.
      ...(owner ? { owner, dirMtime: clamp ?? 0 } : {}),
    });
    const layer = await storeLayer(store, tar);
    await options.afterLayer?.();
    phase('write the image');
    // No name here: the same files make the same image whatever it is called.
    const createdBy = `cs snapshot create${kind === 'base' ? '' : ` --${kind}`}`;
    const manifest = await writeSnapshotImage(store, { kind, layer, createdBy, ...(parent ? { parent: parent.image } : {}) });
    const layers = [
      ...(parent ? parent.image.manifest.layers.map((l, i) => ({ digest: l.digest, size: l.size, mediaType: l.mediaType, diffId: parent.image.diffIds[i] ?? '' })) : []),
      { digest: layer.descriptor.digest, size: layer.descriptor.size, mediaType: layer.descriptor.mediaType, diffId: layer.diffId },
    ];
    const user = currentUser();
    const record: SnapshotRecord = {
      version: 1,
      name: options.name,
      kind,
      reference: tagOf(location, key),
      digest: manifest.digest,
      layers,
      size: layers.reduce((sum, l) => sum + l.size, 0),
      created: new Date().toISOString(),
      createdBy: user,
      ...(parent ? { parent: { ...(parent.name ? { name: parent.name } : {}), reference: parent.image.reference, digest: parent.image.digest } } : {}),
      source: source.describe,
      ...(selection ? { includes: selection.includes, excludes: selection.excludes } : {}),
    };

    let isDefault: boolean | undefined;
    let replaced = false;
    await withCatalogue(kind, env, `creating snapshot ${options.name}`, async (loc) => {
      const now = await existing(kind, key, env);
      mayReplace(now);
      replaced = now !== undefined;
      await store.tag(record.reference, manifest);
      await writeRecordAt(loc.dir, record);
      if (kind === 'personal') {
        // The user's first personal snapshot becomes the default by itself; later ones only when asked.
        const others = (await listRecordsAt(loc.dir)).filter((r) => r.name.toLowerCase() !== key);
        isDefault = options.setPersonalDefault || (others.length === 0 && fromGuest === undefined) || (await personalDefault(env)) === key;
        if (isDefault) await writePersonalDefault(loc.dir, key);
      }
    });

    let pushed: string | undefined;
    const config = await loadConfig({ env });
    if (kind !== 'personal' && config.snapshotRegistry) {
      const destination = `${config.snapshotRegistry}:${key}`;
      phase(`push ${destination}`);
      const { openImageContext, pushImage } = await import('../oci/image.js');
      const context = await openImageContext({ env });
      await pushImage({ source: record.reference, destination, context });
      pushed = destination;
      await withCatalogue(kind, env, `recording the push of ${options.name}`, async (loc) => {
        const latest = await readRecordAt(loc.dir, key);
        if (latest?.digest === record.digest) await writeRecordAt(loc.dir, { ...latest, pushed: destination });
      });
    }
    return {
      name: options.name,
      kind,
      reference: record.reference,
      digest: manifest.digest,
      layers: layers.length,
      layerSize: layer.descriptor.size,
      size: record.size,
      unchanged: before?.digest === manifest.digest,
      replaced,
      ...(record.parent ? { parent: record.parent.name ?? record.parent.reference } : {}),
      ...(pushed ? { pushed } : {}),
      ...(isDefault === undefined ? {} : { isDefault }),
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    await lease.release();
  }
}

/** The record that holds `key` in the namespace of `kind`: base and home share one, personal is per user. */
async function existing(kind: SnapshotKind, key: string, env: Env | undefined): Promise<SnapshotRecord | undefined> {
  const dir = recordsDir(kind, env);
  return dir === undefined ? undefined : readRecordAt(dir, key);
}

/** The error for a name that is taken (without -f). */
export function clash(record: SnapshotRecord): InputError {
  return new InputError(`snapshot "${record.name}" already exists (a ${record.kind} snapshot created ${record.created})`, {
    code: 'SNAPSHOT_EXISTS',
    suggestions: ['add -f to replace it, or pick another name'],
  });
}
