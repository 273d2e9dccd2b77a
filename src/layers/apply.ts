import {
  closeSync,
  linkSync,
  lstatSync,
  lutimesSync,
  chmodSync,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  mkdirSync,
  openSync,
  readdirSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeSync,
  type Stats,
} from 'node:fs';
import type { Readable } from 'node:stream';
import { extract, type Header } from 'tar-stream';
import { LayerError } from '../util/errors.js';
import { installPaxCodec, XATTR_PAX_PREFIX } from './pax.js';
import { sparseOf, writeSparse, type Sparse } from './sparse.js';
import { cleanComponents, RootResolver } from './safe-path.js';

// Binary xattr values must reach us as bytes (see pax.ts).
installPaxCodec();

/**
 * Applying one layer (an uncompressed tar stream) onto a folder, with the
 * semantics of image-spec layer.md:
 *
 * - `.wh.NAME` removes NAME from lower layers only; `.wh..wh..opq` hides
 *   everything the lower layers had in its directory, wherever it appears in
 *   the tar; other names starting with `.wh.` are refused;
 * - a later entry replaces an earlier one unless both are directories
 *   (then only the metadata changes);
 * - hardlinks may point at files from lower layers;
 * - modes (with setuid, setgid, sticky), numeric ownership, mtimes
 *   (directories last, since adding children changes them), xattrs from PAX
 *   headers.
 *
 * Safety: every path is resolved inside the root as if chrooted (see
 * safe-path.ts); the last component is never followed; hardlink targets are
 * resolved the same way and must be files inside the root. Limits stop
 * decompression bombs and absurd headers.
 *
 * File system calls are synchronous on purpose: extraction is one writer
 * doing many tiny operations, and sync calls avoid a thread-pool round trip
 * per call while decompression runs on the pool in parallel.
 */

export interface LayerLimits {
  /** Entries in one layer. */
  maxEntries: number;
  /** Bytes of one entry name (the whole path). */
  maxNameBytes: number;
  /** Uncompressed bytes of file content in one layer. */
  maxTotalBytes: number;
}

export const DEFAULT_LIMITS: LayerLimits = {
  maxEntries: 2_000_000,
  maxNameBytes: 4096,
  maxTotalBytes: 64 * 1024 ** 3,
};

/** What could not be applied for lack of privilege, to be applied where the image is built. */
export interface DeferredMetadata {
  path: string;
  uid?: number;
  gid?: number;
  device?: { type: 'char' | 'block'; major: number; minor: number; mode: number };
  xattrs?: Record<string, string>;
}

export interface ApplyOptions {
  /** The folder the layer is applied onto (it holds the lower layers already). */
  root: string;
  /** The uncompressed tar stream. */
  tar: Readable | AsyncIterable<Uint8Array>;
  limits?: Partial<LayerLimits>;
  /** Chown and create devices (default: running as root). */
  privileged?: boolean;
  /** Called for ownership, devices and xattrs that were not applied (unprivileged). */
  onDeferred?: (entry: DeferredMetadata) => void;
  /**
   * Report root-owned entries too (unprivileged): a caller that recorded
   * another owner for the path in a lower layer must learn it is root's now.
   */
  reportRootOwners?: boolean;
  /**
   * Called with xattrs to set on a path (privileged); cs batches these.
   * Values are byte strings (latin1: one character per byte), since xattr
   * values such as file capabilities are binary.
   */
  onXattrs?: (path: string, xattrs: Record<string, string>) => void;
  /**
   * Called (privileged) when an entry re-declares a directory a lower layer
   * made: the directory stays, so its xattrs must become exactly the entry's
   * (`xattrs`, possibly none), as umoci does; the caller removes the others.
   */
  onDirectoryKept?: (path: string, xattrs: Record<string, string>) => void;
}

export interface ApplyResult {
  entries: number;
  bytes: number;
  whiteouts: number;
}

export const WHITEOUT = '.wh.';
export const OPAQUE = '.wh..wh..opq';

