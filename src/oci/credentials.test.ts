import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InputError, RegistryError } from '../util/errors.js';
import {
  authFilePaths,
  findCredential,
  redact,
  removeCredential,
  saveCredential,
  type CredentialEnv,
} from './credentials.js';

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');

interface Sandbox {
  root: string;
  home: string;
  files: { authFile: string; runtime: string; config: string; docker: string };
  /** Environment without REGISTRY_AUTH_FILE. */
  options: CredentialEnv;
  /** Same, with REGISTRY_AUTH_FILE set. */
  withAuthFile: CredentialEnv;
}

let sb: Sandbox;

async function makeSandbox(): Promise<Sandbox> {
  const root = await mkdtemp(join(tmpdir(), 'cs-cred-'));
  const home = join(root, 'home');
  const files = {
    authFile: join(root, 'custom', 'auth.json'),
    runtime: join(root, 'run', 'containers', 'auth.json'),
    config: join(root, 'config', 'containers', 'auth.json'),
    docker: join(root, 'docker', 'config.json'),
  };
  const env: NodeJS.ProcessEnv = {
    XDG_RUNTIME_DIR: join(root, 'run'),
    XDG_CONFIG_HOME: join(root, 'config'),
    DOCKER_CONFIG: join(root, 'docker'),
  };
  if (process.env.PATH !== undefined) env.PATH = process.env.PATH;
  return {
    root,
    home,
    files,
    options: { env, home },
    withAuthFile: { env: { ...env, REGISTRY_AUTH_FILE: files.authFile }, home },
  };
}

async function writeJson(file: string, value: unknown): Promise<void> {
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, `${JSON.stringify(value, null, 2)}\n`);
}

async function readJson(file: string): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
}

function auth(user: string, pass: string): { auth: string } {
  return { auth: b64(`${user}:${pass}`) };
}

async function caught(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected a rejection');
}

beforeEach(async () => {
  sb = await makeSandbox();
});

afterEach(async () => {
  await rm(sb.root, { recursive: true, force: true });
});

describe('authFilePaths', () => {
  it('lists the four locations in lookup order', () => {
    expect(authFilePaths(sb.withAuthFile)).toEqual([sb.files.authFile, sb.files.runtime, sb.files.config, sb.files.docker]);
  });

  it('falls back to the home directory when variables are unset', () => {
    expect(authFilePaths({ env: {}, home: '/h' })).toEqual(['/h/.config/containers/auth.json', '/h/.docker/config.json']);
    expect(authFilePaths({ env: { XDG_CONFIG_HOME: '', DOCKER_CONFIG: '' }, home: '/h' })).toEqual([
      '/h/.config/containers/auth.json',
      '/h/.docker/config.json',
    ]);
  });
});

