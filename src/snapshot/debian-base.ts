import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { openImageContext, userReference } from '../oci/image.js';
import { formatReference } from '../oci/reference.js';
import { InputError, VmError } from '../util/errors.js';
import { dataDir, type Env } from '../util/paths.js';
import { run } from '../util/process.js';
import { importDirectory, type ImportResult } from './import-dir.js';

/**
 * A Debian base image built on this machine: `debootstrap --variant=minbase`
 * from the mirror apt already uses, imported into the local store. This is
 * how a host with no internet registry gets a real Debian base to boot.
 */

export const DEFAULT_DEBIAN_BASE = 'localhost/debian:bookworm';

/** The first Debian mirror in apt's sources (deb822 `.sources` files, then the one-line format). */
export async function aptMirror(): Promise<string | undefined> {
  const dir = '/etc/apt/sources.list.d';
  const files = (await readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith('.sources')).sort();
  for (const file of files) {
    const text = await readFile(join(dir, file), 'utf8').catch(() => '');
    for (const stanza of text.split(/\n\s*\n/)) {
      if (!/^Types:.*\bdeb\b/m.test(stanza) || /^Enabled:\s*no/im.test(stanza)) continue;
      const uris = /^URIs:\s*(\S+)/m.exec(stanza)?.[1];
      const suites = /^Suites:\s*(.+)$/m.exec(stanza)?.[1] ?? '';
      if (uris && !/security/.test(uris) && !/-security\b/.test(suites)) return uris;
    }
  }
  for (const file of ['/etc/apt/sources.list', ...((await readdir(dir).catch(() => [] as string[])).filter((f) => f.endsWith('.list')).map((f) => join(dir, f)))]) {
    const text = await readFile(file, 'utf8').catch(() => '');
    const match = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/m.exec(text);
    if (match?.[1] && !/security/.test(match[1])) return match[1];
  }
  return undefined;
}

export interface DebianBaseOptions {
  reference?: string;
  suite?: string;
  mirror?: string;
  /** Extra packages (comma-separated list for debootstrap --include). */
  include?: readonly string[];
  /** Build again even if the image exists. */
  force?: boolean;
  env?: Env;
  onPhase?: (phase: string) => void;
}

export interface DebianBaseResult {
  reference: string;
  built: boolean;
  digest?: string;
  import?: ImportResult;
}

export async function buildDebianBase(options: DebianBaseOptions = {}): Promise<DebianBaseResult> {
  const reference = formatReference(userReference(options.reference ?? DEFAULT_DEBIAN_BASE));
  const context = await openImageContext(options.env ? { env: options.env } : {});
  if (!options.force && (await context.store.resolveTag(reference))) return { reference, built: false };
  if (process.getuid?.() !== 0) {
    throw new InputError('building a Debian base image needs root (debootstrap creates device nodes and chroots)', {
      suggestions: ['run `sudo cs setup`, or import a root filesystem you already have with `cs image import DIR REF`'],
    });
  }
  if (!existsSync('/usr/sbin/debootstrap')) {
    throw new VmError('debootstrap is not installed', { code: 'MISSING_TOOL', suggestions: ['apt-get install debootstrap, or run `cs setup` as root'] });
  }
  const mirror = options.mirror ?? (await aptMirror());
  if (!mirror) throw new VmError('no Debian mirror found in apt\'s sources', { suggestions: ['pass --mirror URL'] });
  const suite = options.suite ?? 'bookworm';
  const work = await mkdtemp(join(dataDir(options.env), '.debootstrap-'));
  try {
    const tree = join(work, 'root');
    options.onPhase?.(`debootstrap ${suite} from ${mirror}`);
    const args = ['--variant=minbase'];
    if (options.include && options.include.length > 0) args.push(`--include=${options.include.join(',')}`);
    await run('debootstrap', [...args, suite, tree, mirror], { timeoutMs: 30 * 60_000 });
    // Package caches and lists are rebuilt by `apt-get update`; they only weigh.
    for (const dir of [join(tree, 'var', 'cache', 'apt', 'archives'), join(tree, 'var', 'lib', 'apt', 'lists')]) {
      for (const name of await readdir(dir).catch(() => [] as string[])) {
        if (name !== 'partial' && name !== 'lock') await rm(join(dir, name), { recursive: true, force: true });
      }
    }
    options.onPhase?.(`import as ${reference}`);
    const imported = await importDirectory({ dir: tree, reference, context, ...(options.env ? { env: options.env } : {}) });
    return { reference, built: true, digest: imported.digest, import: imported };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