export async function applyLayer(options: ApplyOptions): Promise<ApplyResult> {
  const privileged = options.privileged ?? process.getuid?.() === 0;
  const resolver = new RootResolver(options.root);
  /** Paths (relative) this layer created: whiteouts and opaque markers leave them alone. */
  const created = new CreatedPaths();
  const opaqueDirs: string[] = [];
  const dirTimes: { path: string; mtime: Date | number }[] = [];
  const lowerDirTimes = new Map<string, { atime: Date; mtime: Date }>();
  const result: ApplyResult = { entries: 0, bytes: 0, whiteouts: 0 };
  await forEachLayerEntry(options.tar, options.limits, result, (header, body, sparse) =>
    applyEntry(header, body, { resolver, created, opaqueDirs, dirTimes, lowerDirTimes, result, privileged, options }, sparse),
  );

  // Opaque directories hide what lower layers had, wherever the marker sat in the tar.
  for (const dir of opaqueDirs) {
    // Fix: `dir` was resolved when the marker was read; a later entry of the
    // layer may have replaced it (or a parent) with a symlink, e.g.
    // `d/.wh..wh..opq` then `d -> ../victim`. Listing and removing through
    // that path then deleted files outside the root. Only act on a path that
    // is still a real directory with no symlink on the way.
    if (!resolver.isRealDir(dir)) continue;
    noteLowerDir(resolver, created, lowerDirTimes, dir);
    hideLower(resolver, dir, created);
  }
  // Lower directories whose contents changed keep their own times (as umoci and
  // Docker do), so the result does not depend on when it was unpacked.
  for (const [path, times] of lowerDirTimes) {
    if (!resolver.isRealDir(path)) continue;
    try {
      utimesSync(resolver.abs(path), times.atime, times.mtime);
    } catch {
      // removed later in the layer
    }
  }
  // Directory times last, deepest first, since writing children changed them.
  dirTimes.sort((a, b) => b.path.split('/').length - a.path.split('/').length);
  for (const { path, mtime } of dirTimes) {
    // Fix: utimes follows symlinks. A directory entry replaced later in the
    // layer by a symlink (`d/` then `d -> ../victim`) had the times of the
    // symlink's target outside the root set. Skip what is no longer a real
    // directory (the directory was replaced or removed, its times are moot).
    if (!resolver.isRealDir(path)) continue;
    try {
      utimesSync(resolver.abs(path), mtime, mtime);
    } catch {
      // removed later in the layer
    }
  }
  return result;
}

/**
 * Read a layer's tar stream entry by entry, enforcing the limits, and hand
 * each entry to `handle` (with a sparse file's real name and map). Shared by
 * the folder applier here and the in-memory one (memtree.ts), so both refuse
 * the same layers the same way.
 */
