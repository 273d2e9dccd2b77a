/**
 * Registry credentials, read from and written to the files docker and
 * podman/containers already use, so `cs login` and `docker login`/`podman
 * login` share one set of credentials.
 *
 * Files, in lookup order (first file with an entry for the registry wins):
 *   1. $REGISTRY_AUTH_FILE                          (containers auth.json)
 *   2. $XDG_RUNTIME_DIR/containers/auth.json
 *   3. $XDG_CONFIG_HOME/containers/auth.json        (default ~/.config/...)
 *   4. $DOCKER_CONFIG/config.json                   (default ~/.docker/config.json)
 *
 * Both formats share the parts cs cares about:
 *   { "auths": { "<key>": { "auth": base64("user:pass"), "identitytoken", "registrytoken" } },
 *     "credHelpers": { "<registry>": "<suffix>" }, "credsStore": "<suffix>" }
 * where a suffix names the program `docker-credential-<suffix>` (protocol:
 * `get`/`store`/`erase`, JSON `{ServerURL, Username, Secret}` on stdio).
 *
 * Within one file the order is: a per-registry credHelpers entry, then an
 * inline `auths` entry that carries a secret, then the file's credsStore.
 * A helper that reports "credentials not found" counts as no entry, and the
 * search goes on to the next file.
 *
 * Keys are compared by host: a scheme and any path are stripped, so
 * `https://quay.io`, `http://quay.io/v1/` and `quay.io/v1/` all mean
 * `quay.io`. Docker Hub (`docker.io`, `index.docker.io`,
 * `registry-1.docker.io`) is written under `https://index.docker.io/v1/`, the
 * key docker itself writes.
 *
 * Secrets never appear in messages: parse errors name the file, the key and
 * the position, never the text, and helper output is redacted.
 */
import { randomBytes } from 'node:crypto';
import { constants as fsConstants, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CsError, InputError, ProcessError, RegistryError } from '../util/errors.js';
import { run } from '../util/process.js';
import { DEFAULT_REGISTRY } from './reference.js';

export interface Credential {
  username?: string;
  password?: string;
  identityToken?: string;
  registryToken?: string;
}

export interface CredentialEnv {
  /** Environment to read variables from and to run helpers with (default: process.env). */
  env?: NodeJS.ProcessEnv;
  /** Home directory for the default locations (default: os.homedir()). */
  home?: string;
}

export interface CredentialSource {
  kind: 'file' | 'helper';
  /** The auth file holding the entry, or the config file that named the helper. */
  path?: string;
  /** The helper program, e.g. `docker-credential-pass`. */
  helper?: string;
}

/** Auth files larger than this are refused rather than read. */
export const MAX_AUTH_FILE_BYTES = 1024 * 1024;

/** The key docker writes for Docker Hub. */
export const DOCKER_HUB_KEY = 'https://index.docker.io/v1/';

const DOCKER_HUB_HOSTS = new Set([DEFAULT_REGISTRY, 'index.docker.io', 'registry-1.docker.io']);

/** Helpers may prompt (gpg pinentry, keychain dialogs): allow time for a human. */
const HELPER_TIMEOUT_MS = 120_000;

const HELPER_PREFIX = 'docker-credential-';

// ---------------------------------------------------------------------------
// Public API

export function authFilePaths(options: CredentialEnv = {}): string[] {
  const env = options.env ?? process.env;
  const home = options.home ?? os.homedir();
  const paths: string[] = [];
  const authFile = nonEmpty(env.REGISTRY_AUTH_FILE);
  if (authFile !== undefined) paths.push(authFile);
  const runtimeDir = nonEmpty(env.XDG_RUNTIME_DIR);
  if (runtimeDir !== undefined) paths.push(path.join(runtimeDir, 'containers', 'auth.json'));
  const configHome = nonEmpty(env.XDG_CONFIG_HOME) ?? path.join(home, '.config');
  paths.push(path.join(configHome, 'containers', 'auth.json'));
  paths.push(dockerConfigPath(env, home));
  return [...new Set(paths)];
}

