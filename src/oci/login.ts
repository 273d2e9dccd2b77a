import { InputError } from '../util/errors.js';
import type { Env } from '../util/paths.js';
import { RegistryClient } from './client.js';
import { isInsecure, loadConfig } from './config.js';
import { findCredential, removeCredential, saveCredential, type Credential, type CredentialSource } from './credentials.js';

/**
 * `cs login` and `cs logout`: credentials are checked against the registry
 * before they are stored, and stored where the docker and podman clients
 * look for them (see credentials.ts).
 */

export function normaliseRegistry(input: string): string {
  const stripped = input.trim().replace(/^[a-z]+:\/\//i, '').replace(/\/.*$/, '');
  if (!/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:[0-9]{1,5})?$/.test(stripped)) {
    throw new InputError(`"${input}" is not a registry host (expected HOST[:PORT], e.g. registry.example.com or 127.0.0.1:5000)`);
  }
  return stripped;
}

export interface LoginOptions {
  registry: string;
  username: string;
  password: string;
  insecure?: boolean;
  env?: Env;
}

export interface LoginResult {
  registry: string;
  username: string;
  storedIn: CredentialSource;
  /** Set when another file earlier in the lookup order will still win over what was stored. */
  shadowedBy?: CredentialSource;
}

export async function login(options: LoginOptions): Promise<LoginResult> {
  const registry = normaliseRegistry(options.registry);
  if (!options.username) throw new InputError('a username is required (-u USER)');
  if (!options.password) throw new InputError('a password is required (pipe it to --password-stdin)');
  const env = options.env ?? process.env;
  const config = await loadConfig({ env });
  const credential: Credential = { username: options.username, password: options.password };
  const client = new RegistryClient({ registry, insecure: isInsecure(config, registry, options.insecure), credentials: async () => credential, userAgent: 'cs/0.1' });
  await client.ping();
  const credentialEnv = { env: env as NodeJS.ProcessEnv };
  const storedIn = await saveCredential(registry, credential, credentialEnv);
  const found = await findCredential(registry, credentialEnv);
  const shadowed = found && (found.source.kind !== storedIn.kind || found.source.path !== storedIn.path || found.source.helper !== storedIn.helper);
  return { registry, username: options.username, storedIn, ...(shadowed && found ? { shadowedBy: found.source } : {}) };
}

export async function logout(options: { registry: string; env?: Env }): Promise<{ registry: string; removedFrom: CredentialSource[] }> {
  const registry = normaliseRegistry(options.registry);
  const removedFrom = await removeCredential(registry, { env: (options.env ?? process.env) as NodeJS.ProcessEnv });
  return { registry, removedFrom };
}
