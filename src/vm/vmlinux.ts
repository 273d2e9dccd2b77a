import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { gunzipSync } from 'node:zlib';
import { writeFileAtomic } from '../util/fs.js';

/**
 * The uncompressed kernel, for a PVH boot. A bzImage makes QEMU run the
 * kernel's real-mode setup and its decompressor inside the guest; under TCG
 * that emulated decompression of ~50 MB is about half a second of every
 * boot. A kernel built with CONFIG_PVH carries an ELF note with a 32-bit
 * entry point, and QEMU boots such an ELF directly. So the payload is
 * unpacked once, on the host, with the real tools.
 *
 * Layout facts (Linux's x86 boot protocol, 2.08 and later): `setup_sects`
 * at 0x1f1 (0 means 4), protected-mode code from (setup_sects + 1) * 512,
 * `payload_offset` and `payload_length` at 0x248 and 0x24c relative to it.
 * Payloads other than gzip end with the uncompressed size (u32 LE).
 */

const PT_NOTE = 4;
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

type Format = { name: string; tool?: [string, ...string[]] };

function formatOf(payload: Buffer): Format | undefined {
  const m = payload.subarray(0, 6);
  if (m[0] === 0x1f && (m[1] === 0x8b || m[1] === 0x9e)) return { name: 'gzip' };
  if (m.readUInt32BE(0) === 0xfd377a58) return { name: 'xz', tool: ['xz', '-dc'] };
  if (m.readUInt32LE(0) === 0x184c2102) return { name: 'lz4', tool: ['lz4', '-dc'] };
  if (m.readUInt32LE(0) === 0xfd2fb528) return { name: 'zstd', tool: ['zstd', '-dc'] };
  if (m.toString('latin1', 0, 3) === 'BZh') return { name: 'bzip2', tool: ['bzip2', '-dc'] };
  if (m[0] === 0x5d && m[1] === 0x00) return { name: 'lzma', tool: ['xz', '--format=lzma', '-dc'] };
  return undefined;
}

/** The compressed payload of a bzImage, or undefined if this is not one cs understands. */
export function bzImagePayload(image: Buffer): Buffer | undefined {
  if (image.length < 0x250 || image.toString('latin1', 0x202, 0x206) !== 'HdrS') return undefined;
  if (image.readUInt16LE(0x206) < 0x208) return undefined;
  const setupSects = image[0x1f1] || 4;
  const start = (setupSects + 1) * 512;
  const offset = image.readUInt32LE(0x248);
  const length = image.readUInt32LE(0x24c);
  if (length === 0 || start + offset + length > image.length) return undefined;
  return image.subarray(start + offset, start + offset + length);
}

/** Whether an ELF64 file has the PVH entry note. */
export function hasPvhNote(elf: Buffer): boolean {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) return false;
  const phoff = Number(elf.readBigUInt64LE(32));
  const phentsize = elf.readUInt16LE(54);
  const phnum = elf.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (ph + 56 > elf.length || elf.readUInt32LE(ph) !== PT_NOTE) continue;
    const offset = Number(elf.readBigUInt64LE(ph + 8));
    const size = Number(elf.readBigUInt64LE(ph + 32));
    let at = offset;
    while (at + 12 <= Math.min(offset + size, elf.length)) {
      const namesz = elf.readUInt32LE(at);
      const descsz = elf.readUInt32LE(at + 4);
      const type = elf.readUInt32LE(at + 8);
      const name = elf.toString('latin1', at + 12, at + 12 + Math.max(0, namesz - 1));
      if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY) return true;
      at += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
  return false;
}

/**
 * Decompresses into `dest`. The tools read and write files directly: piping
 * tens of megabytes through this process was about 40 times slower.
 */
async function decompress(payload: Buffer, format: Format, dest: string): Promise<Buffer | undefined> {
  if (format.name === 'gzip') {
    try {
      return gunzipSync(payload);
    } catch {
      return undefined;
    }
  }
  const [tool, ...args] = format.tool as [string, ...string[]];
  const input = `${dest}.payload`;
  await writeFile(input, payload);
  try {
    const [inFd, outFd] = [openSync(input, 'r'), openSync(dest, 'w')];
    const code = await new Promise<number | null>((resolve) => {
      const child = spawn(tool, args, { stdio: [inFd, outFd, 'ignore'] });
      child.on('error', () => resolve(null));
      child.on('exit', (c) => resolve(c));
    }).finally(() => {
      closeSync(inFd);
      closeSync(outFd);
    });
    if (code === null) return undefined;
    const out = await readFile(dest);
    // The kernel appends the uncompressed size after the stream; some tools
    // complain about those trailing bytes but have written everything.
    const expected = payload.readUInt32LE(payload.length - 4);
    return out.length === expected || (code === 0 && out.length > 0) ? out : undefined;
  } finally {
    await rm(input, { force: true });
    await rm(dest, { force: true });
  }
}

/**
 * Writes `out` (the PVH-bootable vmlinux) from a bzImage and returns its
 * path, or returns undefined when the kernel cannot be booted that way (no
 * PVH note, unknown format, tool missing); the bzImage is used then. The
 * outcome is remembered (`out.none`), so a kernel is examined once.
 */
export async function ensureVmlinux(vmlinuz: string, out: string): Promise<string | undefined> {
  if (existsSync(out)) return out;
  const none = `${out}.none`;
  if (existsSync(none)) return undefined;
  const payload = bzImagePayload(await readFile(vmlinuz));
  const format = payload ? formatOf(payload) : undefined;
  if (!payload || !format) {
    await writeFile(none, 'not a bzImage whose payload cs can read\n').catch(() => undefined);
    return undefined;
  }
  // A failed decompression (a tool missing, say) is not remembered: it may work later.
  const elf = await decompress(payload, format, `${out}.tmp-${process.pid}`);
  if (!elf) return undefined;
  if (!hasPvhNote(elf)) {
    await writeFile(none, `${format.name} payload without a PVH entry note\n`).catch(() => undefined);
    return undefined;
  }
  await writeFileAtomic(out, elf);
  await rm(none, { force: true });
  return out;
}
