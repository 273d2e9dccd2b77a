import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SHARED_HOME } from '../../test/helpers/vm.js';
import { VmError } from '../util/errors.js';
import { packageRoot } from '../util/package-root.js';
import { BUSYBOX_CANDIDATES, ensureInitramfs, GUEST_MODULES, initramfsPrerequisites, isStaticElf } from './initramfs.js';
import type { Kernel } from './kernel.js';

/**
 * The initramfs: which binaries count as static, and the archive built from
 * a kernel folder made here (module files with recognisable contents, some
 * compressed as Debian ships them) with this machine's real busybox and the
 * real agent build, read back with GNU cpio.
 */

/** The machine's static busybox, where cs looks for it. */
const BUSYBOX = BUSYBOX_CANDIDATES.find((p) => existsSync(p) && isStaticElf(readFileSync(p)));

/** A 64-bit little-endian ELF header with `phnum` program headers of the given types right after it. */
function elf(types: number[], options: { cls?: number; truncate?: number } = {}): Buffer {
  const phentsize = 56;
  const bytes = Buffer.alloc(64 + types.length * phentsize);
  bytes.writeUInt32BE(0x7f454c46, 0);
  bytes[4] = options.cls ?? 2;
  bytes[5] = 1;
  bytes[6] = 1;
  bytes.writeBigUInt64LE(64n, 32); // e_phoff
  bytes.writeUInt16LE(64, 52); // e_ehsize
  bytes.writeUInt16LE(phentsize, 54);
  bytes.writeUInt16LE(types.length, 56);
  types.forEach((t, i) => bytes.writeUInt32LE(t, 64 + i * phentsize));
  return options.truncate === undefined ? bytes : bytes.subarray(0, options.truncate);
}

describe('isStaticElf', () => {
  it('is true for the static busybox and false for a dynamically linked program', async () => {
    expect(BUSYBOX, 'a static busybox (busybox-static) is installed').toBeDefined();
    expect(isStaticElf(await readFile(BUSYBOX as string))).toBe(true);
    expect(isStaticElf(await readFile('/bin/ls'))).toBe(false);
  });

  it('is false for what is not a 64-bit little-endian ELF file', () => {
    expect(isStaticElf(Buffer.alloc(0))).toBe(false);
    expect(isStaticElf(Buffer.from('#!/bin/sh\necho not a binary at all, just a script\n'.repeat(3)))).toBe(false);
    expect(isStaticElf(Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 31 + 7) % 256)))).toBe(false);
    expect(isStaticElf(elf([1], { cls: 1 }))).toBe(false); // 32-bit
    expect(isStaticElf(elf([1]).subarray(0, 40))).toBe(false); // shorter than a header
  });

  it('reads the program headers: PT_INTERP anywhere makes it dynamic; headers cut off are not trusted', () => {
    expect(isStaticElf(elf([1, 1, 4]))).toBe(true); // PT_LOAD, PT_LOAD, PT_NOTE
    expect(isStaticElf(elf([]))).toBe(true);
    expect(isStaticElf(elf([6, 3, 1]))).toBe(false); // PT_PHDR, PT_INTERP, PT_LOAD
    expect(isStaticElf(elf([1, 1, 3], { truncate: 64 + 56 + 2 }))).toBe(false);
  });
});

describe('initramfsPrerequisites', () => {
  it('finds the static busybox and the C compiler the agent needs', async () => {
    const found = await initramfsPrerequisites();
    expect(found.busybox).toBe(BUSYBOX);
    expect(found.cc).toBe(true);
  });
});

/** Module files as modules.dep names them, some compressed as Debian ships them; each holds "module NAME". */
const MODULE_FILES = [
  'kernel/drivers/virtio/virtio_ring.ko',
  'kernel/drivers/virtio/virtio.ko',
  'kernel/drivers/virtio/virtio_mmio.ko.gz',
  'kernel/drivers/block/virtio_blk.ko',
  'kernel/drivers/char/virtio_console.ko',
  'kernel/net/core/failover.ko',
  'kernel/drivers/net/net_failover.ko',
  'kernel/drivers/net/virtio_net.ko.xz',
  'kernel/fs/erofs/erofs.ko.zst',
  'kernel/fs/overlayfs/overlay.ko',
];

async function moduleFile(path: string): Promise<Buffer> {
  const plain = Buffer.from(`module ${path.slice(path.lastIndexOf('/') + 1).replace(/\.ko.*$/, '')}`);
  if (path.endsWith('.gz')) return gzipSync(plain);
  if (path.endsWith('.xz') || path.endsWith('.zst')) {
    const result = await execa(path.endsWith('.xz') ? 'xz' : 'zstd', ['-c', '-q'], { input: plain, encoding: 'buffer' });
    return Buffer.from(result.stdout);
  }
  return plain;
}

const DEP = [
  'kernel/drivers/virtio/virtio_ring.ko:',
  'kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko',
  'kernel/drivers/virtio/virtio_mmio.ko.gz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko',
  'kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko',
  'kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko',
  'kernel/net/core/failover.ko:',
  'kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko',
  'kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko',
  'kernel/fs/erofs/erofs.ko.zst:',
  'kernel/fs/overlayfs/overlay.ko:',
  '',
].join('\n');

