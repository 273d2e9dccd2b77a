import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { dirname, relative, resolve, sep } from 'node:path';
import type { DefinitionIssue } from '../definition/issues.js';
import { validatePaths } from '../definition/load.js';
import type { Sandbox } from '../definition/model.js';

/**
 * The desired state: every sandbox definition under a path (a file or a
 * folder), each read, validated and hashed. A file with any issue is
 * invalid as a whole: the sandboxes it (or its last good version) made are
 * not touched, and its issues are reported with their file and line.
 */

export interface DesiredSandbox {
  name: string;
  /** Absolute. */
  file: string;
  /** sha256 of the file's bytes: the version of the definition a workspace was last brought to. */
  sha256: string;
  model: Sandbox;
}

export interface DesiredState {
  /** What was read: a file, or a folder searched for *.yaml and *.yml. */
  path: string;
  /** Definition files under `scope` whose sandboxes cs may create, change and (with --prune) remove. */
  scope: { dir: string; file?: string };
  sandboxes: Map<string, DesiredSandbox>;
  /** Files that did not validate (absolute), with their issues. */
  invalid: Map<string, DefinitionIssue[]>;
  /** Every issue, in file and line order. */
  issues: DefinitionIssue[];
  /** The git commit the files are at, when they come from a repository. */
  commit?: string;
}

export async function readDesired(path: string, options: { commit?: string } = {}): Promise<DesiredState> {
  const absolute = resolve(path);
  const info = await stat(absolute).catch(() => undefined);
  const scope = info?.isFile() ? { dir: dirname(absolute), file: absolute } : { dir: absolute };
  const report = await validatePaths({ paths: [absolute] });
  const sandboxes = new Map<string, DesiredSandbox>();
  const invalid = new Map<string, DefinitionIssue[]>();
  for (const issue of report.issues) {
    const file = resolve(issue.file);
    invalid.set(file, [...(invalid.get(file) ?? []), issue]);
  }
  for (const result of report.files) {
    const file = resolve(result.file);
    if (!result.ok || result.kind !== 'sandbox' || invalid.has(file)) continue;
    const bytes = await readFile(file).catch(() => undefined);
    if (!bytes) continue;
    sandboxes.set(result.model.name, { name: result.model.name, file, sha256: sha256(bytes), model: { ...result.model, file } });
  }
  return { path: absolute, scope, sandboxes, invalid, issues: report.issues, ...(options.commit ? { commit: options.commit } : {}) };
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Whether a definition file belongs to what `desired` covers (its sandboxes may be pruned when the file is gone). */
export function inScope(desired: Pick<DesiredState, 'scope'>, file: string): boolean {
  if (file === '') return false;
  const absolute = resolve(file);
  if (desired.scope.file) return absolute === desired.scope.file;
  const rel = relative(desired.scope.dir, absolute);
  return rel !== '' && !rel.startsWith(`..${sep}`) && rel !== '..' && !rel.startsWith(sep);
}
