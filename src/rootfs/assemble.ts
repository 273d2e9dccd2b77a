import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { appendFile, lstat, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { DeferredMetadata } from '../layers/apply.js';
import { packDirectory } from '../layers/pack.js';
import { cleanComponents, RootResolver } from '../layers/safe-path.js';
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
    const tree = join(work, 'rootfs');
    try {
      if (cached >= 0) {
        phase('reuse cached layers');
        await cache.cloneInto(keys[cached] as string, work);
      }
      const privileged = process.getuid?.() === 0;
      for (let i = cached + 1; i < units.length; i++) {
        const unit = units[i] as Unit;
        phase(`apply layer ${i + 1}/${units.length} (${unit.kind})`);
        // Where a home snapshot lands is resolved inside the tree as if chrooted:
        // a base layer may have made /home a symlink, even one pointing outside.
        const under = unit.under === '' ? '' : new RootResolver(tree).resolveDir(cleanComponents(unit.under), 0o755);
        if (under === undefined) throw new InputError(`cannot create /${unit.under} in the root filesystem`);
        const root = under === '' ? tree : join(tree, under);
        const deferred: DeferredMetadata[] = [];
        const xattrs: { path: string; xattrs: Record<string, string> }[] = [];
        await unpackLayer({
          store: context.store,
          layer: unit.layer,
          diffId: unit.diffId,
          root,
          privileged,
          onDeferred: (d) => deferred.push({ ...d, path: under ? `${under}/${d.path}` : d.path }),
          onXattrs: (path, values) => xattrs.push({ path: under ? `${under}/${path}` : path, xattrs: values }),
        });
        layersApplied++;
        if (xattrs.length > 0) await applyXattrs(tree, xattrs);
        const lastBase = unit.kind === 'base' && (units[i + 1]?.kind ?? 'end') !== 'base';
        if (lastBase) await clearRuntimeDirs(tree);
        if (deferred.length > 0) await appendFile(join(work, 'deferred.jsonl'), deferred.map((d) => JSON.stringify(d)).join('\n') + '\n');
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

/** Empty the runtime folders of a base root. A runtime folder that is a symlink is left alone, never followed. */
async function clearRuntimeDirs(root: string): Promise<void> {
  for (const dir of RUNTIME_DIRS) {
    const path = join(root, dir);
    const info = await lstat(path).catch(() => undefined);
    if (!info?.isDirectory()) continue;
    // rm removes a symlink child itself, never what it points at.
    for (const name of await readdir(path)) await rm(join(path, name), { recursive: true, force: true });
  }
}

/**
 * Set extended attributes with one `setfattr --restore` run per layer. Only
 * paths whose folders are still real directories inside the root are
 * included, and `-h` keeps setfattr from following a final symlink, so a
 * later entry that planted a symlink cannot redirect the write.
 */
async function applyXattrs(root: string, entries: readonly { path: string; xattrs: Record<string, string> }[]): Promise<void> {
  const resolver = new RootResolver(root);
  const lines: string[] = [];
  for (const entry of entries) {
    const parts = entry.path.split('/');
    if (!resolver.isRealDir(parts.slice(0, -1).join('/'))) continue;
    lines.push(`# file: ${escapeAttrPath(entry.path)}`);
    for (const [name, value] of Object.entries(entry.xattrs)) {
      if (!/^[A-Za-z0-9._-]+$/.test(name)) continue;
      lines.push(`${name}=0s${Buffer.from(value, 'utf8').toString('base64')}`);
    }
    lines.push('');
  }
  if (lines.length === 0) return;
  const dump = join(root, '..', 'xattrs.dump');
  await writeFile(dump, lines.join('\n'));
  try {
    await run('setfattr', ['-h', `--restore=${dump}`], { cwd: root });
  } finally {
    await rm(dump, { force: true });
  }
}

/** getfattr's escaping of a path: octal for bytes that are not plain printable ASCII, and for backslash. */
function escapeAttrPath(path: string): string {
  let out = '';
  for (const byte of Buffer.from(path, 'utf8')) {
    out += byte <= 0x20 || byte >= 0x7f || byte === 0x5c || byte === 0x3d ? `\\${byte.toString(8).padStart(3, '0')}` : String.fromCharCode(byte);
  }
  return out;
}

async function writeOutput(tree: string, out: string, format: OutputFormat): Promise<number> {
  switch (format) {
    case 'dir': {
      // A real copy: the cached tree must not share inodes with a folder the user may edit.
      await mkdir(out, { recursive: true });
      await run('cp', ['-a', '--reflink=auto', '--', `${tree}/.`, out]);
      return 0;
    }
    case 'tar': {
      await pipeline(packDirectory(tree), createWriteStream(out, { flags: 'wx' }));
      return (await stat(out)).size;
    }
    case 'erofs': {
      await run('mkfs.erofs', ['--quiet', out, tree]);
      return (await stat(out)).size;
    }
    case 'ext4': {
      const { stdout } = await run('du', ['-sb', '--', tree]);
      const used = Number(stdout.split(/\s/)[0] ?? 0);
      const size = Math.ceil((used * 1.3 + 64 * 1024 * 1024) / (1024 * 1024));
      await run('mke2fs', ['-q', '-t', 'ext4', '-F', '-d', tree, out, `${size}M`]);
      return (await stat(out)).size;
    }
  }
}
