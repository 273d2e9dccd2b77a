import { constants } from 'node:fs';
import { open as openFile, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { LayerError } from '../util/errors.js';

/**
 * Disk images as the ext4 reader sees them: a raw file, or a qcow2 image
 * read through its backing chain (a raw ext4 base under qcow2 overlays, as
 * src/workspace/disk.ts makes workspace disks). Read-only.
 *
 * Written here because no maintained Node library reads qcow2. The files
 * are QEMU's, but cs treats them as hostile all the same (a compromised
 * QEMU, a tampered folder): every offset, size and count is checked before
 * it is used, a backing file is only ever a plain file name in the folder
 * of the image that names it, and every fault is a LayerError that starts
 * with the name of the file at fault.
 *
 * Read: versions 2 and 3; standard clusters, clusters with the zero flag
 * (as zeros), unallocated clusters (from the backing file; zeros past its
 * end or without one); the backing format from its header extension, else
 * probed by magic; chains of up to 128 files. Refused: compressed clusters
 * (when read), encryption, external data files, extended L2 entries, images
 * QEMU marked corrupt, unknown incompatible features, and backing files
 * that are not a plain name in the folder, are symlinks, or make a loop.
 * Ignored, as a reader needs none of them: refcounts, internal snapshots,
 * bitmaps, the dirty bit (it only says refcounts may be stale) and the
 * "copied" bit 63 of table entries.
 *
 * Format facts are from QEMU's docs/interop/qcow2.txt ("Header", "Header
 * extensions", "Cluster mapping").
 */

export interface DiskImage {
  /** The file's name, which starts every error message. */
  readonly name: string;
  /** The virtual disk's size in bytes (a raw file's size). */
  readonly size: number;
  /** Positioned like FileHandle.read; reads short only at the end of the virtual disk. */
  read(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }>;
  close(): Promise<void>;
}

export interface Qcow2Header {
  version: number;
  virtualSize: number;
  clusterBits: number;
  /** As the header names it: not checked to be a plain file name (openDiskImage checks that). */
  backing?: { name: string; format?: string };
}

const MAGIC = Buffer.from('QFI\xfb', 'latin1');
const V2_HEADER_BYTES = 72;
const V3_HEADER_BYTES = 104;
const MIN_CLUSTER_BITS = 9;
/** QEMU's own limit (2 MiB clusters). */
const MAX_CLUSTER_BITS = 21;
/** QEMU's own limit on the active L1 table. */
const MAX_L1_BYTES = 32 * 1024 * 1024;
const MAX_BACKING_NAME = 1023;
const MAX_CHAIN_FILES = 128;
const EXT_END = 0;
const EXT_BACKING_FORMAT = 0xe2792aca;

const INCOMPAT_DIRTY = 1n;
const INCOMPAT_CORRUPT = 2n;
const INCOMPAT_DATA_FILE = 4n;
/** Names the codec of compressed clusters, which are refused when read anyway. */
const INCOMPAT_COMPRESSION_TYPE = 8n;
const INCOMPAT_EXTENDED_L2 = 16n;
const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION_TYPE | INCOMPAT_EXTENDED_L2;

// Table entries, split in their high and low 32 bits. Offsets are bits 9-55.
const HI_COPIED = 0x80000000;
const HI_COMPRESSED = 0x40000000;
const HI_OFFSET = 0x00ffffff;
const LO_OFFSET = 0xfffffe00;
const L1_RESERVED = { hi: 0x7f000000, lo: 0x1ff };
const L2_RESERVED = { hi: 0x3f000000, lo: 0x1fe };
const L2_ZERO = 1;

/** The table cache of one opened chain: enough to map 64 GiB with 64 KiB clusters, bounded in bytes for 2 MiB ones. */
const CACHE_TABLES = 128;
const CACHE_BYTES = 32 * 1024 * 1024;

const CORRUPT = 'LAYER_QCOW2_CORRUPT';
const UNSUPPORTED = 'LAYER_QCOW2_UNSUPPORTED';

type Fail = (message: string, code?: string) => never;

function failFor(label: string): Fail {
  return (message, code = CORRUPT) => {
    throw new LayerError(`${label}: ${message}`, { code });
  };
}

/**
 * Opens a disk image: qcow2 (with its backing chain) when its first bytes
 * are qcow2's magic, else a raw file. A file that cannot be opened is a
 * LayerError with code LAYER_DISK_OPEN.
 */
export async function openDiskImage(path: string, options: { format?: 'raw' | 'qcow2' } = {}): Promise<DiskImage> {
  const fh = await openNamed(path);
  const chain: Chain = { seen: new Set(), cache: new TableCache() };
  // Callers that know the format say it: a guest can write the qcow2 magic at the start of a raw disk it owns.
  return openOn({ fh, path, label: basename(path), depth: 1, chain }, options.format);
}

/** The header of a qcow2 image, checked as openDiskImage checks it. */
export async function qcow2Header(path: string): Promise<Qcow2Header> {
  const label = basename(path);
  const fh = await openNamed(path);
  try {
    const { size } = await fh.stat();
    const { version, clusterBits, virtualSize, backing } = parseHeader(await readHead(fh, size, label), label, size);
    return { version, virtualSize, clusterBits, ...(backing ? { backing } : {}) };
  } finally {
    await fh.close();
  }
}

async function openNamed(path: string): Promise<FileHandle> {
  try {
    return await openFile(path, 'r');
  } catch (error) {
    throw new LayerError(`${basename(path)}: cannot open: ${(error as Error).message}`, { code: 'LAYER_DISK_OPEN', cause: error });
  }
}

// --- the chain ---

interface Chain {
  /** dev:ino of every file opened so far, to find loops whatever names lead to them. */
  seen: Set<string>;
  cache: TableCache;
}

interface ChainFile {
  fh: FileHandle;
  path: string;
  label: string;
  /** 1 for the image opened, 2 for its backing file, ... */
  depth: number;
  chain: Chain;
}

/** Makes a DiskImage of an open file; closes it when that fails. */
async function openOn(file: ChainFile, format?: 'raw' | 'qcow2'): Promise<DiskImage> {
  try {
    const stat = await file.fh.stat({ bigint: true });
    const fail = failFor(file.label);
    if (file.depth > 1 && !stat.isFile()) fail('is not a regular file', 'LAYER_QCOW2_BACKING_NAME');
    const id = `${stat.dev}:${stat.ino}`;
    if (file.chain.seen.has(id)) fail('is already part of this backing chain (the chain loops)', 'LAYER_QCOW2_BACKING_LOOP');
    file.chain.seen.add(id);
    const size = Number(stat.size);
    const kind = format ?? ((await readExact(file.fh, 0, Math.min(4, size), file.label)).equals(MAGIC) ? 'qcow2' : 'raw');
    if (kind === 'raw') return new RawImage(file.fh, file.label, size);
    const header = parseHeader(await readHead(file.fh, size, file.label), file.label, size);
    const backing = header.backing ? await openBacking(file, header.backing) : undefined;
    return new Qcow2Image(file, header, size, backing);
  } catch (error) {
    await file.fh.close().catch(() => undefined);
    throw error;
  }
}

/** The backing file a header names, in the folder of the image that names it. */
async function openBacking(parent: ChainFile, backing: { name: string; format?: string }): Promise<DiskImage> {
  const fail = failFor(parent.label);
  const { name, format } = backing;
  const shown = JSON.stringify(name);
  // cs writes only plain names; a path (or "..") would let a disk read files elsewhere.
  if (name.includes('/') || name.includes('\0') || name === '.' || name === '..') {
    fail(`its backing file ${shown} is not a plain file name in the image's folder`, 'LAYER_QCOW2_BACKING_NAME');
  }
  const kind = format === undefined ? undefined : knownFormat(format, () => fail(`its backing file ${shown} has format ${JSON.stringify(format)}; only raw and qcow2 are read`, UNSUPPORTED));
  if (parent.depth >= MAX_CHAIN_FILES) fail(`its backing chain is longer than ${MAX_CHAIN_FILES} files`, 'LAYER_QCOW2_CHAIN_TOO_DEEP');
  const path = join(dirname(parent.path), name);
  const label = `${name} (backing file of ${basename(parent.path)})`;
  let fh: FileHandle;
  try {
    // No symlinks: one in the folder could point anywhere. Non-blocking so a FIFO cannot hang the open; it is refused after.
    fh = await openFile(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (error) {
    const symlink = (error as NodeJS.ErrnoException).code === 'ELOOP';
    if (symlink) fail(`its backing file ${shown} is a symbolic link`, 'LAYER_QCOW2_BACKING_NAME');
    throw new LayerError(`${parent.label}: cannot open its backing file ${shown}: ${(error as Error).message}`, { code: 'LAYER_QCOW2_BACKING_OPEN', cause: error });
  }
  return openOn({ fh, path, label, depth: parent.depth + 1, chain: parent.chain }, kind);
}

function knownFormat(format: string, refuse: () => never): 'raw' | 'qcow2' {
  return format === 'raw' || format === 'qcow2' ? format : refuse();
}

// --- the header ---

interface Layout {
  version: number;
  clusterBits: number;
  virtualSize: number;
  l1Size: number;
  l1Offset: number;
  backing?: { name: string; format?: string };
}

/** The header cluster (or as much of it as the file has): header, extensions and backing name all lie in it. */
async function readHead(fh: FileHandle, fileSize: number, label: string): Promise<Buffer> {
  const start = await readExact(fh, 0, Math.min(fileSize, V3_HEADER_BYTES), label);
  const bits = start.length >= 24 ? start.readUInt32BE(20) : 0;
  if (bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS) return start; // parseHeader refuses it
  return readExact(fh, 0, Math.min(fileSize, 2 ** bits), label);
}

function parseHeader(head: Buffer, label: string, fileSize: number): Layout {
  const fail = failFor(label);
  if (head.length < 4 || !head.subarray(0, 4).equals(MAGIC)) fail('not a qcow2 image (no QFI\\xfb magic)', 'LAYER_NOT_QCOW2');
  if (head.length < V2_HEADER_BYTES) fail(`the file ends at byte ${head.length}, inside its qcow2 header`);
  const version = head.readUInt32BE(4);
  if (version !== 2 && version !== 3) fail(`qcow2 version ${version} is not supported (only 2 and 3)`, UNSUPPORTED);
  if (version === 3 && head.length < V3_HEADER_BYTES) fail(`the file ends at byte ${head.length}, inside its qcow2 header`);
  const clusterBits = head.readUInt32BE(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) fail(`cluster size 2^${clusterBits} is not supported (2^9 to 2^21 bytes)`, UNSUPPORTED);
  const clusterSize = 2 ** clusterBits;
  const headerLength = version === 2 ? V2_HEADER_BYTES : head.readUInt32BE(100);
  if (version === 3 && (headerLength < V3_HEADER_BYTES || headerLength % 8 !== 0 || headerLength > clusterSize)) fail(`invalid header length ${headerLength}`);
  const cryptMethod = head.readUInt32BE(32);
  if (cryptMethod !== 0) fail(`is encrypted (crypt_method ${cryptMethod}); only unencrypted images are read`, UNSUPPORTED);
  if (version === 3) checkIncompatible(head.readBigUInt64BE(72), fail);
  const virtualSize = Number(head.readBigUInt64BE(24));
  if (virtualSize > Number.MAX_SAFE_INTEGER) fail(`virtual size ${head.readBigUInt64BE(24)} is too large`, UNSUPPORTED);
  const l1 = l1Table(head, clusterSize, virtualSize, fileSize, fail);
  const backing = backingOf(head, headerLength, fail);
  return { version, clusterBits, virtualSize, ...l1, ...(backing ? { backing } : {}) };
}

function checkIncompatible(features: bigint, fail: Fail): void {
  if (features & INCOMPAT_CORRUPT) fail('QEMU marked it corrupt (incompatible feature "corrupt"); see qemu-img check');
  if (features & INCOMPAT_DATA_FILE) fail('keeps its data in an external data file, which is not read', UNSUPPORTED);
  if (features & INCOMPAT_EXTENDED_L2) fail('uses extended L2 entries (subclusters), which are not read', UNSUPPORTED);
  const unknown = features & ~INCOMPAT_KNOWN;
  if (unknown) fail(`uses unknown incompatible features (0x${unknown.toString(16)})`, UNSUPPORTED);
}

function l1Table(head: Buffer, clusterSize: number, virtualSize: number, fileSize: number, fail: Fail): { l1Size: number; l1Offset: number } {
  const l1Size = head.readUInt32BE(36);
  const l1Offset = Number(head.readBigUInt64BE(40));
  // Each L1 entry maps one L2 table, which maps clusterSize / 8 clusters.
  const needed = Math.ceil(virtualSize / (clusterSize * (clusterSize / 8)));
  if (l1Size < needed) fail(`its L1 table has ${l1Size} entries, but a virtual size of ${virtualSize} bytes needs ${needed}`);
  if (l1Size * 8 > MAX_L1_BYTES) fail(`its L1 table of ${l1Size} entries is larger than qcow2 allows (32 MiB)`);
  if (l1Size > 0 && (l1Offset === 0 || l1Offset % clusterSize !== 0)) fail(`its L1 table offset ${l1Offset} is not a cluster boundary after the header`);
  if (l1Size > 0 && l1Offset + l1Size * 8 > fileSize) fail(`its L1 table lies at bytes ${l1Offset}..${l1Offset + l1Size * 8 - 1}, beyond the end of the file (${fileSize} bytes)`);
  return { l1Size, l1Offset };
}

function backingOf(head: Buffer, headerLength: number, fail: Fail): { name: string; format?: string } | undefined {
  const offset = Number(head.readBigUInt64BE(8));
  const length = head.readUInt32BE(16);
  // The extensions end where the backing name starts (the name fills the rest of the header cluster).
  const format = backingFormat(head, headerLength, offset > 0 ? Math.min(offset, head.length) : head.length, fail);
  if (offset === 0) return undefined;
  if (length === 0 || length > MAX_BACKING_NAME) fail(`invalid backing file name length ${length}`);
  if (offset < headerLength || offset + length > head.length) fail(`its backing file name lies at bytes ${offset}..${offset + length - 1}, outside its header cluster`);
  const name = utf8(head.subarray(offset, offset + length), 'backing file name', fail);
  return format === undefined ? { name } : { name, format };
}

/** Walks the header extensions up to `end`; each step moves on at least 8 bytes, so the walk is bounded by the header cluster. */
function backingFormat(head: Buffer, start: number, end: number, fail: Fail): string | undefined {
  let format: string | undefined;
  for (let at = start; at + 8 <= end; ) {
    const type = head.readUInt32BE(at);
    const length = head.readUInt32BE(at + 4);
    if (type === EXT_END) break;
    if (at + 8 + length > end) fail(`header extension 0x${type.toString(16)} at byte ${at} runs past byte ${end}`);
    if (type === EXT_BACKING_FORMAT) {
      if (format !== undefined) fail('has two backing format header extensions');
      format = utf8(head.subarray(at + 8, at + 8 + length), 'backing format', fail);
    }
    at += 8 + Math.ceil(length / 8) * 8;
  }
  return format;
}

function utf8(bytes: Buffer, what: string, fail: Fail): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return fail(`its ${what} is not UTF-8`);
  }
}

// --- reading ---

function checkReadArgs(buffer: Buffer, offset: number, length: number, position: number): void {
  const ok = [offset, length, position].every((n) => Number.isSafeInteger(n) && n >= 0) && offset + length <= buffer.length;
  if (!ok) throw new RangeError(`read: offset ${offset}, length ${length} or position ${position} is out of range for a buffer of ${buffer.length} bytes`);
}

function ioError(label: string, position: number, error: unknown): LayerError {
  if (error instanceof LayerError) return error;
  return new LayerError(`${label}: cannot read at byte ${position}: ${(error as Error).message}`, { code: 'LAYER_DISK_IO', cause: error });
}

/** Reads `length` bytes of metadata at `position`; the file ending first is corruption. */
async function readExact(fh: FileHandle, position: number, length: number, label: string): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    let bytesRead: number;
    try {
      ({ bytesRead } = await fh.read(buffer, done, length - done, position + done));
    } catch (error) {
      throw ioError(label, position + done, error);
    }
    if (bytesRead === 0) failFor(label)(`the file ends at byte ${position + done}, inside its metadata`);
    done += bytesRead;
  }
  return buffer;
}

