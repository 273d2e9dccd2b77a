/**
 * A writer for the cpio "newc" format, the only archive format the Linux
 * kernel unpacks as an initramfs (see the kernel's
 * Documentation/driver-api/early-userspace/buffer-format.rst). Written here
 * because the archive is tiny, must be byte-for-byte reproducible (it is
 * cached by content) and needs device nodes that an unprivileged `cpio -o`
 * could not read from disk.
 */

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Uint8Array; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'char'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`cpio field out of range: ${n}`);
  return n.toString(16).padStart(8, '0');
}

function pad4(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}

function record(ino: number, mode: number, name: string, data: Uint8Array, rdev: [number, number] = [0, 0]): Buffer[] {
  const nameBytes = Buffer.from(`${name}\0`, 'utf8');
  const header =
    '070701' +
    [ino, mode, 0, 0, mode & S_IFDIR ? 2 : 1, 0, data.length, 0, 0, rdev[0], rdev[1], nameBytes.length, 0].map(hex8).join('');
  const head = Buffer.concat([Buffer.from(header, 'ascii'), nameBytes]);
  return [head, pad4(head.length), Buffer.from(data.buffer, data.byteOffset, data.byteLength), pad4(data.length)];
}

/** The archive: entries in the order given (parents before children), owned by root, mtime 0. */
export function writeCpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const entry of entries) {
    const path = entry.path.replace(/^\/+/, '');
    if (path === '' || path.split('/').some((c) => c === '..' || c === '.')) throw new Error(`bad cpio path: ${entry.path}`);
    switch (entry.type) {
      case 'dir':
        parts.push(...record(ino++, S_IFDIR | (entry.mode ?? 0o755), path, new Uint8Array(0)));
        break;
      case 'file':
        parts.push(...record(ino++, S_IFREG | (entry.mode ?? 0o644), path, entry.data));
        break;
      case 'symlink':
        parts.push(...record(ino++, S_IFLNK | 0o777, path, Buffer.from(entry.target, 'utf8')));
        break;
      case 'char':
        parts.push(...record(ino++, S_IFCHR | (entry.mode ?? 0o600), path, new Uint8Array(0), [entry.major, entry.minor]));
        break;
    }
  }
  parts.push(...record(0, 0, 'TRAILER!!!', new Uint8Array(0)));
  return Buffer.concat(parts);
}