export async function findCredential(
  registry: string,
  options: CredentialEnv = {},
): Promise<{ credential: Credential; source: CredentialSource } | undefined> {
  const target = registryTarget(registry);
  for (const file of authFilePaths(options)) {
    const config = await readAuthFile(file);
    if (config === undefined) continue;

    const specific = helperFor(config, target, 'credHelpers');
    if (specific !== undefined) {
      const credential = await helperGetAny(specific, target, config, options);
      if (credential !== undefined) return { credential, source: helperSource(specific) };
    }

    const inline = inlineCredential(config, target);
    if (inline !== undefined) return { credential: inline, source: { kind: 'file', path: file } };

    const store = helperFor(config, target, 'credsStore');
    if (store !== undefined) {
      const credential = await helperGetAny(store, target, config, options);
      if (credential !== undefined) return { credential, source: helperSource(store) };
    }
  }
  return undefined;
}

export async function saveCredential(
  registry: string,
  credential: Credential,
  options: CredentialEnv = {},
): Promise<CredentialSource> {
  const target = registryTarget(registry);
  checkCredential(credential);
  const env = options.env ?? process.env;
  const file = nonEmpty(env.REGISTRY_AUTH_FILE) ?? dockerConfigPath(env, options.home ?? os.homedir());
  const config = (await readAuthFile(file)) ?? { path: file, data: {} };

  const helper = helperFor(config, target, 'credHelpers') ?? helperFor(config, target, 'credsStore');
  if (helper !== undefined) {
    if (credential.registryToken !== undefined && credential.identityToken === undefined && credential.password === undefined) {
      throw new InputError(`a registry token cannot be stored in the credential helper ${helper.program} (configured in ${file})`);
    }
    await helperStore(helper, target, credential, options);
    // Like docker: keep an empty marker entry in the file, and drop any stale
    // inline secret that would otherwise shadow the helper's credential.
    const before = JSON.stringify(config.data);
    const auths = authsOf(config, true);
    const existing = auths[target.writeKey];
    deleteKeys(auths, matchingKeys(auths, target, 'host-level'));
    auths[target.writeKey] = isPlainObject(existing) ? withoutSecrets(existing) : {};
    if (JSON.stringify(config.data) !== before) await writeAuthFile(file, config.data);
    return helperSource(helper);
  }

  const auths = authsOf(config, true);
  deleteKeys(auths, matchingKeys(auths, target, 'host-level'));
  auths[target.writeKey] = entryFor(credential);
  await writeAuthFile(file, config.data);
  return { kind: 'file', path: file };
}

export async function removeCredential(registry: string, options: CredentialEnv = {}): Promise<CredentialSource[]> {
  const target = registryTarget(registry);
  const removed: CredentialSource[] = [];
  const erased = new Set<string>();
  for (const file of authFilePaths(options)) {
    const config = await readAuthFile(file);
    if (config === undefined) continue;

    const auths = authsOf(config, false);
    const keys = auths === undefined ? [] : matchingKeys(auths, target, 'any');
    if (auths !== undefined && keys.length > 0) {
      deleteKeys(auths, keys);
      await writeAuthFile(file, config.data);
      removed.push({ kind: 'file', path: file });
    }

    const helper = helperFor(config, target, 'credHelpers') ?? helperFor(config, target, 'credsStore');
    if (helper !== undefined && !erased.has(helper.program)) {
      erased.add(helper.program);
      const urls = new Set([target.writeKey, ...keys]);
      let any = false;
      for (const url of urls) {
        if (await helperErase(helper, url, options)) any = true;
      }
      if (any) removed.push(helperSource(helper));
    }
  }
  return removed;
}

export function redact(text: string, secrets: readonly string[]): string {
  const values = [...new Set(secrets.filter((s) => s.length > 0))];
  const needles = new Set<string>();
  for (const value of values) {
    needles.add(value);
    needles.add(base64(value));
  }
  // The `user:pass` form as it appears in an auth file, for every pair given.
  if (values.length <= 32) {
    for (const user of values) {
      for (const pass of values) {
        if (user !== pass) needles.add(base64(`${user}:${pass}`));
      }
      needles.add(base64(`${user}:`));
      needles.add(base64(`:${user}`));
    }
  }
  // Longest first, so a secret that contains another is replaced whole.
  let result = text;
  for (const needle of [...needles].sort((a, b) => b.length - a.length)) {
    if (needle.length > 0 && result.includes(needle)) result = result.split(needle).join('***');
  }
  return result;
}

// ---------------------------------------------------------------------------
// Registries and keys

interface RegistryTarget {
  /** The registry as the caller gave it, lowercased. */
  given: string;
  /** Host (with port) used for comparisons; Docker Hub aliases fold to docker.io. */
  host: string;
  /** The key written to files and passed to helpers. */
  writeKey: string;
}

