import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve } from 'node:path';
import type { DefinitionIssue } from './issues.js';

/**
 * Finding definition files and reading them as text. Every way a file can be
 * unfit to be a definition (missing, a directory with none inside, too big,
 * binary, not UTF-8, empty) is an issue here, before any YAML is parsed.
 */

/** No hand-written definition is anywhere near this; bigger is a mistake or an attack. */
export const MAX_DEFINITION_BYTES = 1024 * 1024;
/** How deep `cs validate DIR` descends, and how many files it takes. */
const MAX_DEPTH = 32;
const MAX_FILES = 10_000;

export type DefinitionKind = 'sandbox' | 'manifest';

export interface DefinitionSource {
  file: string;
  kind: DefinitionKind;
  text: string;
}

export interface FoundFiles {
  files: { file: string; kind: DefinitionKind }[];
  issues: DefinitionIssue[];
}

const YAML_EXT = new Set(['.yaml', '.yml']);
/** Folders that hold other people's files, never definitions. */
const SKIP_DIRS = new Set(['node_modules', '.git', '.hg', '.svn']);

/** A repo's `.sandbox/manifest.yaml` gets the manifest schema; any other YAML is a sandbox. */
export function kindOf(file: string): DefinitionKind {
  const name = basename(file).toLowerCase();
  return basename(dirname(file)) === '.sandbox' && (name === 'manifest.yaml' || name === 'manifest.yml')
    ? 'manifest'
    : 'sandbox';
}

function fileIssue(file: string, message: string): DefinitionIssue {
  return { file, line: 0, column: 0, path: '', message };
}

/**
 * Expand paths into definition files. Files named directly are taken whatever
 * their extension; directories are searched for *.yaml and *.yml, skipping
 * dot-folders other than `.sandbox` and vendored folders.
 */
export async function findDefinitionFiles(paths: readonly string[]): Promise<FoundFiles> {
  const files: FoundFiles['files'] = [];
  const issues: DefinitionIssue[] = [];
  // The same file named twice (./a.yaml and through its folder) is read once.
  const seen = new Set<string>();
  let matched = 0;
  const add = (file: string) => {
    matched++;
    const key = resolve(file);
    if (!seen.has(key)) {
      seen.add(key);
      files.push({ file, kind: kindOf(file) });
    }
  };

  for (const path of paths) {
    let info;
    try {
      info = await stat(path);
    } catch (error) {
      issues.push(fileIssue(path, describeFsError(error, 'no such file or directory')));
      continue;
    }
    if (info.isFile()) {
      add(path);
      continue;
    }
    if (!info.isDirectory()) {
      issues.push(fileIssue(path, 'not a regular file or directory'));
      continue;
    }
    const before = matched;
    await walk(path, 0, add, issues);
    if (matched === before) {
      issues.push(fileIssue(path, 'no definitions here (looked for *.yaml and *.yml files)'));
    }
    if (files.length > MAX_FILES) {
      issues.push(fileIssue(path, `more than ${MAX_FILES} definition files; name a smaller folder`));
      files.length = MAX_FILES;
      break;
    }
  }
  return { files, issues };
}

async function walk(dir: string, depth: number, add: (file: string) => void, issues: DefinitionIssue[]): Promise<void> {
  if (depth > MAX_DEPTH) {
    issues.push(fileIssue(dir, `folders nested deeper than ${MAX_DEPTH} levels were not searched`));
    return;
  }
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (error) {
    issues.push(fileIssue(dir, describeFsError(error, 'cannot read this folder')));
    return;
  }
  entries.sort((a, b) => a.name.localeCompare(b.name));
  for (const entry of entries) {
    const full = join(dir, entry.name);
    if (entry.isDirectory()) {
      if (SKIP_DIRS.has(entry.name) || (entry.name.startsWith('.') && entry.name !== '.sandbox')) continue;
      await walk(full, depth + 1, add, issues);
    } else if (entry.isFile() && YAML_EXT.has(extname(entry.name).toLowerCase())) {
      add(full);
    }
    // Symbolic links inside a searched folder are not followed: a link can
    // lead out of the tree or into a loop. Name a linked file directly instead.
  }
}

