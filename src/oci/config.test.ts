import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError } from '../util/errors.js';
import { DEFAULT_WORKSPACE_LIMITS, isInsecure, loadConfig, mirrorsOf, parseConfig, type CsConfig } from './config.js';

const FILE = '/home/u/.config/cs/config.yaml';

function problemsOf(raw: unknown): string {
  try {
    parseConfig(raw, FILE);
  } catch (error) {
    expect(error).toBeInstanceOf(InputError);
    expect((error as InputError).exitCode).toBe(3);
    const message = (error as Error).message;
    expect(message.startsWith(`${FILE}: invalid config:\n`)).toBe(true);
    return message;
  }
  throw new Error('parseConfig accepted it');
}

describe('parseConfig', () => {
  it('reads a full config', () => {
    const config = parseConfig(
      {
        registries: [
          { location: 'registry.internal:5000', insecure: true, mirrors: [{ location: 'mirror.internal:5000', insecure: true }, { location: 'mirror2.example.com' }] },
          { location: 'docker.io' },
          { location: '[fd00::1]:5000', insecure: false },
        ],
        snapshot_registry: 'registry.internal:5000/team/snapshots',
        workspaces: { disk_size: '20Gi', quota: 100 },
      },
      FILE,
    );
    expect(config).toEqual({
      file: FILE,
      registries: [
        {
          location: 'registry.internal:5000',
          insecure: true,
          mirrors: [
            { location: 'mirror.internal:5000', insecure: true },
            { location: 'mirror2.example.com', insecure: false },
          ],
        },
        { location: 'docker.io', insecure: false, mirrors: [] },
        { location: '[fd00::1]:5000', insecure: false, mirrors: [] },
      ],
      snapshotRegistry: 'registry.internal:5000/team/snapshots',
      // A bare number is MiB, as in definitions.
      workspaces: { diskBytes: 20 * 1024 ** 3, quotaBytes: 100 * 1024 ** 2 },
    });
  });

  it('refuses workspace limits that are not sizes, too small, or unknown', () => {
    expect(() => parseConfig({ workspaces: { quota: 'lots', disk_size: '1Mi', swap: 1 } }, FILE)).toThrow(
      /workspaces\.swap: unknown field[\s\S]*workspaces\.disk_size: must be a size of at least 256 MiB[\s\S]*workspaces\.quota: must be a size/,
    );
    expect(() => parseConfig({ workspaces: [] }, FILE)).toThrow(/workspaces: must be a mapping/);
  });

  it('reads an empty config', () => {
    expect(parseConfig({}, FILE)).toEqual({ file: FILE, registries: [], workspaces: DEFAULT_WORKSPACE_LIMITS });
  });

  it('reads a kernel image reference, and "default" as none', () => {
    expect(parseConfig({ kernel: 'oci://registry.example:5000/team/kernel:6.1' }, FILE).kernel?.text).toBe('oci://registry.example:5000/team/kernel:6.1');
    expect(parseConfig({ kernel: 'oci://registry.example:5000/team/kernel:6.1' }, FILE).kernel?.reference.registry).toBe('registry.example:5000');
    expect(parseConfig({ kernel: 'default' }, FILE).kernel).toBeUndefined();
  });

  it.each([
    ['a list at the top', [], /\(top level\): must be a mapping/],
    ['a string at the top', 'registries', /\(top level\): must be a mapping/],
    ['an unknown top-level field', { registry: [] }, /registry: unknown field \(expected registries, snapshot_registry, kernel, workspaces\)/],
    ['registries as a mapping', { registries: { location: 'a' } }, /registries: must be a list/],
    ['a kernel that is not oci://', { kernel: 'linux-6.1' }, /kernel: must be "default" or oci:\/\/REF of a kernel image/],
    ['a kernel with a bad reference', { kernel: 'oci://registry.example/Kernel:1' }, /kernel: invalid image reference: repository name must be lowercase/],
    ['a registry that is a string', { registries: ['a.example'] }, /registries\.0: must be a mapping/],
    ['a registry without location', { registries: [{ insecure: true }] }, /registries\.0\.location: must be a registry HOST\[:PORT\]/],
    ['a location with a scheme', { registries: [{ location: 'https://a.example' }] }, /registries\.0\.location: must be a registry HOST\[:PORT\]/],
    ['a location with a path', { registries: [{ location: 'a.example/team' }] }, /registries\.0\.location: must be a registry HOST\[:PORT\]/],
    ['a location with spaces', { registries: [{ location: 'a example' }] }, /registries\.0\.location/],
    ['a location that is a number', { registries: [{ location: 5000 }] }, /registries\.0\.location/],
    ['insecure as a string', { registries: [{ location: 'a.example', insecure: 'yes' }] }, /registries\.0\.insecure: must be true or false/],
    ['an unknown registry field', { registries: [{ location: 'a.example', blocked: true }] }, /registries\.0\.blocked: unknown field \(expected location, insecure, mirrors\)/],
    ['mirrors as a string', { registries: [{ location: 'a.example', mirrors: 'b.example' }] }, /registries\.0\.mirrors: must be a list/],
    ['a mirror that is a string', { registries: [{ location: 'a.example', mirrors: ['b.example'] }] }, /registries\.0\.mirrors\.0: must be a mapping/],
    ['a mirror with a bad location', { registries: [{ location: 'a.example', mirrors: [{ location: 'b.example/x' }] }] }, /registries\.0\.mirrors\.0\.location: must be a registry HOST\[:PORT\]/],
    ['a mirror with insecure as a number', { registries: [{ location: 'a.example', mirrors: [{ location: 'b.example', insecure: 1 }] }] }, /registries\.0\.mirrors\.0\.insecure: must be true or false/],
    ['snapshot_registry with a scheme', { snapshot_registry: 'https://a.example/team' }, /snapshot_registry: must be HOST\[:PORT\]\[\/PATH\]/],
    ['snapshot_registry with upper case in the path', { snapshot_registry: 'a.example/Team' }, /snapshot_registry: must be HOST/],
    ['snapshot_registry as a list', { snapshot_registry: ['a.example'] }, /snapshot_registry: must be HOST/],
  ])('names the field for %s', (_name, raw, pattern) => {
    expect(problemsOf(raw)).toMatch(pattern);
  });

  it('lists every problem, not only the first', () => {
    const message = problemsOf({ extra: 1, registries: [{ location: 'ok.example', insecure: 'no' }, { location: '' }], snapshot_registry: 'x y' });
    expect(message.split('\n').slice(1)).toEqual([
      '  extra: unknown field (expected registries, snapshot_registry, kernel, workspaces)',
      '  registries.0.insecure: must be true or false',
      '  registries.1.location: must be a registry HOST[:PORT]',
      '  snapshot_registry: must be HOST[:PORT][/PATH], e.g. registry.internal:5000/team',
    ]);
  });
});