describe('findCredential', () => {
  it('follows the lookup order across the four files', async () => {
    const order = [sb.files.authFile, sb.files.runtime, sb.files.config, sb.files.docker];
    for (const [i, file] of order.entries()) {
      await writeJson(file, { auths: { 'quay.io': auth(`user${i}`, `pass${i}`) } });
    }
    for (const [i, file] of order.entries()) {
      const found = await findCredential('quay.io', sb.withAuthFile);
      expect(found).toEqual({ credential: { username: `user${i}`, password: `pass${i}` }, source: { kind: 'file', path: file } });
      await rm(file);
    }
    expect(await findCredential('quay.io', sb.withAuthFile)).toBeUndefined();
  });

  it('skips files that have no entry for the registry', async () => {
    await writeJson(sb.files.runtime, { auths: { 'ghcr.io': auth('g', 'gp') } });
    await writeJson(sb.files.config, { credHelpers: { 'ghcr.io': 'nope' } });
    await writeJson(sb.files.docker, { auths: { 'quay.io': auth('q', 'qp') } });
    const found = await findCredential('quay.io', sb.options);
    expect(found?.source).toEqual({ kind: 'file', path: sb.files.docker });
    expect(found?.credential).toEqual({ username: 'q', password: 'qp' });
  });

  it('ignores REGISTRY_AUTH_FILE when it is not set', async () => {
    await writeJson(sb.files.authFile, { auths: { 'quay.io': auth('a', 'b') } });
    expect(await findCredential('quay.io', sb.options)).toBeUndefined();
  });

  it('matches keys written as URLs', async () => {
    await writeJson(sb.files.docker, {
      auths: {
        'https://quay.io': auth('u1', 'p1'),
        'http://ghcr.io/v1/': auth('u2', 'p2'),
        'registry.example.com:5000/v1/': auth('u3', 'p3'),
      },
    });
    expect((await findCredential('quay.io', sb.options))?.credential).toEqual({ username: 'u1', password: 'p1' });
    expect((await findCredential('ghcr.io', sb.options))?.credential).toEqual({ username: 'u2', password: 'p2' });
    expect((await findCredential('registry.example.com:5000', sb.options))?.credential).toEqual({ username: 'u3', password: 'p3' });
    expect((await findCredential('https://quay.io/', sb.options))?.credential).toEqual({ username: 'u1', password: 'p1' });
    expect(await findCredential('registry.example.com', sb.options)).toBeUndefined();
  });

  it('maps every Docker Hub name to the docker key, and accepts docker.io as a key', async () => {
    await writeJson(sb.files.docker, { auths: { 'https://index.docker.io/v1/': auth('hub', 'hubpass') } });
    for (const name of ['docker.io', 'index.docker.io', 'registry-1.docker.io', 'https://index.docker.io/v1/']) {
      expect((await findCredential(name, sb.options))?.credential).toEqual({ username: 'hub', password: 'hubpass' });
    }
    await writeJson(sb.files.config, { auths: { 'docker.io': auth('pod', 'podpass') } });
    expect((await findCredential('registry-1.docker.io', sb.options))?.credential).toEqual({ username: 'pod', password: 'podpass' });
  });

  it('splits user:pass at the first colon', async () => {
    await writeJson(sb.files.docker, { auths: { 'quay.io': auth('me', 'pa:ss:word:') } });
    expect((await findCredential('quay.io', sb.options))?.credential).toEqual({ username: 'me', password: 'pa:ss:word:' });
  });

  it('reads identity and registry tokens', async () => {
    await writeJson(sb.files.docker, {
      auths: {
        'quay.io': { auth: b64('me:'), identitytoken: 'id-token' },
        'ghcr.io': { identitytoken: 'only-token' },
        'gcr.io': { registrytoken: 'reg-token' },
      },
    });
    expect((await findCredential('quay.io', sb.options))?.credential).toEqual({ username: 'me', identityToken: 'id-token' });
    expect((await findCredential('ghcr.io', sb.options))?.credential).toEqual({ identityToken: 'only-token' });
    expect((await findCredential('gcr.io', sb.options))?.credential).toEqual({ registryToken: 'reg-token' });
  });

  it('treats an entry without a secret as no entry', async () => {
    await writeJson(sb.files.config, { auths: { 'quay.io': {} } });
    await writeJson(sb.files.docker, { auths: { 'quay.io': auth('d', 'dp') } });
    expect((await findCredential('quay.io', sb.options))?.source.path).toBe(sb.files.docker);
  });

  it('refuses malformed JSON with an InputError naming the file, without the secret', async () => {
    await mkdir(dirname(sb.files.docker), { recursive: true });
    await writeFile(sb.files.docker, `{"auths": {"quay.io": {"auth": "${b64('me:topsecret')}"}}}}`);
    const error = await caught(findCredential('quay.io', sb.options));
    expect(error).toBeInstanceOf(InputError);
    expect(error.message).toContain(sb.files.docker);
    expect(error.message).not.toContain(b64('me:topsecret'));
    expect(error.message).not.toContain('topsecret');
    expect(JSON.stringify(error)).not.toContain(b64('me:topsecret'));
    expect(String((error as { cause?: unknown }).cause ?? '')).not.toContain(b64('me:topsecret'));
  });

  it('refuses an auth value that is not base64 of user:pass, naming file and key', async () => {
    await writeJson(sb.files.docker, { auths: { 'quay.io': { auth: 'not base64 topsecret!' } } });
    let error = await caught(findCredential('quay.io', sb.options));
    expect(error).toBeInstanceOf(InputError);
    expect(error.message).toContain(sb.files.docker);
    expect(error.message).toContain('quay.io');
    expect(error.message).not.toContain('topsecret');

    await writeJson(sb.files.docker, { auths: { 'quay.io': { auth: b64('nocolonsecret') } } });
    error = await caught(findCredential('quay.io', sb.options));
    expect(error).toBeInstanceOf(InputError);
    expect(error.message).not.toContain('nocolonsecret');
    expect(error.message).not.toContain(b64('nocolonsecret'));
  });

  it('does not validate entries of other registries', async () => {
    await writeJson(sb.files.docker, { auths: { 'bad.example': { auth: '!!' }, 'quay.io': auth('a', 'b') } });
    expect((await findCredential('quay.io', sb.options))?.credential).toEqual({ username: 'a', password: 'b' });
  });

  it('refuses files larger than 1 MiB', async () => {
    await mkdir(dirname(sb.files.docker), { recursive: true });
    await writeFile(sb.files.docker, JSON.stringify({ auths: {}, padding: 'x'.repeat(1024 * 1024) }));
    const error = await caught(findCredential('quay.io', sb.options));
    expect(error).toBeInstanceOf(InputError);
    expect(error.message).toContain(sb.files.docker);
  });

  it('rejects an empty registry name', async () => {
    await expect(findCredential('  ', sb.options)).rejects.toBeInstanceOf(InputError);
  });
});

