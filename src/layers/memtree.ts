import type { Readable } from 'node:stream';
import type { Header } from 'tar-stream';
import { LayerError } from '../util/errors.js';
import { entryMetadata, forEachLayerEntry, OPAQUE, WHITEOUT, xattrsOf, type ApplyResult, type LayerLimits } from './apply.js';
import type { ErofsNode } from './erofs.js';
import { cleanComponents, MAX_HOPS } from './safe-path.js';
import type { Sparse } from './sparse.js';

/**
 * Applying layers to a tree held in memory, with file contents written once
 * to a block store: the way cs builds EROFS images without creating a single
 * file on the host (see erofs.ts for why).
 *
 * The semantics are those of the folder applier (apply.ts), rule for rule,
 * and a test holds the two to the same results on the same layers:
 * whiteouts hide lower layers only, opaque markers act wherever they sit,
 * a later entry replaces an earlier one unless both are directories,
 * hardlinks may reach into lower layers, paths resolve as if chrooted at the
 * layer's root (symlinks re-rooted, at most MAX_HOPS hops). Safety here is
 * simpler than on disk: there is no host path to escape to. What remains is
 * the meaning: a symlink on the way is followed inside the tree, never out.
 */

export interface TreeNode extends ErofsNode {
  xattrs?: Map<string, Buffer> | undefined;
  children?: Map<string, TreeNode>;
}

/** Where file contents go. Blocks are 4 KiB and absolute in the image. */
export interface BlockStore {
  /** Write a file's content (`size` bytes); returns its first block (0 for an empty file). */
  writeFile(body: AsyncIterable<Buffer>, size: number, entry: string): Promise<number>;
  /** Write a sparse file's pieces with holes between; returns its first block and the data bytes written. */
  writeSparse(body: AsyncIterable<Buffer>, sparse: Sparse, dataSize: number, entry: string): Promise<{ block: number; bytes: number }>;
}

function newDir(): TreeNode {
  return { kind: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 0, mtimeNs: 0, children: new Map() };
}

export interface TreeApplyOptions {
  /** The uncompressed tar stream. */
  tar: Readable | AsyncIterable<Uint8Array>;
  /** Where the layer lands, as components from the root (a home snapshot's folder); created when missing. */
  under?: readonly string[];
  limits?: Partial<LayerLimits>;
  blocks: BlockStore;
}

/** What one layer made: directories it created or wrote into, and names it created in each directory. */
class LayerMarks {
  readonly holds = new Set<TreeNode>();
  private readonly names = new Map<TreeNode, Set<string>>();

  created(dir: TreeNode, name: string): boolean {
    return this.names.get(dir)?.has(name) ?? false;
  }

  /** `name` in the directory at the end of `stack` was made by this layer. */
  add(stack: readonly TreeNode[], name: string): void {
    const dir = stack[stack.length - 1] as TreeNode;
    let set = this.names.get(dir);
    if (!set) this.names.set(dir, (set = new Set()));
    set.add(name);
    for (const node of stack) this.holds.add(node);
  }
}

export class MemTree {
  constructor(readonly root: TreeNode = newDir()) {}

  /** Apply one layer; the same results as applyLayer() on a folder holding this tree. */
  async applyLayer(options: TreeApplyOptions): Promise<ApplyResult> {
    const layerRoot = options.under && options.under.length > 0 ? this.resolve(this.root, options.under, true) : [this.root];
    if (!layerRoot) throw new LayerError(`cannot create /${(options.under ?? []).join('/')} in the root filesystem`);
    const top = layerRoot[layerRoot.length - 1] as TreeNode;
    const marks = new LayerMarks();
    /** Folders with an opaque marker, as names from the layer's root. */
    const opaque: string[][] = [];
    const result: ApplyResult = { entries: 0, bytes: 0, whiteouts: 0 };
    await forEachLayerEntry(options.tar, options.limits, result, async (header, body, sparse) => {
      const op = await this.entry(top, header, body, sparse, marks, options.blocks);
      if (op?.opaque) opaque.push(op.opaque);
      result.bytes += op?.bytes ?? 0;
      if (op?.whiteout) result.whiteouts++;
    });
    // Opaque directories hide what lower layers had, wherever the marker sat.
    // Later entries may have replaced the folder or a parent (with a symlink,
    // say): only a path that is still all real directories counts.
    for (const names of opaque) {
      let dir: TreeNode | undefined = top;
      for (const name of names) {
        const next: TreeNode | undefined = dir?.children?.get(name);
        dir = next?.kind === 'dir' ? next : undefined;
      }
      if (dir) hideLower(dir, marks);
    }
    return result;
  }

  /** Empty the given folders of the root (the runtime folders of a base snapshot); a symlink in their place is left alone. */
  emptyDirs(names: readonly string[]): void {
    for (const name of names) {
      const dir = this.root.children?.get(name);
      if (dir?.kind === 'dir') dir.children?.clear();
    }
  }

