import { Flags, Parser } from '@oclif/core';
import { describe, expect, it } from 'vitest';
import Exec from './exec.js';
import ImagePull from './image/pull.js';
import RootfsAssemble from './rootfs/assemble.js';
import { leanCommand } from './_lean.js';
import { parseCommandLine, type CommandSpec } from './_spec.js';
import { commandWords, hot as execHot, spec as execSpec } from './_exec.js';
import { hot as pullHot, spec as pullSpec } from './image/_pull.js';
import { hot as assembleHot, spec as assembleSpec } from './rootfs/_assemble.js';

/**
 * The lean parser (no oclif) must never disagree with oclif: wherever it
 * answers, oclif parses the same line to the same flags, arguments and argv.
 * Where it is unsure it gives the line to oclif, which is always right by
 * definition; the plain lines people type must not be among those.
 */

interface OclifClass {
  flags: Record<string, unknown>;
  args?: Record<string, unknown>;
  strict?: boolean;
}

const commands: { name: string; spec: CommandSpec; cls: OclifClass }[] = [
  { name: 'exec', spec: execSpec, cls: Exec as unknown as OclifClass },
  { name: 'image pull', spec: pullSpec, cls: ImagePull as unknown as OclifClass },
  { name: 'rootfs assemble', spec: assembleSpec, cls: RootfsAssemble as unknown as OclifClass },
];

async function oclifParse(cls: OclifClass, argv: string[]): Promise<{ flags: Record<string, unknown>; args: Record<string, unknown>; argv: string[]; json: boolean } | Error> {
  try {
    const out = await Parser.parse(argv, { flags: { ...cls.flags, json: Flags.boolean() } as never, args: (cls.args ?? {}) as never, strict: cls.strict ?? true });
    const { json, ...flags } = out.flags as Record<string, unknown>;
    return { flags, args: out.args as Record<string, unknown>, argv: cls.strict === false ? commandWords(argv, out.argv as string[]) : [], json: json === true };
  } catch (error) {
    return error as Error;
  }
}

async function agree(command: (typeof commands)[number], argv: string[]): Promise<boolean> {
  const lean = parseCommandLine(command.spec, argv);
  if (!lean) return false;
  const oclif = await oclifParse(command.cls, argv);
  expect(oclif, `oclif refused what the lean parser took: ${command.name} ${JSON.stringify(argv)}`).not.toBeInstanceOf(Error);
  const defined = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
  const want = oclif as Exclude<typeof oclif, Error>;
  expect({ flags: defined(lean.flags), args: defined(lean.args), argv: lean.argv, json: lean.json }, `${command.name} ${JSON.stringify(argv)}`).toEqual({
    flags: defined(want.flags),
    args: defined(want.args),
    argv: want.argv,
    json: want.json,
  });
  return true;
}

const plain: Record<string, string[][]> = {
  exec: [
    ['-W', 'demo/dev', '--', 'uname', '-a'],
    ['--workspace', 'scratch', '--', 'make', 'test'],
    ['--workspace=demo/dev', '--', 'sh', '-c', 'echo --json'],
    ['-Wdemo/dev', '--', 'true'],
    ['-W', 'demo/dev', '--user', 'root', '--', 'apt-get', 'install', '-y', 'make'],
    ['-W', 'demo/dev', '-e', 'DEBUG=1', '-e', 'B=2', '-w', 'src/api', '--', 'make', 'test'],
    ['-W', 'demo/dev', '-i', '-t', '--timeout', '30', '--', 'cat'],
    ['--json', '-W', 'demo/dev', '--', 'id', '-un'],
    ['-W', 'demo/dev', '-u', '1000', '--', '--', 'x'],
  ],
  'image pull': [
    ['registry.example.com/team/base:2024.06'],
    ['127.0.0.1:5000/debian:bookworm', '--platform', 'linux/arm64'],
    ['--insecure', 'oci://localhost:5000/tools:1', '--json'],
    ['--platform=linux/amd64', 'localhost/x:1'],
  ],
  'rootfs assemble': [
    ['-f', 'examples/minimal.yaml', '-W', 'minimal/dev', '--format', 'erofs', '--out', '/tmp/dev.erofs'],
    ['--base', 'localhost:5000/debian:bookworm', '--home', 'localhost:5000/team-home:v1', '--format', 'dir', '--out', '/tmp/root'],
    ['--base', 'localhost/debian:bookworm', '--format=tar', '-o', 'root.tar', '--json', '--force'],
    ['--base', 'localhost/debian:bookworm', '--personal', 'mine', '--out', 'x'],
  ],
};

