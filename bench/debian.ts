import { stat } from 'node:fs/promises';
import { aptMirror } from '../src/snapshot/debian-base.js';
import { join } from 'node:path';
import { cacheDir, removeAll, sh } from './common.js';

/**
 * A real Debian root for benchmarks: `debootstrap --variant=minbase
 * bookworm`, made once and kept in .bench-cache/. The mirror is the one apt
 * already uses on this machine (read from /etc/apt/sources.list*), never a
 * host written here.
 */

export async function debianMinbase(): Promise<string> {
  const dir = join(cacheDir, 'debian-minbase');
  const marker = join(cacheDir, 'debian-minbase.complete');
  if (await stat(marker).then(() => true, () => false)) return dir;
  await removeAll(dir);
  const mirror = await aptMirror();
  if (!mirror) throw new Error('no Debian mirror found in apt\'s sources');
  process.stderr.write(`debootstrap --variant=minbase bookworm from ${mirror} (once; cached in .bench-cache/)…\n`);
  await sh('debootstrap', ['--variant=minbase', 'bookworm', dir, mirror], { stdio: ['ignore', 'ignore', 'inherit'] });
  await sh('touch', [marker]);
  return dir;
}
