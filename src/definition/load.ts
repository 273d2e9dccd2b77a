import { basename, extname } from 'node:path';
import { compareIssues, DefinitionError, type DefinitionIssue } from './issues.js';
import type { Manifest, Sandbox } from './model.js';
import { isResourceName, RESOURCE_NAME_RULE } from './names.js';
import { validateSchema } from './schema.js';
import { checkManifest, checkSandbox } from './semantic.js';
import { decodeDefinition, findDefinitionFiles, kindOf, readDefinitionFile, type DefinitionKind } from './source.js';
import { issueAt, parseYaml } from './yaml-source.js';

/**
 * Reading definitions end to end: text, YAML with positions, JSON Schema,
 * semantic checks, typed model. Functions here return every issue found;
 * `loadSandbox` is the boundary that throws one DefinitionError.
 */

export type FileResult =
  | { file: string; kind: 'sandbox'; ok: true; model: Sandbox; issues: []; namePosition: { line: number; column: number } }
  | { file: string; kind: 'manifest'; ok: true; model: Manifest; issues: [] }
  | { file: string; kind: DefinitionKind; ok: false; issues: DefinitionIssue[] };

export interface ParseDefinitionOptions {
  /** Shown in issues; also names the sandbox when it has no `name:`. */
  file: string;
  text: string;
  kind?: DefinitionKind;
}

/** Validate definition text (already decoded) into a model or issues. Never throws for any input. */
export function parseDefinition(options: ParseDefinitionOptions): FileResult {
  const { file, text } = options;
  const kind = options.kind ?? kindOf(file);
  const fail = (issues: DefinitionIssue[]): FileResult => ({ file, kind, ok: false, issues: issues.sort(compareIssues) });

  const parsed = parseYaml(file, text);
  if (!parsed.ok) return fail(parsed.issues);
  const value = parsed.parsed.value;
  if (value === null || value === undefined) {
    return fail([{ file, line: 1, column: 1, path: '', message: 'the document is empty; a definition is a mapping of fields' }]);
  }

  // Tags like !!binary or !!timestamp turn a document into a Buffer or a Date: not a mapping.
  if (typeof value === 'object' && !Array.isArray(value) && Object.getPrototypeOf(value) !== Object.prototype) {
    return fail([{ file, line: 1, column: 1, path: '', message: 'must be a mapping (key: value)' }]);
  }
  const issues = validateSchema(parsed.parsed, kind);
  if (typeof value !== 'object' || Array.isArray(value)) return fail(issues);

  if (kind === 'manifest') {
    const checked = checkManifest(parsed.parsed);
    issues.push(...checked.issues);
    return issues.length > 0 ? fail(issues) : { file, kind, ok: true, model: checked.model, issues: [] };
  }

  const fallbackName = basename(file, extname(file));
  const checked = checkSandbox(parsed.parsed, fallbackName);
  issues.push(...checked.issues);
  if (!('name' in value) && !isResourceName(fallbackName)) {
    issues.push({
      file,
      line: 1,
      column: 1,
      path: 'name',
      message: `the file name "${fallbackName}" cannot be the sandbox's name (a name ${RESOURCE_NAME_RULE.replace(/^must /, 'must ')}); add a top-level "name:" field`,
    });
  }
  if (issues.length > 0) return fail(issues);
  // Where the sandbox's name comes from, for messages about it (the `name:` key, else the file).
  const at = 'name' in value ? issueAt(parsed.parsed, ['name'], '', { anchor: 'key' }) : { line: 1, column: 1 };
  return { file, kind, ok: true, model: checked.model, issues: [], namePosition: { line: at.line, column: at.column } };
}

/** Read and validate one file. */
export async function validateFile(file: string, kind: DefinitionKind = kindOf(file)): Promise<FileResult> {
  const read = await readDefinitionFile(file, kind);
  if (!read.ok) return { file, kind, ok: false, issues: [read.issue] };
  return parseDefinition({ file, text: read.source.text, kind });
}

/** Validate bytes as if read from `file` (for fuzzing and for callers that hold the bytes). */
export function validateBytes(file: string, bytes: Uint8Array, kind: DefinitionKind = kindOf(file)): FileResult {
  const decoded = decodeDefinition(file, bytes, kind);
  if (!decoded.ok) return { file, kind, ok: false, issues: [decoded.issue] };
  return parseDefinition({ file, text: decoded.source.text, kind });
}

export interface ValidationReport {
  ok: boolean;
  files: FileResult[];
  /** Every issue, from files and from the search for them, in file/line order. */
  issues: DefinitionIssue[];
}

/** `cs validate`: expand paths, validate every definition, report all issues. */
export async function validatePaths(options: { paths: readonly string[] }): Promise<ValidationReport> {
  const found = await findDefinitionFiles(options.paths);
  const files: FileResult[] = [];
  for (const { file, kind } of found.files) files.push(await validateFile(file, kind));
  const issues = [...found.issues, ...files.flatMap((f) => f.issues)];
  issues.push(...duplicateSandboxNames(files));
  issues.sort(compareIssues);
  return { ok: issues.length === 0, files, issues };
}

/** Two files that name the same sandbox cannot both be its definition. */
function duplicateSandboxNames(files: FileResult[]): DefinitionIssue[] {
  const first = new Map<string, string>();
  const issues: DefinitionIssue[] = [];
  for (const result of files) {
    if (!result.ok || result.kind !== 'sandbox') continue;
    const earlier = first.get(result.model.name);
    if (earlier === undefined) first.set(result.model.name, result.file);
    else issues.push({ file: result.file, ...result.namePosition, path: 'name', message: `sandbox "${result.model.name}" is also defined in ${earlier}` });
  }
  return issues;
}

/** The boundary for later stages: a valid sandbox model, or one DefinitionError listing every issue. */
export async function loadSandbox(options: { file: string }): Promise<Sandbox> {
  const result = await validateFile(options.file, 'sandbox');
  if (!result.ok) throw new DefinitionError(result.issues);
  if (result.kind !== 'sandbox') throw new DefinitionError([{ file: options.file, line: 0, column: 0, path: '', message: 'not a sandbox definition' }]);
  return result.model;
}
