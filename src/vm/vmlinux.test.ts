/**
 * Unpacking a bzImage for a PVH boot, on the real Debian kernel the VM
 * tests share (fetched through apt once per machine) and on inputs that
 * must be refused.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sharedKernel, SHARED_HOME } from '../../test/helpers/vm.js';
import { findKernel } from './kernel.js';
import { bzImagePayload, ensureVmlinux, hasPvhNote } from './vmlinux.js';

describe('the PVH vmlinux of a kernel', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cs-vmlinux-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('is unpacked from the Debian cloud kernel, with the PVH entry note', async () => {
    await sharedKernel();
    const kernel = await findKernel({ env: { CS_HOME: SHARED_HOME } });
    if (!kernel) throw new Error('no shared kernel');
    const image = await readFile(kernel.vmlinuz);
    const payload = bzImagePayload(image);
    expect(payload?.length).toBeGreaterThan(1024 * 1024);
    const out = join(dir, 'vmlinux');
    expect(await ensureVmlinux(kernel.vmlinuz, out)).toBe(out);
    const elf = await readFile(out);
    expect(elf.subarray(0, 4).toString('latin1')).toBe('\x7fELF');
    expect(hasPvhNote(elf)).toBe(true);
    // The size the kernel build appended to the payload is what came out.
    expect(elf.length).toBe(payload?.readUInt32LE(payload.length - 4));
    // A second call reuses the file.
    expect(await ensureVmlinux(kernel.vmlinuz, out)).toBe(out);
  }, 120_000);

  it('falls back to the bzImage for files that are not one, and remembers it', async () => {
    const fake = join(dir, 'not-a-kernel');
    await writeFile(fake, Buffer.alloc(4096, 7));
    const out = join(dir, 'fake-vmlinux');
    expect(await ensureVmlinux(fake, out)).toBeUndefined();
    expect(existsSync(out)).toBe(false);
    expect(existsSync(`${out}.none`)).toBe(true);
    expect(bzImagePayload(Buffer.alloc(100))).toBeUndefined();
  });

  it('finds no PVH note in ordinary programs', async () => {
    expect(hasPvhNote(await readFile('/bin/busybox'))).toBe(false);
    expect(hasPvhNote(Buffer.from('not an elf'))).toBe(false);
  });
});
