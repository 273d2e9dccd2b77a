import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { cacheDir, removeAll, sh } from './common.js';

/**
 * A real Debian root for benchmarks: `debootstrap --variant=minbase
 * bookworm`, made once and kept in .bench-cache/. The mirror is the one apt
 * already uses on this machine (read from /etc/apt/sources.list*), never a
 * host written here.
 */

async function aptMirror(): Promise<string> {
  const files: string[] = [];
  for (const dir of ['/etc/apt/sources.list.d']) {
    for (const name of await readdir(dir).catch(() => [] as string[])) if (/\.(sources|list)$/.test(name)) files.push(join(dir, name));
  }
  files.push('/etc/apt/sources.list');
  for (const file of files) {
    const text = await readFile(file, 'utf8').catch(() => '');
    const deb822 = /^URIs:\s*(\S+)/m.exec(text);
    if (deb822?.[1]) return deb822[1];
    const oneLine = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s/m.exec(text);
    if (oneLine?.[1]) return oneLine[1];
  }
  throw new Error('no Debian mirror found in /etc/apt/sources.list*');
}

export async function debianMinbase(): Promise<string> {
  const dir = join(cacheDir, 'debian-minbase');
  const marker = join(cacheDir, 'debian-minbase.complete');
  if (await stat(marker).then(() => true, () => false)) return dir;
  await removeAll(dir);
  const mirror = await aptMirror();
  process.stderr.write(`debootstrap --variant=minbase bookworm from ${mirror} (once; cached in .bench-cache/)…\n`);
  await sh('debootstrap', ['--variant=minbase', 'bookworm', dir, mirror], { stdio: ['ignore', 'ignore', 'inherit'] });
  await sh('touch', [marker]);
  return dir;
}
