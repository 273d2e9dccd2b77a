import { lstat, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { hostEntries } from '../layers/pack.js';
import type { TreeEntry } from '../layers/tree-entry.js';
import { InputError } from '../util/errors.js';

/**
 * What a home or personal snapshot takes from a home folder:
 * `includes.txt` read as `tar -T` (one path per line, relative to home, a
 * folder with everything under it) minus `excludes.txt` read as `tar -X`
 * (GNU tar's defaults for exclusion: shell wildcards, `*` also matching `/`,
 * not anchored: a pattern matches the whole path or any part of it that
 * starts after a `/`, and excluding a folder excludes what is under it).
 *
 * Unlike a bare `tar -T`, the folders leading to an included path are part
 * of the layer too, with their own modes, so that when the layer lands
 * under the owner's home they are not made up by whoever applies it.
 */

export interface SelectionFiles {
  home: string;
  /** The folder holding includes.txt and excludes.txt (`.snapshot` or `.snapshot.personal`). */
  folder: string;
}

export interface Selection {
  includes: string[];
  excludes: string[];
}

/** The most an includes.txt or excludes.txt may hold. */
export const MAX_LIST_BYTES = 1024 * 1024;
const MAX_LINES = 10_000;

async function readText(file: string): Promise<string | undefined> {
  try {
    const bytes = await readFile(file);
    if (bytes.length > MAX_LIST_BYTES) throw new InputError(`${file}: larger than 1 MiB`);
    return bytes.toString('utf8');
  } catch (error) {
    if (error instanceof InputError) throw error;
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new InputError(`cannot read ${file}: ${(error as Error).message}`, { cause: error });
  }
}

/** Lines as tar -T reads them: no trimming of spaces (they can be part of a name); empty lines are skipped later. */
function linesOf(text: string, file: string): string[] {
  if (Buffer.byteLength(text) > MAX_LIST_BYTES) throw new InputError(`${file}: larger than 1 MiB`);
  const lines = text.split('\n').map((l) => l.replace(/\r$/, ''));
  if (lines.length > MAX_LINES) throw new InputError(`${file}: more than ${MAX_LINES} lines`);
  return lines;
}

export interface SelectionTexts {
  /** includes.txt's text; undefined when the file does not exist. */
  includes: string | undefined;
  excludes: string | undefined;
  /** How to name the files in messages. */
  includesFile: string;
  excludesFile: string;
}

/** Check both lists: every problem of includes.txt is reported at once, with its line. */
export function parseSelection(texts: SelectionTexts): Selection {
  if (texts.includes === undefined) {
    throw new InputError(`${texts.includesFile} does not exist: it lists, one per line, the paths under the home folder the snapshot takes`, {
      code: 'NO_INCLUDES',
      suggestions: [`for example: printf '.bashrc\\n.config/git\\n' > ${texts.includesFile}`],
    });
  }
  const problems: string[] = [];
  const includes: string[] = [];
  linesOf(texts.includes, texts.includesFile).forEach((line, i) => {
    if (line === '') return;
    const where = `${texts.includesFile}:${i + 1}`;
    if (line.startsWith('/')) problems.push(`${where}: "${line}" is absolute; paths are relative to the home folder`);
    else if (line.includes('\0')) problems.push(`${where}: a path cannot contain a NUL byte`);
    else {
      const parts = line.replace(/\/+$/, '').split('/').filter((p) => p !== '');
      if (parts.some((p) => p === '.' || p === '..')) problems.push(`${where}: "${line}" uses "." or ".."; name the path under the home folder directly`);
      else if (parts.length > 0) includes.push(parts.join('/'));
    }
  });
  if (includes.length === 0 && problems.length === 0) problems.push(`${texts.includesFile}: lists no paths`);
  const excludes: string[] = [];
  if (texts.excludes !== undefined) {
    linesOf(texts.excludes, texts.excludesFile).forEach((line, i) => {
      if (line === '') return;
      // GNU tar never matches a pattern that ends in "/": rather than silently exclude nothing, say so.
      if (line.endsWith('/')) problems.push(`${texts.excludesFile}:${i + 1}: "${line}" ends with "/", which tar -X never matches; write "${line.replace(/\/+$/, '')}" to exclude that folder`);
      else excludes.push(line);
    });
  }
  if (problems.length > 0) throw new InputError(problems.join('\n'), { code: 'BAD_INCLUDES' });
  return { includes: [...new Set(includes)].sort(), excludes };
}

/** Every included path must exist: the error lists each one that does not. */
export function checkMissing(missing: readonly string[], home: string, throughLinks: readonly { path: string; link: string }[] = []): void {
  const problems: string[] = [];
  if (missing.length > 0) problems.push(`${missing.length === 1 ? 'an included path does' : `${missing.length} included paths do`} not exist under ${home}: ${missing.map((m) => `"${m}"`).join(', ')}`);
  // tar would follow the link; a layer cannot hold both the link and files "under" it, so say which to name instead.
  for (const { path, link } of throughLinks) problems.push(`included path "${path}" goes through the symlink "${link}"; include the link itself, or the folder it points to`);
  if (problems.length > 0) throw new InputError(problems.join('\n'), { code: 'BAD_INCLUDES' });
}

/** The folders leading to a path, nearest the top first ("a/b/c" gives "a", "a/b"). */
export function leadingFolders(path: string): string[] {
  const parts = path.split('/');
  return parts.slice(0, -1).map((_, i) => parts.slice(0, i + 1).join('/'));
}

/** The lists of a home folder on this machine. */
export async function readSelection(files: SelectionFiles): Promise<Selection> {
  const includesFile = join(files.folder, 'includes.txt');
  const excludesFile = join(files.folder, 'excludes.txt');
  const selection = parseSelection({ includes: await readText(includesFile), excludes: await readText(excludesFile), includesFile, excludesFile });
  const missing: string[] = [];
  const throughLinks: { path: string; link: string }[] = [];
  for (const path of selection.includes) {
    const link = await firstLink(files.home, leadingFolders(path));
    if (link !== undefined) throughLinks.push({ path, link });
    else if (!(await lstat(join(files.home, path)).catch(() => undefined))) missing.push(path);
  }
  checkMissing(missing, files.home, throughLinks);
  return selection;
}

async function firstLink(home: string, folders: readonly string[]): Promise<string | undefined> {
  for (const folder of folders) if ((await lstat(join(home, folder)).catch(() => undefined))?.isSymbolicLink()) return folder;
  return undefined;
}

/** GNU tar's exclusion match (see the comment at the top). */
export function excludeMatcher(patterns: readonly string[]): (path: string) => boolean {
  const globs = patterns.filter((p) => p !== '').map(compileGlob);
  if (globs.length === 0) return () => false;
  return (path) => {
    // Every part of the path that starts after a '/' and each of its leading folders.
    const starts = [0];
    for (let i = 0; i < path.length; i++) if (path[i] === '/') starts.push(i + 1);
    for (const start of starts) {
      const tail = path.slice(start);
      const ends = [tail.length];
      for (let i = 0; i < tail.length; i++) if (tail[i] === '/') ends.push(i);
      for (const end of ends) {
        const candidate = tail.slice(0, end);
        if (globs.some((g) => g.test(candidate))) return true;
      }
    }
    return false;
  };
}

type Token = { kind: 'char'; c: string } | { kind: 'any' } | { kind: 'star' } | { kind: 'class'; negate: boolean; test: (c: string) => boolean };

export interface Glob {
  test(text: string): boolean;
}

/**
 * fnmatch(3) without FNM_PATHNAME: `*` and `?` match any character, `/`
 * too; `[...]` bracket expressions with ranges and `[:class:]` names, `!` or
 * `^` to negate, a `]` first taken literally; `\\` escapes. Matched without
 * regular expressions, in time proportional to pattern times text at worst:
 * the patterns (and, from a workspace, the names) may come from a guest, and
 * a backtracking regex could be made to run for ever.
 */
export function compileGlob(pattern: string): Glob {
  const chars = Array.from(pattern);
  const tokens: Token[] = [];
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i] as string;
    if (c === '*') {
      if (tokens.at(-1)?.kind !== 'star') tokens.push({ kind: 'star' });
    } else if (c === '?') tokens.push({ kind: 'any' });
    else if (c === '\\' && i + 1 < chars.length) tokens.push({ kind: 'char', c: chars[++i] as string });
    else if (c === '[') {
      const parsed = bracket(chars, i);
      if (parsed === undefined) tokens.push({ kind: 'char', c: '[' });
      else {
        tokens.push(parsed.token);
        i = parsed.end;
      }
    } else tokens.push({ kind: 'char', c });
  }
  return { test: (text) => matchTokens(tokens, Array.from(text)) };
}

