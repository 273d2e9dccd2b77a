/**
 * Snapshots without a microVM: home and personal snapshots from a home
 * folder (includes and excludes, checked against GNU tar itself), base
 * snapshots from a folder on top of a parent, the catalogue (names and their
 * namespaces, list, show, remove, the default personal snapshot), the order
 * in which base, home and personal snapshots apply, determinism, and
 * pushing to a configured snapshot registry. Everything goes through the
 * real `cs` binary; layers are read back with GNU tar.
 */
import { mkdirSync, readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt, runCs, type Run } from '../helpers/cli.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';

const isRoot = process.getuid?.() === 0;
const temps: string[] = [];

afterAll(async () => {
  for (const dir of temps) await rm(dir, { recursive: true, force: true });
});

interface Sandbox {
  root: string;
  home: string;
  env: Record<string, string | undefined>;
  cs(...args: string[]): Promise<Run>;
  json<T>(...args: string[]): Promise<T>;
}

async function sandbox(extraEnv: Record<string, string> = {}): Promise<Sandbox> {
  const root = await mkdtemp(join(tmpdir(), 'cs-snap-'));
  temps.push(root);
  const home = join(root, 'home');
  mkdirSync(home);
  const env = { ...process.env, CS_HOME: join(root, 'cs'), HOME: home, CS_CONFIG: join(root, 'config.yaml'), ...extraEnv };
  const cs = (...args: string[]): Promise<Run> => runCs(args, { env, timeoutMs: 120_000 });
  const json = async <T,>(...args: string[]): Promise<T> => {
    const result = await cs(...args, '--json');
    if (result.exitCode !== 0) throw new Error(`cs ${args.join(' ')} failed (${result.exitCode}): ${result.stdout}${result.stderr}`);
    return JSON.parse(result.stdout) as T;
  };
  return { root, home, env, cs, json };
}

function write(path: string, text: string): void {
  mkdirSync(join(path, '..'), { recursive: true });
  writeFileSync(path, text);
}

interface Created {
  name: string;
  digest: string;
  layers: number;
  unchanged: boolean;
  isDefault?: boolean;
  pushed?: string;
}
interface Shown {
  layerList: { digest: string }[];
  usedBy: string[];
  includes?: string[];
}

/** The entries of a stored layer as GNU tar lists them: `uid/gid name`. */
async function layerEntries(box: Sandbox, name: string): Promise<string[]> {
  const shown = await box.json<Shown>('snapshot', 'show', name);
  const digest = (shown.layerList.at(-1) as { digest: string }).digest;
  const blob = join(box.env['CS_HOME'] as string, 'store', 'blobs', 'sha256', digest.slice('sha256:'.length));
  const path = existsSync(blob) ? blob : join(box.env['CS_HOME'] as string, 'snapshots', 'personal', String(process.getuid?.() ?? 0), 'store', 'blobs', 'sha256', digest.slice('sha256:'.length));
  const { stdout } = await execa('tar', ['--numeric-owner', '-tvzf', path]);
  return stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((line) => {
      const fields = line.split(/\s+/);
      return `${fields[1]} ${fields.slice(5).join(' ')}`;
    });
}

beforeAll(async () => {
  await ensureBuilt('snapshot/create');
}, 300_000);