export async function forEachLayerEntry(
  tar: Readable | AsyncIterable<Uint8Array>,
  partialLimits: Partial<LayerLimits> | undefined,
  result: ApplyResult,
  handle: (header: Header, body: AsyncIterable<Buffer>, sparse: Sparse | undefined) => Promise<void>,
): Promise<void> {
  const limits = { ...DEFAULT_LIMITS, ...partialLimits };
  /** Bytes of entry bodies read so far, written or not (result.bytes counts what was written). */
  let bodyBytes = 0;
  const ex = extract();
  const source = tar as Readable;
  const feeding = (async () => {
    try {
      for await (const chunk of source) {
        // Fix: this used to wait for 'drain' only. When the layer is refused
        // (a limit, a bad entry) the extractor is destroyed and never drains,
        // so the feeder hung and applyLayer never settled (even for a
        // one-entry tar: extract's write() returns false while an entry is
        // being applied). Stop feeding once the extractor is being destroyed,
        // and wake up on 'close' as well as on 'drain'.
        if (ex.destroying) break;
        if (!ex.write(chunk) && !ex.destroying) await drainedOrClosed(ex);
      }
      if (!ex.destroying) (ex as unknown as { end(): void }).end();
    } catch (error) {
      ex.destroy(error as Error);
    }
  })();

  try {
    for await (const entry of ex) {
      const header = entry.header;
      if (++result.entries > limits.maxEntries) throw new LayerError(`layer has more than ${limits.maxEntries} entries`, { code: 'LAYER_TOO_MANY_ENTRIES' });
      if (Buffer.byteLength(header.name) > limits.maxNameBytes) {
        throw new LayerError(`entry name is longer than ${limits.maxNameBytes} bytes: ${header.name.slice(0, 80)}…`, { code: 'LAYER_NAME_TOO_LONG' });
      }
      // Fix: only file bodies used to count, but tar-stream reads the body of
      // every entry except a directory (a symlink, hardlink, FIFO or device
      // header can carry a size, and the body is drained below), so a bomb
      // attached to such an entry was read to its end with no limit. Count
      // every body that is read.
      // A sparse file's entry carries a placeholder name and its pieces; its real name and size are in PAX records.
      const sparse = header.type === 'file' ? sparseOf(header) : undefined;
      if (sparse && Buffer.byteLength(sparse.name) > limits.maxNameBytes) {
        throw new LayerError(`entry name is longer than ${limits.maxNameBytes} bytes: ${sparse.name.slice(0, 80)}…`, { code: 'LAYER_NAME_TOO_LONG' });
      }
      if (header.type !== 'directory') {
        if (!Number.isSafeInteger(header.size) || header.size < 0) throw new LayerError(`entry ${header.name} has an invalid size`, { code: 'LAYER_BAD_HEADER' });
        // A sparse file counts at its real size: that is what later readers of the tree will read.
        const size = Math.max(header.size, sparse?.realSize ?? 0);
        if (bodyBytes + size > limits.maxTotalBytes) {
          throw new LayerError(`layer content exceeds ${limits.maxTotalBytes} bytes (a decompression bomb?)`, { code: 'LAYER_TOO_BIG' });
        }
        bodyBytes += size;
      }
      await handle(sparse ? { ...header, name: sparse.name } : header, entry as unknown as AsyncIterable<Buffer>, sparse);
      entry.resume();
    }
  } catch (error) {
    ex.destroy(new Error('layer application stopped'));
    (source as Readable).destroy?.();
    await feeding.catch(() => undefined);
    if (error instanceof LayerError) throw error;
    const code = (error as { code?: string }).code;
    throw new LayerError(`cannot apply layer: ${(error as Error).message}`, { code: code ? `LAYER_${code}` : 'LAYER_INVALID', cause: error });
  }
  await feeding;
}

/**
 * Paths this layer created, and the folders holding them. Whiteouts and
 * opaque markers only hide what lower layers made.
 */
class CreatedPaths {
  private readonly paths = new Set<string>();
  /** Every proper parent of a created path. */
  private readonly parents = new Set<string>();

  add(rel: string): void {
    this.paths.add(rel);
    for (let i = rel.lastIndexOf('/'); i > 0; i = rel.lastIndexOf('/', i - 1)) {
      const parent = rel.slice(0, i);
      if (this.parents.has(parent)) break;
      this.parents.add(parent);
    }
  }

  has(rel: string): boolean {
    return this.paths.has(rel);
  }

  /** Whether this layer created something below `rel`. */
  holdsCreated(rel: string): boolean {
    return this.parents.has(rel);
  }
}

/**
 * Remove what lower layers left inside `dir` (a real directory), keeping what
 * this layer created. Folders this layer created or wrote into are kept, and
 * their lower content is hidden in turn.
 *
 * Fix: this used to look at the direct children of an opaque folder only, so a
 * lower folder that received a new file (lower `d/sub/old`, layer `d/sub/new`
 * with `d/.wh..wh..opq`) kept all its lower content (`d/sub/old` survived).
 */
