import { join } from 'node:path';
import { debootstrapOnce } from '../test/helpers/vm.js';
import { cacheDir } from './common.js';

/**
 * A real Debian root for benchmarks: `debootstrap --variant=minbase
 * bookworm`, made once and kept in .bench-cache/. The mirror is the one apt
 * already uses on this machine (read from /etc/apt/sources.list*), never a
 * host written here.
 */

export function debianMinbase(): Promise<string> {
  return debootstrapOnce(join(cacheDir, 'debian-minbase'), (mirror) =>
    process.stderr.write(`debootstrap --variant=minbase bookworm from ${mirror} (once; cached in .bench-cache/)…\n`),
  );
}