export type ReadResult = { ok: true; source: DefinitionSource } | { ok: false; issue: DefinitionIssue };

/** Read one definition as UTF-8 text, refusing what cannot be a definition. */
export async function readDefinitionFile(file: string, kind: DefinitionKind = kindOf(file)): Promise<ReadResult> {
  let bytes: Buffer;
  try {
    const info = await stat(file);
    if (info.isDirectory()) return { ok: false, issue: fileIssue(file, 'is a directory; expected a definition file') };
    if (info.size > MAX_DEFINITION_BYTES) return { ok: false, issue: tooLarge(file, info.size) };
    bytes = await readFile(file);
  } catch (error) {
    return { ok: false, issue: fileIssue(file, describeFsError(error, 'cannot read this file')) };
  }
  return decodeDefinition(file, bytes, kind);
}

function tooLarge(file: string, size: number): DefinitionIssue {
  return fileIssue(
    file,
    `file is ${size} bytes; a definition may be at most ${MAX_DEFINITION_BYTES} bytes (1 MiB), so this is not a definition`,
  );
}

/** Decode bytes as a definition's text: UTF-8, no NUL bytes, not empty. */
export function decodeDefinition(file: string, bytes: Uint8Array, kind: DefinitionKind = kindOf(file)): ReadResult {
  if (bytes.length > MAX_DEFINITION_BYTES) return { ok: false, issue: tooLarge(file, bytes.length) };
  const nul = bytes.indexOf(0);
  if (nul >= 0) {
    const { line, column } = positionOfByte(bytes, nul);
    return { ok: false, issue: { file, line, column, path: '', message: 'file contains a NUL byte: it is binary, not YAML text' } };
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(bytes);
  } catch {
    const bad = firstInvalidUtf8(bytes);
    const { line, column } = positionOfByte(bytes, bad);
    return {
      ok: false,
      issue: { file, line, column, path: '', message: `file is not UTF-8 text (invalid byte 0x${(bytes[bad] ?? 0).toString(16).padStart(2, '0')})` },
    };
  }
  if (isBlankOrComments(text)) {
    return { ok: false, issue: fileIssue(file, kind === 'manifest' ? 'file is empty' : 'file is empty; a sandbox definition needs at least "workspaces"') };
  }
  return { ok: true, source: { file, kind, text } };
}

/** True when every line is blank or a comment (checked line by line: no regex backtracking). */
function isBlankOrComments(text: string): boolean {
  for (const line of text.split('\n')) {
    const trimmed = line.trim();
    if (trimmed !== '' && !trimmed.startsWith('#')) return false;
  }
  return true;
}

/** Index of the first byte that breaks UTF-8 decoding. */
function firstInvalidUtf8(bytes: Uint8Array): number {
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i] ?? 0;
    const need = b < 0x80 ? 0 : b >= 0xc2 && b <= 0xdf ? 1 : b >= 0xe0 && b <= 0xef ? 2 : b >= 0xf0 && b <= 0xf4 ? 3 : -1;
    if (need < 0) return i;
    if (need > 0) {
      const decoder = new TextDecoder('utf-8', { fatal: true });
      try {
        decoder.decode(bytes.subarray(i, i + need + 1));
      } catch {
        return i;
      }
    }
    i += need + 1;
  }
  return Math.max(0, bytes.length - 1);
}

/** 1-based line and column (in characters, counted leniently) of a byte offset. */
function positionOfByte(bytes: Uint8Array, offset: number): { line: number; column: number } {
  let line = 1;
  let lineStart = 0;
  for (let i = 0; i < offset; i++) {
    if (bytes[i] === 0x0a) {
      line++;
      lineStart = i + 1;
    }
  }
  const column = new TextDecoder('utf-8').decode(bytes.subarray(lineStart, offset)).length + 1;
  return { line, column };
}

function describeFsError(error: unknown, fallback: string): string {
  const code = (error as { code?: string }).code;
  if (code === 'ENOENT') return 'no such file or directory';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'ELOOP') return 'too many levels of symbolic links';
  if (code === 'ENOTDIR') return 'a part of this path is not a directory';
  return fallback;
}
