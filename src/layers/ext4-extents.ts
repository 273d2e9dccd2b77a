import { EXT4_EXTENTS_FL, EXT4_INLINE_DATA_FL, I_BLOCK, I_BLOCK_BYTES, MAX_EXTENT_DEPTH, READ_CHUNK, type RawInode, type Run } from './ext4-format.js';
import type { Ext4Volume } from './ext4-volume.js';

/**
 * Where a file's content is on disk: extent trees (dynamic.rst, "Extent
 * Tree") and the classic block maps of ext2/3, as runs of blocks, and the
 * content read through them. Inline data is not here: it lives in an
 * attribute (see ext4-xattr.ts).
 */

// --- extent tree (dynamic.rst, "Extent Tree") ---
const EXTENT_MAGIC = 0xf30a;
const EXT_INIT_MAX_LEN = 32768;

/** The block runs of a file in logical order, limited to its size. */
export async function* runs(vol: Ext4Volume, inode: RawInode): AsyncGenerator<Run> {
  const blocks = Math.ceil(inode.size / vol.sb.blockSize);
  if (blocks === 0) return;
  let pending: Run | undefined;
  const source = inode.flags & EXT4_EXTENTS_FL ? extentRuns(vol, inode, blocks) : blockMapRuns(vol, inode, blocks);
  for await (const run of source) {
    if (run.logical >= blocks) break;
    if (run.logical + run.count > blocks) run.count = blocks - run.logical;
    // Join neighbours so content is read in large pieces.
    if (pending && pending.zero === run.zero && pending.logical + pending.count === run.logical && (run.zero || pending.physical + pending.count === run.physical)) {
      pending.count += run.count;
      continue;
    }
    if (pending) yield pending;
    pending = { ...run };
  }
  if (pending) yield pending;
}

/** Leaf extents in order; checks magic, depth, entry counts, ordering and block numbers, and visits no tree block twice. */
async function* extentRuns(vol: Ext4Volume, inode: RawInode, blocks: number): AsyncGenerator<Run> {
  const what = `inode ${inode.ino}`;
  const visited = new Set<number>();
  let next = 0;
  async function* node(data: Buffer, depth: number | undefined): AsyncGenerator<Run> {
    if (data.readUInt16LE(0) !== EXTENT_MAGIC) vol.fail(`${what}: bad extent header magic`);
    const entries = data.readUInt16LE(2);
    const max = data.readUInt16LE(4);
    const d = data.readUInt16LE(6);
    if (depth === undefined && d > MAX_EXTENT_DEPTH) vol.fail(`${what}: extent tree deeper than ${MAX_EXTENT_DEPTH}`);
    if (depth !== undefined && d !== depth) vol.fail(`${what}: extent tree node at depth ${d} where ${depth} was expected`);
    if (entries > max || 12 + max * 12 > data.length) vol.fail(`${what}: extent node holds ${entries} of ${max} entries, more than fit`);
    if (d > 0 && entries === 0) vol.fail(`${what}: empty extent index node`);
    let last = -1;
    for (let i = 0; i < entries; i++) {
      const o = 12 + i * 12;
      const logical = data.readUInt32LE(o);
      if (logical <= last) vol.fail(`${what}: extents out of order`);
      last = logical;
      if (logical >= blocks) return;
      if (d > 0) {
        const child = data.readUInt32LE(o + 4) + data.readUInt16LE(o + 8) * 2 ** 32;
        if (visited.has(child)) vol.fail(`${what}: extent tree block ${child} is used twice`);
        visited.add(child);
        yield* node(await vol.block(child, `${what}: extent tree`), d - 1);
      } else {
        const raw = data.readUInt16LE(o + 4);
        const zero = raw > EXT_INIT_MAX_LEN;
        const count = zero ? raw - EXT_INIT_MAX_LEN : raw;
        const physical = data.readUInt32LE(o + 8) + data.readUInt16LE(o + 6) * 2 ** 32;
        if (count === 0) vol.fail(`${what}: extent of length 0`);
        if (logical < next) vol.fail(`${what}: extents overlap at block ${logical}`);
        if (!zero) vol.checkRange(physical, count, what);
        next = logical + count;
        yield { logical, physical, count, zero };
      }
    }
  }
  yield* node(inode.raw.subarray(I_BLOCK, I_BLOCK + I_BLOCK_BYTES), undefined);
}

/** Classic block maps (ext2/3): 12 direct pointers, then single, double and triple indirect blocks. */
async function* blockMapRuns(vol: Ext4Volume, inode: RawInode, blocks: number): AsyncGenerator<Run> {
  if (inode.flags & EXT4_INLINE_DATA_FL) vol.fail(`inode ${inode.ino}: inline data where block data was expected`);
  const what = `inode ${inode.ino}`;
  const perBlock = vol.sb.blockSize / 4;
  async function* walk(pointer: number, level: number, logical: number): AsyncGenerator<Run> {
    if (pointer === 0 || logical >= blocks) return; // a hole
    if (level === 0) {
      vol.checkRange(pointer, 1, what);
      yield { logical, physical: pointer, count: 1, zero: false };
      return;
    }
    const data = await vol.block(pointer, `${what}: indirect block`);
    const span = perBlock ** (level - 1);
    for (let i = 0; i < perBlock && logical + i * span < blocks; i++) yield* walk(data.readUInt32LE(i * 4), level - 1, logical + i * span);
  }
  const ptr = (i: number): number => inode.raw.readUInt32LE(I_BLOCK + i * 4);
  for (let i = 0; i < 12; i++) yield* walk(ptr(i), 0, i);
  yield* walk(ptr(12), 1, 12);
  yield* walk(ptr(13), 2, 12 + perBlock);
  yield* walk(ptr(14), 3, 12 + perBlock + perBlock ** 2);
}

/** The content of a file kept in blocks (not inline), exactly i_size bytes; holes and unwritten extents read as zeros. */
export async function* blockContent(vol: Ext4Volume, inode: RawInode): AsyncGenerator<Buffer> {
  const { blockSize } = vol.sb;
  let at = 0;
  const size = inode.size;
  function* zeros(until: number): Generator<Buffer> {
    while (at < until) {
      const n = Math.min(READ_CHUNK, until - at);
      yield Buffer.alloc(n);
      at += n;
    }
  }
  for await (const run of runs(vol, inode)) {
    const start = run.logical * blockSize;
    yield* zeros(start);
    const end = Math.min(size, (run.logical + run.count) * blockSize);
    if (run.zero) {
      yield* zeros(end);
      continue;
    }
    while (at < end) {
      const n = Math.min(READ_CHUNK, end - at);
      yield await vol.readAt(run.physical * blockSize + (at - start), n);
      at += n;
    }
  }
  yield* zeros(size);
}

/** All of a content stream in one buffer, for the small things read whole (symlink targets, attribute values). */
export async function collect(chunks: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of chunks) parts.push(part);
  return Buffer.concat(parts);
}