class RawImage implements DiskImage {
  constructor(
    private readonly fh: FileHandle,
    readonly name: string,
    readonly size: number,
  ) {}

  /** FileHandle.read itself, errors included: callers of a raw file see what they always saw. */
  async read(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }> {
    checkReadArgs(buffer, offset, length, position);
    const count = Math.max(0, Math.min(length, this.size - position));
    if (count === 0) return { bytesRead: 0 };
    const { bytesRead } = await this.fh.read(buffer, offset, count, position);
    return { bytesRead };
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}

/** Least recently used tables (L1 pieces and L2 tables) of every file in a chain. */
class TableCache {
  private readonly tables = new Map<string, Buffer>();
  private bytes = 0;

  get(key: string): Buffer | undefined {
    const table = this.tables.get(key);
    if (table) {
      this.tables.delete(key);
      this.tables.set(key, table);
    }
    return table;
  }

  set(key: string, table: Buffer): void {
    if (this.tables.has(key)) return;
    this.tables.set(key, table);
    this.bytes += table.length;
    while (this.tables.size > 1 && (this.tables.size > CACHE_TABLES || this.bytes > CACHE_BYTES)) {
      const [oldest, evicted] = this.tables.entries().next().value as [string, Buffer];
      this.tables.delete(oldest);
      this.bytes -= evicted.length;
    }
  }
}

/** Where a stretch of the virtual disk reads from. */
type Cluster = { kind: 'data'; host: number } | { kind: 'zero' } | { kind: 'backing' };
type Run = Cluster & { length: number };

class Qcow2Image implements DiskImage {
  readonly name: string;
  readonly size: number;
  private readonly clusterSize: number;
  /** Entries per L2 table, and per cluster-sized piece of the L1 table. */
  private readonly perTable: number;
  private readonly fail: Fail;
  /** Grows when QEMU appends clusters while the image is open; re-read before anything is called beyond it. */
  private fileSize: number;

