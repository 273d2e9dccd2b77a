import type { Readable } from 'node:stream';
import { packDirectory } from './pack.js';

/**
 * An overlayfs upper directory as an OCI layer. A workspace's disk holds the
 * upper layer of its root (init mounts it with redirect_dir, index and
 * metacopy off, so the upper is plain files): it is exactly what changed.
 * Overlay whiteouts (character devices 0/0) become `.wh.NAME`, and folders
 * marked `trusted.overlay.opaque=y` (a directory removed and made again)
 * get `.wh..wh..opq`, as image-spec layer.md defines (see PackOptions.overlay).
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

export interface UpperLayerOptions {
  /** Relative path prefixes to leave out (default: BASE_SNAPSHOT_EXCLUDES). */
  exclude?: readonly string[];
  /** Fixed mtime for every entry (seconds), for layers that must not depend on when files were touched. */
  mtime?: number;
}

/** An upper directory on the host (reading its trusted.overlay.* attributes needs root). */
export function packOverlayUpper(upper: string, options: UpperLayerOptions = {}): Readable {
  return packDirectory(upper, {
    exclude: excludedBy(options.exclude ?? BASE_SNAPSHOT_EXCLUDES),
    overlay: true,
    xattrs: true,
    ...(options.mtime === undefined ? {} : { mtime: options.mtime }),
  });
}
