import { readFile } from 'node:fs/promises';
import { parseSize } from '../util/units.js';
import { InputError } from '../util/errors.js';
import { configFile, type Env } from '../util/paths.js';
import { hostOf, isLoopbackHost } from './address.js';
import { isOciReference, parseReference, type Reference } from './reference.js';

/**
 * Registry settings in cs's config file ($CS_CONFIG, default
 * ~/.config/cs/config.yaml), after containers' registries.conf where the
 * ideas fit: per registry, plain HTTP (`insecure`) and pull mirrors; and the
 * default registry for snapshots.
 *
 *   registries:
 *     - location: registry.internal:5000
 *       insecure: true
 *       mirrors:
 *         - location: mirror.internal:5000
 *           insecure: true
 *   snapshot_registry: registry.internal:5000/team/snapshots
 */

export interface MirrorConfig {
  location: string;
  insecure: boolean;
}

export interface RegistryConfig {
  location: string;
  insecure: boolean;
  mirrors: MirrorConfig[];
}

export interface CsConfig {
  file: string;
  registries: RegistryConfig[];
  /** `host[:port]/path` under which snapshots are pushed; undefined keeps them local. */
  snapshotRegistry?: string;
  /** `workspaces:`: the disk of a workspace made without a definition, and the cap on what one user's workspaces hold. */
  workspaces: WorkspaceLimits;
  /** `kernel: oci://REF`: the kernel image for workspaces whose definition says `default`. */
  kernel?: { reference: Reference; text: string };
}

const MAX_CONFIG_BYTES = 1024 * 1024;
export interface WorkspaceLimits {
  /** Virtual size of the disk of `cs workspace create` (sparse: it costs what is written). */
  diskBytes: number;
  /** Cap on the bytes the user's workspaces really hold on the host, restore points included. */
  quotaBytes: number;
}

export const DEFAULT_WORKSPACE_LIMITS: WorkspaceLimits = { diskBytes: 10 * 1024 ** 3, quotaBytes: 25 * 1024 ** 3 };

const HOST = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:[0-9]{1,5})?$/;

export async function loadConfig(options: { env?: Env; file?: string } = {}): Promise<CsConfig> {
  const file = options.file ?? configFile(options.env);
  let text: string;
  try {
    const bytes = await readFile(file);
    if (bytes.length > MAX_CONFIG_BYTES) throw new InputError(`${file}: config file is larger than 1 MiB`);
    text = bytes.toString('utf8');
  } catch (error) {
    if ((error as { code?: string }).code === 'ENOENT') return { file, registries: [], workspaces: { ...DEFAULT_WORKSPACE_LIMITS } };
    if (error instanceof InputError) throw error;
    throw new InputError(`${file}: cannot read the config file: ${(error as Error).message}`);
  }
  // yaml is loaded only when there is a config file to read (start-up time).
  const { parseDocument } = await import('yaml');
  const doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) throw new InputError(`${file}: invalid YAML: ${doc.errors[0]?.message.split('\n')[0] ?? ''}`);
  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: 100 }) as unknown;
  } catch (error) {
    // yaml throws a plain ReferenceError for an alias bomb; it is the user's input, not a bug in cs.
    throw new InputError(`${file}: invalid YAML: ${(error as Error).message.split('\n')[0] ?? ''}`);
  }
  return parseConfig(raw ?? {}, file);
}