function hideLower(resolver: RootResolver, dir: string, created: CreatedPaths): void {
  let names: string[] = [];
  try {
    names = readdirSync(resolver.abs(dir));
  } catch {
    return;
  }
  for (const name of names) {
    const child = dir === '' ? name : `${dir}/${name}`;
    const madeHere = created.has(child);
    if (madeHere || created.holdsCreated(child)) {
      // readdir gave a real directory, so its entries are real paths; recurse only into real directories.
      if (lstatSync(resolver.abs(child)).isDirectory()) hideLower(resolver, child, created);
      continue;
    }
    rmSync(resolver.abs(child), { recursive: true, force: true });
    resolver.forget(child);
  }
}

function drainedOrClosed(ex: ReturnType<typeof extract>): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = (): void => {
      ex.off('drain', done);
      ex.off('close', done);
      resolve();
    };
    ex.on('drain', done);
    ex.on('close', done);
  });
}

interface Context {
  resolver: RootResolver;
  created: CreatedPaths;
  opaqueDirs: string[];
  dirTimes: { path: string; mtime: Date | number }[];
  /** mtimes of lower directories this layer changed without an entry for them, to restore. */
  lowerDirTimes: Map<string, { atime: Date; mtime: Date }>;
  result: ApplyResult;
  privileged: boolean;
  options: ApplyOptions;
}

function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') return undefined;
    throw error;
  }
}