describe('home snapshots', () => {
  let box: Sandbox;
  beforeAll(async () => {
    box = await sandbox();
    const h = box.home;
    write(join(h, '.bashrc'), 'export A=1\n');
    write(join(h, '.config/git/config'), '[user]\n');
    write(join(h, '.config/other/secret'), 'not included\n');
    write(join(h, 'proj/src/main.c'), 'int main;\n');
    write(join(h, 'proj/build.log'), 'log\n');
    write(join(h, 'proj/src/deep/trace.log'), 'log\n');
    write(join(h, 'proj/node_modules/x/index.js'), 'x\n');
    write(join(h, 'proj/keep.txt'), 'keep\n');
    write(join(h, 'notes with space.txt'), 'n\n');
    write(join(h, '.snapshot/includes.txt'), '.bashrc\n.config/git\nproj\nnotes with space.txt\n\n');
    write(join(h, '.snapshot/excludes.txt'), 'node_modules\n*.log\nproj/kee?.txt\n');
  });

  it('takes what GNU tar -X excludes -T includes takes, plus the folders leading to it, owned by the workspace owner', async () => {
    const created = await box.json<Created>('snapshot', 'create', '--home', 'team-home');
    expect(created.layers).toBe(1);
    const ours = (await layerEntries(box, 'team-home')).map((l) => l.split(' ').slice(1).join(' '));
    const owners = new Set((await layerEntries(box, 'team-home')).map((l) => l.split(' ')[0]));
    expect([...owners]).toEqual(['1000/1000']);

    const tar = await execa('sh', ['-c', `tar -c -C "${box.home}" -X .snapshot/excludes.txt -T .snapshot/includes.txt -f - | tar -t`], { cwd: box.home });
    const gnu = tar.stdout.split('\n').filter((l) => l !== '');
    // GNU tar does not archive the folders leading to an included path; cs adds them (".config/").
    expect(ours.filter((p) => p !== '.config/').sort(), `GNU tar: ${gnu.join(', ')}`).toEqual([...new Set(gnu)].sort());
    expect(ours).toContain('.config/');
    expect(ours).not.toContain('.config/other/');
    expect(ours).not.toContain('proj/build.log');
    expect(ours).not.toContain('proj/keep.txt');
    expect(ours).toContain('notes with space.txt');
  });

  it('is deterministic: the same files give the same digest and store nothing new', async () => {
    const first = await box.json<Created>('snapshot', 'create', '--home', 'again');
    const blobs = readdirSync(join(box.env['CS_HOME'] as string, 'store', 'blobs', 'sha256')).length;
    // Changes beside the selection (an excluded file in an included folder, a file next to a
    // leading folder) move folder mtimes but change no selected file.
    await new Promise((r) => setTimeout(r, 1100));
    write(join(box.home, 'proj/new-build.log'), 'excluded\n');
    write(join(box.home, '.config/unrelated'), 'not selected\n');
    const second = await box.json<Created>('snapshot', 'create', '--home', 'again', '-f');
    expect(second.digest).toBe(first.digest);
    expect(second.unchanged).toBe(true);
    expect(readdirSync(join(box.env['CS_HOME'] as string, 'store', 'blobs', 'sha256')).length).toBe(blobs);
  });

  it('refuses an included path that goes through a symlinked folder, naming the link', async () => {
    const other = await sandbox();
    write(join(other.home, 'dotfiles/nvim/init.lua'), '-- init\n');
    const { symlinkSync } = await import('node:fs');
    symlinkSync('dotfiles', join(other.home, '.config'));
    write(join(other.home, '.snapshot/includes.txt'), '.config/nvim\n');
    const result = await other.cs('snapshot', 'create', '--home', 'linked');
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain('included path ".config/nvim" goes through the symlink ".config"');
    // The link itself is fine.
    write(join(other.home, '.snapshot/includes.txt'), '.config\ndotfiles\n');
    expect((await other.cs('snapshot', 'create', '--home', 'linked')).exitCode).toBe(0);
  });

  it('refuses ".", "..", absolute paths and missing paths, naming each, and creates nothing', async () => {
    const other = await sandbox();
    write(join(other.home, '.bashrc'), 'x\n');
    write(join(other.home, '.snapshot/includes.txt'), '.bashrc\n../etc/passwd\n./x\n/etc\n');
    let result = await other.cs('snapshot', 'create', '--home', 'bad');
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain('includes.txt:2: "../etc/passwd" uses "." or ".."');
    expect(result.stderr).toContain('includes.txt:3: "./x" uses "." or ".."');
    expect(result.stderr).toContain('includes.txt:4: "/etc" is absolute');

    write(join(other.home, '.snapshot/includes.txt'), '.bashrc\nmissing-one\n.config/missing-two\n');
    result = await other.cs('snapshot', 'create', '--home', 'bad');
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain('2 included paths do not exist');
    expect(result.stderr).toContain('"missing-one"');
    expect(result.stderr).toContain('".config/missing-two"');

    const noList = await sandbox();
    result = await noList.cs('snapshot', 'create', '--home', 'bad');
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain('.snapshot/includes.txt does not exist');
    expect((await other.json<{ snapshots: unknown[] }>('snapshot', 'list')).snapshots).toEqual([]);
  });
});