describe('the lean command-line parser', () => {
  for (const command of commands) {
    it(`answers the plain lines of ${command.name} exactly as oclif does`, async () => {
      for (const argv of plain[command.name] ?? []) expect(await agree(command, argv), `${command.name} ${JSON.stringify(argv)} went to oclif`).toBe(true);
    });
  }

  it('leaves to oclif what it is not sure of, and oclif refuses most of it', async () => {
    const unsure: [string, string[]][] = [
      ['exec', ['--help']],
      ['exec', ['-h']],
      ['exec', ['-W', 'a', 'uname']],
      ['exec', ['--', 'uname']],
      ['exec', ['-W', 'a', '-W', 'b', '--', 'x']],
      ['exec', ['-W', '--', 'x']],
      ['exec', ['-W', 'a', '-it', '--', 'x']],
      ['exec', ['-W', 'a', '--timeout', 'soon', '--', 'x']],
      ['exec', ['-W', 'a', '--no-tty', '--', 'x']],
      ['exec', ['-W=a', '--', 'x']],
      ['exec', ['-W', 'a', '--json', '--json', '--', 'x']],
      ['image pull', []],
      ['image pull', ['a', 'b']],
      ['image pull', ['--', 'a']],
      ['image pull', ['a', '--insecure=yes']],
      ['image pull', ['a', '--platform']],
      ['rootfs assemble', ['--base', 'x']],
      ['rootfs assemble', ['--base', 'x', '--out', 'y', '--format', 'zip']],
      ['rootfs assemble', ['--base', 'x', '--out', '']],
      ['rootfs assemble', ['--base', 'x', '--out', '-o']],
      ['rootfs assemble', ['--bsae', 'x', '--out', 'y']],
    ];
    let refused = 0;
    for (const [name, argv] of unsure) {
      const command = commands.find((c) => c.name === name) as (typeof commands)[number];
      expect(parseCommandLine(command.spec, argv), `${name} ${JSON.stringify(argv)}`).toBeUndefined();
      if ((await oclifParse(command.cls, argv)) instanceof Error) refused++;
    }
    expect(refused).toBeGreaterThanOrEqual(14);
  });

  it('never disagrees with oclif on random command lines', async () => {
    // Words of every kind, repeated ones, inline values that look like flags; required flags often come first.
    const words: Record<string, string[]> = {
      exec: ['-W', 'a/b', '--workspace', '-u', 'root', '--user=1000', '--user=-t', '-u-i', '-e', 'A=1', '-eB=2', '-e-i', '--env', '-i', '-t', '-it', '--tty', '--timeout', '7', '--timeout=x', '--', 'x', 'root', '-', '--json', '-w', 'src', '-W=a'],
      'image pull': ['localhost/x:1', 'x', '--platform', 'linux/arm64', '--platform=-x', '--insecure', '--insecure=1', '--json', '--', '-', 'y'],
      'rootfs assemble': ['--base', 'b', '--home', 'h', '--out', 'o', '-o', '--out=-o', '-o-x', '--format', 'erofs', '--format=dir', 'zip', '--force', '-f', 'f.yaml', '-W', 'a/b', '-Wa/b', '--personal', 'p', '--json', '--', '--base=--json'],
    };
    const required: Record<string, string[][]> = { exec: [['-W', 'a/b', '--'], ['-W', 'a/b']], 'image pull': [['localhost/x:1']], 'rootfs assemble': [['--base', 'b', '--out', 'o'], ['--out', 'o']] };
    let seed = 7;
    const next = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      // The high bits: the low bits of this generator repeat with short periods.
      return Math.floor((seed / 2 ** 31) * n);
    };
    for (const command of commands) {
      const vocabulary = words[command.name] as string[];
      const prefixes = required[command.name] as string[][];
      let answered = 0;
      for (let round = 0; round < 2000; round++) {
        const prefix = next(3) === 0 ? [] : (prefixes[next(prefixes.length)] as string[]);
        const argv = [...prefix, ...Array.from({ length: next(7) }, () => vocabulary[next(vocabulary.length)] as string)];
        if (await agree(command, argv)) answered++;
      }
      // Enough lines of each command were answered for the comparison to mean something.
      expect(answered, command.name).toBeGreaterThan(150);
    }
  });

  it('takes only its own command, and not when JSON is asked for through the environment', () => {
    expect(leanCommand(execHot, ['exec', '-W', 'a', '--', 'true'], {})?.argv).toEqual(['true']);
    expect(leanCommand(pullHot, ['image', 'pull', 'x'], {})?.args).toEqual({ reference: 'x' });
    expect(leanCommand(pullHot, ['image', 'push', 'x'], {})).toBeUndefined();
    expect(leanCommand(execHot, ['image', 'pull', 'x'], {})).toBeUndefined();
    expect(leanCommand(assembleHot, ['rootfs:assemble', '--base', 'x', '--out', 'y'], {})).toBeUndefined();
    expect(leanCommand(execHot, ['exec', '-W', 'a', '--', 'true'], { CS_CONTENT_TYPE: 'json' })).toBeUndefined();
  });
});