async function applyEntry(header: Header, body: AsyncIterable<Buffer>, ctx: Context, sparse?: Sparse): Promise<void> {
  const { resolver } = ctx;
  const components = cleanComponents(header.name);
  const meta = entryMetadata(header);
  if (components.length === 0) {
    // The root itself ("./"): its mode, owner and time, as umoci and Docker apply them.
    if (header.type === 'directory') {
      if (ctx.privileged) lchownSync(resolver.root, meta.uid, meta.gid);
      chmodSync(resolver.root, header.mode & 0o7777);
      ctx.dirTimes.push({ path: '', mtime: meta.mtime });
    }
    return;
  }
  const base = components[components.length - 1] as string;
  const parentComponents = components.slice(0, -1);

  if (base.startsWith(WHITEOUT)) {
    ctx.result.whiteouts++;
    const parent = resolver.resolveDir(parentComponents);
    if (base === OPAQUE) {
      if (parent !== undefined) ctx.opaqueDirs.push(parent);
      return;
    }
    const hidden = base.slice(WHITEOUT.length);
    if (hidden === '' || hidden === '.' || hidden === '..' || hidden.startsWith(WHITEOUT)) {
      throw new LayerError(`invalid whiteout ${JSON.stringify(header.name)}`, { code: 'LAYER_BAD_WHITEOUT' });
    }
    if (parent === undefined) return; // nothing below to hide
    const target = parent === '' ? hidden : `${parent}/${hidden}`;
    if (ctx.created.has(target)) return; // whiteouts only hide lower layers
    noteLowerDir(resolver, ctx.created, ctx.lowerDirTimes, parent);
    if (ctx.created.holdsCreated(target) && resolver.isRealDir(target)) {
      // Fix: `d/x` then `.wh.d` in one layer removed the new `d/x` (while
      // `.wh.d` then `d/x` kept it): a whiteout must only hide lower content,
      // whatever the order. Keep what this layer made, remove the rest.
      hideLower(resolver, target, ctx.created);
      return;
    }
    rmSync(resolver.abs(target), { recursive: true, force: true });
    resolver.forget(target);
    return;
  }

  const parent = resolver.resolveDir(parentComponents, 0o755);
  if (parent === undefined) throw new LayerError(`cannot create the parent folder of ${header.name}`);
  const rel = parent === '' ? base : `${parent}/${base}`;
  const abs = resolver.abs(rel);
  const mode = header.mode & 0o7777;
  noteLowerDir(resolver, ctx.created, ctx.lowerDirTimes, parent);

  // Replace whatever is at `abs` (unless both are directories); returns true when a directory stays.
  const clear = (keepDirectory: boolean): boolean => {
    const existing = lstatOrUndefined(abs);
    if (!existing) return false;
    if (keepDirectory && existing.isDirectory()) return true;
    rmSync(abs, { recursive: true, force: true });
    resolver.forget(rel);
    return false;
  };

  if (header.type === 'directory') {
    // The common case (a new directory) costs one mkdir; only a clash looks further.
    let kept = false;
    try {
      mkdirSync(abs, { mode: 0o700 });
    } catch (error) {
      if ((error as { code?: string }).code !== 'EEXIST') throw error;
      kept = clear(true);
      if (!kept) mkdirSync(abs, { mode: 0o700 });
    }
    if (kept && ctx.privileged) ctx.options.onDirectoryKept?.(rel, xattrsOf(header));
    resolver.rememberDir(rel);
    ctx.created.add(rel);
    setOwner(abs, meta, ctx);
    chmodSync(abs, mode);
    ctx.dirTimes.push({ path: rel, mtime: meta.mtime });
    setXattrs(abs, header, ctx);
    return;
  }

  ctx.created.add(rel);
  switch (header.type) {
    case 'file':
    case 'contiguous-file': {
      // Open first and look only on a clash: one system call for a new file, not two.
      let fd: number;
      try {
        fd = openSync(abs, 'wx', 0o600);
      } catch (error) {
        if ((error as { code?: string }).code !== 'EEXIST') throw error;
        clear(false);
        fd = openSync(abs, 'wx', 0o600);
      }
      try {
        if (sparse) ctx.result.bytes += await writeSparse(fd, body, sparse, header.size, header.name);
        else {
          for await (const chunk of body) {
            let offset = 0;
            while (offset < chunk.length) offset += writeSync(fd, chunk, offset, chunk.length - offset);
            ctx.result.bytes += chunk.length;
          }
        }
        // Metadata through the descriptor: no path lookups. Owner before mode,
        // since chown clears setuid and setgid.
        if (ctx.privileged) fchownSync(fd, meta.uid, meta.gid);
        else reportOwner(abs, meta, ctx);
        fchmodSync(fd, mode);
        futimesSync(fd, meta.mtime, meta.mtime);
      } finally {
        closeSync(fd);
      }
      setXattrs(abs, header, ctx);
      return;
    }
    case 'symlink': {
      clear(false);
      symlinkSync(header.linkname, abs);
      setOwner(abs, meta, ctx);
      lutimesSync(abs, meta.mtime, meta.mtime);
      return;
    }
    case 'link': {
      clear(false);
      const targetComponents = cleanComponents(header.linkname ?? '');
      if (targetComponents.length === 0) throw new LayerError(`hardlink ${header.name} points at the root`, { code: 'LAYER_BAD_LINK' });
      const targetParent = resolver.resolveDir(targetComponents.slice(0, -1));
      const targetBase = targetComponents[targetComponents.length - 1] as string;
      const targetRel = targetParent === undefined ? undefined : targetParent === '' ? targetBase : `${targetParent}/${targetBase}`;
      const targetInfo = targetRel === undefined ? undefined : lstatOrUndefined(resolver.abs(targetRel));
      if (targetRel === undefined || !targetInfo) throw new LayerError(`hardlink ${header.name} points at ${header.linkname}, which does not exist in the image`, { code: 'LAYER_BAD_LINK' });
      if (targetInfo.isDirectory()) throw new LayerError(`hardlink ${header.name} points at a directory`, { code: 'LAYER_BAD_LINK' });
      linkSync(resolver.abs(targetRel), abs);
      return;
    }
    case 'fifo':
    case 'character-device':
    case 'block-device': {
      clear(false);
      await makeSpecial(abs, rel, header, meta, ctx);
      return;
    }
    default:
      throw new LayerError(`entry ${header.name} has an unsupported type ${String(header.type)}`, { code: 'LAYER_BAD_HEADER' });
  }
}

/** Owner and time of an entry: PAX records (any size, sub-second times) win over the ustar fields. */
export interface EntryMetadata {
  uid: number;
  gid: number;
  /** Seconds since the epoch, with fractions. */
  mtime: number;
}