function registryTarget(registry: string): RegistryTarget {
  const trimmed = registry.trim();
  const { host } = splitKey(trimmed);
  if (host === '' || /\s/.test(host)) {
    throw new InputError(`not a registry host: ${JSON.stringify(registry)}`, {
      suggestions: ['give a registry host such as docker.io, ghcr.io or localhost:5000'],
    });
  }
  const folded = foldHost(host);
  return { given: trimmed.toLowerCase(), host: folded, writeKey: folded === DEFAULT_REGISTRY ? DOCKER_HUB_KEY : folded };
}

/** Strips a scheme and splits host from path: `https://Host:1/v1/` → `host:1`, `/v1/`. */
function splitKey(key: string): { host: string; path: string } {
  const withoutScheme = key.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '');
  const slash = withoutScheme.indexOf('/');
  const host = (slash === -1 ? withoutScheme : withoutScheme.slice(0, slash)).toLowerCase();
  const rest = slash === -1 ? '' : withoutScheme.slice(slash);
  return { host, path: rest };
}

function foldHost(host: string): string {
  return DOCKER_HUB_HOSTS.has(host) ? DEFAULT_REGISTRY : host;
}

/** A key for the whole registry: no path, or an API version path like `/v1/`. */
function isHostLevel(keyPath: string): boolean {
  return keyPath === '' || keyPath === '/' || /^\/v[0-9]+\/?$/.test(keyPath);
}

/**
 * Keys of `record` that name the target registry, best first: the key exactly
 * as given, the canonical key, other whole-registry forms, then (with `any`)
 * repository-scoped keys such as `quay.io/org`.
 */
function matchingKeys(record: Record<string, unknown>, target: RegistryTarget, scope: 'host-level' | 'any'): string[] {
  const ranked: { key: string; rank: number; index: number }[] = [];
  Object.keys(record).forEach((key, index) => {
    const { host, path: keyPath } = splitKey(key.trim());
    if (foldHost(host) !== target.host) return;
    const hostLevel = isHostLevel(keyPath);
    if (!hostLevel && scope === 'host-level') return;
    const lower = key.trim().toLowerCase();
    const rank = lower === target.given ? 0 : lower === target.writeKey ? 1 : hostLevel ? 2 : 3;
    ranked.push({ key, rank, index });
  });
  return ranked.sort((a, b) => a.rank - b.rank || a.index - b.index).map((r) => r.key);
}

function deleteKeys(record: Record<string, unknown>, keys: readonly string[]): void {
  for (const key of keys) delete record[key];
}

// ---------------------------------------------------------------------------
// Auth files

interface AuthFile {
  path: string;
  data: Record<string, unknown>;
}

/** Reads and parses one auth file; undefined if it does not exist. */
async function readAuthFile(file: string): Promise<AuthFile | undefined> {
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(file, fsConstants.O_RDONLY);
  } catch (error) {
    const code = errorCode(error);
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw new InputError(`cannot read the auth file ${file}: ${code ?? 'unknown error'}`);
  }
  let text: string;
  try {
    const stat = await handle.stat();
    if (!stat.isFile()) throw new InputError(`the auth file ${file} is not a regular file`);
    if (stat.size > MAX_AUTH_FILE_BYTES) {
      throw new InputError(`the auth file ${file} is larger than ${MAX_AUTH_FILE_BYTES} bytes; refusing to read it`);
    }
    const buffer = Buffer.alloc(MAX_AUTH_FILE_BYTES + 1);
    let length = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length > MAX_AUTH_FILE_BYTES) {
        throw new InputError(`the auth file ${file} is larger than ${MAX_AUTH_FILE_BYTES} bytes; refusing to read it`);
      }
    }
    text = buffer.subarray(0, length).toString('utf8');
  } catch (error) {
    if (error instanceof CsError) throw error;
    throw new InputError(`cannot read the auth file ${file}: ${errorCode(error) ?? 'unknown error'}`);
  } finally {
    await handle.close();
  }

  if (text.trim() === '') return { path: file, data: {} };
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    // The parser's own message quotes the input, which may hold a secret:
    // report only where the problem is.
    throw new InputError(`the auth file ${file} is not valid JSON${jsonErrorPosition(text, error)}`, {
      suggestions: [`fix or remove ${file}`],
    });
  }
  if (!isPlainObject(data)) throw new InputError(`the auth file ${file} must hold a JSON object`);
  for (const field of ['auths', 'credHelpers'] as const) {
    if (data[field] !== undefined && data[field] !== null && !isPlainObject(data[field])) {
      throw new InputError(`the auth file ${file}: "${field}" must be an object`);
    }
  }
  if (data.credsStore !== undefined && data.credsStore !== null && typeof data.credsStore !== 'string') {
    throw new InputError(`the auth file ${file}: "credsStore" must be a string`);
  }
  return { path: file, data };
}