describe('saveCredential', () => {
  it('creates config.json with mode 0600 in a 0700 directory', async () => {
    const source = await saveCredential('quay.io', { username: 'me', password: 'p:w' }, sb.options);
    expect(source).toEqual({ kind: 'file', path: sb.files.docker });
    expect((await stat(sb.files.docker)).mode & 0o777).toBe(0o600);
    expect((await stat(dirname(sb.files.docker))).mode & 0o777).toBe(0o700);
    expect(await readJson(sb.files.docker)).toEqual({ auths: { 'quay.io': { auth: b64('me:p:w') } } });
    expect((await findCredential('quay.io', sb.options))?.credential).toEqual({ username: 'me', password: 'p:w' });
    expect(await readdir(dirname(sb.files.docker))).toEqual(['config.json']);
  });

  it('uses the docker key for Docker Hub and replaces older forms of it', async () => {
    await writeJson(sb.files.docker, { auths: { 'docker.io': auth('old', 'old'), 'index.docker.io/v1/': auth('x', 'y') } });
    await saveCredential('registry-1.docker.io', { username: 'new', password: 'newpass' }, sb.options);
    expect(await readJson(sb.files.docker)).toEqual({ auths: { 'https://index.docker.io/v1/': auth('new', 'newpass') } });
  });

  it('preserves every unrelated field of an existing file', async () => {
    const original = {
      auths: {
        'ghcr.io': auth('g', 'gp'),
        'quay.io/org': auth('scoped', 'sp'),
        'quay.io': { ...auth('old', 'oldpass'), email: 'x@example.com' },
      },
      proxies: { default: { httpProxy: 'http://proxy:3128', noProxy: 'localhost' } },
      HttpHeaders: { 'User-Agent': 'me' },
      credHelpers: { 'gcr.io': 'gcloud' },
      someUnknownKey: [1, { nested: true }, null],
      detachKeys: 'ctrl-e,e',
    };
    await writeJson(sb.files.docker, original);
    await saveCredential('quay.io', { username: 'new', password: 'newpass' }, sb.options);
    const after = await readJson(sb.files.docker);
    const { auths, ...rest } = after;
    const { auths: originalAuths, ...originalRest } = original;
    expect(rest).toEqual(originalRest);
    expect(auths).toEqual({
      'ghcr.io': originalAuths['ghcr.io'],
      'quay.io/org': originalAuths['quay.io/org'],
      'quay.io': auth('new', 'newpass'),
    });
    expect((await stat(sb.files.docker)).mode & 0o777).toBe(0o600);
    expect(await readdir(dirname(sb.files.docker))).toEqual(['config.json']);
  });

  it('writes identity and registry tokens', async () => {
    await saveCredential('quay.io', { username: 'me', identityToken: 'idt' }, sb.options);
    await saveCredential('gcr.io', { registryToken: 'rt' }, sb.options);
    expect(await readJson(sb.files.docker)).toEqual({
      auths: { 'quay.io': { auth: b64('me:'), identitytoken: 'idt' }, 'gcr.io': { registrytoken: 'rt' } },
    });
    expect((await findCredential('quay.io', sb.options))?.credential).toEqual({ username: 'me', identityToken: 'idt' });
  });

  it('writes to REGISTRY_AUTH_FILE when it is set', async () => {
    const source = await saveCredential('docker.io', { username: 'me', password: 'pw' }, sb.withAuthFile);
    expect(source).toEqual({ kind: 'file', path: sb.files.authFile });
    expect(await readJson(sb.files.authFile)).toEqual({ auths: { 'https://index.docker.io/v1/': auth('me', 'pw') } });
    await expect(stat(sb.files.docker)).rejects.toMatchObject({ code: 'ENOENT' });
    expect((await findCredential('docker.io', sb.withAuthFile))?.source).toEqual({ kind: 'file', path: sb.files.authFile });
  });

  it('refuses credentials it cannot represent, without echoing them', async () => {
    await expect(saveCredential('quay.io', { username: 'a:b', password: 'secretpw' }, sb.options)).rejects.toBeInstanceOf(InputError);
    await expect(saveCredential('quay.io', { username: 'a' }, sb.options)).rejects.toBeInstanceOf(InputError);
    const error = await caught(saveCredential('quay.io', { username: 'a:b', password: 'secretpw' }, sb.options));
    expect(error.message).not.toContain('secretpw');
  });

  it('refuses to overwrite a malformed file', async () => {
    await mkdir(dirname(sb.files.docker), { recursive: true });
    await writeFile(sb.files.docker, '{ not json');
    await expect(saveCredential('quay.io', { username: 'a', password: 'b' }, sb.options)).rejects.toBeInstanceOf(InputError);
    expect(await readFile(sb.files.docker, 'utf8')).toBe('{ not json');
  });
});

