/**
 * The `cs image …`, `cs login` and `cs logout` commands of the real binary
 * against real registries, checked by what a user sees: exit codes, the
 * --json documents, messages, and the files cs leaves (the content store,
 * DOCKER_CONFIG/config.json).
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pushImage } from '../../src/oci/image.js';
import type { TestRegistry } from '../helpers/registry.js';
import { cs, ensureBuilt, json, stackFree, type Run } from './support/cli.js';
import { closedPort, makeHome, secretForms, writeTree, type TestHome } from './support/home.js';
import { importFiles } from './support/images.js';
import { startRegistries, stopRegistries } from './support/registries.js';

let registries: Record<'open' | 'basic' | 'token', TestRegistry>;
const homes: TestHome[] = [];

async function home(label: string): Promise<TestHome> {
  const created = await makeHome(label);
  homes.push(created);
  return created;
}

async function folder(user: TestHome, files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(user.root, 'import-'));
  await writeTree(dir, files);
  return dir;
}

function blobFile(user: TestHome, digest: string): string {
  return join(user.env['CS_HOME'] ?? '', 'store', 'blobs', ...digest.split(':'));
}

async function authEntries(user: TestHome): Promise<Record<string, { auth?: string }> | undefined> {
  if (!existsSync(user.authFile)) return undefined;
  return (JSON.parse(await readFile(user.authFile, 'utf8')) as { auths?: Record<string, { auth?: string }> }).auths;
}

function ok(run: Run): Run {
  expect(run.exitCode, `${run.stdout}\n${run.stderr}`).toBe(0);
  return run;
}

interface Transfer {
  reference: string;
  digest: string;
  blobsCopied: number;
  blobsSkipped: number;
  bytesCopied: number;
}
interface Details {
  name: string;
  digest: string;
  size: number;
  layers: number;
  layerDescriptors: { digest: string; size: number; mediaType: string }[];
  manifest: { config: { digest: string; size: number } };
}

beforeAll(async () => {
  const [started] = await Promise.all([startRegistries({ open: 'open', basic: 'basic', token: 'token' }), ensureBuilt()]);
  registries = started;
});

afterAll(async () => {
  await stopRegistries(registries);
  await Promise.allSettled(homes.map((h) => h.cleanup()));
});

describe.concurrent('cs image', () => {
  it('imports, pushes, lists, inspects, removes, prunes and pulls an image back', async ({ expect }) => {
    const user = await home('cli-life');
    const reference = `${registries.open.host}/cli/life:v1`;
    const dir = await folder(user, { 'etc/motd': 'from the cli\n', 'app/main.sh': '#!/bin/sh\necho main\n' });

    const imported = ok(await cs(['image', 'import', dir, reference], { env: user.env }));
    expect(imported.stderr).toContain(`Imported ${dir} as ${reference} (sha256:`);

    const pushed = json<Transfer>(ok(await cs(['image', 'push', reference, '--json'], { env: user.env })));
    expect(pushed).toMatchObject({ reference, blobsCopied: 3, blobsSkipped: 0 });

    const [ls, inspect] = await Promise.all([cs(['image', 'ls', '--json'], { env: user.env }), cs(['image', 'inspect', reference, '--json'], { env: user.env })]);
    const details = json<Details>(ok(inspect));
    expect(details).toMatchObject({ name: reference, digest: pushed.digest, layers: 1 });
    expect(details.layerDescriptors).toHaveLength(1);
    const layer = details.layerDescriptors[0] ?? { digest: '', size: -1 };
    expect(layer.size).toBe((await stat(blobFile(user, layer.digest))).size);
    const manifestSize = (await stat(blobFile(user, pushed.digest))).size;
    expect(details.size).toBe(manifestSize + details.manifest.config.size + layer.size);
    expect(json<{ images: unknown[] }>(ok(ls)).images).toEqual([
      expect.objectContaining({ name: reference, digest: pushed.digest, layers: 1, size: details.size }),
    ]);
    const blobs = [pushed.digest, details.manifest.config.digest, layer.digest];

    const removed = ok(await cs(['image', 'rm', reference], { env: user.env }));
    expect(removed.stderr).toContain(`Removed ${reference}`);
    const [lsAfter, prune] = await Promise.all([cs(['image', 'ls', '--json'], { env: user.env }), cs(['image', 'prune', '--json'], { env: user.env })]);
    expect(json<{ images: unknown[] }>(ok(lsAfter)).images).toEqual([]);
    const pruned = json<{ removedBlobs: number; removedBytes: number }>(ok(prune));
    expect(pruned).toMatchObject({ removedBlobs: 3, removedBytes: details.size });
    for (const digest of blobs) expect(existsSync(blobFile(user, digest)), digest).toBe(false);

    const pulled = json<Transfer>(ok(await cs(['image', 'pull', reference, '--json'], { env: user.env })));
    expect(pulled).toMatchObject({ reference, digest: pushed.digest, blobsCopied: 3 });
    expect(pulled.bytesCopied).toBe(details.size);
    for (const digest of blobs) expect(existsSync(blobFile(user, digest)), digest).toBe(true);

    const again = json<Transfer>(ok(await cs(['image', 'pull', reference, '--json'], { env: user.env })));
    expect(again).toMatchObject({ digest: pushed.digest, blobsCopied: 0, bytesCopied: 0 });
  });

  it('shows where an image reference is invalid', async ({ expect }) => {
    const user = await home('cli-badref');
    const bad = `${registries.open.host}/Team/app:v1`;
    const badTag = `${registries.open.host}/team/app:-v1`;
    const [upper, tag] = await Promise.all([cs(['image', 'pull', bad], { env: user.env }), cs(['image', 'pull', badTag], { env: user.env })]);
    for (const [run, text, offset] of [
      [upper, bad, bad.indexOf('T')],
      [tag, badTag, badTag.indexOf('-v1')],
    ] as const) {
      expect(run.exitCode, run.stderr).toBe(3);
      expect(run.stderr).toMatch(/^Error: invalid image reference: /);
      const lines = run.stderr.split('\n');
      const at = lines.indexOf(`    ${text}`);
      expect(at, run.stderr).toBeGreaterThan(0);
      expect(lines[at + 1]).toMatch(new RegExp(`^ {${4 + offset}}\\^+$`));
      expect(stackFree(run)).toBe(true);
    }
  });

  it('refuses a folder it cannot read with exit 3, no stack trace, and leaves nothing in the store', async ({ expect }) => {
    const user = await home('cli-unreadable');
    const dir = await folder(user, { 'etc/ok.txt': 'fine\n' });
    // A path longer than PATH_MAX: lstat fails (ENAMETOOLONG) for root and users alike, as
    // EACCES would for a user importing a root-owned tree (debootstrap's etc/shadow).
    await execa('bash', ['-c', 'cd "$1" && for i in $(seq 40); do mkdir "$2" && cd "$2"; done && echo deep > f', 'deep', dir, 'd'.repeat(120)]);
    const reference = `${registries.open.host}/cli/unreadable:v1`;
    const run = await cs(['image', 'import', dir, reference], { env: user.env });
    expect(run.exitCode, run.stderr).toBe(3);
    expect(run.stderr).toMatch(new RegExp(`^Error: cannot read ${dir}: ENAMETOOLONG`));
    expect(stackFree(run)).toBe(true);
    const store = await user.store();
    expect(await readdir(join(store.root, 'ingest'))).toEqual([]);
    expect(await readdir(join(store.root, 'blobs', 'sha256'))).toEqual([]);
    expect(await store.listTags()).toEqual([]);
  });

  it('says "connection refused" for a registry that is not there', async ({ expect }) => {
    const user = await home('cli-refused');
    const host = `127.0.0.1:${await closedPort()}`;
    const run = await cs(['image', 'pull', `${host}/team/app:v1`], { env: user.env });
    expect(run.exitCode, run.stderr).toBe(4);
    expect(run.stderr).toContain(host);
    expect(run.stderr).toContain('connection refused');
    expect(stackFree(run)).toBe(true);
  });

  it('has examples in the help of every image command', async ({ expect }) => {
    const user = await home('cli-help');
    const commands = ['import', 'inspect', 'ls', 'prune', 'pull', 'push', 'rm'];
    const runs = await Promise.all(commands.map((c) => cs(['image', c, '--help'], { env: user.env })));
    runs.forEach((run, i) => {
      expect(run.exitCode, commands[i]).toBe(0);
      expect(run.stdout, commands[i]).toMatch(/^EXAMPLES$/m);
      expect(run.stdout, commands[i]).toMatch(new RegExp(`^\\s+\\$ cs image ${commands[i] ?? ''}\\b`, 'm'));
    });
  });
});

describe.concurrent.each(['basic', 'token'] as const)('cs login to a %s registry', (mode) => {
  it('stores working credentials in DOCKER_CONFIG/config.json, private to the user, and logout removes them', async ({ expect }) => {
    const registry = registries[mode];
    const username = registry.username ?? '';
    const password = registry.password ?? '';
    const user = await home(`cli-login-${mode}`);
    const reference = `${registry.host}/private/app:v1`;

    const [loginRun] = await Promise.all([
      cs(['login', registry.host, '-u', username, '--password-stdin'], { env: user.env, input: `${password}\n` }),
      importFiles(user, reference, { 'secret.txt': 'members only\n' }),
    ]);
    const login = ok(loginRun);
    expect(login.stderr).toContain(`Login succeeded; credentials for ${registry.host} stored in ${user.authFile}`);
    for (const secret of secretForms(username, password)) expect(login.stdout + login.stderr).not.toContain(secret);
    expect((await stat(user.authFile)).mode & 0o777).toBe(0o600);
    const entry = (await authEntries(user))?.[registry.host];
    expect(Buffer.from(entry?.auth ?? '', 'base64').toString('utf8')).toBe(`${username}:${password}`);

    // The stored credentials are the ones cs uses to push.
    expect((await pushImage({ source: reference, env: user.env })).blobsCopied).toBe(3);

    const logout = ok(await cs(['logout', registry.host], { env: user.env }));
    expect(logout.stderr).toContain(`Removed credentials for ${registry.host} from ${user.authFile}`);
    expect((await authEntries(user))?.[registry.host]).toBeUndefined();

    const denied = await cs(['image', 'pull', reference], { env: user.env });
    expect(denied.exitCode, denied.stderr).toBe(4);
    expect(denied.stderr).toContain(`hint: run \`cs login ${registry.host}\``);
    expect(stackFree(denied)).toBe(true);
  });

  it('refuses a wrong password with exit 4, stores nothing and never prints it', async ({ expect }) => {
    const registry = registries[mode];
    const user = await home(`cli-wrong-${mode}`);
    const wrong = `wrong-${randomBytes(8).toString('hex')}`;
    const run = await cs(['login', registry.host, '-u', registry.username ?? '', '--password-stdin'], { env: user.env, input: `${wrong}\n` });
    expect(run.exitCode, run.stderr).toBe(4);
    expect(run.stderr).toContain(registry.host);
    for (const secret of secretForms(registry.username ?? '', wrong)) expect(run.stdout + run.stderr).not.toContain(secret);
    expect((await authEntries(user))?.[registry.host]).toBeUndefined();
    expect(stackFree(run)).toBe(true);
  });
});