describe('names, namespaces and the catalogue', () => {
  let box: Sandbox;
  beforeAll(async () => {
    box = await sandbox();
    write(join(box.home, '.profile'), 'p\n');
    write(join(box.home, '.snapshot/includes.txt'), '.profile\n');
    write(join(box.home, '.snapshot.personal/includes.txt'), '.profile\n');
    write(join(box.root, 'layer/usr/local/bin/tool'), '#!/bin/sh\n');
  });

  it('base and home names share one namespace, case-insensitively; -f replaces', async () => {
    await box.json('snapshot', 'create', 'Shared', '--from-dir', join(box.root, 'layer'));
    let result = await box.cs('snapshot', 'create', '--home', 'shared');
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain('snapshot "Shared" already exists (a base snapshot');
    expect(result.stderr).toContain('-f');
    result = await box.cs('snapshot', 'create', 'SHARED', '--from-dir', join(box.root, 'layer'));
    expect(result.exitCode).toBe(3);
    const replaced = await box.json<Created & { kind: string }>('snapshot', 'create', '--home', 'shared', '-f');
    expect(replaced.kind).toBe('home');
    const list = await box.json<{ snapshots: { name: string; kind: string }[] }>('snapshot', 'list');
    expect(list.snapshots.filter((s) => s.name.toLowerCase() === 'shared')).toEqual([expect.objectContaining({ name: 'shared', kind: 'home' })]);
  });

  it('personal names are a namespace of their own', async () => {
    const created = await box.json<Created>('snapshot', 'create', '--personal', 'shared');
    expect(created.name).toBe('shared');
    const list = await box.json<{ snapshots: { name: string; kind: string }[] }>('snapshot', 'list');
    expect(list.snapshots.map((s) => `${s.name}:${s.kind}`).sort()).toEqual(['shared:home', 'shared:personal']);
    // A name in both namespaces must be told apart where it matters.
    const ambiguous = await box.cs('snapshot', 'remove', 'shared');
    expect(ambiguous.exitCode).toBe(2);
    expect(ambiguous.stderr).toContain('"shared" is both a home snapshot and one of your personal snapshots');
    expect((await box.json<{ kind: string }>('snapshot', 'show', 'shared', '--personal')).kind).toBe('personal');
    expect((await box.json<{ kind: string }>('snapshot', 'show', 'shared', '--shared')).kind).toBe('home');
  });

  it('names follow one rule', async () => {
    for (const bad of ['_under', 'has space', 'a'.repeat(65), 'slash/name', '.hidden']) {
      const result = await box.cs('snapshot', 'create', '--home', bad);
      expect(result.exitCode, bad).toBe(2);
      expect(result.stderr).toContain('a snapshot name is 1 to 64 letters, digits');
    }
    expect((await box.cs('snapshot', 'create', '--home', 'a'.repeat(64))).exitCode).toBe(0);
  });

  it('the first personal snapshot becomes the default; later ones only when asked', async () => {
    const fresh = await sandbox();
    write(join(fresh.home, '.vimrc'), 'set nu\n');
    write(join(fresh.home, '.snapshot.personal/includes.txt'), '.vimrc\n');
    expect((await fresh.cs('snapshot', 'personal', 'get-default')).stdout).toBe('NONE');
    expect((await fresh.json<Created>('snapshot', 'create', '--personal', 'one')).isDefault).toBe(true);
    expect((await fresh.json<Created>('snapshot', 'create', '--personal', 'two')).isDefault).toBe(false);
    expect((await fresh.cs('snapshot', 'personal', 'get-default')).stdout).toBe('one');
    expect((await fresh.json<Created>('snapshot', 'create', '--personal', 'three', '--set-personal-default')).isDefault).toBe(true);
    expect((await fresh.json<{ default: string }>('snapshot', 'personal', 'get-default')).default).toBe('three');
    const list = await fresh.json<{ snapshots: { name: string; default: boolean }[] }>('snapshot', 'list');
    expect(list.snapshots.filter((s) => s.default).map((s) => s.name)).toEqual(['three']);

    expect((await fresh.cs('snapshot', 'personal', 'set-default', 'TWO')).exitCode).toBe(0);
    expect((await fresh.cs('snapshot', 'personal', 'get-default')).stdout).toBe('two');
    const missing = await fresh.cs('snapshot', 'personal', 'set-default', 'nope');
    expect(missing.exitCode).toBe(3);
    expect(missing.stderr).toContain('you have no personal snapshot "nope"');
    expect((await fresh.cs('snapshot', 'personal', 'set-default', 'none')).exitCode).toBe(0);
    expect((await fresh.cs('snapshot', 'personal', 'get-default')).stdout).toBe('NONE');
    // NONE stays NONE: only the first personal snapshot becomes the default by itself.
    expect((await fresh.json<Created>('snapshot', 'create', '--personal', 'four')).isDefault).toBe(false);
    expect((await fresh.cs('snapshot', 'personal', 'get-default')).stdout).toBe('NONE');
    // Removing the default leaves none.
    expect((await fresh.cs('snapshot', 'personal', 'set-default', 'four')).exitCode).toBe(0);
    expect((await fresh.cs('snapshot', 'remove', 'four')).exitCode).toBe(0);
    expect((await fresh.cs('snapshot', 'personal', 'get-default')).stdout).toBe('NONE');
    // "none" is reserved for NONE.
    const none = await fresh.cs('snapshot', 'create', '--personal', 'None');
    expect(none.exitCode).toBe(2);
    expect(none.stderr).toContain('"none" cannot name a personal snapshot');
  });

  it('show and remove name what they act on; an unknown name is a clear error', async () => {
    const shown = await box.cs('snapshot', 'show', 'shared', '--shared');
    expect(shown.stdout).toContain('shared: home snapshot');
    expect(shown.stdout).toContain('includes: .profile');
    const unknown = await box.cs('snapshot', 'show', 'nothing-here');
    expect(unknown.exitCode).toBe(3);
    expect(unknown.stderr).toContain('no snapshot "nothing-here"');
    const columns = await box.cs('snapshot', 'list', '-c', 'name,bogus');
    expect(columns.exitCode).toBe(2);
    expect(columns.stderr).toContain('unknown column bogus');
    expect((await box.cs('snapshot', 'remove', 'shared', '--shared')).exitCode).toBe(0);
    const list = await box.json<{ snapshots: { name: string; kind: string }[] }>('snapshot', 'list');
    expect(list.snapshots.map((s) => `${s.name}:${s.kind}`)).toContain('shared:personal');
    expect(list.snapshots.map((s) => `${s.name}:${s.kind}`)).not.toContain('shared:home');
  });
});