function jsonErrorPosition(text: string, error: unknown): string {
  const message = error instanceof Error ? error.message : '';
  const match = /position (\d+)/.exec(message);
  let offset: number | undefined = match?.[1] === undefined ? undefined : Number(match[1]);
  if (offset === undefined && /end of JSON input|Unterminated/i.test(message)) offset = text.length;
  if (offset === undefined || !Number.isFinite(offset)) return '';
  const before = text.slice(0, offset);
  const line = before.split('\n').length;
  const column = offset - before.lastIndexOf('\n');
  return ` (line ${line}, column ${column})`;
}

/** The `auths` object of a file; with `create`, made if missing. */
function authsOf(config: AuthFile, create: true): Record<string, unknown>;
function authsOf(config: AuthFile, create: false): Record<string, unknown> | undefined;
function authsOf(config: AuthFile, create: boolean): Record<string, unknown> | undefined {
  const auths = config.data.auths;
  if (isPlainObject(auths)) return auths;
  if (!create) return undefined;
  const fresh: Record<string, unknown> = {};
  config.data.auths = fresh;
  return fresh;
}

/** The first inline entry for the registry that carries a secret. */
function inlineCredential(config: AuthFile, target: RegistryTarget): Credential | undefined {
  const auths = authsOf(config, false);
  if (auths === undefined) return undefined;
  for (const key of matchingKeys(auths, target, 'any')) {
    const credential = decodeEntry(config.path, key, auths[key]);
    if (credential !== undefined) return credential;
  }
  return undefined;
}

function decodeEntry(file: string, key: string, entry: unknown): Credential | undefined {
  const where = `the auth file ${file}, entry ${JSON.stringify(key)}`;
  if (entry === null || entry === undefined) return undefined;
  if (!isPlainObject(entry)) throw new InputError(`${where} must be an object`);
  const credential: Credential = {};
  const auth = entry.auth;
  if (auth !== undefined && auth !== null && auth !== '') {
    if (typeof auth !== 'string') throw new InputError(`${where}: "auth" must be a string`);
    const compact = auth.replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(compact) || compact.length % 4 === 1) {
      throw new InputError(`${where}: "auth" is not base64-encoded "user:password"`);
    }
    const decoded = Buffer.from(compact, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon === -1) throw new InputError(`${where}: "auth" is not base64-encoded "user:password"`);
    const username = decoded.slice(0, colon);
    const password = decoded.slice(colon + 1);
    if (username !== '') credential.username = username;
    if (password !== '') credential.password = password;
  }
  for (const [field, prop] of [
    ['identitytoken', 'identityToken'],
    ['registrytoken', 'registryToken'],
  ] as const) {
    const value = entry[field];
    if (value === undefined || value === null || value === '') continue;
    if (typeof value !== 'string') throw new InputError(`${where}: "${field}" must be a string`);
    credential[prop] = value;
  }
  if (credential.password === undefined && credential.identityToken === undefined && credential.registryToken === undefined) {
    return undefined;
  }
  return credential;
}

function entryFor(credential: Credential): Record<string, unknown> {
  const entry: Record<string, unknown> = {};
  if (credential.username !== undefined || credential.password !== undefined) {
    entry.auth = base64(`${credential.username ?? ''}:${credential.password ?? ''}`);
  }
  if (credential.identityToken !== undefined) entry.identitytoken = credential.identityToken;
  if (credential.registryToken !== undefined) entry.registrytoken = credential.registryToken;
  return entry;
}

function withoutSecrets(entry: Record<string, unknown>): Record<string, unknown> {
  const { auth: _auth, identitytoken: _identity, registrytoken: _registry, password: _password, ...rest } = entry;
  return rest;
}

