import { homedir } from 'node:os';
import { join } from 'node:path';

/**
 * Where cs keeps its state: one data directory ($CS_HOME, default
 * $XDG_DATA_HOME/cs, i.e. ~/.local/share/cs) and one config file ($CS_CONFIG,
 * default $XDG_CONFIG_HOME/cs/config.yaml).
 */

export type Env = Readonly<Record<string, string | undefined>>;

export function dataDir(env: Env = process.env): string {
  if (env['CS_HOME']) return env['CS_HOME'];
  const base = env['XDG_DATA_HOME'] || join(env['HOME'] || homedir(), '.local', 'share');
  return join(base, 'cs');
}

export function configFile(env: Env = process.env): string {
  if (env['CS_CONFIG']) return env['CS_CONFIG'];
  const base = env['XDG_CONFIG_HOME'] || join(env['HOME'] || homedir(), '.config');
  return join(base, 'cs', 'config.yaml');
}

/** The local content store: an OCI image layout. */
export function storeDir(env: Env = process.env): string {
  return join(dataDir(env), 'store');
}