describe('base snapshots from a folder, and the order of application', () => {
  let box: Sandbox;
  beforeAll(async () => {
    box = await sandbox();
    // A base image with a file in the owner's home, made the plain way.
    write(join(box.root, 'base/etc/os-release'), 'ID=test\n');
    write(join(box.root, 'base/etc/motd'), 'base motd\n');
    write(join(box.root, 'base/opt/old/file'), 'old\n');
    write(join(box.root, 'base/home/owner/same.txt'), 'from base\n');
    write(join(box.root, 'base/home/owner/two.txt'), 'from base\n');
    const imported = await box.cs('image', 'import', join(box.root, 'base'), 'localhost/test/base:1');
    expect(imported.exitCode, imported.stderr).toBe(0);
  });

  it('--from-dir --parent stacks one layer on the parent; /home and runtime folders stay out', async () => {
    write(join(box.root, 'change/etc/motd'), 'changed motd\n');
    write(join(box.root, 'change/usr/local/bin/tool'), 'tool\n');
    write(join(box.root, 'change/home/owner/ignored'), 'home is not part of a base snapshot\n');
    write(join(box.root, 'change/tmp/scratch'), 'runtime\n');
    if (isRoot) {
      // An overlayfs whiteout (character device 0/0) is a deletion.
      mkdirSync(join(box.root, 'change/opt'), { recursive: true });
      await execa('mknod', [join(box.root, 'change/opt/old'), 'c', '0', '0']);
    }
    const created = await box.json<Created & { parent: string }>('snapshot', 'create', 'tools', '--from-dir', join(box.root, 'change'), '--parent', 'localhost/test/base:1');
    expect(created.layers).toBe(2);
    expect(created.parent).toBe('localhost/test/base:1');
    const entries = (await layerEntries(box, 'tools')).map((l) => l.split(' ').slice(1).join(' '));
    expect(entries).toContain('etc/motd');
    expect(entries).toContain('usr/local/bin/tool');
    expect(entries.some((e) => e.startsWith('home'))).toBe(false);
    expect(entries.some((e) => e.startsWith('tmp'))).toBe(false);
    if (isRoot) expect(entries).toContain('opt/.wh.old');

    const out = join(box.root, 'out-tools');
    const assembled = await box.cs('rootfs', 'assemble', '--base', 'tools', '--format', 'dir', '--out', out);
    expect(assembled.exitCode, assembled.stderr).toBe(0);
    expect(readFileSync(join(out, 'etc/motd'), 'utf8')).toBe('changed motd\n');
    expect(readFileSync(join(out, 'etc/os-release'), 'utf8')).toBe('ID=test\n');
    if (isRoot) expect(existsSync(join(out, 'opt/old'))).toBe(false);

    // A snapshot of a snapshot stacks one more layer.
    write(join(box.root, 'change2/etc/extra'), 'x\n');
    const again = await box.json<Created>('snapshot', 'create', 'tools2', '--from-dir', join(box.root, 'change2'), '--parent', 'tools');
    expect(again.layers).toBe(3);
  });

  it('applies base, then home, then personal: for the same path the personal snapshot wins, then home', async () => {
    write(join(box.home, 'same.txt'), 'from home\n');
    write(join(box.home, 'two.txt'), 'from home\n');
    write(join(box.home, '.snapshot/includes.txt'), 'same.txt\ntwo.txt\n');
    await box.json('snapshot', 'create', '--home', 'layered-home');
    write(join(box.home, 'same.txt'), 'from personal\n');
    write(join(box.home, '.snapshot.personal/includes.txt'), 'same.txt\n');
    await box.json('snapshot', 'create', '--personal', 'layered-me');
    const out = join(box.root, 'out-layered');
    const result = await box.cs('rootfs', 'assemble', '--base', 'localhost/test/base:1', '--home', 'layered-home', '--personal', 'layered-me', '--format', 'dir', '--out', out);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(readFileSync(join(out, 'home/owner/same.txt'), 'utf8')).toBe('from personal\n');
    expect(readFileSync(join(out, 'home/owner/two.txt'), 'utf8')).toBe('from home\n');
  });

  it('a parent that does not exist is a clear error, and nothing is named', async () => {
    write(join(box.root, 'small/etc/x'), 'x\n');
    const result = await box.cs('snapshot', 'create', 'orphan', '--from-dir', join(box.root, 'small'), '--parent', 'no-such-snapshot');
    expect(result.exitCode).toBe(3);
    expect(result.stderr).toContain('--parent "no-such-snapshot" is not a base snapshot in the catalogue');
    expect(result.stderr).toContain('oci://no-such-snapshot');
    const home = await box.cs('snapshot', 'create', 'orphan', '--from-dir', join(box.root, 'small'), '--parent', 'layered-home');
    expect(home.exitCode).toBe(3);
    expect(home.stderr).toContain('is a home snapshot');
    expect((await box.cs('snapshot', 'show', 'orphan')).exitCode).toBe(3);
  });
});

