import { EXT4_INLINE_DATA_FL, INCOMPAT, MAX_DIR_BYTES, READ_CHUNK, type RawInode } from './ext4-format.js';
import { runs } from './ext4-extents.js';
import type { Ext4Volume } from './ext4-volume.js';
import { inlineData } from './ext4-xattr.js';

/** Directory entries (dynamic.rst, "Directory Entries"), each checked against its block and the inode count. */

/** A name as stored (`raw`) and as UTF-8 text, with the inode it names. */
export interface DirEntry {
  name: string;
  raw: Buffer;
  ino: number;
}

/** Every named entry, '.' and '..' included; hashed (htree) directories read the same way, their index blocks look like empty entries. */
export async function dirEntries(vol: Ext4Volume, dir: RawInode): Promise<DirEntry[]> {
  const what = `inode ${dir.ino}`;
  const out: DirEntry[] = [];
  if (dir.flags & EXT4_INLINE_DATA_FL) {
    // An inline directory starts with its parent's inode number; '.' and '..' are not stored.
    const { head, tail } = await inlineData(vol, dir);
    parseDirBlock(vol, dir.ino, head, 4, 'inline data', out);
    if (tail.length > 0) parseDirBlock(vol, dir.ino, tail, 0, 'inline data (system.data)', out);
    return out;
  }
  if (dir.size > MAX_DIR_BYTES) vol.fail(`${what}: directory of ${dir.size} bytes is larger than ${MAX_DIR_BYTES}`);
  const { blockSize } = vol.sb;
  for await (const run of runs(vol, dir)) {
    if (run.zero) continue; // unwritten blocks, like holes, hold no entries
    for (let done = 0; done < run.count; ) {
      const n = Math.min(run.count - done, READ_CHUNK / blockSize);
      const data = await vol.readAt((run.physical + done) * blockSize, n * blockSize);
      for (let b = 0; b < n; b++) parseDirBlock(vol, dir.ino, data.subarray(b * blockSize, (b + 1) * blockSize), 0, `block ${run.logical + done + b}`, out);
      done += n;
    }
  }
  return out;
}

/** Linear ext4_dir_entry_2 records filling `block` from `start`; `where` names the block in messages. */
function parseDirBlock(vol: Ext4Volume, dirIno: number, block: Buffer, start: number, where: string, out: DirEntry[]): void {
  const what = `inode ${dirIno}: directory ${where}`;
  const narrowName = (vol.sb.incompat & INCOMPAT.filetype) !== 0;
  for (let o = start; o < block.length; ) {
    if (block.length - o < 8) vol.fail(`${what}: entry at ${o} overruns its block`);
    const ino = block.readUInt32LE(o);
    let recLen = block.readUInt16LE(o + 4);
    if (vol.sb.blockSize >= 65536 && block.length >= 65536) recLen = recLen === 65535 || recLen === 0 ? 65536 : (recLen & 65532) | ((recLen & 3) << 16);
    const nameLen = narrowName ? block.readUInt8(o + 6) : block.readUInt16LE(o + 6);
    if (recLen < 8) vol.fail(`${what}: entry at ${o} has rec_len ${recLen}, less than 8`);
    if (recLen % 4 !== 0) vol.fail(`${what}: entry at ${o} has rec_len ${recLen}, not a multiple of 4`);
    if (o + recLen > block.length) vol.fail(`${what}: entry at ${o} (rec_len ${recLen}) overruns its block`);
    if (nameLen > recLen - 8) vol.fail(`${what}: entry at ${o} has name_len ${nameLen}, more than its rec_len ${recLen} holds`);
    if (ino !== 0) {
      const raw = block.subarray(o + 8, o + 8 + nameLen);
      if (nameLen === 0) vol.fail(`${what}: entry at ${o} has an empty name`);
      if (raw.includes(0x2f) || raw.includes(0)) vol.fail(`${what}: entry name ${JSON.stringify(raw.toString('utf8'))} contains "/" or NUL`);
      if (ino > vol.sb.inodesCount) vol.fail(`${what}: entry ${JSON.stringify(raw.toString('utf8'))} names inode ${ino}, out of range (1..${vol.sb.inodesCount})`);
      out.push({ name: raw.toString('utf8'), raw: Buffer.from(raw), ino });
    }
    o += recLen;
  }
}