  /**
   * The directory `components` names, as the stack of directories from
   * `layerRoot` down to it, following symlinks inside the layer's root.
   * Missing directories are created when `create`, else undefined comes back.
   */
  private resolve(layerRoot: TreeNode, components: readonly string[], create: boolean, hops = { count: 0 }, from?: TreeNode[]): TreeNode[] | undefined {
    let stack = from ? [...from] : [layerRoot];
    for (const part of components) {
      if (part === '' || part === '.') continue;
      if (part === '..') {
        if (stack.length > 1) stack.pop();
        continue;
      }
      const current = stack[stack.length - 1] as TreeNode;
      const next = current.children?.get(part);
      if (next === undefined) {
        if (!create) return undefined;
        checkName(part, components.join('/'));
        checkDepth(stack.length + 1, components);
        const made = newDir();
        current.children?.set(part, made);
        stack.push(made);
        continue;
      }
      if (next.kind === 'dir') {
        stack.push(next);
        checkDepth(stack.length, components);
        continue;
      }
      if (next.kind === 'symlink') {
        if (++hops.count > MAX_HOPS) throw new LayerError(`too many levels of symbolic links resolving ${components.join('/')}`, { code: 'SYMLINK_LOOP' });
        const target = next.target ?? '';
        // Re-root: an absolute target starts at the layer's root; a relative one at the link's folder.
        const resolved = this.resolve(layerRoot, target.split('/'), create, hops, target.startsWith('/') ? [layerRoot] : stack);
        if (resolved === undefined) return undefined;
        stack = resolved;
        continue;
      }
      if (!create) return undefined;
      throw new LayerError(`${components.join('/')}: "${part}" is not a directory`, { code: 'NOT_A_DIRECTORY' });
    }
    return stack;
  }

  private async entry(
    layerRoot: TreeNode,
    header: Header,
    body: AsyncIterable<Buffer>,
    sparse: Sparse | undefined,
    marks: LayerMarks,
    blocks: BlockStore,
  ): Promise<{ opaque?: string[]; bytes?: number; whiteout?: boolean } | undefined> {
    const components = cleanComponents(header.name);
    const meta = entryMetadata(header);
    // What a file system would refuse (chown, mknod), refused here: an image would silently keep a wrapped value.
    for (const [what, id] of [['uid', meta.uid], ['gid', meta.gid]] as const) {
      if (!Number.isInteger(id) || id < 0 || id > 0xffffffff) throw new LayerError(`entry ${header.name} has an invalid ${what} ${id}`, { code: 'LAYER_BAD_HEADER' });
    }
    const mtime = Math.floor(meta.mtime);
    const stamp = { uid: meta.uid, gid: meta.gid, mtime: Math.max(0, mtime), mtimeNs: Math.round((meta.mtime - mtime) * 1e9), mode: header.mode & 0o7777 };
    if (components.length === 0) {
      // The root itself ("./"): its mode, owner and time, as umoci and Docker apply them.
      if (header.type === 'directory') Object.assign(layerRoot, stamp);
      return undefined;
    }
    const base = components[components.length - 1] as string;
    const parentComponents = components.slice(0, -1);

    if (base.startsWith(WHITEOUT)) {
      const stack = this.resolve(layerRoot, parentComponents, false);
      if (base === OPAQUE) return { whiteout: true, ...(stack ? { opaque: namesOf(stack) } : {}) };
      const hidden = base.slice(WHITEOUT.length);
      if (hidden === '' || hidden === '.' || hidden === '..' || hidden.startsWith(WHITEOUT)) {
        throw new LayerError(`invalid whiteout ${JSON.stringify(header.name)}`, { code: 'LAYER_BAD_WHITEOUT' });
      }
      if (stack === undefined) return { whiteout: true };
      const parent = stack[stack.length - 1] as TreeNode;
      if (marks.created(parent, hidden)) return { whiteout: true };
      const target = parent.children?.get(hidden);
      // What this layer made below a whited-out folder stays; the rest goes.
      if (target?.kind === 'dir' && marks.holds.has(target)) hideLower(target, marks);
      else parent.children?.delete(hidden);
      return { whiteout: true };
    }

    for (const part of components) checkName(part, header.name);
    const stack = this.resolve(layerRoot, parentComponents, true);
    if (stack === undefined) throw new LayerError(`cannot create the parent folder of ${header.name}`);
    const parent = stack[stack.length - 1] as TreeNode;
    const children = parent.children as Map<string, TreeNode>;
    const existing = children.get(base);

    if (header.type === 'directory') {
      const xattrs = xattrMap(header);
      if (existing?.kind === 'dir') {
        // A re-declared directory keeps its contents; its metadata and xattrs become exactly the entry's.
        Object.assign(existing, stamp);
        existing.xattrs = xattrs;
      } else children.set(base, { kind: 'dir', ...stamp, xattrs, children: new Map() });
      marks.add(stack, base);
      return undefined;
    }

    marks.add(stack, base);
    switch (header.type) {
      case 'file':
      case 'contiguous-file': {
        children.delete(base);
        let block: number;
        let bytes: number;
        if (sparse) ({ block, bytes } = await blocks.writeSparse(body, sparse, header.size, header.name));
        else {
          block = await blocks.writeFile(body, header.size, header.name);
          bytes = header.size;
        }
        children.set(base, { kind: 'file', ...stamp, xattrs: xattrMap(header), block, size: sparse ? sparse.realSize : header.size });
        return { bytes };
      }
      case 'symlink': {
        const target = header.linkname ?? '';
        // The codes are the folder build's, whose file system refuses the same.
        if (Buffer.byteLength(target) >= 4096) throw new LayerError(`symlink ${header.name}: its target is longer than 4095 bytes`, { code: 'LAYER_ENAMETOOLONG' });
        if (target === '' || target.includes('\0')) throw new LayerError(`symlink ${header.name} has an invalid target`, { code: 'LAYER_BAD_HEADER' });
        children.set(base, { kind: 'symlink', ...stamp, target });
        return undefined;
      }
      case 'link': {
        children.delete(base);
        const targetComponents = cleanComponents(header.linkname ?? '');
        if (targetComponents.length === 0) throw new LayerError(`hardlink ${header.name} points at the root`, { code: 'LAYER_BAD_LINK' });
        const targetStack = this.resolve(layerRoot, targetComponents.slice(0, -1), false);
        const target = targetStack?.[targetStack.length - 1]?.children?.get(targetComponents[targetComponents.length - 1] as string);
        if (!target) throw new LayerError(`hardlink ${header.name} points at ${header.linkname}, which does not exist in the image`, { code: 'LAYER_BAD_LINK' });
        if (target.kind === 'dir') throw new LayerError(`hardlink ${header.name} points at a directory`, { code: 'LAYER_BAD_LINK' });
        children.set(base, target);
        return undefined;
      }
      case 'fifo':
        children.set(base, { kind: 'fifo', ...stamp });
        return undefined;
      case 'character-device':
      case 'block-device':
        // Linux device numbers: 12-bit major, 20-bit minor.
        if (!Number.isInteger(header.devmajor) || !Number.isInteger(header.devminor) || (header.devmajor ?? 0) < 0 || (header.devmajor ?? 0) > 0xfff || (header.devminor ?? 0) < 0 || (header.devminor ?? 0) > 0xfffff) {
          throw new LayerError(`device ${header.name} has numbers ${header.devmajor}:${header.devminor}, beyond what Linux has`, { code: 'LAYER_BAD_HEADER' });
        }
        children.set(base, { kind: header.type === 'character-device' ? 'char' : 'block', ...stamp, major: header.devmajor ?? 0, minor: header.devminor ?? 0 });
        return undefined;
      default:
        throw new LayerError(`entry ${header.name} has an unsupported type ${String(header.type)}`, { code: 'LAYER_BAD_HEADER' });
    }
  }
}

