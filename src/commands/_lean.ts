import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { failureReport } from './_report.js';
import { parseCommandLine, type CommandIo, type CommandSpec, type Parsed } from './_spec.js';

/**
 * The lean start: the commands people run over and over, run without
 * loading oclif (about 0.1 s of every start) when their command line is a
 * plain one (see _spec.ts). Each such command exports a `hot` description;
 * scripts/bundle.mjs makes one small CommonJS file of each (with only the
 * code that command reaches), dist/bundle/lean-WORDS.cjs, and bin/run.cjs
 * hands the command line to the one whose words start it. False means oclif
 * runs the command line as always (help, mistakes, every other command).
 */

export interface Hot {
  /** The command's words: `['image', 'pull']`. */
  words: readonly string[];
  spec: CommandSpec;
  /** The command's result (printed with --json) and the exit code to end with. */
  run: (parsed: Parsed, io: CommandIo) => Promise<{ result: unknown; exitCode: number }>;
}

/** The parsed command line when it is `hot`'s and a plain one, or undefined when oclif should have it. */
export function leanCommand(hot: Hot, words: readonly string[], env: NodeJS.ProcessEnv = process.env): Parsed | undefined {
  // JSON asked for without the flag, and oclif's own debugging output: oclif's.
  if (env['CS_CONTENT_TYPE'] !== undefined || env['DEBUG'] !== undefined) return undefined;
  if (!hot.words.every((w, i) => words[i] === w)) return undefined;
  const parsed = parseCommandLine(hot.spec, words.slice(hot.words.length));
  // A user's oclif theme colours JSON output; only oclif knows how.
  if (parsed?.json && !/^(1|true)$/i.test(env['CS_DISABLE_THEME'] ?? '') && existsSync(themeFile(env))) return undefined;
  return parsed;
}

/** Where oclif looks for a user's theme (its config folder for `cs`). */
function themeFile(env: NodeJS.ProcessEnv): string {
  const dir = env['CS_CONFIG_DIR'] ?? join(env['XDG_CONFIG_HOME'] || join(homedir(), '.config'), 'cs');
  return join(dir, 'theme.json');
}

function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Runs `words` (the command line after `cs`) if it is `hot`'s plain one; false if oclif should. */
export async function runLean(hot: Hot, words: readonly string[]): Promise<boolean> {
  const parsed = leanCommand(hot, words);
  if (!parsed) return false;
  // As oclif does: output cut short by its reader (`| head`) is not an error.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code !== 'EPIPE') throw error;
  });
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
