import { afterAll, beforeAll, describe, it, expect } from 'vitest';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DefinitionIssue } from './issues.js';
import { MAX_DEFINITION_BYTES, findDefinitionFiles, kindOf, readDefinitionFile, type ReadResult } from './source.js';

/**
 * Finding and reading definition files, against real files in a temp dir.
 */

let root = '';

/** Write a file (text or bytes) under the temp dir, creating folders; returns its path. */
async function put(relative: string, content: string | Uint8Array = 'workspaces:\n  - name: dev\n'): Promise<string> {
  const path = join(root, relative);
  await mkdir(join(path, '..'), { recursive: true });
  await writeFile(path, content);
  return path;
}

function bytes(...parts: (string | number[])[]): Uint8Array {
  const chunks = parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : Buffer.from(p)));
  return new Uint8Array(Buffer.concat(chunks));
}

function issueOf(result: ReadResult): DefinitionIssue {
  if (result.ok) throw new Error(`expected an issue, got text ${JSON.stringify(result.source.text.slice(0, 80))}`);
  return result.issue;
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'cs-source-test-'));
});

afterAll(async () => {
  if (root !== '') await rm(root, { recursive: true, force: true });
});

describe('readDefinitionFile', () => {
  it('reads a definition as text with its kind', async () => {
    const file = await put('read/ok.yaml', 'name: x\nworkspaces:\n  - name: dev\n');
    const result = await readDefinitionFile(file);
    expect(result).toEqual({ ok: true, source: { file, kind: 'sandbox', text: 'name: x\nworkspaces:\n  - name: dev\n' } });
    const manifest = await put('read/repo/.sandbox/manifest.yaml', 'env:\n  - A=1\n');
    const read = await readDefinitionFile(manifest);
    expect(read.ok && read.source.kind).toBe('manifest');
  });

  it('refuses a file larger than MAX_DEFINITION_BYTES, saying 1 MiB', async () => {
    expect(MAX_DEFINITION_BYTES).toBe(1024 * 1024);
    const file = await put('read/big.yaml', `a: ${'x'.repeat(MAX_DEFINITION_BYTES)}\n`);
    const issue = issueOf(await readDefinitionFile(file));
    expect(issue.file).toBe(file);
    expect(issue.message).toContain('1 MiB');
    expect(issue.message).toContain(String(MAX_DEFINITION_BYTES + 4));
    expect({ line: issue.line, column: issue.column, path: issue.path }).toEqual({ line: 0, column: 0, path: '' });
  });

  it('accepts a file of exactly MAX_DEFINITION_BYTES', async () => {
    const text = `a: ${'x'.repeat(MAX_DEFINITION_BYTES - 4)}\n`;
    expect(Buffer.byteLength(text)).toBe(MAX_DEFINITION_BYTES);
    const file = await put('read/limit.yaml', text);
    const result = await readDefinitionFile(file);
    expect(result.ok).toBe(true);
    expect(result.ok && result.source.text.length).toBe(MAX_DEFINITION_BYTES);
  });

  it('refuses a NUL byte, pointing at its line and column', async () => {
    const file = await put('read/nul.yaml', bytes('a: 1\nb: 2\nccc:', [0], ' x\n'));
    const issue = issueOf(await readDefinitionFile(file));
    expect(issue.message).toContain('NUL');
    expect({ file: issue.file, line: issue.line, column: issue.column, path: issue.path }).toEqual({ file, line: 3, column: 5, path: '' });
  });

  it('counts the NUL byte column in characters, not bytes', async () => {
    // "é€ab" is 4 characters in 7 bytes.
    const file = await put('read/nul-wide.yaml', bytes('a: 1\nb: 2\n\u00e9\u20acab', [0], '\n'));
    const issue = issueOf(await readDefinitionFile(file));
    expect(issue.message).toContain('NUL');
    expect([issue.line, issue.column]).toEqual([3, 5]);
  });

  it('refuses a NUL byte at the very start at 1:1', async () => {
    const file = await put('read/nul-first.yaml', bytes([0], 'a: 1\n'));
    const issue = issueOf(await readDefinitionFile(file));
    expect([issue.line, issue.column]).toEqual([1, 1]);
  });

  it('refuses invalid UTF-8, pointing at the bad byte', async () => {
    // Line 2 is "bé: " (4 characters) then the byte 0xff.
    const file = await put('read/latin1.yaml', bytes('a: 1\nb\u00e9: ', [0xff], '\n'));
    const issue = issueOf(await readDefinitionFile(file));
    expect(issue.message).toContain('not UTF-8');
    expect(issue.message).toContain('0xff');
    expect({ file: issue.file, line: issue.line, column: issue.column, path: issue.path }).toEqual({ file, line: 2, column: 5, path: '' });
  });

  it.each([
    ['a truncated sequence at the end', bytes('x: 1\ny: 2\nab', [0xe2, 0x82]), 3, 3, '0xe2'],
    ['a truncated sequence before ASCII', bytes('x: 1\nab', [0xe2, 0x82], 'cd\n'), 2, 3, '0xe2'],
    ['a lone continuation byte', bytes('k: ', [0x80], '\n'), 1, 4, '0x80'],
    ['an overlong encoding', bytes('k: v\n\n  ', [0xc0, 0x80], '\n'), 3, 3, '0xc0'],
    ['a UTF-16 surrogate', bytes('k: \u00e9', [0xed, 0xa0, 0x80], '\n'), 1, 5, '0xed'],
    ['a code point above U+10FFFF', bytes('k: ', [0xf4, 0x90, 0x80, 0x80], '\n'), 1, 4, '0xf4'],
  ])('refuses %s at the right place', async (_name, content, line, column, hex) => {
    const file = await put(`read/bad-utf8-${line}-${column}-${hex}.yaml`, content);
    const issue = issueOf(await readDefinitionFile(file));
    expect(issue.message).toContain('not UTF-8');
    expect(issue.message).toContain(hex);
    expect([issue.line, issue.column]).toEqual([line, column]);
  });

  it.each([
    ['an empty file', ''],
    ['a file of blank lines', '\n\n  \n\t\n'],
    ['a comments-only file', '# a sandbox\n#\n  # to be written\n\n# later\n'],
    ['a comments-only file without a final newline', '# only a comment'],
    ['a comments-only file with CRLF', '# a\r\n# b\r\n'],
  ])('refuses %s as empty', async (_name, content) => {
    const file = await put(`read/empty-${content.length}-${content.charCodeAt(0) || 0}.yaml`, content);
    const issue = issueOf(await readDefinitionFile(file));
    expect(issue.message).toMatch(/empty/);
    expect(issue.message).toContain('workspaces');
    expect({ line: issue.line, column: issue.column, path: issue.path }).toEqual({ line: 0, column: 0, path: '' });
  });

  it('says a manifest is empty without asking for workspaces', async () => {
    const file = await put('read/empty/.sandbox/manifest.yaml', '# nothing yet\n');
    const issue = issueOf(await readDefinitionFile(file));
    expect(issue.message).toMatch(/empty/);
    expect(issue.message).not.toContain('workspaces');
  });

  it('accepts a comment followed by content', async () => {
    const file = await put('read/commented.yaml', '# a sandbox\nworkspaces:\n  - name: dev\n');
    expect((await readDefinitionFile(file)).ok).toBe(true);
  });

  it('accepts a UTF-8 BOM and drops it from the text', async () => {
    const file = await put('read/bom.yaml', bytes([0xef, 0xbb, 0xbf], 'workspaces:\n  - name: d\u00e9v\n'));
    const result = await readDefinitionFile(file);
    if (!result.ok) throw new Error(result.issue.message);
    expect(result.source.text.charCodeAt(0)).not.toBe(0xfeff);
    expect(result.source.text).toBe('workspaces:\n  - name: d\u00e9v\n');
  });

  it('refuses a file that is only a BOM as empty', async () => {
    const file = await put('read/bom-only.yaml', bytes([0xef, 0xbb, 0xbf]));
    expect(issueOf(await readDefinitionFile(file)).message).toMatch(/empty/);
  });

  it('refuses a directory passed as a file', async () => {
    const dir = join(root, 'read/a-folder.yaml');
    await mkdir(dir, { recursive: true });
    const issue = issueOf(await readDefinitionFile(dir));
    expect(issue.file).toBe(dir);
    expect(issue.message).toContain('is a directory');
    expect([issue.line, issue.column]).toEqual([0, 0]);
  });

  it('refuses a missing file', async () => {
    const missing = join(root, 'read/missing.yaml');
    const issue = issueOf(await readDefinitionFile(missing));
    expect(issue).toEqual({ file: missing, line: 0, column: 0, path: '', message: 'no such file or directory' });
  });

  it('refuses a path through a file', async () => {
    const file = await put('read/plain.yaml');
    const issue = issueOf(await readDefinitionFile(join(file, 'inner.yaml')));
    expect(issue.message).toContain('not a directory');
  });

  it('honours an explicit kind over the file name', async () => {
    const file = await put('read/any-name.yaml', '# nothing\n');
    expect(issueOf(await readDefinitionFile(file, 'manifest')).message).not.toContain('workspaces');
    expect(issueOf(await readDefinitionFile(file, 'sandbox')).message).toContain('workspaces');
  });
});