function matchOne(token: Token, c: string): boolean {
  switch (token.kind) {
    case 'char':
      return token.c === c;
    case 'any':
      return true;
    case 'class':
      return token.test(c) !== token.negate;
    case 'star':
      return false;
  }
}

/** The classic wildcard match: on a mismatch, retry from the last `*` one character further. */
function matchTokens(tokens: readonly Token[], text: readonly string[]): boolean {
  let p = 0;
  let t = 0;
  let starP = -1;
  let starT = 0;
  while (t < text.length) {
    const token = tokens[p];
    if (token && token.kind === 'star') {
      starP = p++;
      starT = t;
    } else if (token && matchOne(token, text[t] as string)) {
      p++;
      t++;
    } else if (starP >= 0) {
      p = starP + 1;
      t = ++starT;
    } else return false;
  }
  while (tokens[p]?.kind === 'star') p++;
  return p === tokens.length;
}

const CLASSES: Record<string, (c: string) => boolean> = {
  alnum: (c) => /^[A-Za-z0-9]$/.test(c),
  alpha: (c) => /^[A-Za-z]$/.test(c),
  blank: (c) => c === ' ' || c === '\t',
  cntrl: (c) => /^[\x00-\x1f\x7f]$/.test(c),
  digit: (c) => /^[0-9]$/.test(c),
  graph: (c) => /^[!-~]$/.test(c),
  lower: (c) => /^[a-z]$/.test(c),
  print: (c) => /^[ -~]$/.test(c),
  punct: (c) => /^[!-/:-@[-`{-~]$/.test(c),
  space: (c) => /^[ \t\n\r\f\v]$/.test(c),
  upper: (c) => /^[A-Z]$/.test(c),
  xdigit: (c) => /^[0-9A-Fa-f]$/.test(c),
};

/** A bracket expression starting at `start`; undefined when it never closes (then `[` is literal). */
function bracket(chars: readonly string[], start: number): { token: Token; end: number } | undefined {
  let i = start + 1;
  let negate = false;
  if (chars[i] === '!' || chars[i] === '^') {
    negate = true;
    i++;
  }
  const tests: ((c: string) => boolean)[] = [];
  let first = true;
  while (i < chars.length) {
    let c = chars[i] as string;
    if (c === ']' && !first) {
      return { token: { kind: 'class', negate, test: (x) => tests.some((f) => f(x)) }, end: i };
    }
    first = false;
    if (c === '[' && chars[i + 1] === ':') {
      const rest = chars.slice(i + 2).join('');
      const close = rest.indexOf(':]');
      const name = close === -1 ? undefined : rest.slice(0, close);
      const named = name === undefined ? undefined : CLASSES[name];
      if (named) {
        tests.push(named);
        i += 2 + Array.from(rest.slice(0, close)).length + 2;
        continue;
      }
    }
    if (c === '\\' && i + 1 < chars.length) c = chars[++i] as string;
    if (chars[i + 1] === '-' && chars[i + 2] !== undefined && chars[i + 2] !== ']') {
      let hi = chars[i + 2] as string;
      let skip = 2;
      if (hi === '\\' && chars[i + 3] !== undefined) {
        hi = chars[i + 3] as string;
        skip = 3;
      }
      const lo = c.codePointAt(0) ?? 0;
      const top = hi.codePointAt(0) ?? 0;
      tests.push((x) => {
        const code = x.codePointAt(0) ?? -1;
        return code >= lo && code <= top;
      });
      i += skip + 1;
      continue;
    }
    const literal = c;
    tests.push((x) => x === literal);
    i++;
  }
  return undefined;
}

/** The selected entries of `home`, in pack order: included paths, what is under them, and the folders leading to them. */
export function selectedEntries(home: string, selection: Selection): AsyncGenerator<TreeEntry> {
  const excluded = excludeMatcher(selection.excludes);
  const included = (path: string): boolean => selection.includes.some((p) => path === p || path.startsWith(`${p}/`));
  const leadsTo = (path: string): boolean => selection.includes.some((p) => p.startsWith(`${path}/`));
  return hostEntries(home, {
    exclude: (path) => {
      if (included(path)) return excluded(path);
      return !leadsTo(path);
    },
  });
}
