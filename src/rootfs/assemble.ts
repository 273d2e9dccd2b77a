import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { DeferredMetadata } from '../layers/apply.js';
import { packDirectory } from '../layers/pack.js';
import { openImageContext, pullImage, userReference, type ImageContext } from '../oci/image.js';
import type { Descriptor } from '../oci/manifest.js';
import { formatReference } from '../oci/reference.js';
import { InputError } from '../util/errors.js';
import { dataDir, type Env } from '../util/paths.js';
import { run } from '../util/process.js';
import { TreeCache } from './cache.js';
import { chainIds } from './chain.js';
import { readImageLayers, unpackLayer } from './unpack.js';

/**
 * Assembling a chain of snapshots (base, then home, then personal) into one
 * root filesystem, as a folder, a tar, an erofs image or an ext4 image.
 *
 * Each layer is an "apply unit": where it lands (the root for a base
 * snapshot, the owner's home for home and personal ones) and its diff_id.
 * Chain ids over those units key a cache of finished trees, so when only the
 * top snapshot changes, only its layers are applied again.
 */

export type SnapshotKind = 'base' | 'home' | 'personal';
export type OutputFormat = 'dir' | 'tar' | 'erofs' | 'ext4';

export interface AssembleSnapshot {
  /** An image reference (local store name or registry reference). */
  reference: string;
  kind: SnapshotKind;
}

export interface AssembleOptions {
  snapshots: readonly AssembleSnapshot[];
  out: string;
  format: OutputFormat;
  /** Replace `out` if it exists. */
  force?: boolean;
  /** The owner's home inside the root (home and personal snapshots land here). */
  home?: string;
  env?: Env;
  context?: ImageContext;
  onPhase?: (phase: string) => void;
}

export interface AssembleResult {
  out: string;
  format: OutputFormat;
  chainId: string;
  layers: number;
  /** Layers applied in this run (0 when the whole chain was cached). */
  layersApplied: number;
  cachedLayers: number;
  bytes: number;
}

/**
 * What a base snapshot never carries: runtime and kernel-provided folders.
 * The folders stay (empty) as mount points; their contents go.
 */
export const RUNTIME_DIRS = ['proc', 'sys', 'dev', 'run', 'tmp'] as const;

const DEFAULT_HOME = '/home/owner';

interface Unit {
  layer: Descriptor;
  diffId: string;
  kind: SnapshotKind;
  /** Where it applies, relative to the root ('' for the root). */
  under: string;
  /** Last layer of its snapshot: a checkpoint worth caching. */
  boundary: boolean;
}