  constructor(
    private readonly file: ChainFile,
    private readonly layout: Layout,
    fileSize: number,
    private readonly backing: DiskImage | undefined,
  ) {
    this.name = file.label;
    this.size = layout.virtualSize;
    this.clusterSize = 2 ** layout.clusterBits;
    this.perTable = this.clusterSize / 8;
    this.fail = failFor(file.label);
    this.fileSize = fileSize;
  }

  async read(buffer: Buffer, offset: number, length: number, position: number): Promise<{ bytesRead: number }> {
    checkReadArgs(buffer, offset, length, position);
    const count = Math.max(0, Math.min(length, this.size - position));
    for (let done = 0; done < count; ) {
      const run = await this.runAt(position + done, count - done);
      const target = buffer.subarray(offset + done, offset + done + run.length);
      if (run.kind === 'data') await this.readData(target, run.host);
      else if (run.kind === 'backing') await this.readBacking(target, position + done);
      else target.fill(0);
      done += run.length;
    }
    return { bytesRead: count };
  }

  async close(): Promise<void> {
    try {
      await this.file.fh.close();
    } finally {
      await this.backing?.close();
    }
  }

  /** The longest stretch from `virtual` (at most `max` bytes, within one L2 table) that reads from one place: contiguous host clusters, zeros, or the backing file. */
  private async runAt(virtual: number, max: number): Promise<Run> {
    const { clusterSize, perTable } = this;
    const cluster = Math.floor(virtual / clusterSize);
    const within = virtual - cluster * clusterSize;
    let index = cluster % perTable;
    const table = await this.l2Table(Math.floor(cluster / perTable), virtual);
    if (!table) return { kind: 'backing', length: Math.min(max, (perTable - index) * clusterSize - within) };
    const first = this.entryAt(table, index, virtual);
    const host = first.kind === 'data' ? first.host : 0;
    if (first.kind === 'data') await this.checkInFile(host, clusterSize, `the cluster at virtual byte ${virtual - within}`, true);
    let length = clusterSize - within;
    while (length < max && ++index < perTable) {
      const next = this.entryAt(table, index, virtual + length);
      if (next.kind !== first.kind) break;
      // Data continues a run only in the next host cluster; one past the known end of the file starts a run of its own, where it is checked.
      if (next.kind === 'data' && (next.host !== host + within + length || next.host >= this.fileSize)) break;
      length += clusterSize;
    }
    length = Math.min(length, max);
    return first.kind === 'data' ? { kind: 'data', host: host + within, length } : { kind: first.kind, length };
  }

