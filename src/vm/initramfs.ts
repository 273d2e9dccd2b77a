import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { VmError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs.js';
import { dataDir, type Env } from '../util/paths.js';
import { run } from '../util/process.js';
import { buildAgent } from './agent-build.js';
import { writeCpio, type CpioEntry } from './cpio.js';
import { moduleLoadOrder, type Kernel } from './kernel.js';
import { packageRoot } from '../util/package-root.js';

/**
 * The initramfs: cs's own init script, a static busybox, the cs agent and the
 * kernel modules a workspace needs, as an uncompressed cpio archive (under
 * TCG, the kernel unpacks plain cpio faster than it inflates gzip). Built from
 * its inputs' contents and cached under `$CS_HOME/initramfs/HASH.cpio`, so a
 * new kernel, busybox or agent gives a new archive and nothing is rebuilt
 * otherwise.
 */

/** In load order; dependencies are added from modules.dep. */
export const GUEST_MODULES = ['virtio_mmio', 'virtio_blk', 'virtio_console', 'virtio_net', 'erofs', 'overlay'] as const;

/** Where a static busybox is found (Debian's busybox-static installs /bin/busybox). */
export const BUSYBOX_CANDIDATES = ['/bin/busybox', '/usr/bin/busybox'];

/** Bumped when the archive's layout changes, so older caches are not reused. */
const LAYOUT = 'cs-initramfs/3';

export interface InitramfsOptions {
  kernel: Kernel;
  env?: Env;
  busybox?: string;
}

export interface Initramfs {
  path: string;
  id: string;
  bytes: number;
}

/** True when the ELF file has no program interpreter, i.e. is statically linked. */
export function isStaticElf(bytes: Buffer): boolean {
  if (bytes.length < 64 || bytes.readUInt32BE(0) !== 0x7f454c46) return false;
  if (bytes[4] !== 2 || bytes[5] !== 1) return false; // 64-bit little-endian only: the guest is x86-64
  const phoff = Number(bytes.readBigUInt64LE(32));
  const phentsize = bytes.readUInt16LE(54);
  const phnum = bytes.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + 4 > bytes.length) return false;
    if (bytes.readUInt32LE(at) === 3) return false; // PT_INTERP
  }
  return true;
}

/** The first static busybox among the candidates (or the one given), with its bytes. */
async function locateBusybox(explicit?: string): Promise<{ path: string; bytes: Buffer } | undefined> {
  for (const path of explicit ? [explicit] : BUSYBOX_CANDIDATES) {
    if (!existsSync(path)) continue;
    const bytes = await readFile(path);
    if (isStaticElf(bytes)) return { path, bytes };
    if (explicit) throw new VmError(`${path} is not a static busybox`, { code: 'BUSYBOX_MISSING' });
  }
  return undefined;
}

async function findBusybox(explicit?: string): Promise<{ path: string; bytes: Buffer }> {
  const found = await locateBusybox(explicit);
  if (found) return found;
  throw new VmError('no static busybox found for the guest init', {
    code: 'BUSYBOX_MISSING',
    suggestions: ['install it with `apt-get install busybox-static`, or run `cs setup` as root'],
  });
}

async function moduleBytes(path: string): Promise<Buffer> {
  const bytes = await readFile(path);
  if (path.endsWith('.ko')) return bytes;
  if (path.endsWith('.ko.gz')) return gunzipSync(bytes);
  // busybox insmod reads plain modules only: unpack the others here.
  const tool = path.endsWith('.ko.xz') ? 'xz' : path.endsWith('.ko.zst') ? 'zstd' : undefined;
  if (!tool) throw new VmError(`unknown kernel module format: ${path}`);
  const { execa } = await import('execa');
  const result = await execa(tool, ['-dc', path], { encoding: 'buffer', reject: false });
  if (result.exitCode !== 0) throw new VmError(`cannot decompress ${path} with ${tool}`);
  return Buffer.from(result.stdout);
}