function checkCredential(credential: Credential): void {
  const { username, password, identityToken, registryToken } = credential;
  if (username !== undefined && username.includes(':')) {
    throw new InputError('a registry username cannot contain ":"');
  }
  if (password !== undefined && password !== '' && (username === undefined || username === '')) {
    throw new InputError('a password needs a username');
  }
  const hasSecret = [password, identityToken, registryToken].some((s) => s !== undefined && s !== '');
  if (!hasSecret) throw new InputError('nothing to save: give a password, an identity token or a registry token');
}

/**
 * Replaces `file` atomically: a private temp file in the same directory is
 * written, flushed and renamed over the original (or over the target of a
 * symlink, so a linked config stays linked).
 */
async function writeAuthFile(file: string, data: Record<string, unknown>): Promise<void> {
  let target = file;
  try {
    target = await fs.realpath(file);
  } catch (error) {
    if (errorCode(error) !== 'ENOENT') throw new InputError(`cannot write the auth file ${file}: ${errorCode(error) ?? 'unknown error'}`);
  }
  const dir = path.dirname(target);
  try {
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (error) {
    throw new InputError(`cannot create the directory ${dir} for ${file}: ${errorCode(error) ?? 'unknown error'}`);
  }
  const temp = path.join(dir, `.${path.basename(target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const text = `${JSON.stringify(data, null, '\t')}\n`;
  let handle: fs.FileHandle | undefined;
  try {
    handle = await fs.open(temp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o600);
    await handle.writeFile(text, 'utf8');
    await handle.sync();
    await handle.close();
    handle = undefined;
    await fs.rename(temp, target);
  } catch (error) {
    if (handle !== undefined) await handle.close().catch(() => undefined);
    await fs.rm(temp, { force: true }).catch(() => undefined);
    throw new InputError(`cannot write the auth file ${file}: ${errorCode(error) ?? 'unknown error'}`);
  }
}

// ---------------------------------------------------------------------------
// Credential helpers

interface Helper {
  program: string;
  /** The config file that named it. */
  configPath: string;
  /** Which field named it, for messages. */
  field: 'credHelpers' | 'credsStore';
}

function helperFor(config: AuthFile, target: RegistryTarget, field: 'credHelpers' | 'credsStore'): Helper | undefined {
  let suffix: unknown;
  if (field === 'credsStore') {
    suffix = config.data.credsStore;
  } else {
    const helpers = config.data.credHelpers;
    if (!isPlainObject(helpers)) return undefined;
    const key = matchingKeys(helpers, target, 'host-level')[0];
    if (key === undefined) return undefined;
    suffix = helpers[key];
    if (typeof suffix !== 'string') {
      throw new InputError(`the auth file ${config.path}: credHelpers[${JSON.stringify(key)}] must be a string`);
    }
  }
  if (typeof suffix !== 'string' || suffix.trim() === '') return undefined;
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(suffix)) {
    throw new InputError(`the auth file ${config.path}: ${field} names an invalid credential helper ${JSON.stringify(suffix)}`);
  }
  return { program: HELPER_PREFIX + suffix, configPath: config.path, field };
}

function helperSource(helper: Helper): CredentialSource {
  return { kind: 'helper', helper: helper.program, path: helper.configPath };
}

/** Asks the helper under the canonical key, then under the file's own key forms. */
async function helperGetAny(helper: Helper, target: RegistryTarget, config: AuthFile, options: CredentialEnv): Promise<Credential | undefined> {
  const auths = authsOf(config, false);
  const urls = new Set([target.writeKey, ...(auths === undefined ? [] : matchingKeys(auths, target, 'host-level'))]);
  for (const url of urls) {
    const credential = await helperGet(helper, url, options);
    if (credential !== undefined) return credential;
  }
  return undefined;
}

async function helperGet(helper: Helper, serverUrl: string, options: CredentialEnv): Promise<Credential | undefined> {
  const result = await callHelper(helper, 'get', serverUrl, options, []);
  if (result === 'not-found') return undefined;
  if (result.trim() === '') return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(result);
  } catch {
    throw new RegistryError(`the credential helper ${helper.program} (${describeHelper(helper)}) printed output that is not JSON`);
  }
  if (!isPlainObject(parsed)) {
    throw new RegistryError(`the credential helper ${helper.program} (${describeHelper(helper)}) printed output that is not a JSON object`);
  }
  const username = typeof parsed.Username === 'string' ? parsed.Username : '';
  const secret = typeof parsed.Secret === 'string' ? parsed.Secret : '';
  if (secret === '') return undefined;
  if (username === '<token>') return { identityToken: secret };
  const credential: Credential = { password: secret };
  if (username !== '') credential.username = username;
  return credential;
}

async function helperStore(helper: Helper, target: RegistryTarget, credential: Credential, options: CredentialEnv): Promise<void> {
  const identity = credential.identityToken !== undefined && credential.identityToken !== '';
  const payload = {
    ServerURL: target.writeKey,
    Username: identity ? '<token>' : (credential.username ?? ''),
    Secret: identity ? (credential.identityToken ?? '') : (credential.password ?? ''),
  };
  const secrets = [credential.password, credential.identityToken, credential.registryToken, payload.Secret].filter(
    (s): s is string => s !== undefined && s !== '',
  );
  const result = await callHelper(helper, 'store', JSON.stringify(payload), options, secrets);
  if (result === 'not-found') {
    throw new RegistryError(`the credential helper ${helper.program} (${describeHelper(helper)}) failed to store the credential`);
  }
}

/** True if the helper erased something, false if it had nothing. */
async function helperErase(helper: Helper, serverUrl: string, options: CredentialEnv): Promise<boolean> {
  return (await callHelper(helper, 'erase', serverUrl, options, [])) !== 'not-found';
}

function describeHelper(helper: Helper): string {
  return `configured by ${helper.field} in ${helper.configPath}`;
}

/** Runs a helper; returns its stdout, or 'not-found' when it reports no credentials. */
async function callHelper(
  helper: Helper,
  action: 'get' | 'store' | 'erase',
  input: string,
  options: CredentialEnv,
  secrets: readonly string[],
): Promise<string | 'not-found'> {
  const env = definedEnv(options.env);
  let result;
  try {
    result = await run(helper.program, [action], {
      input,
      timeoutMs: HELPER_TIMEOUT_MS,
      okExitCodes: [0, 1],
      ...(env === undefined ? {} : { env, extendEnv: false }),
    });
  } catch (error) {
    if (error instanceof ProcessError && isMissingProgram(error)) {
      throw new RegistryError(`the credential helper ${helper.program} (${describeHelper(helper)}) was not found on PATH`, {
        code: 'CREDENTIAL_HELPER_MISSING',
        suggestions: [
          `install ${helper.program}, or remove the ${helper.field} entry from ${helper.configPath}`,
        ],
      });
    }
    const details = error instanceof ProcessError ? error.details : undefined;
    const why = details?.timedOut
      ? `timed out after ${HELPER_TIMEOUT_MS / 1000} s`
      : details?.signal
        ? `was killed by ${details.signal}`
        : details?.exitCode === undefined
          ? 'could not be run'
          : `exited with code ${details.exitCode}`;
    const tail = details?.stderrTail ? `: ${redact(details.stderrTail, secrets)}` : '';
    throw new RegistryError(`the credential helper ${helper.program} (${describeHelper(helper)}) ${why} on "${action}"${tail}`);
  }
  if (result.exitCode === 0) return result.stdout;
  const said = `${result.stdout}\n${result.stderr}`;
  if (/not found/i.test(said)) return 'not-found';
  const message = redact((result.stderr.trim() || result.stdout.trim()).slice(-2000), secrets);
  throw new RegistryError(
    `the credential helper ${helper.program} (${describeHelper(helper)}) failed on "${action}"${message ? `: ${message}` : ''}`,
  );
}

function isMissingProgram(error: ProcessError): boolean {
  if (error.details.exitCode !== undefined || error.details.timedOut || error.details.signal) return false;
  return errorCode(error.cause) === 'ENOENT' || / was not found on PATH/.test(error.message);
}

function definedEnv(env: NodeJS.ProcessEnv | undefined): Record<string, string> | undefined {
  if (env === undefined) return undefined;
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(env)) if (value !== undefined) out[key] = value;
  return out;
}

// ---------------------------------------------------------------------------
// Small helpers

function dockerConfigPath(env: NodeJS.ProcessEnv, home: string): string {
  return path.join(nonEmpty(env.DOCKER_CONFIG) ?? path.join(home, '.docker'), 'config.json');
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function errorCode(error: unknown): string | undefined {
  const code = typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined;
  return typeof code === 'string' ? code : undefined;
}

function base64(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64');
}