/** The names that lead down a resolved stack, to check later that it still stands. */
function namesOf(stack: readonly TreeNode[]): string[] {
  const names: string[] = [];
  for (let i = 1; i < stack.length; i++) {
    const parent = stack[i - 1] as TreeNode;
    for (const [name, child] of parent.children ?? []) {
      if (child === stack[i]) {
        names.push(name);
        break;
      }
    }
  }
  return names;
}

/** Remove what lower layers left inside `dir`, keeping what this layer made (and recursing into folders holding some). */
function hideLower(dir: TreeNode, marks: LayerMarks): void {
  for (const [name, child] of [...(dir.children ?? [])]) {
    if (marks.created(dir, name) || marks.holds.has(child)) {
      if (child.kind === 'dir') hideLower(child, marks);
      continue;
    }
    dir.children?.delete(name);
  }
}

/**
 * Folders nest at most this deep: a real path 2048 folders deep is at least
 * 4096 bytes long, which a folder build's file system refuses (PATH_MAX);
 * symlinks could otherwise build trees deeper than any entry name.
 */
const MAX_DEPTH = 2048;

/** Called at every step of every path: the name for the message is only joined when it is needed. */
function checkDepth(depth: number, components: readonly string[]): void {
  if (depth > MAX_DEPTH) throw new LayerError(`entry ${components.join('/').slice(0, 80)}…: folders nest deeper than ${MAX_DEPTH} levels`, { code: 'LAYER_ENAMETOOLONG' });
}

/** A name the tree can hold: what a folder on disk would refuse is refused here too. */
function checkName(part: string, entry: string): void {
  if (Buffer.byteLength(part) > 255) throw new LayerError(`entry ${entry.slice(0, 80)}…: a name is longer than 255 bytes`, { code: 'LAYER_ENAMETOOLONG' });
  if (part.includes('\0')) throw new LayerError(`entry ${JSON.stringify(entry.slice(0, 80))} has a NUL byte in its name`, { code: 'LAYER_BAD_HEADER' });
}

/** An entry's xattrs as raw bytes, with the names a folder build would skip left out the same way. */
function xattrMap(header: Header): Map<string, Buffer> | undefined {
  const entries = Object.entries(xattrsOf(header)).filter(([name]) => /^[A-Za-z0-9._-]+$/.test(name));
  return entries.length === 0 ? undefined : new Map(entries.map(([name, value]) => [name, Buffer.from(value, 'latin1')]));
}
