/**
 * The one error model of cs. Every failure a user can cause or meet is a
 * CsError with a stable `code`, a fixed process exit code and optional
 * suggestions; the CLI prints these without a stack trace. Anything else that
 * escapes is a bug (exit 1).
 */

/** Fixed exit codes, documented in the README. */
export const ExitCode = {
  ok: 0,
  bug: 1,
  usage: 2,
  invalidInput: 3,
  registry: 4,
  external: 5,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export interface CsErrorOptions {
  code?: string;
  exitCode?: ExitCode;
  suggestions?: readonly string[];
  cause?: unknown;
}

export class CsError extends Error {
  readonly code: string;
  readonly exitCode: ExitCode;
  readonly suggestions: readonly string[];

  constructor(message: string, options: CsErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = options.code ?? 'CS_ERROR';
    this.exitCode = options.exitCode ?? ExitCode.bug;
    this.suggestions = options.suggestions ?? [];
  }

  /** The shape printed by `--json` when a command fails. */
  toJSON(): Record<string, unknown> {
    return {
      name: this.name,
      code: this.code,
      exitCode: this.exitCode,
      message: this.message,
      suggestions: this.suggestions,
    };
  }
}

/** Wrong flags, arguments or combinations of them. */
export class UsageError extends CsError {
  constructor(message: string, options: Omit<CsErrorOptions, 'exitCode'> = {}) {
    super(message, { code: 'USAGE', ...options, exitCode: ExitCode.usage });
  }
}

/** Any input of the user's that cs refuses: definitions, names, files. */
export class InputError extends CsError {
  constructor(message: string, options: Omit<CsErrorOptions, 'exitCode'> = {}) {
    super(message, { code: 'INVALID_INPUT', ...options, exitCode: ExitCode.invalidInput });
  }
}

export class RegistryError extends CsError {
  constructor(message: string, options: Omit<CsErrorOptions, 'exitCode'> = {}) {
    super(message, { code: 'REGISTRY', ...options, exitCode: ExitCode.registry });
  }
}

export class LayerError extends CsError {
  constructor(message: string, options: Omit<CsErrorOptions, 'exitCode'> = {}) {
    super(message, { code: 'LAYER', ...options, exitCode: ExitCode.invalidInput });
  }
}

export class VmError extends CsError {
  constructor(message: string, options: Omit<CsErrorOptions, 'exitCode'> = {}) {
    super(message, { code: 'VM', ...options, exitCode: ExitCode.external });
  }
}

export interface ProcessErrorDetails {
  command: readonly string[];
  exitCode: number | undefined;
  signal: string | undefined;
  stderrTail: string;
  timedOut: boolean;
}

/** An external program failed; carries what a user needs to debug it. */
export class ProcessError extends CsError {
  readonly details: ProcessErrorDetails;

  constructor(message: string, details: ProcessErrorDetails, options: Omit<CsErrorOptions, 'exitCode'> = {}) {
    super(message, { code: 'PROCESS', ...options, exitCode: ExitCode.external });
    this.details = details;
  }

  override toJSON(): Record<string, unknown> {
    return { ...super.toJSON(), details: this.details };
  }
}

export function isCsError(value: unknown): value is CsError {
  return value instanceof CsError;
}
