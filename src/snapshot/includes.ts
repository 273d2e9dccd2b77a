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

const MAX_LIST_BYTES = 1024 * 1024;
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
  const regexes = patterns.filter((p) => p !== '').map(globToRegExp);
  if (regexes.length === 0) return () => false;
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
        if (regexes.some((r) => r.test(candidate))) return true;
      }
    }
    return false;
  };
}

/** fnmatch(3) without FNM_PATHNAME: `*` and `?` match any character, `/` too; `[...]` classes; `\\` escapes. */
export function globToRegExp(pattern: string): RegExp {
  let out = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i] as string;
    if (c === '*') out += '.*';
    else if (c === '?') out += '.';
    else if (c === '\\' && i + 1 < pattern.length) out += escapeRegExp(pattern[++i] as string);
    else if (c === '[') {
      const parsed = bracket(pattern, i);
      if (parsed === undefined) out += '\\[';
      else {
        out += parsed.regex;
        i = parsed.end;
      }
    } else out += escapeRegExp(c);
  }
  return new RegExp(`^${out}$`, 's');
}

const CLASSES: Record<string, string> = {
  alnum: 'A-Za-z0-9',
  alpha: 'A-Za-z',
  blank: ' \\t',
  cntrl: '\\x00-\\x1f\\x7f',
  digit: '0-9',
  graph: '!-~',
  lower: 'a-z',
  print: ' -~',
  punct: '!-\\/:-@\\[-`{-~',
  space: ' \\t\\n\\r\\f\\v',
  upper: 'A-Z',
  xdigit: '0-9A-Fa-f',
};

/** A bracket expression at `start` (fnmatch: `!` or `^` negates, a `]` first is literal, `[:class:]` names a class). */
function bracket(pattern: string, start: number): { regex: string; end: number } | undefined {
  let i = start + 1;
  let negate = false;
  if (pattern[i] === '!' || pattern[i] === '^') {
    negate = true;
    i++;
  }
  let body = '';
  let first = true;
  while (i < pattern.length) {
    const c = pattern[i] as string;
    if (c === ']' && !first) return { regex: `[${negate ? '^' : ''}${body}]`, end: i };
    first = false;
    if (c === '[' && pattern[i + 1] === ':') {
      const close = pattern.indexOf(':]', i + 2);
      const name = close === -1 ? undefined : pattern.slice(i + 2, close);
      if (name !== undefined && CLASSES[name] !== undefined) {
        body += CLASSES[name];
        i = close + 2;
        continue;
      }
    }
    if (c === '\\' && i + 1 < pattern.length) {
      body += `\\${pattern[i + 1]}`;
      i += 2;
      continue;
    }
    body += c === '-' && body !== '' && pattern[i + 1] !== ']' ? '-' : /[\]\\^[-]/.test(c) ? `\\${c}` : c;
    i++;
  }
  return undefined;
}

function escapeRegExp(c: string): string {
  return c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
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
