/**
 * Base snapshots of real workspaces: files added, changed and deleted and a
 * folder replaced inside a running microVM become one new layer on top of
 * the workspace's base (read from its ext4 disk while the guest holds the
 * file system frozen, and from the disk of a stopped workspace); a
 * workspace booted from that snapshot finds the same files; a snapshot of
 * it stacks one more layer; removing a snapshot in use is refused.
 */
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { importDirectory } from '../../src/snapshot/import-dir.js';
import { ensureBuilt, runCs, type Run } from '../helpers/cli.js';
import { buildTinyRoot, vmHome, writeDefinition } from '../helpers/vm.js';

const IMAGE = 'localhost/test/snapbase:1';

interface Created {
  name: string;
  digest: string;
  layers: number;
  parent?: string;
}

describe('base snapshots of workspaces', () => {
  let home: Awaited<ReturnType<typeof vmHome>> | undefined;
  let work: string;
  let env: Record<string, string>;
  const cs = (...args: string[]): Promise<Run> => runCs(args, { env, timeoutMs: 300_000 });
  const sh = (target: string, command: string): Promise<Run> => cs('exec', '-W', target, '--user', 'root', '--', 'sh', '-c', command);
  const json = async <T,>(...args: string[]): Promise<T> => {
    const result = await cs(...args, '--json');
    if (result.exitCode !== 0) throw new Error(`cs ${args.join(' ')} failed (${result.exitCode}): ${result.stdout}\n${result.stderr}`);
    return JSON.parse(result.stdout) as T;
  };
  /** What a user would compare: every path under the changed folders with type, mode, owner and content hash. */
  const inventory = async (target: string): Promise<string> => {
    const result = await sh(
      target,
      'cd / && find etc opt srv usr/local | sort | while read -r p; do if [ -f "$p" ] && [ ! -L "$p" ]; then h=$(md5sum < "$p" | cut -c1-32); else h=-; fi; echo "$p $(stat -c "%F %a %u:%g" "$p") $h"; done | grep -v -e "^etc/hostname " -e "^etc/hosts " -e "^etc/resolv.conf "',
    );
    expect(result.exitCode, result.stderr).toBe(0);
    return result.stdout;
  };

  beforeAll(async () => {
    await ensureBuilt('snapshot/create');
    home = await vmHome();
    env = home.env;
    work = await mkdtemp(join(tmpdir(), 'cs-vmsnap-'));
    const root = join(work, 'root');
    await buildTinyRoot(root);
    await writeFile(join(root, 'etc', 'motd'), 'base motd\n');
    await writeFile(join(root, 'etc', 'deleteme'), 'to be deleted\n');
    await mkdir(join(root, 'srv', 'data'), { recursive: true });
    await writeFile(join(root, 'srv', 'data', 'lower-a'), 'a\n');
    await writeFile(join(root, 'srv', 'data', 'lower-b'), 'b\n');
    await importDirectory({ dir: root, reference: IMAGE, env });
    const file = await writeDefinition(work, 'src', ['workspaces:', '  - name: dev', `    base_snapshot: oci://${IMAGE}`, '    resources: { memory: 256Mi, disk: 1Gi }', ''].join('\n'));
    const created = await cs('sandbox', 'create', '-f', file, '--wait');
    expect(created.exitCode, created.stderr).toBe(0);
    const changed = await sh(
      'src/dev',
      [
        'mkdir -p /opt/tool/bin && printf "#!/bin/sh\\necho tool\\n" > /opt/tool/bin/tool && chmod 0755 /opt/tool/bin/tool',
        'echo changed motd > /etc/motd',
        'rm /etc/deleteme',
        'rm -rf /srv/data && mkdir /srv/data && echo only > /srv/data/only',
        'mkdir -p /usr/local/share && ln -s /opt/tool/bin/tool /usr/local/share/tool-link',
        'dd if=/dev/urandom of=/opt/tool/blob bs=64k count=16 2>/dev/null',
        'echo in-home > /home/owner/mine && echo scratch > /tmp/scratch',
      ].join(' && '),
    );
    expect(changed.exitCode, changed.stderr).toBe(0);
  }, 600_000);

  afterAll(async () => {
    if (home) {
      for (const sandbox of ['src', 'copy', 'third']) await runCs(['sandbox', 'remove', sandbox], { env: home.env, timeoutMs: 60_000 });
      await home.cleanup();
    }
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('from a running workspace: the base\'s layers plus one layer of what changed, deletions as whiteouts and the replaced folder opaque', async () => {
    const created = await json<Created>('snapshot', 'create', 'snap1', '-W', 'src/dev');
    expect(created.layers).toBe(2);
    expect(created.parent).toBe(IMAGE);
    // The workspace is thawed and writable again.
    expect((await sh('src/dev', 'echo after > /opt/after && cat /opt/after')).stdout).toBe('after');
    const shown = await json<{ layerList: { digest: string }[]; source: { workspace: string } }>('snapshot', 'show', 'snap1');
    expect(shown.source.workspace).toBe('src/dev');
    const blob = join(env['CS_HOME'] as string, 'store', 'blobs', 'sha256', (shown.layerList[1] as { digest: string }).digest.slice(7));
    const { execa } = await import('execa');
    const names = (await execa('tar', ['-tzf', blob])).stdout.split('\n');
    expect(names).toContain('etc/.wh.deleteme');
    expect(names).toContain('srv/data/.wh..wh..opq');
    expect(names).toContain('opt/tool/bin/tool');
    expect(names).toContain('etc/motd');
    expect(names.filter((n) => n.startsWith('home') || n.startsWith('tmp') || n.startsWith('var/lib/cs') || n === 'etc/hostname')).toEqual([]);
  });

  it('a workspace booted from the snapshot has the same files', async () => {
    const before = await inventory('src/dev');
    expect(before).toMatch(/^opt\/tool\/bin\/tool regular file 755 0:0 [0-9a-f]{32}$/m);
    expect(before).toMatch(/^srv\/data\/only regular file 644 0:0 [0-9a-f]{32}$/m);
    expect(before.split('\n').length).toBeGreaterThan(10);
    const file = await writeDefinition(work, 'copy', ['workspaces:', '  - name: dev', '    base_snapshot: snap1', '    resources: { memory: 256Mi, disk: 1Gi }', ''].join('\n'));
    const created = await cs('sandbox', 'create', '-f', file, '--wait');
    expect(created.exitCode, created.stderr).toBe(0);
    // /opt/after was written after the snapshot: it is the one expected difference.
    expect(await inventory('copy/dev')).toBe(before.split('\n').filter((l) => !l.startsWith('opt/after ')).join('\n'));
    const checks = await sh('copy/dev', 'cat /etc/motd; ls /srv/data; [ -e /etc/deleteme ] || echo deleted; /usr/local/share/tool-link; [ -e /home/owner/mine ] || echo home-not-in-base');
    expect(checks.stdout.split('\n')).toEqual(['changed motd', 'only', 'deleted', 'tool', 'home-not-in-base']);
  });

  it('a snapshot of a workspace booted from a snapshot stacks one more layer', async () => {
    expect((await sh('copy/dev', 'echo more > /etc/more')).exitCode).toBe(0);
    const created = await json<Created>('snapshot', 'create', 'snap2', '-W', 'copy/dev');
    expect(created.layers).toBe(3);
    expect(created.parent).toBe('snap1');
  });

  it('a snapshot killed while the disk is frozen leaves the workspace writable and names nothing', async () => {
    expect((await sh('copy/dev', 'head -c 67108864 /dev/urandom > /opt/big && sync')).exitCode).toBe(0);
    const { startCs } = await import('../helpers/cli.js');
    const child = startCs(['snapshot', 'create', 'killed', '-W', 'copy/dev'], { env, timeoutMs: 120_000 });
    await new Promise<void>((resolve) => {
      let seen = '';
      child.stderr?.on('data', (chunk: Buffer) => {
        seen += chunk.toString('utf8');
        if (seen.includes('read the changed files')) resolve();
      });
      void child.then(() => resolve(), () => resolve());
    });
    child.kill('SIGKILL');
    await child.catch(() => undefined);
    // The guest's watchdog thaws the disk within a couple of seconds: a write goes through.
    const started = Date.now();
    const write = await sh('copy/dev', 'echo after-kill > /opt/after-kill && sync && cat /opt/after-kill');
    expect(write.stdout).toBe('after-kill');
    expect(Date.now() - started).toBeLessThan(20_000);
    expect((await cs('snapshot', 'show', 'killed')).exitCode).toBe(3);
    expect((await sh('copy/dev', 'rm /opt/big')).exitCode).toBe(0);
  });

  it('inside a workspace, cs snapshot create snapshots that workspace through its host; other commands are refused', async () => {
    const inside = (command: string): Promise<Run> => cs('exec', '-W', 'copy/dev', '--', 'sh', '-c', command);
    const created = await inside('cs snapshot create from-inside --json');
    expect(created.exitCode, created.stderr).toBe(0);
    expect(JSON.parse(created.stdout)).toMatchObject({ name: 'from-inside', kind: 'base', layers: 3 });
    const shown = await json<{ source: { workspace: string } }>('snapshot', 'show', 'from-inside');
    expect(shown.source.workspace).toBe('copy/dev');
    const listed = await inside('cs snapshot list --json');
    expect((JSON.parse(listed.stdout) as { snapshots: { name: string }[] }).snapshots.map((x) => x.name)).toContain('from-inside');
    // A workspace replaces only snapshots it made itself.
    const foreign = await inside('cs snapshot create snap1 -f');
    expect(foreign.exitCode).toBe(3);
    expect(foreign.stderr).toContain('was not made by this workspace');
    expect((await inside('cs snapshot create from-inside -f')).exitCode).toBe(0);
    for (const [command, message] of [
      ['cs sandbox list', 'only snapshot commands'],
      ['cs snapshot personal set-default NONE', 'choose the default on the host'],
      ['cs snapshot create x --from-dir /', '--from-dir is not available inside a workspace'],
      ['cs snapshot create x -W src/dev', '-W is not available inside a workspace'],
    ] as const) {
      const refused = await inside(command);
      expect(refused.exitCode, command).toBe(2);
      expect(refused.stderr).toContain(message);
    }
    // The link to the in-workspace cs is not part of the snapshot.
    const layer = (await json<{ layerList: { digest: string }[] }>('snapshot', 'show', 'from-inside')).layerList.at(-1) as { digest: string };
    const { execa } = await import('execa');
    const names = (await execa('tar', ['-tzf', join(env['CS_HOME'] as string, 'store', 'blobs', 'sha256', layer.digest.slice(7))])).stdout.split('\n');
    expect(names).not.toContain('usr/local/bin/cs');
  });

  it('from a stopped workspace, read from its disk', async () => {
    expect((await cs('sandbox', 'suspend', 'src')).exitCode).toBe(0);
    const created = await json<Created>('snapshot', 'create', 'snap-stopped', '-W', 'src/dev');
    expect(created.layers).toBe(2);
    const shown = await json<{ layerList: { digest: string }[] }>('snapshot', 'show', 'snap-stopped');
    const blob = join(env['CS_HOME'] as string, 'store', 'blobs', 'sha256', (shown.layerList[1] as { digest: string }).digest.slice(7));
    const { execa } = await import('execa');
    const names = (await execa('tar', ['-tzf', blob])).stdout.split('\n');
    expect(names).toContain('opt/after');
    expect(names).toContain('etc/.wh.deleteme');
  });

  it('removing a snapshot a workspace or definition uses is refused unless forced', async () => {
    const refused = await cs('snapshot', 'remove', 'snap1');
    expect(refused.exitCode).toBe(3);
    expect(refused.stderr).toContain('workspace copy/dev');
    expect(refused.stderr).toContain('copy.yaml');
    const shown = await json<{ usedBy: string[] }>('snapshot', 'show', 'snap1');
    expect(shown.usedBy).toContain('workspace copy/dev');
    expect((await cs('snapshot', 'remove', 'snap1', '-f')).exitCode).toBe(0);
    // The workspace keeps running on its own image.
    expect((await sh('copy/dev', 'cat /etc/motd')).stdout).toBe('changed motd');
  });

  it('bad requests are clear errors', async () => {
    const noWs = await cs('snapshot', 'create', 'x', '-W', 'nope/dev');
    expect(noWs.exitCode).toBe(3);
    expect(noWs.stderr).toContain('no sandbox "nope"');
    const clash = await cs('snapshot', 'create', 'snap2', '-W', 'copy/dev');
    expect(clash.exitCode).toBe(3);
    expect(clash.stderr).toContain('already exists');
  });

  it('a home snapshot from a workspace takes what its lists select, owned by the owner', async () => {
    const owner = (command: string): Promise<Run> => cs('exec', '-W', 'copy/dev', '--', 'sh', '-c', command);
    const setup = await owner(
      'cd ~ && mkdir -p .snapshot proj/obj && echo "alias ll=ls" > .bash_extra && echo "int main;" > proj/main.c && echo bin > proj/obj/main.o && echo obj > proj/main.o && printf ".bash_extra\\nproj\\n" > .snapshot/includes.txt && printf "*.o\\n" > .snapshot/excludes.txt',
    );
    expect(setup.exitCode, setup.stderr).toBe(0);
    const created = await json<Created>('snapshot', 'create', '--home', 'ws-home', '-W', 'copy/dev');
    expect(created.layers).toBe(1);
    const shown = await json<{ layerList: { digest: string }[]; source: { home: string }; includes: string[] }>('snapshot', 'show', 'ws-home');
    expect(shown.source.home).toBe('copy/dev:/home/owner');
    expect(shown.includes).toEqual(['.bash_extra', 'proj']);
    const blob = join(env['CS_HOME'] as string, 'store', 'blobs', 'sha256', (shown.layerList[0] as { digest: string }).digest.slice(7));
    const { execa } = await import('execa');
    const listing = (await execa('tar', ['--numeric-owner', '-tvzf', blob])).stdout.split('\n').map((l) => { const f = l.split(/\s+/); return `${f[1]} ${f.slice(5).join(' ')}`; });
    expect(listing.sort()).toEqual(['1000/1000 .bash_extra', '1000/1000 proj/', '1000/1000 proj/main.c', '1000/1000 proj/obj/'].sort());

    expect((await owner('echo nope >> ~/.snapshot/includes.txt')).exitCode).toBe(0);
    const missing = await cs('snapshot', 'create', '--home', 'ws-home2', '-W', 'copy/dev');
    expect(missing.exitCode).toBe(3);
    expect(missing.stderr).toContain('an included path does not exist under copy/dev:/home/owner: "nope"');
  });

  it('a new workspace gets base, home and the creator\'s default personal snapshot, in that order, the personal image kept private', async () => {
    const hostHome = join(work, 'host-home');
    await mkdir(join(hostHome, '.snapshot.personal'), { recursive: true });
    await writeFile(join(hostHome, '.bash_extra'), 'alias ll="ls -l"  # mine\n');
    await writeFile(join(hostHome, '.snapshot.personal', 'includes.txt'), '.bash_extra\n');
    const personal = await runCs(['snapshot', 'create', '--personal', 'me', '--json'], { env: { ...env, HOME: hostHome }, timeoutMs: 120_000 });
    expect(personal.exitCode, personal.stderr).toBe(0);
    expect(JSON.parse(personal.stdout)).toMatchObject({ isDefault: true });
    expect((await cs('sandbox', 'suspend', 'copy')).exitCode).toBe(0);
    const file = await writeDefinition(work, 'third', ['workspaces:', '  - name: dev', `    base_snapshot: oci://${IMAGE}`, '    home_snapshot: ws-home', '    resources: { memory: 256Mi, disk: 1Gi }', ''].join('\n'));
    const created = await runCs(['sandbox', 'create', '-f', file, '--wait'], { env: { ...env, HOME: hostHome }, timeoutMs: 300_000 });
    expect(created.exitCode, created.stderr).toBe(0);
    const seen = await cs('exec', '-W', 'third/dev', '--', 'sh', '-c', 'cat ~/.bash_extra; cat ~/proj/main.c; ls ~/proj/obj | wc -l; stat -c "%u:%g" ~/proj/main.c ~/proj');
    expect(seen.stdout.split('\n')).toEqual(['alias ll="ls -l"  # mine', 'int main;', '0', '1000:1000', '1000:1000']);
    const { readFile } = await import('node:fs/promises');
    const record = JSON.parse(await readFile(join(env['CS_HOME'] as string, 'sandboxes', 'third', 'dev', 'workspace.json'), 'utf8')) as { lowers: string[]; images: { kind: string; snapshot?: string }[] };
    expect(record.images.map((i) => `${i.kind}:${i.snapshot ?? '-'}`)).toEqual(['base:-', 'home:ws-home', 'personal:me']);
    const privateDir = join(env['CS_HOME'] as string, 'snapshots', 'personal', String(process.getuid?.() ?? 0));
    // A stack: the personal snapshot's image (on top) is as private as the snapshot; the base's and the home's are shared.
    expect(record.lowers).toHaveLength(3);
    expect(record.lowers[0]?.startsWith(`${privateDir}/images/`)).toBe(true);
    expect(record.lowers.slice(1).every((l) => l.startsWith(`${join(env['CS_HOME'] as string, 'images')}/`))).toBe(true);
    // NONE leaves the personal snapshot out.
    const none = await runCs(['sandbox', 'create', 'fourth', '-f', file, '--personal', 'NONE', '--json'], { env: { ...env, HOME: hostHome }, timeoutMs: 300_000 });
    expect(none.exitCode, none.stderr).toBe(0);
    const fourth = JSON.parse(await readFile(join(env['CS_HOME'] as string, 'sandboxes', 'fourth', 'dev', 'workspace.json'), 'utf8')) as { images: { kind: string }[]; lowers: string[] };
    expect(fourth.images.map((i) => i.kind)).toEqual(['base', 'home']);
    expect(fourth.lowers.every((l) => l.startsWith(join(env['CS_HOME'] as string, 'images')))).toBe(true);
    expect((await cs('sandbox', 'remove', 'fourth')).exitCode).toBe(0);
  });
});