describe('a snapshot registry', () => {
  let registry: TestRegistry;
  beforeAll(async () => {
    registry = await startRegistry();
  }, 60_000);
  afterAll(async () => {
    await registry?.stop();
  });

  it('create pushes base and home snapshots there, and another machine resolves the name from it', async () => {
    const config = `snapshot_registry: ${registry.host}/team/snapshots\n`;
    const box = await sandbox();
    writeFileSync(box.env['CS_CONFIG'] as string, config);
    write(join(box.root, 'base/etc/os-release'), 'ID=shared\n');
    const created = await box.json<Created>('snapshot', 'create', 'team-base', '--from-dir', join(box.root, 'base'));
    expect(created.pushed).toBe(`${registry.host}/team/snapshots:team-base`);
    const tags = await fetch(`${registry.url}/v2/team/snapshots/tags/list`).then((r) => r.json() as Promise<{ tags: string[] }>);
    expect(tags.tags).toContain('team-base');

    // Another cs home with the same config: the definition names the snapshot, the registry has it.
    const other = await sandbox();
    writeFileSync(other.env['CS_CONFIG'] as string, config);
    const definition = join(other.root, 'team.yaml');
    writeFileSync(definition, 'name: team\nworkspaces:\n  - name: dev\n    base_snapshot: team-base\n');
    const out = join(other.root, 'root');
    const result = await other.cs('rootfs', 'assemble', '-f', definition, '-W', 'team/dev', '--format', 'dir', '--out', out);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(readFileSync(join(out, 'etc/os-release'), 'utf8')).toBe('ID=shared\n');
  });
});