describe('kindOf', () => {
  it.each([
    ['.sandbox/manifest.yaml', 'manifest'],
    ['repo/.sandbox/manifest.yml', 'manifest'],
    ['repo/.sandbox/MANIFEST.YAML', 'manifest'],
    ['repo/.sandbox/other.yaml', 'sandbox'],
    ['repo/manifest.yaml', 'sandbox'],
    ['repo/sandbox/manifest.yaml', 'sandbox'],
    ['repo/.sandbox/manifest.json', 'sandbox'],
  ])('%s is a %s', (file, kind) => {
    expect(kindOf(file)).toBe(kind);
  });
});

describe('findDefinitionFiles', () => {
  let tree = '';
  let outside = '';

  beforeAll(async () => {
    tree = join(root, 'find', 'defs');
    outside = join(root, 'find', 'outside');
    for (const f of [
      'a.yaml',
      'B.YML',
      'c.Yaml',
      'notes.txt',
      'data.json',
      'old.yaml.bak',
      'yaml',
      'sub/g.yaml',
      'sub/deep/f.yml',
      'node_modules/pkg/x.yaml',
      '.git/y.yaml',
      '.hidden/z.yaml',
      '.sandbox/manifest.yaml',
      '.sandbox/other.yaml',
      'repo/.sandbox/manifest.yml',
      'repo/.github/ci.yaml',
    ]) {
      await put(join('find/defs', f));
    }
    await put('find/outside/o.yaml');
    await symlink(join(outside, 'o.yaml'), join(tree, 'link.yaml'));
    await symlink(outside, join(tree, 'linkdir'));
  });

  it('recurses, takes *.yaml and *.yml in any case, and skips vendored and dot-folders but not .sandbox', async () => {
    const found = await findDefinitionFiles([tree]);
    expect(found.issues).toEqual([]);
    expect(found.files).toEqual([
      { file: join(tree, '.sandbox/manifest.yaml'), kind: 'manifest' },
      { file: join(tree, '.sandbox/other.yaml'), kind: 'sandbox' },
      { file: join(tree, 'a.yaml'), kind: 'sandbox' },
      { file: join(tree, 'B.YML'), kind: 'sandbox' },
      { file: join(tree, 'c.Yaml'), kind: 'sandbox' },
      { file: join(tree, 'repo/.sandbox/manifest.yml'), kind: 'manifest' },
      { file: join(tree, 'sub/deep/f.yml'), kind: 'sandbox' },
      { file: join(tree, 'sub/g.yaml'), kind: 'sandbox' },
    ]);
  });

  it('does not follow symbolic links inside a searched folder', async () => {
    const found = await findDefinitionFiles([tree]);
    const files = found.files.map((f) => f.file);
    expect(files.some((f) => f.includes('link'))).toBe(false);
    expect(files.some((f) => f.endsWith('o.yaml'))).toBe(false);
  });

  it('takes a file named directly whatever its extension, and a symbolic link named directly', async () => {
    const notes = join(tree, 'notes.txt');
    const link = join(tree, 'link.yaml');
    const found = await findDefinitionFiles([notes, link]);
    expect(found).toEqual({
      files: [
        { file: notes, kind: 'sandbox' },
        { file: link, kind: 'sandbox' },
      ],
      issues: [],
    });
  });

  it('reports a folder with no definitions', async () => {
    const empty = join(root, 'find', 'empty');
    await mkdir(empty, { recursive: true });
    const textOnly = join(root, 'find', 'text-only');
    await put('find/text-only/readme.md', '# hi\n');
    await put('find/text-only/node_modules/dep.yaml');
    const found = await findDefinitionFiles([empty, textOnly]);
    expect(found.files).toEqual([]);
    expect(found.issues).toHaveLength(2);
    for (const [issue, dir] of [
      [found.issues[0], empty],
      [found.issues[1], textOnly],
    ] as const) {
      expect(issue?.file).toBe(dir);
      expect(issue?.message).toMatch(/no definitions/);
      expect([issue?.line, issue?.column, issue?.path]).toEqual([0, 0, '']);
    }
  });

  it('reports a path that does not exist, and goes on with the others', async () => {
    const missing = join(root, 'find', 'nope');
    const a = join(tree, 'a.yaml');
    const found = await findDefinitionFiles([missing, a]);
    expect(found.issues).toEqual([{ file: missing, line: 0, column: 0, path: '', message: 'no such file or directory' }]);
    expect(found.files).toEqual([{ file: a, kind: 'sandbox' }]);
  });

  it('lists a file given twice once', async () => {
    const a = join(tree, 'a.yaml');
    const found = await findDefinitionFiles([a, a]);
    expect(found).toEqual({ files: [{ file: a, kind: 'sandbox' }], issues: [] });
  });

  it('lists a file named directly and found in its folder once', async () => {
    const g = join(tree, 'sub/g.yaml');
    const found = await findDefinitionFiles([g, join(tree, 'sub')]);
    expect(found.files.map((f) => f.file)).toEqual([g, join(tree, 'sub/deep/f.yml')]);
  });

  it('lists the files of a folder given twice once each, in the same sorted order', async () => {
    const once = await findDefinitionFiles([tree]);
    const twice = await findDefinitionFiles([tree, tree]);
    expect(twice.files).toEqual(once.files);
    expect(twice.files.map((f) => f.file)).toEqual([...new Set(twice.files.map((f) => f.file))]);
  });

  // BUG: findDefinitionFiles reports "no definitions here" for a folder whose
  // definitions were all found already (given twice, or after naming its
  // files), because it compares the file count before and after the walk.
  // validatePaths then fails on a folder full of valid definitions. Flip to
  // `it` when fixed.
  it('regression: a folder given twice is not reported as having no definitions', async () => {
    const twice = await findDefinitionFiles([tree, tree]);
    expect(twice.issues).toEqual([]);
  });

  it('stops at folders nested deeper than 32 levels and says so', async () => {
    const base = join(root, 'find', 'nested');
    const deep = Array.from({ length: 34 }, (_, i) => `d${i}`).join('/');
    await put(join('find/nested', deep, 'too-deep.yaml'));
    await put('find/nested/d0/shallow.yaml');
    const found = await findDefinitionFiles([base]);
    expect(found.files.map((f) => f.file)).toEqual([join(base, 'd0/shallow.yaml')]);
    expect(found.issues).toHaveLength(1);
    expect(found.issues[0]?.message).toMatch(/deeper than 32/);
  });
});