export async function assemble(options: AssembleOptions): Promise<AssembleResult> {
  const phase = options.onPhase ?? (() => undefined);
  if (options.snapshots.length === 0) throw new InputError('nothing to assemble: give at least a base snapshot');
  if (options.snapshots[0]?.kind !== 'base') throw new InputError('the first snapshot must be a base snapshot');
  const home = (options.home ?? DEFAULT_HOME).replace(/^\/+|\/+$/g, '');
  const outInfo = await stat(options.out).catch(() => undefined);
  if (outInfo && !options.force) throw new InputError(`${options.out} already exists; use --force to replace it`);

  const context = options.context ?? (await openImageContext(options.env ? { env: options.env } : {}));
  const units: Unit[] = [];
  for (const snapshot of options.snapshots) {
    const name = formatReference(userReference(snapshot.reference));
    let descriptor = await context.store.resolveTag(name);
    if (!descriptor) {
      phase(`pull ${name}`);
      await pullImage({ reference: name, context });
      descriptor = await context.store.resolveTag(name);
    }
    if (!descriptor) throw new InputError(`image ${name} is not in the local store`);
    const { manifest, diffIds } = await readImageLayers(context.store, descriptor, name);
    manifest.layers.forEach((layer, i) => {
      units.push({ layer, diffId: diffIds[i] ?? '', kind: snapshot.kind, under: snapshot.kind === 'base' ? '' : home, boundary: i === manifest.layers.length - 1 });
    });
  }
  if (units.length === 0) throw new InputError('the snapshots have no layers');

  const keys = chainIds(units.map((u) => (u.under === '' ? u.diffId : `sha256:${createHash('sha256').update(`${u.diffId} under /${u.under}`).digest('hex')}`)));
  const finalChain = keys[keys.length - 1] as string;
  const cache = new TreeCache(join(dataDir(options.env), 'rootfs'));
  await cache.prune();

  let cached = -1;
  for (let i = keys.length - 1; i >= 0; i--) {
    if (await cache.has(keys[i] as string)) {
      cached = i;
      break;
    }
  }
  let layersApplied = 0;
  if (cached < keys.length - 1) {
    const work = await cache.workDir();
    try {
      if (cached >= 0) {
        phase('reuse cached layers');
        await cache.cloneInto(keys[cached] as string, work);
      }
      const deferred: DeferredMetadata[] = [];
      for (let i = cached + 1; i < units.length; i++) {
        const unit = units[i] as Unit;
        phase(`apply layer ${i + 1}/${units.length} (${unit.kind})`);
        const root = unit.under === '' ? work : join(work, unit.under);
        await mkdir(root, { recursive: true, mode: 0o755 });
        await unpackLayer({ store: context.store, layer: unit.layer, diffId: unit.diffId, root, onDeferred: (d) => deferred.push({ ...d, path: unit.under ? `${unit.under}/${d.path}` : d.path }) });
        layersApplied++;
        const lastBase = unit.kind === 'base' && (units[i + 1]?.kind ?? 'end') !== 'base';
        if (lastBase) await clearRuntimeDirs(work);
        if (deferred.length > 0) await writeFile(join(work, '.cs-deferred.jsonl'), deferred.map((d) => JSON.stringify(d)).join('\n') + '\n', { flag: 'a' });
        deferred.length = 0;
        if (unit.boundary && i < units.length - 1) await cache.commitCopy(keys[i] as string, work);
      }
      await cache.commit(finalChain, work);
    } catch (error) {
      await rm(work, { recursive: true, force: true });
      throw error;
    }
  }

  const tree = cache.treePath(finalChain);
  phase(`write ${options.format}`);
  if (outInfo) await rm(options.out, { recursive: true, force: true });
  const bytes = await writeOutput(tree, options.out, options.format);
  return { out: options.out, format: options.format, chainId: finalChain, layers: units.length, layersApplied, cachedLayers: cached + 1, bytes };
}

async function clearRuntimeDirs(root: string): Promise<void> {
  for (const dir of RUNTIME_DIRS) {
    const path = join(root, dir);
    const info = await stat(path).catch(() => undefined);
    if (!info?.isDirectory()) continue;
    for (const name of await readdir(path)) await rm(join(path, name), { recursive: true, force: true });
  }
}

/** Files of cs's own inside a cached tree, never part of an output. */
const PRIVATE = new Set(['.cs-complete', '.cs-deferred.jsonl']);

async function writeOutput(tree: string, out: string, format: OutputFormat): Promise<number> {
  switch (format) {
    case 'dir': {
      // A real copy: the cached tree must not share inodes with a folder the user may edit.
      await mkdir(out, { recursive: true });
      await run('cp', ['-a', '--reflink=auto', '--', `${tree}/.`, out]);
      for (const name of PRIVATE) await rm(join(out, name), { force: true });
      return 0;
    }
    case 'tar': {
      await pipeline(packDirectory(tree, { exclude: (path) => PRIVATE.has(path) }), createWriteStream(out, { flags: 'wx' }));
      return (await stat(out)).size;
    }
    case 'erofs': {
      // Exclusions are paths relative to the source folder.
      await run('mkfs.erofs', ['--quiet', ...[...PRIVATE].map((name) => `--exclude-path=${name}`), out, tree]);
      return (await stat(out)).size;
    }
    case 'ext4': {
      const { stdout } = await run('du', ['-sb', '--', tree]);
      const used = Number(stdout.split(/\s/)[0] ?? 0);
      const size = Math.ceil((used * 1.3 + 64 * 1024 * 1024) / (1024 * 1024));
      await run('mke2fs', ['-q', '-t', 'ext4', '-F', '-d', tree, out, `${size}M`]);
      // mke2fs copies the whole folder; take cs's own files back out.
      for (const name of PRIVATE) await run('debugfs', ['-w', '-R', `rm /${name}`, out], { okExitCodes: [0, 1] });
      return (await stat(out)).size;
    }
  }
}