export async function ensureInitramfs(options: InitramfsOptions): Promise<Initramfs> {
  const init = await readFile(join(packageRoot(), 'guest', 'init.sh'));
  const client = await readFile(join(packageRoot(), 'guest', 'cs-client.sh'));
  const { path: busyboxPath, bytes: busybox } = await findBusybox(options.busybox);
  const agent = await readFile(await buildAgent(options.env ? { env: options.env } : {}));
  const modules: { name: string; data: Buffer }[] = [];
  for (const [i, path] of (await moduleLoadOrder(options.kernel, GUEST_MODULES)).entries()) {
    const base = path.slice(path.lastIndexOf('/') + 1).replace(/\.ko(\..*)?$/, '');
    modules.push({ name: `${String(i).padStart(2, '0')}-${base}.ko`, data: await moduleBytes(join(options.kernel.modules, path)) });
  }

  const hash = createHash('sha256');
  for (const part of [LAYOUT, options.kernel.version, init, client, busybox, agent, ...modules.flatMap((m) => [m.name, m.data])]) {
    hash.update(typeof part === 'string' ? part : part);
    hash.update('\0');
  }
  const id = hash.digest('hex').slice(0, 16);
  const dir = join(dataDir(options.env), 'initramfs');
  const path = join(dir, `${id}.cpio`);
  if (existsSync(path)) return { path, id, bytes: (await readFile(path)).length };

  const entries: CpioEntry[] = [
    { type: 'dir', path: 'bin' },
    { type: 'dir', path: 'sbin' },
    { type: 'dir', path: 'usr' },
    { type: 'dir', path: 'usr/bin' },
    { type: 'dir', path: 'usr/sbin' },
    { type: 'file', path: 'bin/busybox', data: busybox, mode: 0o755 },
    { type: 'dir', path: 'cs' },
    { type: 'file', path: 'cs/agent', data: agent, mode: 0o755 },
    { type: 'file', path: 'cs/cs-client.sh', data: client, mode: 0o755 },
    { type: 'dir', path: 'dev' },
    { type: 'char', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
    { type: 'char', path: 'dev/null', major: 1, minor: 3, mode: 0o666 },
    { type: 'file', path: 'init', data: init, mode: 0o755 },
    { type: 'dir', path: 'modules' },
    ...modules.map((m): CpioEntry => ({ type: 'file', path: `modules/${m.name}`, data: m.data, mode: 0o644 })),
    { type: 'dir', path: 'proc' },
    { type: 'dir', path: 'sys' },
    { type: 'dir', path: 'sysroot' },
    { type: 'dir', path: 'tmp', mode: 0o1777 },
  ];
  // busybox's applets as symlinks, made here rather than by `busybox
  // --install` at every boot (hundreds of syscalls under emulation).
  for (const applet of await busyboxApplets(busyboxPath)) {
    if (applet === 'bin/busybox' || entries.some((e) => e.path === applet)) continue;
    entries.push({ type: 'symlink', path: applet, target: '/bin/busybox' });
  }
  const archive = writeCpio(entries);
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(path, archive);
  return { path, id, bytes: archive.length };
}

/** Applet paths (bin/sh, usr/bin/tr, ...) as busybox lists them, without the leading slash. */
async function busyboxApplets(busybox: string): Promise<string[]> {
  const { stdout } = await run(busybox, ['--list-full']);
  return stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => /^(bin|sbin|usr\/bin|usr\/sbin)\/[A-Za-z0-9._\[\]-]+$/.test(l))
    .sort();
}

/** For `cs doctor`: whether the pieces of an initramfs are at hand, without building one. */
export async function initramfsPrerequisites(): Promise<{ busybox: string | undefined; cc: boolean }> {
  const busybox = (await locateBusybox())?.path;
  const cc = await run('cc', ['--version']).then(
    () => true,
    () => false,
  );
  return { busybox, cc };
}