export function entryMetadata(header: Header): EntryMetadata {
  const pax = (header.pax ?? {}) as Record<string, string>;
  const id = (value: string | undefined, fallback: number) => {
    if (value === undefined || !/^[0-9]{1,10}$/.test(value)) return fallback;
    const n = Number(value);
    return n <= 0xffffffff ? n : fallback;
  };
  const paxTime = pax['mtime'] !== undefined && /^-?[0-9]{1,12}(\.[0-9]{1,9})?$/.test(pax['mtime']) ? Number(pax['mtime']) : undefined;
  return {
    uid: id(pax['uid'], header.uid),
    gid: id(pax['gid'], header.gid),
    mtime: paxTime ?? header.mtime.getTime() / 1000,
  };
}

/**
 * Remember the times of a lower directory before this layer changes what is
 * in it (a directory with its own entry in this layer gets that entry's time
 * instead).
 */
function noteLowerDir(resolver: RootResolver, created: CreatedPaths, times: Map<string, { atime: Date; mtime: Date }>, dir: string): void {
  if (times.has(dir) || created.has(dir)) return;
  const info = lstatOrUndefined(resolver.abs(dir));
  if (info?.isDirectory()) times.set(dir, { atime: info.atime, mtime: info.mtime });
}

function setOwner(abs: string, meta: EntryMetadata, ctx: Context): void {
  if (ctx.privileged) lchownSync(abs, meta.uid, meta.gid);
  else reportOwner(abs, meta, ctx);
}

function reportOwner(abs: string, meta: EntryMetadata, ctx: Context): void {
  if (meta.uid !== 0 || meta.gid !== 0 || ctx.options.reportRootOwners) ctx.options.onDeferred?.({ path: relativeOf(abs, ctx), uid: meta.uid, gid: meta.gid });
}

function relativeOf(abs: string, ctx: Context): string {
  return abs.slice(ctx.resolver.root.length + 1);
}

const XATTR_PREFIX = XATTR_PAX_PREFIX;

export function xattrsOf(header: Header): Record<string, string> {
  const pax = header.pax as Record<string, string> | null | undefined;
  const xattrs: Record<string, string> = {};
  for (const [key, value] of Object.entries(pax ?? {})) if (key.startsWith(XATTR_PREFIX)) xattrs[key.slice(XATTR_PREFIX.length)] = value;
  return xattrs;
}

function setXattrs(abs: string, header: Header, ctx: Context): void {
  const xattrs = xattrsOf(header);
  if (Object.keys(xattrs).length === 0) return;
  if (ctx.privileged && ctx.options.onXattrs) ctx.options.onXattrs(relativeOf(abs, ctx), xattrs);
  else ctx.options.onDeferred?.({ path: relativeOf(abs, ctx), xattrs });
}

async function makeSpecial(abs: string, rel: string, header: Header, meta: EntryMetadata, ctx: Context): Promise<void> {
  const { run } = await import('../util/process.js');
  const mode = header.mode & 0o7777;
  if (header.type === 'fifo') {
    await run('mkfifo', ['-m', mode.toString(8), '--', abs]);
  } else if (ctx.privileged) {
    await run('mknod', ['-m', mode.toString(8), '--', abs, header.type === 'character-device' ? 'c' : 'b', String(header.devmajor), String(header.devminor)]);
  } else {
    // Unprivileged: an empty placeholder file stands where the device goes, and the device is recorded.
    closeSync(openSync(abs, 'wx', 0o600));
    ctx.options.onDeferred?.({
      path: rel,
      uid: meta.uid,
      gid: meta.gid,
      device: { type: header.type === 'character-device' ? 'char' : 'block', major: header.devmajor, minor: header.devminor, mode },
    });
    return;
  }
  setOwner(abs, meta, ctx);
  chmodSync(abs, mode);
  utimesSync(abs, meta.mtime, meta.mtime);
}
