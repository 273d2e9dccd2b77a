import type { Readable } from 'node:stream';
import { InputError } from '../util/errors.js';
import { run } from '../util/process.js';
import { packDirectory } from './pack.js';

/**
 * An overlayfs upper directory as an OCI layer. A workspace's disk holds the
 * upper layer of its root (init mounts it with redirect_dir, index and
 * metacopy off, so the upper is plain files): it is exactly what changed.
 * Overlay whiteouts (character devices 0/0) become `.wh.NAME`, and folders
 * marked `trusted.overlay.opaque=y` (a directory removed and made again)
 * get `.wh..wh..opq`, as image-spec layer.md defines.
 */

/**
 * What a base snapshot never takes from a workspace: the home folder (home
 * snapshots carry it), runtime folders, and what cs itself writes at boot
 * or keeps per workspace.
 */
export const BASE_SNAPSHOT_EXCLUDES: readonly string[] = [
  'home',
  'proc',
  'sys',
  'dev',
  'run',
  'tmp',
  'etc/hostname',
  'etc/hosts',
  'etc/resolv.conf',
  'var/lib/cs',
  'var/log/cs',
  'root/.bash_history',
];

export function excludedBy(prefixes: readonly string[]): (path: string) => boolean {
  return (path) => prefixes.some((p) => path === p || path.startsWith(`${p}/`));
}

/** Folders of `upper` (relative paths) that overlayfs marked opaque. Reading trusted.* xattrs needs root. */
export async function opaqueDirs(upper: string): Promise<Set<string>> {
  const result = await run('getfattr', ['-R', '-P', '--absolute-names', '-d', '-m', '^trusted\\.overlay\\.opaque$', upper], { okExitCodes: [0, 1] });
  const out = new Set<string>();
  let current: string | undefined;
  for (const line of result.stdout.split('\n')) {
    if (line.startsWith('# file: ')) current = unescapeAttrPath(line.slice('# file: '.length));
    else if (current && /^trusted\.overlay\.opaque="?y"?$/.test(line.trim())) {
      if (current === upper) continue;
      if (!current.startsWith(`${upper}/`)) throw new InputError(`getfattr reported a path outside ${upper}: ${current}`);
      out.add(current.slice(upper.length + 1));
    }
  }
  return out;
}

/** getfattr escapes bytes outside printable ASCII (and backslash) as \\ooo. */
function unescapeAttrPath(text: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '\\' && /^[0-7]{3}$/.test(text.slice(i + 1, i + 4))) {
      bytes.push(parseInt(text.slice(i + 1, i + 4), 8));
      i += 3;
    } else bytes.push(...Buffer.from(text[i] as string, 'utf8'));
  }
  return Buffer.from(bytes).toString('utf8');
}

export interface UpperLayerOptions {
  /** Relative path prefixes to leave out (default: BASE_SNAPSHOT_EXCLUDES). */
  exclude?: readonly string[];
  /** Fixed mtime for every entry (seconds), for layers that must not depend on when files were touched. */
  mtime?: number;
}

export async function packOverlayUpper(upper: string, options: UpperLayerOptions = {}): Promise<Readable> {
  const opaque = await opaqueDirs(upper);
  return packDirectory(upper, {
    exclude: excludedBy(options.exclude ?? BASE_SNAPSHOT_EXCLUDES),
    overlay: { opaque },
    ...(options.mtime === undefined ? {} : { mtime: options.mtime }),
  });
}