  /** Classifies L2 entry `index`, which maps the cluster holding `virtual`. */
  private entryAt(table: Buffer, index: number, virtual: number): Cluster {
    const hi = table.readUInt32BE(index * 8);
    const lo = table.readUInt32BE(index * 8 + 4);
    const at = `the cluster at virtual byte ${virtual - (virtual % this.clusterSize)}`;
    if (hi & HI_COMPRESSED) this.fail(`${at} is compressed, and compressed clusters are not read (qemu-img convert -O qcow2 writes an uncompressed copy)`, UNSUPPORTED);
    if (hi & L2_RESERVED.hi || lo & L2_RESERVED.lo) this.fail(`${at} has an L2 entry with reserved bits set`);
    if (lo & L2_ZERO) {
      if (this.layout.version === 2) this.fail(`${at} has the zero flag, which version 2 images do not have`);
      return { kind: 'zero' };
    }
    const host = entryOffset(hi, lo);
    if (host === 0) {
      // Offset 0 with the copied bit means host offset 0, allowed only with an external data file.
      if (hi & HI_COPIED) this.fail(`${at} is mapped onto the header cluster`);
      return { kind: 'backing' };
    }
    if (host % this.clusterSize !== 0) this.fail(`${at} is mapped to byte ${host}, not a cluster boundary`);
    return { kind: 'data', host };
  }

