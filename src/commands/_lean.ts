import * as assemble from './rootfs/_assemble.js';
import * as pull from './image/_pull.js';
import * as exec from './_exec.js';
import { failureReport } from './_report.js';
import { parseCommandLine, type CommandIo, type CommandSpec, type Parsed } from './_spec.js';

/**
 * The lean start: the commands people run over and over, run without
 * loading oclif (about 0.1 s of every start) when their command line is a
 * plain one (see _spec.ts). bin/run.js asks here first; false means oclif
 * runs the command line as always (help, mistakes, every other command).
 */

interface Hot {
  words: readonly string[];
  spec: CommandSpec;
  /** The command's result (printed with --json) and the exit code to end with. */
  run: (parsed: Parsed, io: CommandIo) => Promise<{ result: unknown; exitCode: number }>;
}

const HOT: readonly Hot[] = [
  { words: ['exec'], spec: exec.spec, run: (p, io) => exec.run(p.flags as never, p.argv, io) },
  { words: ['image', 'pull'], spec: pull.spec, run: async (p, io) => ({ result: await pull.run(p.flags as never, p.args['reference'] as string, io), exitCode: 0 }) },
  { words: ['rootfs', 'assemble'], spec: assemble.spec, run: async (p, io) => ({ result: await assemble.run(p.flags as never, io), exitCode: 0 }) },
];

/** The parsed command line of a hot command, or undefined when oclif should have it. */
export function leanCommand(words: readonly string[], env: NodeJS.ProcessEnv = process.env): { hot: Hot; parsed: Parsed } | undefined {
  // oclif's way of asking for JSON output without the flag.
  if (env['CS_CONTENT_TYPE'] !== undefined) return undefined;
  const hot = HOT.find((h) => h.words.every((w, i) => words[i] === w));
  if (!hot) return undefined;
  const parsed = parseCommandLine(hot.spec, words.slice(hot.words.length));
  return parsed ? { hot, parsed } : undefined;
}

function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Runs `words` (the command line after `cs`) if it is a hot command's plain one; false if oclif should. */
export async function runLean(words: readonly string[]): Promise<boolean> {
  const found = leanCommand(words);
  // oclif colours JSON on a terminal; on a pipe both print the same bytes.
  if (!found || (found.parsed.json && process.stdout.isTTY)) return false;
  const { hot, parsed } = found;
  const io: CommandIo = { json: parsed.json, say: (line) => (parsed.json ? undefined : void process.stderr.write(`${line}\n`)) };
  let outcome: { result: unknown; exitCode: number };
  try {
    outcome = await hot.run(parsed, io);
  } catch (error) {
    const report = failureReport(error, parsed.json);
    if (report.json !== undefined) printJson(report.json);
    for (const line of report.lines) process.stderr.write(`${line}\n`);
    // As oclif ends a failed command: at once, whatever is still pending.
    process.exit(report.exitCode);
  }
  if (outcome.result !== undefined && parsed.json) printJson(outcome.result);
  if (outcome.exitCode !== 0) process.exit(outcome.exitCode);
  return true;
}
