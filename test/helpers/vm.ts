/**
 * What VM tests share: a guest kernel fetched once per machine (through apt,
 * as `cs setup` does) into `.test-cache/`, and small real images to boot:
 * a tiny root of a static busybox (boots in a few seconds under TCG) and a
 * real Debian minbase built with debootstrap (cached, built once).
 */
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { importDirectory } from '../../src/snapshot/import-dir.js';
import { ensureKernel } from '../../src/vm/kernel.js';
import { ROOT } from './cli.js';

export const CACHE = join(ROOT, '.test-cache');
/** A CS_HOME holding what is expensive and safe to share: kernels, agent builds, initramfs archives. */
export const SHARED_HOME = join(CACHE, 'cs-home');

export const TINY_IMAGE = 'localhost/test/tiny:1';
export const DEBIAN_IMAGE = 'localhost/test/debian:bookworm';

export async function sharedKernel(): Promise<void> {
  await mkdir(SHARED_HOME, { recursive: true });
  await ensureKernel({ env: { CS_HOME: SHARED_HOME } });
}

/** A fresh CS_HOME whose kernel, agent and initramfs caches are the shared ones. */
export async function vmHome(): Promise<{ home: string; env: Record<string, string>; cleanup: () => Promise<void> }> {
  await sharedKernel();
  // Short: QEMU's and the supervisor's unix sockets live in workspace folders.
  const home = await mkdtemp(join(tmpdir(), 'csvm-'));
  for (const dir of ['kernels', 'agent', 'initramfs']) {
    await mkdir(join(SHARED_HOME, dir), { recursive: true });
    await symlink(join(SHARED_HOME, dir), join(home, dir));
  }
  const env: Record<string, string> = { ...(process.env as Record<string, string>), CS_HOME: home, CS_CONFIG: join(home, 'config.yaml') };
  return {
    home,
    env,
    cleanup: async () => {
      // Any VM a failed test left running must not outlive the test run.
      await execa('pkill', ['-f', home], { reject: false });
      await rm(home, { recursive: true, force: true });
    },
  };
}

/** A minimal root: static busybox and its applets, root and nobody, an os-release. */
export async function buildTinyRoot(dir: string): Promise<void> {
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'root', 'home', 'tmp', 'var/log', 'proc', 'sys', 'dev', 'run']) {
    await mkdir(join(dir, d), { recursive: true });
  }
  await execa('cp', ['/bin/busybox', join(dir, 'bin', 'busybox')]);
  const { stdout } = await execa('/bin/busybox', ['--list-full']);
  for (const applet of stdout.split('\n').filter(Boolean)) {
    const path = join(dir, applet);
    if (!existsSync(path)) await symlink('/bin/busybox', path);
  }
  await writeFile(join(dir, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n');
  await writeFile(join(dir, 'etc', 'group'), 'root:x:0:\nnogroup:x:65534:\n');
  await writeFile(join(dir, 'etc', 'os-release'), 'PRETTY_NAME="cs test image"\nID=cs-test\n');
  await chmod(join(dir, 'tmp'), 0o1777);
}

export async function importTinyImage(env: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'cs-tiny-'));
  try {
    await buildTinyRoot(dir);
    await importDirectory({ dir, reference: TINY_IMAGE, env });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return TINY_IMAGE;
}

/**
 * debootstrap minbase into `tree`, once: a `TREE.complete` marker says a
 * previous run finished (about a minute). Shared with the benchmarks.
 */
export async function debootstrapOnce(tree: string, onStart?: (mirror: string) => void): Promise<string> {
  if (existsSync(`${tree}.complete`)) return tree;
  await rm(tree, { recursive: true, force: true });
  await mkdir(join(tree, '..'), { recursive: true });
  const { aptMirror } = await import('../../src/snapshot/debian-base.js');
  const mirror = await aptMirror();
  if (!mirror) throw new Error('no apt mirror configured on this machine');
  onStart?.(mirror);
  await execa('debootstrap', ['--variant=minbase', 'bookworm', tree, mirror], { timeout: 20 * 60_000 });
  await writeFile(`${tree}.complete`, '');
  return tree;
}

/** The tests' Debian minbase, cached in .test-cache/. */
export function debianTree(): Promise<string> {
  return debootstrapOnce(join(CACHE, 'debian-minbase'));
}

export async function importDebianImage(env: Record<string, string>): Promise<string> {
  await importDirectory({ dir: await debianTree(), reference: DEBIAN_IMAGE, env });
  return DEBIAN_IMAGE;
}

/** Writes a sandbox definition into `dir` and returns its path. */
export async function writeDefinition(dir: string, name: string, yaml: string): Promise<string> {
  const file = join(dir, `${name}.yaml`);
  await writeFile(file, yaml);
  return file;
}

export async function listQemu(home: string): Promise<string[]> {
  const { stdout } = await execa('pgrep', ['-af', 'qemu-system'], { reject: false });
  return stdout.split('\n').filter((l) => l.includes(home));
}

