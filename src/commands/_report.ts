import { ExitCode, isCsError } from '../util/errors.js';

/**
 * How a failed command is reported, with or without oclif: a CsError as its
 * message and suggestions (never a stack trace), anything else as an
 * internal error (exit 1), with the stack only when CS_DEBUG is set. With
 * `--json` the error is one object on stdout instead.
 */
export interface FailureReport {
  exitCode: number;
  /** The object to print on stdout (`--json`). */
  json?: unknown;
  /** Lines for stderr (without `--json`). */
  lines: string[];
}

export function failureReport(error: unknown, json: boolean): FailureReport {
  if (isCsError(error)) {
    if (json) return { exitCode: error.exitCode, json: { error: error.toJSON() }, lines: [] };
    return { exitCode: error.exitCode, lines: [`Error: ${error.message}`, ...error.suggestions.map((s) => `  hint: ${s}`)] };
  }
  const message = error instanceof Error ? error.message : String(error);
  if (json) return { exitCode: ExitCode.bug, json: { error: { name: 'InternalError', code: 'BUG', exitCode: ExitCode.bug, message } }, lines: [] };
  return {
    exitCode: ExitCode.bug,
    lines: [`Internal error: ${message}`, process.env['CS_DEBUG'] ? String((error as Error).stack) : '  (this is a bug in cs; run with CS_DEBUG=1 for the stack trace and please report it)'],
  };
}