  /** The L2 table for L1 entry `l1Index`, or undefined when it is unallocated. */
  private async l2Table(l1Index: number, virtual: number): Promise<Buffer | undefined> {
    const piece = Math.floor(l1Index / this.perTable);
    const start = this.layout.l1Offset + piece * this.clusterSize;
    const length = Math.min(this.clusterSize, (this.layout.l1Size - piece * this.perTable) * 8);
    const l1 = await this.table(`L1 ${piece}`, start, length, `its L1 table`);
    const at = (l1Index % this.perTable) * 8;
    const hi = l1.readUInt32BE(at);
    const lo = l1.readUInt32BE(at + 4);
    if (hi & L1_RESERVED.hi || lo & L1_RESERVED.lo) this.fail(`L1 entry ${l1Index} (virtual byte ${virtual}) has reserved bits set`);
    const offset = entryOffset(hi, lo);
    if (offset === 0) return undefined;
    if (offset % this.clusterSize !== 0) this.fail(`L1 entry ${l1Index} (virtual byte ${virtual}) points at byte ${offset}, not a cluster boundary`);
    return this.table(`L2 ${offset}`, offset, this.clusterSize, `the L2 table for virtual byte ${virtual} (L1 entry ${l1Index})`);
  }

  private async table(key: string, offset: number, length: number, what: string): Promise<Buffer> {
    const cacheKey = `${this.file.depth} ${key}`;
    const cached = this.file.chain.cache.get(cacheKey);
    if (cached) return cached;
    await this.checkInFile(offset, length, what, false);
    const table = await readExact(this.file.fh, offset, length, this.name);
    this.file.chain.cache.set(cacheKey, table);
    return table;
  }

