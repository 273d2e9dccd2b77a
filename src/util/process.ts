import type { Options } from 'execa';
import { ProcessError } from './errors.js';

/**
 * The one way cs runs external programs. Output is captured (never
 * interleaved with cs's own), the environment is passed explicitly when
 * given, and a failure becomes a ProcessError that names the command, its
 * exit code or signal and the end of its stderr.
 */

export interface RunOptions {
  cwd?: string;
  env?: Record<string, string | undefined>;
  /** Replace the environment instead of extending process.env. */
  extendEnv?: boolean;
  input?: string | Uint8Array;
  timeoutMs?: number;
  /** Exit codes that count as success (default: only 0). */
  okExitCodes?: readonly number[];
}

export interface RunResult {
  command: readonly string[];
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** How much of stderr an error keeps: enough to see the cause, not a log. */
const STDERR_TAIL_LINES = 20;
const STDERR_TAIL_CHARS = 4000;

export function tail(text: string, lines = STDERR_TAIL_LINES, chars = STDERR_TAIL_CHARS): string {
  const kept = text.trimEnd().split('\n').slice(-lines).join('\n');
  return kept.length > chars ? kept.slice(kept.length - chars) : kept;
}

export async function run(file: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const command = [file, ...args];
  const okCodes = options.okExitCodes ?? [0];
  const execaOptions: Options = {
    reject: false,
    stripFinalNewline: false,
    extendEnv: options.extendEnv ?? true,
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    ...(options.env === undefined ? {} : { env: options.env }),
    ...(options.input === undefined ? { stdin: 'ignore' as const } : { input: options.input }),
    ...(options.timeoutMs === undefined ? {} : { timeout: options.timeoutMs }),
  };
  // execa is loaded on first use: most cs commands never start a program,
  // and loading it costs a noticeable part of start-up time.
  const { execa } = await import('execa');
  let child;
  try {
    child = execa(file, args, execaOptions);
  } catch (error) {
    throw new ProcessError(`could not start ${file}: ${(error as Error).message}`, {
      command, exitCode: undefined, signal: undefined, stderrTail: '', timedOut: false,
    }, { cause: error });
  }
  const result = await child;
  const stdout = String(result.stdout ?? '');
  const stderr = String(result.stderr ?? '');
  const details = {
    command,
    exitCode: result.exitCode,
    signal: result.signal,
    stderrTail: tail(stderr),
    timedOut: result.timedOut,
  };
  if (result.failed && result.exitCode === undefined) {
    const why = result.timedOut
      ? `timed out after ${options.timeoutMs} ms`
      : result.signal
        ? `was killed by ${result.signal}`
        : isNotFound(result.cause)
          ? 'was not found on PATH'
          : `could not run: ${(result.cause as Error | undefined)?.message ?? 'unknown error'}`;
    throw new ProcessError(`${file} ${why}${details.stderrTail ? `:\n${details.stderrTail}` : ''}`, details, {
      cause: result.cause,
      suggestions: isNotFound(result.cause) ? [`install ${file}, or run \`cs doctor\` to see what is missing`] : [],
    });
  }
  const exitCode = result.exitCode ?? 0;
  if (!okCodes.includes(exitCode)) {
    throw new ProcessError(
      `${formatCommand(command)} exited with code ${exitCode}${details.stderrTail ? `:\n${details.stderrTail}` : ''}`,
      details,
    );
  }
  return { command, exitCode, stdout, stderr };
}

function isNotFound(cause: unknown): boolean {
  return typeof cause === 'object' && cause !== null && (cause as { code?: unknown }).code === 'ENOENT';
}

/** A shell-like rendering of argv for messages (quotes only where needed). */
export function formatCommand(argv: readonly string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`)).join(' ');
}

/**
 * A program used as a stream filter (e.g. `zstd -dc`): bytes written to
 * `input` come out of `output`. `output` fails with a ProcessError, carrying
 * the end of stderr, when the program exits with an error.
 */
export async function filterThrough(file: string, args: readonly string[], input: NodeJS.ReadableStream): Promise<import('node:stream').Readable> {
  const { spawn } = await import('node:child_process');
  const { PassThrough } = await import('node:stream');
  const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const output = new PassThrough();
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr = tail(stderr + chunk.toString('utf8'));
  });
  const details = () => ({ command: [file, ...args], exitCode: child.exitCode ?? undefined, signal: child.signalCode ?? undefined, stderrTail: tail(stderr), timedOut: false });
  child.on('error', (error: NodeJS.ErrnoException) => {
    output.destroy(new ProcessError(error.code === 'ENOENT' ? `${file} was not found on PATH` : `could not run ${file}: ${error.message}`, details(), { cause: error }));
  });
  input.on('error', (error) => {
    child.kill();
    output.destroy(error);
  });
  input.pipe(child.stdin);
  child.stdin.on('error', () => undefined); // the child may exit early; its exit code tells why
  child.stdout.pipe(output, { end: false });
  let stdoutDone = false;
  let exitCode: number | null | undefined;
  const finish = () => {
    if (!stdoutDone || exitCode === undefined) return;
    if (exitCode === 0) output.end();
    else output.destroy(new ProcessError(`${formatCommand([file, ...args])} exited with code ${exitCode}${stderr ? `:\n${tail(stderr)}` : ''}`, details()));
  };
  child.stdout.on('end', () => {
    stdoutDone = true;
    finish();
  });
  child.on('close', (code) => {
    exitCode = code;
    finish();
  });
  output.on('close', () => {
    if (child.exitCode === null) child.kill();
  });
  return output;
}
