/**
 * A throw-away "home" for one simulated user of cs: its own content store
 * (CS_HOME), config file, and every place credentials are read from or
 * written to, all inside one temporary folder. Nothing a test does touches
 * the real home directory.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { ContentStore } from '../../../src/oci/store.js';
import { storeDir } from '../../../src/util/paths.js';

export interface TestHome {
  root: string;
  /** Environment for library calls and for the CLI (a copy of process.env with every cs/credential path redirected). */
  env: Record<string, string | undefined>;
  /** $DOCKER_CONFIG; cs writes credentials to config.json here. */
  dockerConfig: string;
  /** $DOCKER_CONFIG/config.json */
  authFile: string;
  store(): Promise<ContentStore>;
  cleanup(): Promise<void>;
}

export async function makeHome(label = 'home'): Promise<TestHome> {
  const root = await mkdtemp(join(tmpdir(), `cs-oci-${label}-`));
  const dirs = {
    csHome: join(root, 'cs-home'),
    dockerConfig: join(root, 'docker'),
    runtime: join(root, 'run'),
    config: join(root, 'config'),
    data: join(root, 'data'),
    cache: join(root, 'cache'),
  };
  await Promise.all(Object.values(dirs).map((d) => mkdir(d, { recursive: true })));
  const env: Record<string, string | undefined> = {
    ...process.env,
    HOME: root,
    CS_HOME: dirs.csHome,
    CS_CONFIG: join(root, 'config.yaml'),
    DOCKER_CONFIG: dirs.dockerConfig,
    REGISTRY_AUTH_FILE: '',
    XDG_RUNTIME_DIR: dirs.runtime,
    XDG_CONFIG_HOME: dirs.config,
    XDG_DATA_HOME: dirs.data,
    XDG_CACHE_HOME: dirs.cache,
  };
  return {
    root,
    env,
    dockerConfig: dirs.dockerConfig,
    authFile: join(dirs.dockerConfig, 'config.json'),
    store: () => ContentStore.open(storeDir(env)),
    // Trees deeper than PATH_MAX defeat rm() by path; GNU rm walks them by descriptor.
    cleanup: () => rm(root, { recursive: true, force: true }).catch(() => execa('rm', ['-rf', root]).then(() => undefined)),
  };
}

/** Write `files` (relative path → contents) under `dir`, creating folders. */
export async function writeTree(dir: string, files: Record<string, string | Uint8Array>): Promise<void> {
  for (const [path, contents] of Object.entries(files)) {
    const full = join(dir, path);
    await mkdir(join(full, '..'), { recursive: true });
    await writeFile(full, contents);
  }
}

export function sha256(bytes: Uint8Array | string): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** A loopback port on which nothing listens (it was free a moment ago). */
export async function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close((error) => (error ? reject(error) : resolve(port)));
    });
  });
}

/** Every string form a secret could leak in: itself and base64 of `user:secret`. */
export function secretForms(username: string, password: string): string[] {
  return [password, Buffer.from(`${username}:${password}`).toString('base64'), Buffer.from(password).toString('base64')];
}
