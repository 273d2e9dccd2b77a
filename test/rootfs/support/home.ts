/**
 * A throw-away cs home per scenario: CS_HOME (content store and the rootfs
 * cache), a config file that does not exist and a DOCKER_CONFIG of its own,
 * so nothing a test does touches the real home. Beside CS_HOME (outside it)
 * a `victim` folder stands for the rest of the host: hostile layers aim at
 * it and tests check it is untouched.
 */
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { ContentStore } from '../../../src/oci/store.js';
import { TreeCache } from '../../../src/rootfs/cache.js';
import { storeDir } from '../../../src/util/paths.js';

export interface TestHome {
  root: string;
  csHome: string;
  env: Record<string, string | undefined>;
  victim: string;
  store: ContentStore;
  /** $CS_HOME/rootfs */
  cacheRoot: string;
  cache: TreeCache;
  /** A fresh path (not created) under the home for an output. */
  out(name: string): string;
  /** Names under $CS_HOME/rootfs/trees (every entry, complete or not). */
  treeEntries(): string[];
  /** Names under $CS_HOME/rootfs/tmp. */
  tmpEntries(): string[];
  cleanup(): Promise<void>;
}

export async function makeHome(label: string): Promise<TestHome> {
  const root = await mkdtemp(join(tmpdir(), `cs-rootfs-${label}-`));
  const csHome = join(root, 'cs-home');
  const docker = join(root, 'docker');
  const victim = join(root, 'victim');
  const outs = join(root, 'out');
  await Promise.all([csHome, docker, victim, outs].map((d) => mkdir(d, { recursive: true })));
  const env = { ...process.env, HOME: root, CS_HOME: csHome, CS_CONFIG: join(root, 'none.yaml'), DOCKER_CONFIG: docker, XDG_CONFIG_HOME: join(root, 'xdg-config'), XDG_DATA_HOME: join(root, 'xdg-data') };
  const store = await ContentStore.open(storeDir(env));
  const cacheRoot = join(csHome, 'rootfs');
  const list = (path: string): string[] => (existsSync(path) ? readdirSync(path).sort() : []);
  return {
    root,
    csHome,
    env,
    victim,
    store,
    cacheRoot,
    cache: new TreeCache(cacheRoot),
    out: (name) => join(outs, name),
    treeEntries: () => list(join(cacheRoot, 'trees')),
    tmpEntries: () => list(join(cacheRoot, 'tmp')),
    cleanup: () => rm(root, { recursive: true, force: true }),
  };
}

/** `makeHome` for one test file: every home it makes is removed after the file's tests. */
export function homesOfThisFile(): (label: string) => Promise<TestHome> {
  const homes: TestHome[] = [];
  afterAll(async () => {
    await Promise.all(homes.map((h) => h.cleanup()));
  });
  return async (label) => {
    const home = await makeHome(label);
    homes.push(home);
    return home;
  };
}
