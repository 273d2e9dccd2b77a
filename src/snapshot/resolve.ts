import type { SnapshotRef } from '../definition/model.js';
import { loadConfig } from '../oci/config.js';
import { openImageContext, pullImage } from '../oci/image.js';
import { MAX_MANIFEST_BYTES, parseManifest } from '../oci/manifest.js';
import { formatReference } from '../oci/reference.js';
import { ContentStore } from '../oci/store.js';
import type { AssembleSnapshot } from '../rootfs/assemble.js';
import { SNAPSHOT_NAME } from '../definition/names.js';
import { InputError } from '../util/errors.js';
import type { Env } from '../util/paths.js';
import { findSnapshot, personalDefault, readRecordAt, recordsDir, type SnapshotRecord } from './catalogue.js';
import { KIND_ANNOTATION } from './image-build.js';

/**
 * From what a definition says (`base_snapshot: NAME | oci://REF`) to an
 * image to assemble. A name is looked up in the local catalogue, then, when
 * a snapshot registry is configured, as `REGISTRY:NAME` there (how a team
 * shares snapshots between machines); its kind must match the field.
 */

export interface ResolvedSnapshot extends AssembleSnapshot {
  /** The catalogue name, when it was one. */
  snapshot?: string;
  digest?: string;
}

export async function resolveSnapshot(ref: SnapshotRef, kind: 'base' | 'home', env?: Env): Promise<ResolvedSnapshot> {
  const field = `${kind}_snapshot`;
  if (ref.kind === 'oci') return { reference: formatReference(ref.reference), kind };
  const record = await findSnapshot(ref.name, env, ['base', 'home']);
  if (record) {
    if (record.kind !== kind) throw new InputError(`${field} "${ref.name}" is a ${record.kind} snapshot, not a ${kind} snapshot`, { code: 'SNAPSHOT_KIND' });
    return { reference: record.reference, kind, snapshot: record.name, digest: record.digest };
  }
  const config = await loadConfig(env ? { env } : {});
  if (config.snapshotRegistry) {
    const reference = `${config.snapshotRegistry}:${ref.name.toLowerCase()}`;
    const context = await openImageContext(env ? { env } : {});
    try {
      await pullImage({ reference, context });
    } catch (error) {
      throw new InputError(`${field} "${ref.name}" is not in the local catalogue, and ${reference} could not be pulled: ${(error as Error).message}`, { cause: error, code: 'NOT_FOUND' });
    }
    const descriptor = await context.store.resolveTag(reference);
    if (descriptor) {
      const parsed = parseManifest(await context.store.readBlob(descriptor, MAX_MANIFEST_BYTES), descriptor.mediaType, reference);
      const found = parsed.kind === 'manifest' ? parsed.manifest.annotations?.[KIND_ANNOTATION] : undefined;
      if (found !== kind) throw new InputError(`${field} "${ref.name}": ${reference} is ${found ? `a ${found}` : 'not a cs'} snapshot, not a ${kind} snapshot`, { code: 'SNAPSHOT_KIND' });
      return { reference, kind, snapshot: ref.name, digest: descriptor.digest };
    }
  }
  throw new InputError(`${field} "${ref.name}" is not a snapshot in the catalogue`, {
    code: 'NOT_FOUND',
    suggestions: ['see `cs snapshot list`', 'use oci://REF for an image'],
  });
}

/**
 * The personal snapshot a new workspace gets: the one named (NONE for none),
 * else the user's default. Its image stays in the user's private store.
 */
export async function resolvePersonal(choice: string | undefined, env?: Env): Promise<ResolvedSnapshot | undefined> {
  if (choice !== undefined && choice.toUpperCase() === 'NONE') return undefined;
  const dir = recordsDir('personal', env);
  let record: SnapshotRecord | undefined;
  if (choice !== undefined) {
    record = await findSnapshot(choice, env, ['personal']);
    if (!record) throw new InputError(`you have no personal snapshot "${choice}"`, { code: 'NOT_FOUND', suggestions: ['see `cs snapshot list`'] });
  } else {
    const key = await personalDefault(env);
    record = key === undefined || dir === undefined ? undefined : await readRecordAt(dir, key);
  }
  if (!record || dir === undefined) return undefined;
  const store = await ContentStore.open(`${dir}/store`);
  return { reference: record.reference, kind: 'personal', store, snapshot: record.name, digest: record.digest };
}

/**
 * What `cs rootfs assemble` names: a definition's reference, or a flag's
 * text, which is a catalogue name when the catalogue has it (personal: the
 * user's own) and an image reference otherwise.
 */
export async function resolveForAssemble(what: SnapshotRef | string, kind: 'base' | 'home' | 'personal', env?: Env): Promise<ResolvedSnapshot> {
  if (typeof what !== 'string') {
    if (kind === 'personal') throw new InputError('a personal snapshot is named on the command line, not in a definition');
    return resolveSnapshot(what, kind, env);
  }
  if (kind === 'personal') {
    // An image as a personal snapshot must say so (oci://): a name of someone else's never falls through to a registry.
    if (what.startsWith('oci://')) return { reference: what.slice('oci://'.length), kind };
    return (await resolvePersonal(what, env)) as ResolvedSnapshot;
  }
  if (!what.startsWith('oci://') && SNAPSHOT_NAME.test(what)) {
    const record = await findSnapshot(what, env, [kind]);
    if (record) return { reference: record.reference, kind, snapshot: record.name, digest: record.digest };
  }
  return { reference: what.replace(/^oci:\/\//, ''), kind };
}
