import { isMap, isPair, isScalar, isSeq, LineCounter, parseAllDocuments, visit, type Document, type Node } from 'yaml';
import { formatPath, type DefinitionIssue, type PathSegment } from './issues.js';

/**
 * YAML text parsed with source positions kept, so that every later check can
 * point at the line and column of the field it is about.
 */

export interface ParsedYaml {
  file: string;
  text: string;
  doc: Document.Parsed;
  lineCounter: LineCounter;
  /** The document as plain data (maps to objects, sequences to arrays). */
  value: unknown;
}

export type ParseYamlResult = { ok: true; parsed: ParsedYaml } | { ok: false; issues: DefinitionIssue[] };

/** Aliases expand on conversion; this caps "billion laughs" documents. */
const MAX_ALIAS_COUNT = 100;

/** yaml's own messages, said the way a person fixing the file needs them. */
const FRIENDLY: Record<string, string> = {
  TAB_AS_INDENT: 'a tab is used for indentation; YAML indents with spaces only',
  TAG_RESOLVE_FAILED: 'unknown YAML tag; definitions use plain YAML without custom tags',
};

/**
 * Deeper nesting than any definition needs. yaml parses nesting recursively,
 * and thousands of levels exhaust the stack (or worse), so such text is
 * refused before it is parsed.
 */
const MAX_NESTING = 100;
const MAX_INDENT = 1000;

/** Offset where flow nesting (`[`, `{`) or indentation first goes too deep, if it does. */
function tooDeep(text: string): { offset: number; message: string } | undefined {
  let depth = 0;
  let quote: string | undefined;
  let comment = false;
  let lineStart = true;
  let indent = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '\n') {
      comment = false;
      lineStart = true;
      indent = 0;
      if (quote === "'" || quote === '"') continue;
      continue;
    }
    if (lineStart) {
      if (c === ' ') {
        if (++indent > MAX_INDENT) return { offset: i, message: `indented more than ${MAX_INDENT} spaces: nesting too deep for a definition` };
        continue;
      }
      lineStart = false;
    }
    if (comment) continue;
    if (quote) {
      if (c === '\\' && quote === '"') i++;
      else if (c === quote) quote = undefined;
      continue;
    }
    if (c === '"' || c === "'") quote = c;
    else if (c === '#' && (i === 0 || /\s/.test(text[i - 1] ?? ''))) comment = true;
    else if (c === '[' || c === '{') {
      if (++depth > MAX_NESTING) return { offset: i, message: `brackets nested more than ${MAX_NESTING} deep: too deep for a definition` };
    } else if (c === ']' || c === '}') depth = Math.max(0, depth - 1);
  }
  return undefined;
}

export function parseYaml(file: string, text: string): ParseYamlResult {
  const lineCounter = new LineCounter();
  const deep = tooDeep(text);
  if (deep) {
    lineCounter.addNewLine(0);
    for (let i = 0; i < text.length; i++) if (text[i] === '\n') lineCounter.addNewLine(i + 1);
    const { line, col } = lineCounter.linePos(deep.offset);
    return { ok: false, issues: [{ file, line, column: col, path: '', message: deep.message }] };
  }
  const at = (offset: number, message: string): DefinitionIssue => {
    const { line, col } = lineCounter.linePos(Math.max(0, Math.min(offset, text.length)));
    return { file, line, column: col, path: '', message };
  };
  let docs: Document.Parsed[];
  try {
    const parsed = parseAllDocuments(text, { lineCounter, prettyErrors: false, uniqueKeys: true, merge: true, strict: true });
    docs = Array.isArray(parsed) ? parsed : [];
  } catch (error) {
    return { ok: false, issues: [at(0, `cannot parse YAML: ${(error as Error).message}`)] };
  }
  const issues: DefinitionIssue[] = [];
  for (const doc of docs) {
    for (const problem of [...doc.errors, ...doc.warnings]) {
      const offset = problem.pos[0];
      let message = FRIENDLY[problem.code] ?? `YAML syntax: ${lowerFirst(problem.message.split('\n')[0] ?? '')}`;
      if (problem.code === 'DUPLICATE_KEY') message = duplicateKeyMessage(text, offset, lineCounter, doc);
      if (problem.code === 'TAG_RESOLVE_FAILED') message = `${message} (${problem.message.replace(/^Unresolved tag:\s*/, '')})`;
      issues.push(at(offset, message));
    }
  }
  if (docs.length > 1) {
    const second = docs[1];
    issues.push(at(second?.range[0] ?? 0, 'more than one YAML document in this file; put each definition in a file of its own'));
  }
  const doc = docs[0];
  if (issues.length > 0 || doc === undefined) {
    if (doc === undefined && issues.length === 0) issues.push(at(0, 'file holds no YAML document'));
    return { ok: false, issues };
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
  } catch (error) {
    const message = (error as Error).message;
    if (/unresolved alias/i.test(message)) {
      const alias = unresolvedAlias(doc);
      const name = alias?.source ?? message.split(':').pop()?.trim() ?? '';
      return { ok: false, issues: [at(alias?.offset ?? 0, `alias "*${name}" has no anchor "&${name}" before it`)] };
    }
    const why = /alias count/i.test(message)
      ? `aliases expand to too much data (more than ${MAX_ALIAS_COUNT} alias uses)`
      : `cannot convert YAML: ${lowerFirst(message.split('\n')[0] ?? '')}`;
    return { ok: false, issues: [at(0, why)] };
  }
  return { ok: true, parsed: { file, text, doc, lineCounter, value } };
}