describe('isInsecure and mirrorsOf', () => {
  const config: CsConfig = parseConfig(
    {
      registries: [
        { location: 'plain.internal:5000', insecure: true, mirrors: [{ location: 'mirror.internal:5000', insecure: true }, { location: 'secure-mirror.example' }] },
        { location: 'secure.example', mirrors: [] },
      ],
    },
    FILE,
  );

  it('allows plain HTTP to loopback registries without configuration', () => {
    for (const registry of ['127.0.0.1:5000', '127.0.0.1', '127.5.6.7:80', 'localhost:5000', 'localhost', '[::1]:5000']) {
      expect(isInsecure(config, registry), registry).toBe(true);
    }
  });

  it('allows plain HTTP where the config says so, for a registry or a mirror', () => {
    expect(isInsecure(config, 'plain.internal:5000')).toBe(true);
    expect(isInsecure(config, 'mirror.internal:5000')).toBe(true);
  });

  it('refuses plain HTTP to configured-secure and unknown registries', () => {
    expect(isInsecure(config, 'secure.example')).toBe(false);
    expect(isInsecure(config, 'secure-mirror.example')).toBe(false);
    expect(isInsecure(config, 'unknown.example:5000')).toBe(false);
    expect(isInsecure(config, 'plain.internal')).toBe(false); // another port is another registry
    expect(isInsecure(config, '10.0.0.1:5000')).toBe(false); // private is not loopback
    expect(isInsecure(config, 'localhost.example.com')).toBe(false);
  });

  it('allows plain HTTP anywhere when forced (--insecure)', () => {
    expect(isInsecure(config, 'unknown.example', true)).toBe(true);
  });

  it('lists the mirrors of a configured registry, and none for others', () => {
    expect(mirrorsOf(config, 'plain.internal:5000')).toEqual([
      { location: 'mirror.internal:5000', insecure: true },
      { location: 'secure-mirror.example', insecure: false },
    ]);
    expect(mirrorsOf(config, 'secure.example')).toEqual([]);
    expect(mirrorsOf(config, 'unknown.example')).toEqual([]);
  });
});

describe('loadConfig', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cs-config-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function load(name: string, text: string | Buffer): Promise<CsConfig> {
    const file = join(dir, name);
    await writeFile(file, text);
    return loadConfig({ env: { CS_CONFIG: file } });
  }

  it('treats a missing file as an empty config', async () => {
    const file = join(dir, 'missing.yaml');
    expect(await loadConfig({ env: { CS_CONFIG: file } })).toEqual({ file, registries: [], workspaces: DEFAULT_WORKSPACE_LIMITS });
  });

  it('reads YAML, and an empty file', async () => {
    const config = await load('ok.yaml', 'registries:\n  - location: registry.internal:5000\n    insecure: true\n');
    expect(config.registries).toEqual([{ location: 'registry.internal:5000', insecure: true, mirrors: [] }]);
    expect((await load('empty.yaml', '')).registries).toEqual([]);
  });

  it('refuses invalid YAML, duplicate keys and oversized files with an InputError naming the file', async () => {
    await expect(load('bad.yaml', 'registries: [\n')).rejects.toThrow(/bad\.yaml: invalid YAML/);
    await expect(load('dup.yaml', 'registries: []\nregistries: []\n')).rejects.toThrow(/dup\.yaml: invalid YAML/);
    await expect(load('big.yaml', Buffer.alloc(1024 * 1024 + 1, 0x23))).rejects.toThrow(/big\.yaml: config file is larger than 1 MiB/);
    await expect(load('schema.yaml', 'registries: {}\n')).rejects.toBeInstanceOf(InputError);
  });

  // Before the fix in config.ts, yaml's own ReferenceError escaped and the
  // CLI reported it as an internal error (exit 1).
  it('refuses an alias bomb with an InputError', async () => {
    const lines = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]'];
    for (let i = 1; i < 10; i++) lines.push(`${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${new Array(10).fill(`*${String.fromCharCode(96 + i)}`).join(',')}]`);
    const error = await load('bomb.yaml', `${lines.join('\n')}\n`).then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(InputError);
    expect((error as Error).message).toMatch(/bomb\.yaml/);
  });
});