describe('removeCredential', () => {
  it('removes the entry from every file that has it', async () => {
    await writeJson(sb.files.authFile, { auths: { 'quay.io': auth('a', 'a'), 'ghcr.io': auth('g', 'g') } });
    await writeJson(sb.files.runtime, { auths: { 'https://quay.io': auth('b', 'b') } });
    await writeJson(sb.files.config, { auths: { 'ghcr.io': auth('g', 'g') } });
    await writeJson(sb.files.docker, { auths: { 'quay.io/v1/': auth('d', 'd') }, credsStore: '' , proxies: { x: 1 } });
    const removed = await removeCredential('quay.io', sb.withAuthFile);
    expect(removed).toEqual([
      { kind: 'file', path: sb.files.authFile },
      { kind: 'file', path: sb.files.runtime },
      { kind: 'file', path: sb.files.docker },
    ]);
    expect(await readJson(sb.files.authFile)).toEqual({ auths: { 'ghcr.io': auth('g', 'g') } });
    expect(await readJson(sb.files.runtime)).toEqual({ auths: {} });
    expect(await readJson(sb.files.docker)).toEqual({ auths: {}, credsStore: '', proxies: { x: 1 } });
    expect(await findCredential('quay.io', sb.withAuthFile)).toBeUndefined();
    expect((await findCredential('ghcr.io', sb.withAuthFile))?.source.path).toBe(sb.files.authFile);
    expect(await removeCredential('quay.io', sb.withAuthFile)).toEqual([]);
  });

  it('returns [] when there are no files at all', async () => {
    expect(await removeCredential('docker.io', sb.options)).toEqual([]);
  });
});

