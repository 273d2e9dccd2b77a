/**
 * The home snapshot selection rules, checked against GNU tar itself: for a
 * tree with awkward names and a set of exclusion patterns, cs's selection
 * equals what `tar -X excludes -T includes` archives (plus the folders
 * leading to included paths, which cs adds on purpose).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { excludeMatcher, compileGlob, parseSelection, selectedEntries } from './includes.js';

const root = mkdtempSync(join(tmpdir(), 'cs-includes-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const FILES = [
  'a/b/c.txt',
  'a/b/c.log',
  'a/b.log/inner',
  'a/keep/x.o',
  'a/keep/y.c',
  'node_modules/m/index.js',
  'src/node_modules/m/index.js',
  'src/app.ts',
  'src/app.test.ts',
  'src/[x].ts',
  'src/sp ace.md',
  'docs/readme.md',
  'docs/sub/deep/notes.md',
  '.hidden/rc',
  'x1',
  'x22',
  'src/5a.log',
  'src/]x',
  'src/ax',
];

function tree(): string {
  const home = mkdtempSync(join(root, 'home-'));
  for (const file of FILES) {
    mkdirSync(join(home, file, '..'), { recursive: true });
    writeFileSync(join(home, file), file);
  }
  return home;
}

async function gnuTar(home: string, includes: string[], excludes: string[]): Promise<string[]> {
  writeFileSync(join(home, '..', `${home.split('/').pop()}.inc`), includes.join('\n') + '\n');
  writeFileSync(join(home, '..', `${home.split('/').pop()}.exc`), excludes.join('\n') + '\n');
  const { stdout } = await execa('sh', ['-c', `tar -c -X "${home}.exc" -T "${home}.inc" -f - | tar -t`], { cwd: home });
  return [...new Set(stdout.split('\n').filter((l) => l !== '').map((l) => l.replace(/\/$/, '')))].sort();
}

async function ours(home: string, includes: string[], excludes: string[]): Promise<string[]> {
  const selection = parseSelection({ includes: includes.join('\n'), excludes: excludes.join('\n'), includesFile: 'includes.txt', excludesFile: 'excludes.txt' });
  const out: string[] = [];
  for await (const entry of selectedEntries(home, selection)) out.push(entry.path);
  // Leading folders are cs's addition: drop those tar does not archive.
  const leading = new Set(selection.includes.flatMap((p) => p.split('/').slice(0, -1).map((_, i, parts) => parts.slice(0, i + 1).join('/'))));
  return out.filter((p) => !leading.has(p) || selection.includes.some((i) => p === i || p.startsWith(`${i}/`))).sort();
}

describe('exclusion patterns match GNU tar', () => {
  const cases: [string[], string[]][] = [
    [['a', 'src', 'docs'], ['*.log']],
    [['a', 'src', 'docs'], ['node_modules']],
    [['a', 'src', 'node_modules'], ['node_modules']],
    [['a', 'src'], ['b']],
    [['a', 'src'], ['a/b']],
    [['a/b', 'src'], ['c.*']],
    [['a', 'src', 'x1', 'x22'], ['x?']],
    [['src'], ['*.test.ts', '\\[x\\].ts']],
    [['src'], ['[ab]pp.ts', 'sp ace.md']],
    [['docs'], ['sub/*']],
    [['docs'], ['*/deep']],
    [['a', 'docs'], ['*e*']],
    [['a', '.hidden'], ['.*']],
    [['src/app.ts', 'a/keep'], ['keep']],
    [['a', 'src'], ['[!a]*.ts']],
    [['src'], ['[[:digit:]]*.log']],
    [['src'], ['[!]]x']],
    [['src'], ['[]]x']],
    [['src', 'x1', 'x22'], ['[[:alpha:]][[:digit:]]']],
  ];
  for (const [includes, excludes] of cases) {
    it(`-T ${includes.join(',')} -X ${excludes.join(',')}`, async () => {
      const home = tree();
      expect(await ours(home, includes, excludes)).toEqual(await gnuTar(home, includes, excludes));
    });
  }
});

describe('the pieces', () => {
  it('globs: * and ? cross /, classes, escapes', () => {
    expect(compileGlob('*.log').test('a/b.log')).toBe(true);
    expect(compileGlob('a?c').test('a/c')).toBe(true);
    expect(compileGlob('[!x]y').test('zy')).toBe(true);
    expect(compileGlob('[!x]y').test('xy')).toBe(false);
    expect(compileGlob('\\*').test('*')).toBe(true);
    expect(compileGlob('\\*').test('a')).toBe(false);
    expect(compileGlob('[').test('[')).toBe(true);
    expect(compileGlob('[z-a]').test('m')).toBe(false);
  });

  // Patterns (and names) may come from a guest: with a backtracking regex these never finished.
  it('ends on patterns with many stars', () => {
    expect(compileGlob(`${'*a'.repeat(40)}*b`).test('a'.repeat(4000))).toBe(false);
    expect(excludeMatcher([`${'*a'.repeat(20)}*b`])(`${'a/'.repeat(200)}a`)).toBe(false);
    expect(compileGlob(`${'*a'.repeat(40)}*`).test('a'.repeat(4000))).toBe(true);
  });

  it('unanchored: a pattern matches the whole path or a part after a /, and the folders above', () => {
    const excluded = excludeMatcher(['b', 'x/y']);
    expect(excluded('a/b')).toBe(true);
    expect(excluded('a/b/c')).toBe(true);
    expect(excluded('ab')).toBe(false);
    expect(excluded('q/x/y/z')).toBe(true);
    expect(excluded('q/xx/y')).toBe(false);
  });

  it('lists: empty lines skipped, trailing slashes dropped, duplicates merged, problems reported together', () => {
    expect(parseSelection({ includes: 'a/\n\nb\na\n', excludes: 'x\n\n*.o\n', includesFile: 'i', excludesFile: 'e' })).toEqual({ includes: ['a', 'b'], excludes: ['x', '*.o'] });
    // GNU tar matches nothing with a pattern ending in "/": an error, not a silent no-op.
    expect(() => parseSelection({ includes: 'a\n', excludes: 'ok\nnode_modules/\n', includesFile: 'i', excludesFile: 'e' })).toThrow(/e:2: "node_modules\/" ends with "\/", which tar -X never matches; write "node_modules"/);
    expect(() => parseSelection({ includes: '/abs\nok\n../up\n', excludes: undefined, includesFile: 'i', excludesFile: 'e' })).toThrow(/i:1: "\/abs" is absolute[\s\S]*i:3: "..\/up" uses/);
    expect(() => parseSelection({ includes: '\n\n', excludes: undefined, includesFile: 'i', excludesFile: 'e' })).toThrow(/lists no paths/);
    expect(() => parseSelection({ includes: undefined, excludes: undefined, includesFile: 'i', excludesFile: 'e' })).toThrow(/i does not exist/);
  });
});