export function parseConfig(raw: unknown, file: string): CsConfig {
  const problems: string[] = [];
  const obj = (v: unknown, where: string): Record<string, unknown> => {
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
    problems.push(`${where}: must be a mapping`);
    return {};
  };
  const root = obj(raw, '(top level)');
  for (const key of Object.keys(root)) {
    if (!['registries', 'snapshot_registry', 'kernel', 'workspaces'].includes(key)) problems.push(`${key}: unknown field (expected registries, snapshot_registry, kernel, workspaces)`);
  }
  const registries: RegistryConfig[] = [];
  const list = root['registries'] ?? [];
  if (!Array.isArray(list)) problems.push('registries: must be a list');
  else {
    list.forEach((item, i) => {
      const r = obj(item, `registries.${i}`);
      for (const key of Object.keys(r)) if (!['location', 'insecure', 'mirrors'].includes(key)) problems.push(`registries.${i}.${key}: unknown field (expected location, insecure, mirrors)`);
      const location = host(r['location'], `registries.${i}.location`, problems);
      const mirrors: MirrorConfig[] = [];
      const rawMirrors = r['mirrors'] ?? [];
      if (!Array.isArray(rawMirrors)) problems.push(`registries.${i}.mirrors: must be a list`);
      else {
        rawMirrors.forEach((m, j) => {
          const mirror = obj(m, `registries.${i}.mirrors.${j}`);
          const mirrorLocation = host(mirror['location'], `registries.${i}.mirrors.${j}.location`, problems);
          if (mirrorLocation) mirrors.push({ location: mirrorLocation, insecure: bool(mirror['insecure'], `registries.${i}.mirrors.${j}.insecure`, problems) });
        });
      }
      if (location) registries.push({ location, insecure: bool(r['insecure'], `registries.${i}.insecure`, problems), mirrors });
    });
  }
  let snapshotRegistry: string | undefined;
  if (root['snapshot_registry'] !== undefined) {
    const value = root['snapshot_registry'];
    if (typeof value !== 'string' || !/^[^/\s]+(\/[a-z0-9._/-]+)?$/.test(value) || !HOST.test(value.split('/')[0] ?? '')) {
      problems.push('snapshot_registry: must be HOST[:PORT][/PATH], e.g. registry.internal:5000/team');
    } else snapshotRegistry = value;
  }
  let kernel: CsConfig['kernel'];
  const kernelValue = root['kernel'];
  if (kernelValue !== undefined && kernelValue !== 'default') {
    const parsed = typeof kernelValue === 'string' && isOciReference(kernelValue) ? parseReference(kernelValue) : undefined;
    if (!parsed) problems.push('kernel: must be "default" or oci://REF of a kernel image');
    else if (!parsed.ok) problems.push(`kernel: invalid image reference: ${parsed.problem.message}`);
    else kernel = { reference: parsed.reference, text: kernelValue as string };
  }
  const workspaces = workspaceLimits(root['workspaces'] === undefined ? {} : obj(root['workspaces'], 'workspaces'), problems);
  if (problems.length > 0) throw new InputError(`${file}: invalid config:\n${problems.map((p) => `  ${p}`).join('\n')}`);
  return { file, registries, workspaces, ...(snapshotRegistry === undefined ? {} : { snapshotRegistry }), ...(kernel === undefined ? {} : { kernel }) };
}

function workspaceLimits(raw: Record<string, unknown>, problems: string[]): WorkspaceLimits {
  for (const key of Object.keys(raw)) if (!['disk_size', 'quota'].includes(key)) problems.push(`workspaces.${key}: unknown field (expected disk_size, quota)`);
  const size = (key: 'disk_size' | 'quota', fallback: number, min: number): number => {
    const value = raw[key];
    if (value === undefined) return fallback;
    const bytes = typeof value === 'string' || typeof value === 'number' ? parseSize(value) : undefined;
    if (bytes === undefined || bytes < min) {
      problems.push(`workspaces.${key}: must be a size of at least ${min / 1024 ** 2} MiB, such as 10Gi or 500Mi`);
      return fallback;
    }
    return bytes;
  };
  return { diskBytes: size('disk_size', DEFAULT_WORKSPACE_LIMITS.diskBytes, 256 * 1024 ** 2), quotaBytes: size('quota', DEFAULT_WORKSPACE_LIMITS.quotaBytes, 1024 ** 2) };
}

function host(value: unknown, where: string, problems: string[]): string | undefined {
  if (typeof value !== 'string' || !HOST.test(value)) {
    problems.push(`${where}: must be a registry HOST[:PORT]`);
    return undefined;
  }
  return value;
}

function bool(value: unknown, where: string, problems: string[]): boolean {
  if (value === undefined) return false;
  if (typeof value !== 'boolean') problems.push(`${where}: must be true or false`);
  return value === true;
}

/** Whether plain HTTP is allowed for `registry`: loopback always, others when configured or forced. */
export function isInsecure(config: CsConfig, registry: string, force = false): boolean {
  if (force || isLoopbackHost(hostOf(registry))) return true;
  return config.registries.some((r) => r.location === registry && r.insecure) ||
    config.registries.some((r) => r.mirrors.some((m) => m.location === registry && m.insecure));
}

export function mirrorsOf(config: CsConfig, registry: string): MirrorConfig[] {
  return config.registries.find((r) => r.location === registry)?.mirrors ?? [];
}