describe('credential helpers', () => {
  const script = `#!/bin/sh
# Test credential helper: one JSON file per server URL in $CSTEST_STORE/<name>/.
name=$(basename "$0")
dir="$CSTEST_STORE/$name"
mkdir -p "$dir"
input=$(cat)
key() { printf '%s' "$1" | tr -c 'A-Za-z0-9' '_'; }
case "$1" in
  get)
    echo "get $input" >> "$CSTEST_STORE/$name.log"
    f="$dir/$(key "$input").json"
    if [ -f "$f" ]; then cat "$f"; else echo "credentials not found in native keychain"; exit 1; fi ;;
  store)
    if [ -n "$CSTEST_FAIL" ]; then echo "cannot store $input" >&2; exit "$CSTEST_FAIL"; fi
    url=$(printf '%s' "$input" | sed -n 's/.*"ServerURL":"\\([^"]*\\)".*/\\1/p')
    echo "store $url" >> "$CSTEST_STORE/$name.log"
    printf '%s' "$input" > "$dir/$(key "$url").json" ;;
  erase)
    echo "erase $input" >> "$CSTEST_STORE/$name.log"
    f="$dir/$(key "$input").json"
    if [ -f "$f" ]; then rm -f "$f"; else echo "credentials not found in native keychain"; exit 1; fi ;;
  *) echo "unknown action $1" >&2; exit 2 ;;
esac
`;
  let options: CredentialEnv;
  let storeDir: string;

  const stored = async (helper: string, url: string): Promise<unknown> =>
    JSON.parse(await readFile(join(storeDir, helper, `${url.replace(/[^A-Za-z0-9]/g, '_')}.json`), 'utf8'));
  const preload = async (helper: string, url: string, username: string, secret: string): Promise<void> => {
    const file = join(storeDir, helper, `${url.replace(/[^A-Za-z0-9]/g, '_')}.json`);
    await mkdir(dirname(file), { recursive: true });
    await writeFile(file, JSON.stringify({ ServerURL: url, Username: username, Secret: secret }));
  };

  beforeEach(async () => {
    const bin = join(sb.root, 'bin');
    storeDir = join(sb.root, 'store');
    await mkdir(bin, { recursive: true });
    await mkdir(storeDir, { recursive: true });
    for (const name of ['docker-credential-cstest', 'docker-credential-cstest2']) {
      await writeFile(join(bin, name), script);
      await chmod(join(bin, name), 0o755);
    }
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...sb.options.env,
      PATH: `${bin}:${process.env.PATH ?? ''}`,
      CSTEST_STORE: storeDir,
    };
    delete env.REGISTRY_AUTH_FILE;
    delete env.CSTEST_FAIL;
    options = { env, home: sb.home };
  });

  it('routes everything through credsStore', async () => {
    await writeJson(sb.files.docker, { credsStore: 'cstest', auths: { 'quay.io': auth('stale', 'stalepw') }, other: 1 });
    const source = await saveCredential('quay.io', { username: 'me', password: 'helper:pw' }, options);
    expect(source).toEqual({ kind: 'helper', helper: 'docker-credential-cstest', path: sb.files.docker });
    expect(await stored('docker-credential-cstest', 'quay.io')).toEqual({ ServerURL: 'quay.io', Username: 'me', Secret: 'helper:pw' });
    // The stale inline secret is gone; an empty marker entry remains, like docker writes.
    expect(await readJson(sb.files.docker)).toEqual({ credsStore: 'cstest', auths: { 'quay.io': {} }, other: 1 });

    expect(await findCredential('quay.io', options)).toEqual({
      credential: { username: 'me', password: 'helper:pw' },
      source: { kind: 'helper', helper: 'docker-credential-cstest', path: sb.files.docker },
    });

    // "credentials not found" is no credential, not an error.
    expect(await findCredential('ghcr.io', options)).toBeUndefined();

    expect(await removeCredential('quay.io', options)).toEqual([
      { kind: 'file', path: sb.files.docker },
      { kind: 'helper', helper: 'docker-credential-cstest', path: sb.files.docker },
    ]);
    expect(await findCredential('quay.io', options)).toBeUndefined();
    expect(await removeCredential('quay.io', options)).toEqual([]);
  });

  it('uses the Docker Hub key and identity tokens with helpers', async () => {
    await writeJson(sb.files.docker, { credsStore: 'cstest' });
    await saveCredential('docker.io', { identityToken: 'hub-id-token' }, options);
    expect(await stored('docker-credential-cstest', 'https://index.docker.io/v1/')).toEqual({
      ServerURL: 'https://index.docker.io/v1/',
      Username: '<token>',
      Secret: 'hub-id-token',
    });
    expect((await findCredential('index.docker.io', options))?.credential).toEqual({ identityToken: 'hub-id-token' });
  });

  it('lets credHelpers beat credsStore', async () => {
    await writeJson(sb.files.docker, { credsStore: 'cstest', credHelpers: { 'ghcr.io': 'cstest2' } });
    await preload('docker-credential-cstest', 'ghcr.io', 'fromstore', 'storepw');
    await preload('docker-credential-cstest2', 'ghcr.io', 'fromhelper', 'helperpw');
    expect(await findCredential('ghcr.io', options)).toEqual({
      credential: { username: 'fromhelper', password: 'helperpw' },
      source: { kind: 'helper', helper: 'docker-credential-cstest2', path: sb.files.docker },
    });
    const source = await saveCredential('ghcr.io', { username: 'u', password: 'p' }, options);
    expect(source.helper).toBe('docker-credential-cstest2');
    expect(await stored('docker-credential-cstest2', 'ghcr.io')).toEqual({ ServerURL: 'ghcr.io', Username: 'u', Secret: 'p' });
    expect(await stored('docker-credential-cstest', 'ghcr.io')).toEqual({ ServerURL: 'ghcr.io', Username: 'fromstore', Secret: 'storepw' });
  });

  it('moves on to the next file when a credHelpers entry has nothing', async () => {
    await writeJson(sb.files.config, { credHelpers: { 'quay.io': 'cstest2' } });
    await writeJson(sb.files.docker, { auths: { 'quay.io': auth('docker', 'dpw') } });
    const found = await findCredential('quay.io', options);
    expect(found?.source).toEqual({ kind: 'file', path: sb.files.docker });
    const log = await readFile(join(storeDir, 'docker-credential-cstest2.log'), 'utf8');
    expect(log).toBe('get quay.io\n');
  });

  it('names a configured helper that does not exist, and the file that asked for it', async () => {
    await writeJson(sb.files.docker, { credHelpers: { 'quay.io': 'cs-no-such-helper' } });
    const error = await caught(findCredential('quay.io', options));
    expect(error).toBeInstanceOf(RegistryError);
    expect(error.message).toContain('docker-credential-cs-no-such-helper');
    expect(error.message).toContain(sb.files.docker);
    expect(error.message).toContain('credHelpers');

    await writeJson(sb.files.docker, { credsStore: 'cs-no-such-helper' });
    const saveError = await caught(saveCredential('quay.io', { username: 'u', password: 'secretpw' }, options));
    expect(saveError).toBeInstanceOf(RegistryError);
    expect(saveError.message).toContain('docker-credential-cs-no-such-helper');
    expect(saveError.message).not.toContain('secretpw');
  });

  it('keeps secrets out of helper failures', async () => {
    await writeJson(sb.files.docker, { credsStore: 'cstest' });
    for (const code of ['1', '3']) {
      const failing: CredentialEnv = { env: { ...options.env, CSTEST_FAIL: code }, home: sb.home };
      const error = await caught(saveCredential('quay.io', { username: 'u', password: 'sup3rsecret' }, failing));
      expect(error).toBeInstanceOf(RegistryError);
      expect(error.message).toContain('docker-credential-cstest');
      expect(error.message).toContain('cannot store');
      expect(error.message).not.toContain('sup3rsecret');
      expect(JSON.stringify(error)).not.toContain('sup3rsecret');
    }
  });

  it('refuses an invalid helper name', async () => {
    await writeJson(sb.files.docker, { credsStore: '../../bin/sh' });
    const error = await caught(findCredential('quay.io', options));
    expect(error).toBeInstanceOf(InputError);
    expect(error.message).toContain(sb.files.docker);
  });
});

describe('redact', () => {
  it('replaces secrets and their base64 user:pass forms', () => {
    const text = `login failed for s3cret with header Basic ${b64('alice:s3cret')} and ${b64('s3cret')}; again s3cret`;
    const out = redact(text, ['alice', 's3cret']);
    expect(out).not.toContain('s3cret');
    expect(out).not.toContain(b64('alice:s3cret'));
    expect(out).not.toContain(b64('s3cret'));
    expect(out).toBe('login failed for *** with header Basic *** and ***; again ***');
  });

  it('ignores empty secrets and handles overlapping ones', () => {
    expect(redact('abc', ['', 'b'])).toBe('a***c');
    expect(redact('token=abcdef', ['abc', 'abcdef'])).toBe('token=***');
    expect(redact('nothing here', [])).toBe('nothing here');
  });
});