describe('ensureInitramfs', () => {
  let work: string;
  let home: string;
  let kernel: Kernel;

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'cs-initramfs-'));
    home = join(work, 'home');
    // The agent build is shared with the VM tests (compiling it takes seconds).
    await mkdir(join(SHARED_HOME, 'agent'), { recursive: true });
    await mkdir(home);
    await symlink(join(SHARED_HOME, 'agent'), join(home, 'agent'));
    const version = '6.1.0-99-test';
    const modules = join(work, 'kernel', 'lib', 'modules', version);
    for (const path of MODULE_FILES) {
      await mkdir(join(modules, path, '..'), { recursive: true });
      await writeFile(join(modules, path), await moduleFile(path));
    }
    await writeFile(join(modules, 'modules.dep'), DEP);
    kernel = { version, dir: join(work, 'kernel'), vmlinuz: join(work, 'kernel', 'vmlinuz'), modules, source: 'test' };
  }, 60_000);

  afterAll(async () => {
    await rm(work, { recursive: true, force: true });
  });

  it('packs init, busybox, the agent and the modules in load order, decompressed, with the device nodes', async () => {
    const built = await ensureInitramfs({ kernel, env: { CS_HOME: home } });
    expect(built.path.startsWith(join(home, 'initramfs'))).toBe(true);
    expect(built.path.endsWith(`${built.id}.cpio`)).toBe(true);
    expect((await stat(built.path)).size).toBe(built.bytes);

    const listing = (await execa('cpio', ['-itv', '--quiet', '--numeric-uid-gid', '-F', built.path])).stdout.split('\n');
    const names = listing.map((l) => l.split(/\s+/).slice(8).join(' '));
    expect(names.filter((n) => n.startsWith('modules/'))).toEqual([
      'modules/00-virtio_ring.ko',
      'modules/01-virtio.ko',
      'modules/02-virtio_mmio.ko',
      'modules/03-virtio_blk.ko',
      'modules/04-virtio_console.ko',
      'modules/05-failover.ko',
      'modules/06-net_failover.ko',
      'modules/07-virtio_net.ko',
      'modules/08-erofs.ko',
      'modules/09-overlay.ko',
    ]);
    expect(listing.find((l) => / dev\/console$/.test(l))).toMatch(/^crw------- .* 5, +1 /);
    expect(listing.find((l) => / dev\/null$/.test(l))).toMatch(/^crw-rw-rw- .* 1, +3 /);
    expect(listing.find((l) => / init$/.test(l))).toMatch(/^-rwxr-xr-x /);
    expect(listing.find((l) => / tmp$/.test(l))).toMatch(/^drwxrwxrwt /);

    const out = join(work, 'out');
    await mkdir(out);
    await execa('cpio', ['-idm', '--quiet', '--no-absolute-filenames', '-F', built.path, '-f', 'dev/*'], { cwd: out });
    expect(await readFile(join(out, 'init'), 'utf8')).toBe(await readFile(join(packageRoot(), 'guest', 'init.sh'), 'utf8'));
    expect((await readFile(join(out, 'bin', 'busybox'))).equals(await readFile(BUSYBOX as string))).toBe(true);
    expect(isStaticElf(await readFile(join(out, 'cs', 'agent')))).toBe(true);
    // busybox insmod takes plain modules only: gz, xz and zst were unpacked.
    for (const name of ['virtio_mmio', 'virtio_net', 'erofs', 'overlay']) {
      const file = names.find((n) => n.endsWith(`-${name}.ko`)) as string;
      expect(await readFile(join(out, file), 'utf8')).toBe(`module ${name}`);
    }
    expect(GUEST_MODULES.every((m) => names.some((n) => n.endsWith(`-${m}.ko`)))).toBe(true);
  });

  it('reuses the archive for the same inputs and builds a new one when a module changes', async () => {
    const first = await ensureInitramfs({ kernel, env: { CS_HOME: home } });
    const mtime = (await stat(first.path)).mtimeMs;
    const again = await ensureInitramfs({ kernel, env: { CS_HOME: home } });
    expect(again).toEqual(first);
    expect((await stat(again.path)).mtimeMs).toBe(mtime);

    await writeFile(join(kernel.modules, 'kernel/fs/overlayfs/overlay.ko'), 'module overlay, rebuilt');
    const changed = await ensureInitramfs({ kernel, env: { CS_HOME: home } });
    expect(changed.id).not.toBe(first.id);
    expect(changed.path).not.toBe(first.path);
  });

  it('refuses a busybox that is not static, and a kernel without a module the guest needs', async () => {
    const dynamic = await ensureInitramfs({ kernel, env: { CS_HOME: home }, busybox: '/bin/ls' }).catch((e: unknown) => e);
    expect(dynamic).toBeInstanceOf(VmError);
    expect((dynamic as VmError).code).toBe('BUSYBOX_MISSING');
    expect((dynamic as VmError).message).toContain('/bin/ls is not a static busybox');

    const lacking = { ...kernel, modules: join(work, 'lacking') };
    await mkdir(lacking.modules);
    await writeFile(join(lacking.modules, 'modules.dep'), DEP.split('\n').filter((l) => !l.includes('erofs')).join('\n'));
    await expect(ensureInitramfs({ kernel: lacking, env: { CS_HOME: home } })).rejects.toThrow(/has no module erofs/);
  });
});
