import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { currentUser } from '../snapshot/catalogue.js';
import { CsError, InputError, UsageError } from '../util/errors.js';
import { writeFileAtomic } from '../util/fs.js';
import { withLock } from '../util/lock.js';
import { dataDir, type Env } from '../util/paths.js';

/**
 * API keys of `cs serve`. A key is `csk_ID_SECRET`: the id finds its entry,
 * the secret (32 random bytes) is never stored, only its sha256 (a secret
 * that random needs no slow hash), compared in constant time. A key is
 * shown once, when it is made. Each key has an owner (whose workspaces it
 * reaches, and no one else's) and scopes (what it may do).
 */

export const SCOPES = ['workspaces:read', 'workspaces:write', 'exec', 'files', 'jobs'] as const;
export type Scope = (typeof SCOPES)[number];

export interface ApiKey {
  id: string;
  name: string;
  owner: string;
  scopes: Scope[];
  createdAt: string;
  revokedAt?: string;
  /** sha256 of the secret, hex. */
  hash: string;
}

export type KeyInfo = Omit<ApiKey, 'hash'>;

export interface Principal {
  keyId: string;
  owner: string;
  scopes: Set<Scope>;
}

export function serviceDir(env?: Env): string {
  return join(dataDir(env), 'service');
}

const keysFile = (env?: Env): string => join(serviceDir(env), 'keys.json');

async function readKeys(env?: Env): Promise<ApiKey[]> {
  try {
    const parsed = JSON.parse(await readFile(keysFile(env), 'utf8')) as { keys?: ApiKey[] };
    return Array.isArray(parsed.keys) ? parsed.keys : [];
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    // The service's own file: its damage is a server error, not the client's.
    throw new CsError(`${keysFile(env)} is unreadable: ${(error as Error).message}`, { code: 'KEYS_UNREADABLE' });
  }
}

async function changeKeys<T>(env: Env | undefined, fn: (keys: ApiKey[]) => { keys: ApiKey[]; result: T }): Promise<T> {
  await mkdir(serviceDir(env), { recursive: true, mode: 0o700 });
  return withLock(join(serviceDir(env), 'keys.lock'), { purpose: 'changing API keys' }, async () => {
    const { keys, result } = fn(await readKeys(env));
    await writeFileAtomic(keysFile(env), JSON.stringify({ keys }, null, 2) + '\n', { mode: 0o600 });
    return result;
  });
}

const hashOf = (secret: string): string => createHash('sha256').update(secret).digest('hex');

export function parseScopes(values: readonly string[]): Scope[] {
  const out: Scope[] = [];
  for (const value of values.flatMap((v) => v.split(',')).map((v) => v.trim()).filter(Boolean)) {
    if (value === 'all') out.push(...SCOPES);
    else if ((SCOPES as readonly string[]).includes(value)) out.push(value as Scope);
    else throw new UsageError(`unknown scope "${value}"; scopes are ${SCOPES.join(', ')} (or all)`);
  }
  return [...new Set(out)];
}

export async function createKey(options: { name: string; owner?: string; scopes: Scope[]; env?: Env }): Promise<{ key: KeyInfo; token: string }> {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(options.name)) throw new UsageError(`invalid key name "${options.name}": letters, digits, '.', '_' and '-', at most 63`);
  const owner = options.owner ?? currentUser().user;
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(owner)) throw new UsageError(`invalid owner "${owner}"`);
  if (options.scopes.length === 0) throw new UsageError(`give at least one scope (${SCOPES.join(', ')}, or all)`);
  const id = randomBytes(6).toString('hex');
  const secret = randomBytes(32).toString('base64url');
  const key: ApiKey = { id, name: options.name, owner, scopes: options.scopes, createdAt: new Date().toISOString(), hash: hashOf(secret) };
  await changeKeys(options.env, (keys) => {
    if (keys.some((k) => k.name === options.name && !k.revokedAt)) throw new InputError(`an API key named "${options.name}" exists already`, { code: 'EXISTS' });
    return { keys: [...keys, key], result: undefined };
  });
  const { hash: _hash, ...info } = key;
  return { key: info, token: `csk_${id}_${secret}` };
}

export async function listKeys(env?: Env): Promise<KeyInfo[]> {
  return (await readKeys(env)).map(({ hash: _hash, ...info }) => info);
}

export async function revokeKey(nameOrId: string, env?: Env): Promise<KeyInfo> {
  return changeKeys(env, (keys) => {
    const found = keys.find((k) => !k.revokedAt && (k.id === nameOrId || k.name === nameOrId));
    if (!found) throw new InputError(`no active API key "${nameOrId}"`, { code: 'NOT_FOUND', suggestions: ['see `cs apikey list`'] });
    found.revokedAt = new Date().toISOString();
    const { hash: _hash, ...info } = found;
    return { keys, result: info };
  });
}

/** Whether a key (by id) exists and is not revoked. */
export async function keyActive(id: string, env?: Env): Promise<boolean> {
  return (await readKeys(env)).some((k) => k.id === id && !k.revokedAt);
}

/** The principal a bearer token stands for, or undefined (unknown, malformed, revoked: the caller says 401 alike). */
export async function authenticate(token: string, env?: Env): Promise<Principal | undefined> {
  const m = /^csk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$/.exec(token);
  if (!m) return undefined;
  const key = (await readKeys(env)).find((k) => k.id === m[1]);
  if (!key || key.revokedAt) return undefined;
  const given = Buffer.from(hashOf(m[2] as string), 'hex');
  const stored = Buffer.from(key.hash, 'hex');
  if (given.length !== stored.length || !timingSafeEqual(given, stored)) return undefined;
  return { keyId: key.id, owner: key.owner, scopes: new Set(key.scopes) };
}
