/**
 * The other OCI tools the interoperability tests compare cs with: umoci
 * (builds and unpacks OCI image layouts) and skopeo (copies images between
 * layouts and registries). Both run with a private HOME so no user
 * configuration or credentials are read.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';

export interface ToolRun {
  stdout: Buffer;
  stderr: string;
}

export async function tool(command: 'umoci' | 'skopeo', args: readonly string[], home: string): Promise<ToolRun> {
  const result = await execa(command, command === 'skopeo' ? ['--insecure-policy', ...args] : args, {
    env: { HOME: home, PATH: process.env['PATH'] ?? '/usr/bin:/bin', REGISTRY_AUTH_FILE: join(home, 'auth.json'), XDG_RUNTIME_DIR: home, TMPDIR: home },
    extendEnv: false,
    stdin: 'ignore',
    encoding: 'buffer',
    stripFinalNewline: false,
    reject: false,
    timeout: 60_000,
  });
  if (result.exitCode !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited ${String(result.exitCode)}:\n${Buffer.from(result.stderr).toString('utf8')}`);
  }
  return { stdout: Buffer.from(result.stdout), stderr: Buffer.from(result.stderr).toString('utf8') };
}

export interface LayoutImage {
  manifestDigest: string;
  manifest: Buffer;
  config: { digest: string; size: number };
  layers: { digest: string; size: number; mediaType: string }[];
}

/** The image tagged `tag` in an OCI image layout, read straight from its files. */
export async function readLayout(layout: string, tag: string): Promise<LayoutImage> {
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as {
    manifests: { digest: string; annotations?: Record<string, string> }[];
  };
  const entry = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
  if (!entry) throw new Error(`no ${tag} in ${layout}/index.json`);
  const manifest = await layoutBlob(layout, entry.digest);
  const parsed = JSON.parse(manifest.toString('utf8')) as Pick<LayoutImage, 'config' | 'layers'>;
  return { manifestDigest: entry.digest, manifest, config: parsed.config, layers: parsed.layers };
}

export function layoutBlob(layout: string, digest: string): Promise<Buffer> {
  const [algorithm = '', hex = ''] = digest.split(':');
  return readFile(join(layout, 'blobs', algorithm, hex));
}

export async function layoutDigests(layout: string): Promise<string[]> {
  return (await readdir(join(layout, 'blobs', 'sha256'))).map((hex) => `sha256:${hex}`).sort();
}