  /**
   * Refuses what lies beyond the end of the file. Tables must lie wholly in
   * it (QEMU writes them whole). A data cluster need only start in it: the
   * spec says nothing of a file ending inside a cluster, and QEMU reads past
   * the end as zeros (readData does the same), so such a tail is not taken
   * for corruption. A cluster starting at or past the end is: QEMU appends a
   * cluster's data before the L2 entry that points at it, so only a forged
   * or damaged entry leads there.
   */
  private async checkInFile(offset: number, length: number, what: string, startOnly: boolean): Promise<void> {
    const end = startOnly ? offset + 1 : offset + length;
    if (end <= this.fileSize) return;
    try {
      this.fileSize = Number((await this.file.fh.stat()).size);
    } catch (error) {
      throw ioError(this.name, offset, error);
    }
    if (end > this.fileSize) this.fail(`${what} lies at bytes ${offset}..${offset + length - 1}, beyond the end of the file (${this.fileSize} bytes)`);
  }

  /** Host bytes of one run; any part past the end of the file reads as zeros (see checkInFile). */
  private async readData(target: Buffer, host: number): Promise<void> {
    let done = 0;
    while (done < target.length) {
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.file.fh.read(target, done, target.length - done, host + done));
      } catch (error) {
        throw ioError(this.name, host + done, error);
      }
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    target.fill(0, done);
  }

  /** Unallocated clusters: the backing file's bytes, and zeros where it has none (spec, "Cluster mapping"). */
  private async readBacking(target: Buffer, virtual: number): Promise<void> {
    const backing = this.backing;
    const available = backing ? Math.max(0, Math.min(target.length, backing.size - virtual)) : 0;
    let done = 0;
    while (backing && done < available) {
      let bytesRead: number;
      try {
        ({ bytesRead } = await backing.read(target, done, available - done, virtual + done));
      } catch (error) {
        throw ioError(backing.name, virtual + done, error);
      }
      // A raw backing file that shrank since it was opened: zeros, as QEMU reads past its end.
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    target.fill(0, done);
  }
}

/** Bits 9-55 of a table entry. Past 2^53 the value is inexact, but then it is past any file's end too. */
function entryOffset(hi: number, lo: number): number {
  return (hi & HI_OFFSET) * 2 ** 32 + ((lo & LO_OFFSET) >>> 0);
}