function unresolvedAlias(doc: Document.Parsed): { source: string; offset: number | undefined } | undefined {
  let found: { source: string; offset: number | undefined } | undefined;
  visit(doc, {
    Alias(_, node) {
      if (node.resolve(doc) === undefined) {
        found = { source: node.source, offset: node.range?.[0] };
        return visit.BREAK;
      }
      return undefined;
    },
  });
  return found;
}

function lowerFirst(s: string): string {
  return s.charAt(0).toLowerCase() + s.slice(1);
}

function duplicateKeyMessage(text: string, offset: number, lineCounter: LineCounter, doc: Document.Parsed): string {
  const match = /^("(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^:\n#]+?)\s*:/.exec(text.slice(offset, offset + 300));
  const key = match?.[1]?.replace(/^["']|["']$/g, '');
  if (key === undefined) return 'duplicate key: each key may appear once in a mapping';
  const first = findFirstKey(doc.contents, key, offset);
  const where = first === undefined ? '' : ` (first set at line ${lineCounter.linePos(first).line})`;
  return `duplicate key "${key}"${where}: each key may appear once in a mapping`;
}

/** Offset of the earliest key `key` in the map that holds a duplicate at `offset`. */
function findFirstKey(node: unknown, key: string, offset: number): number | undefined {
  if (isMap(node)) {
    const keys = node.items.filter((p) => isScalar(p.key) && String(p.key.value) === key);
    const starts = keys.map((p) => (p.key as Node).range?.[0] ?? -1);
    if (starts.includes(offset) && starts.length > 1) return Math.min(...starts);
    for (const pair of node.items) {
      const found = findFirstKey(pair.value, key, offset);
      if (found !== undefined) return found;
    }
  } else if (isSeq(node)) {
    for (const item of node.items) {
      const found = findFirstKey(item, key, offset);
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

export interface Located {
  /** Offset of the key naming the field, when the field is a map entry. */
  keyOffset?: number;
  /** Offset where the field's value starts. */
  valueOffset?: number;
  /** The value node itself, for finer positions inside a scalar. */
  node?: Node;
  /** How many path segments were found; less than path.length when the walk stopped early. */
  depth: number;
}

/** Walk `path` through the document's nodes, as far as it goes. */
export function locate(parsed: ParsedYaml, path: readonly PathSegment[]): Located {
  let node: unknown = parsed.doc.contents;
  let result: Located = { depth: 0, ...offsetOf(node, 'valueOffset'), ...(node ? { node: node as Node } : {}) };
  for (const [index, segment] of path.entries()) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(segment));
      if (!pair) break;
      node = pair.value;
      result = {
        depth: index + 1,
        ...offsetOf(pair.key, 'keyOffset'),
        ...offsetOf(node, 'valueOffset'),
        ...(node ? { node: node as Node } : {}),
      };
    } else if (isSeq(node) && typeof segment === 'number') {
      const item = node.items[segment];
      if (item === undefined) break;
      node = item;
      result = { depth: index + 1, ...offsetOf(node, 'valueOffset'), ...(node ? { node: node as Node } : {}) };
    } else {
      break;
    }
  }
  return result;
}

function offsetOf(node: unknown, name: 'keyOffset' | 'valueOffset'): Partial<Located> {
  const range = (node as Node | null | undefined)?.range;
  return range ? { [name]: range[0] } : {};
}

/** The exact source text of a scalar at `path`, e.g. to tell `0644` from `644`. */
export function rawScalar(parsed: ParsedYaml, path: readonly PathSegment[]): string | undefined {
  const found = locate(parsed, path);
  if (found.depth !== path.length || !isScalar(found.node) || !found.node.range) return undefined;
  return parsed.text.slice(found.node.range[0], found.node.range[1]);
}

export type Anchor = 'key' | 'value';

/**
 * An issue at `path`: at the key when asked and the field has one, else at
 * its value; `inner` moves the column into a plain or quoted scalar so that a
 * message can point at the bad part of a string.
 */
export function issueAt(
  parsed: ParsedYaml,
  path: readonly PathSegment[],
  message: string,
  options: { anchor?: Anchor; inner?: number } = {},
): DefinitionIssue {
  const found = locate(parsed, path);
  let offset = (options.anchor === 'key' ? found.keyOffset ?? found.valueOffset : found.valueOffset ?? found.keyOffset) ?? 0;
  if (options.inner !== undefined && found.depth === path.length && isScalar(found.node)) {
    const quoted = found.node.type === 'QUOTE_DOUBLE' || found.node.type === 'QUOTE_SINGLE';
    if (found.node.type === 'PLAIN' || quoted) offset += options.inner + (quoted ? 1 : 0);
  }
  const { line, col } = parsed.lineCounter.linePos(Math.max(0, Math.min(offset, parsed.text.length)));
  return { file: parsed.file, line, column: col, path: formatPath(path), message };
}
