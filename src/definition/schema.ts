import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../util/package-root.js';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { closest } from './suggest.js';
import type { DefinitionKind } from './source.js';
import type { DefinitionIssue, PathSegment } from './issues.js';
import { issueAt, type ParsedYaml } from './yaml-source.js';

/**
 * JSON Schema validation of a parsed definition with ajv (all errors), and
 * the translation of ajv's errors into issues that point at the YAML text
 * and read as advice rather than as schema jargon.
 */

const SCHEMA_FILES: Record<DefinitionKind, string> = {
  sandbox: 'sandbox.schema.json',
  manifest: 'manifest.schema.json',
};

/** Where the JSON Schema files live: `schemas/` at the package root. */
export function schemaPath(kind: DefinitionKind): string {
  // From the package root: this code also runs from the one-file bundle dist/cs.mjs.
  return join(packageRoot(), 'schemas', SCHEMA_FILES[kind]);
}

export function loadSchema(kind: DefinitionKind): Record<string, unknown> {
  return JSON.parse(readFileSync(schemaPath(kind), 'utf8')) as Record<string, unknown>;
}

/**
 * Fields Crafting's sandbox definitions have that cs does not: a clearer
 * message than "unknown field" for people bringing a definition over.
 */
const CRAFTING_ONLY: Record<string, string> = {
  dependencies: 'cs has no managed dependencies; run the service as a daemon in a workspace',
  containers: 'cs runs workspaces as microVMs, not containers; use a workspace with a daemon',
  volumes: 'a workspace keeps its own persistent disk; volumes are not supported',
  endpoints: 'cs has no endpoints; use `ports` and `cs port-forward`',
  customizations: 'cs has no customizations section',
  packages: 'install packages in a base snapshot (`cs snapshot create`)',
};

let ajv: Ajv | undefined;
const validators = new Map<DefinitionKind, ValidateFunction>();

function validator(kind: DefinitionKind): ValidateFunction {
  let validate = validators.get(kind);
  if (!validate) {
    ajv ??= createAjv();
    validate = ajv.compile(loadSchema(kind));
    validators.set(kind, validate);
  }
  return validate;
}

function createAjv(): Ajv {
  const instance = new Ajv({ allErrors: true, verbose: true, strict: true, allowUnionTypes: true });
  // Our own metadata: the sentence to say when a `pattern` does not match.
  instance.addKeyword({ keyword: 'x-message', schemaType: 'string' });
  return instance;
}

export function validateSchema(parsed: ParsedYaml, kind: DefinitionKind): DefinitionIssue[] {
  const validate = validator(kind);
  if (validate(parsed.value)) return [];
  const issues: DefinitionIssue[] = [];
  const seen = new Set<string>();
  for (const error of validate.errors ?? []) {
    const issue = toIssue(parsed, error);
    if (!issue) continue;
    const key = `${issue.line}:${issue.column}:${issue.path}:${issue.message}`;
    if (!seen.has(key)) {
      seen.add(key);
      issues.push(issue);
    }
  }
  return issues;
}

function pointerToPath(pointer: string): PathSegment[] {
  if (pointer === '') return [];
  return pointer
    .slice(1)
    .split('/')
    .map((s) => s.replaceAll('~1', '/').replaceAll('~0', '~'))
    .map((s) => (/^(0|[1-9][0-9]*)$/.test(s) ? Number(s) : s));
}

const TYPE_WORDS: Record<string, string> = {
  object: 'a mapping (key: value)',
  array: 'a list',
  string: 'a string',
  integer: 'a whole number',
  number: 'a number',
  boolean: 'true or false',
  null: 'empty',
};

function describeType(expected: unknown): string {
  const types = (Array.isArray(expected) ? expected : String(expected).split(',')).map(String);
  return types.map((t) => TYPE_WORDS[t] ?? t).join(' or ');
}

function describeValue(value: unknown): string {
  if (value === null || value === undefined) return 'nothing';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value)}`;
  if (typeof value === 'number') return Number.isInteger(value) ? `the number ${value}` : `the number ${value}`;
  return String(value);
}

function toIssue(parsed: ParsedYaml, error: ErrorObject): DefinitionIssue | undefined {
  const path = pointerToPath(error.instancePath);
  const params = error.params as Record<string, unknown>;
  const parentSchema = (error.parentSchema ?? {}) as Record<string, unknown>;

  // propertyNames: ajv reports the inner failure with the offending name.
  if (error.keyword === 'propertyNames') return undefined;
  if (typeof params['propertyName'] === 'string' || (error as { propertyName?: string }).propertyName) {
    const name = (error as { propertyName?: string }).propertyName ?? String(params['propertyName']);
    const reason = typeof parentSchema['x-message'] === 'string' ? parentSchema['x-message'] : (error.message ?? 'is not allowed');
    return issueAt(parsed, [...path, name], `name "${name}" ${reason}`, { anchor: 'key' });
  }

  switch (error.keyword) {
    case 'additionalProperties': {
      const field = String(params['additionalProperty']);
      const known = Object.keys((parentSchema['properties'] ?? {}) as Record<string, unknown>);
      const crafting = path.length === 0 && Object.hasOwn(CRAFTING_ONLY, field) ? CRAFTING_ONLY[field] : undefined;
      const hint = closest(field, known);
      let message = `unknown field "${field}"`;
      if (crafting) message += ` (a Crafting field cs does not support: ${crafting})`;
      else if (hint) message += `; did you mean "${hint}"?`;
      else if (known.length > 0 && known.length <= 12) message += `; expected one of: ${known.join(', ')}`;
      return issueAt(parsed, [...path, field], message, { anchor: 'key' });
    }
    case 'required':
      return issueAt(parsed, path, `missing required field "${String(params['missingProperty'])}"`, { anchor: 'key' });
    case 'type':
      return issueAt(parsed, path, `must be ${describeType(params['type'])}, not ${describeValue(error.data)}`);
    case 'enum': {
      const allowed = ((params['allowedValues'] ?? []) as unknown[]).map(String);
      const hint = typeof error.data === 'string' ? closest(error.data, allowed) : undefined;
      return issueAt(
        parsed,
        path,
        `${describeValue(error.data)} is not allowed; must be one of ${allowed.join(', ')}${hint ? ` (did you mean "${hint}"?)` : ''}`,
      );
    }
    case 'pattern': {
      const custom = parentSchema['x-message'];
      return issueAt(parsed, path, typeof custom === 'string' ? custom : `must match ${String(params['pattern'])}`);
    }
    case 'minLength':
      return issueAt(parsed, path, Number(params['limit']) === 1 ? 'must not be empty' : `must be at least ${String(params['limit'])} characters`);
    case 'maxLength':
      return issueAt(parsed, path, `must be at most ${String(params['limit'])} characters`);
    case 'minItems':
      return issueAt(parsed, path, Number(params['limit']) === 1 ? 'must have at least one entry' : `must have at least ${String(params['limit'])} entries`);
    case 'minimum':
    case 'maximum': {
      const low = parentSchema['minimum'];
      const high = parentSchema['maximum'];
      const range = low !== undefined && high !== undefined ? `from ${String(low)} to ${String(high)}` : error.keyword === 'minimum' ? `at least ${String(low)}` : `at most ${String(high)}`;
      return issueAt(parsed, path, `must be ${range}, not ${String(error.data)}`);
    }
    default:
      return issueAt(parsed, path, error.message ?? `fails the "${error.keyword}" rule`);
  }
}
