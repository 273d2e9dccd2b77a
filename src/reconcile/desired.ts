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
  /** Every definition file found and read (absolute). */
  files: Set<string>;
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
  const issues = [...report.issues];
  const flag = (file: string, issue: DefinitionIssue): void => {
    invalid.set(file, [...(invalid.get(file) ?? []), issue]);
    issues.push(issue);
  };
  // Two files naming one sandbox: neither is its definition until one is fixed (validation flags only the later one).
  const byName = new Map<string, string[]>();
  for (const result of report.files) {
    if (result.ok && result.kind === 'sandbox') byName.set(result.model.name, [...(byName.get(result.model.name) ?? []), resolve(result.file)]);
  }
  for (const [name, files] of byName) {
    if (files.length < 2) continue;
    for (const file of files) {
      if (!invalid.has(file)) flag(file, { file, line: 1, column: 1, path: 'name', message: `sandbox "${name}" is defined in ${files.filter((f) => f !== file).join(', ')} too` });
    }
  }
  const files = new Set<string>();
  for (const result of report.files) {
    const file = resolve(result.file);
    files.add(file);
    if (!result.ok || result.kind !== 'sandbox' || invalid.has(file)) continue;
    const bytes = await readFile(file).catch((error: Error) => {
      flag(file, { file, line: 0, column: 0, path: '', message: `cannot read it: ${error.message}` });
      return undefined;
    });
    if (!bytes) continue;
    sandboxes.set(result.model.name, { name: result.model.name, file, sha256: sha256(bytes), model: { ...result.model, file } });
  }
  return { path: absolute, scope, files, sandboxes, invalid, issues, ...(options.commit ? { commit: options.commit } : {}) };
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/**
 * Whether a definition file is under what `desired` covers. Only such
 * files' sandboxes can be pruned, and only when the file is gone or names
 * another sandbox now (see plan.ts).
 */
export function inScope(desired: Pick<DesiredState, 'scope'>, file: string): boolean {
  if (file === '') return false;
  const absolute = resolve(file);
  if (desired.scope.file) return absolute === desired.scope.file;
  const rel = relative(desired.scope.dir, absolute);
  return rel !== '' && !rel.startsWith(`..${sep}`) && rel !== '..' && !rel.startsWith(sep);
}
