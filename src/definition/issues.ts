import { InputError } from '../util/errors.js';

/**
 * A problem found in a definition, pointing at the text: the file, a 1-based
 * line and column, and the dotted path of the field (`workspaces.0.name`).
 * Validators collect these; the boundary throws one DefinitionError listing
 * all of them.
 */
export interface DefinitionIssue {
  file: string;
  line: number;
  column: number;
  /** Dotted field path; empty for problems with the file as a whole. */
  path: string;
  message: string;
}

export type PathSegment = string | number;

export function formatPath(path: readonly PathSegment[]): string {
  return path.map(String).join('.');
}

/** `sandbox.yaml:12:5 [workspaces.0.base_snapshot]: must be …` */
export function formatIssue(issue: DefinitionIssue): string {
  const where = issue.line > 0 ? `${issue.file}:${issue.line}:${issue.column}` : issue.file;
  return issue.path ? `${where} [${issue.path}]: ${issue.message}` : `${where}: ${issue.message}`;
}

export function compareIssues(a: DefinitionIssue, b: DefinitionIssue): number {
  return a.file.localeCompare(b.file) || a.line - b.line || a.column - b.column || a.path.localeCompare(b.path);
}

export class DefinitionError extends InputError {
  readonly issues: readonly DefinitionIssue[];

  constructor(issues: readonly DefinitionIssue[]) {
    const sorted = [...issues].sort(compareIssues);
    const count = sorted.length === 1 ? '1 problem' : `${sorted.length} problems`;
    super(`invalid definition (${count}):\n${sorted.map((i) => `  ${formatIssue(i)}`).join('\n')}`, {
      code: 'INVALID_DEFINITION',
    });
    this.issues = sorted;
  }

  override toJSON(): Record<string, unknown> {
    return { ...super.toJSON(), issues: this.issues };
  }
}
