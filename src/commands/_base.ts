import { Args, Command, Errors, Flags, type Interfaces } from '@oclif/core';
import { ExitCode, isCsError } from '../util/errors.js';
import { failureReport } from './_report.js';
import type { CommandIo, CommandSpec, FlagValues } from './_spec.js';

/**
 * The base of every cs command. `run()` returns the command's result; with
 * `--json` oclif prints it on stdout as one object. Failures are printed
 * here: a CsError as its message and suggestions (never a stack trace), a
 * usage mistake with exit 2, anything else as an internal error (exit 1),
 * with the stack only when CS_DEBUG is set.
 */
export abstract class CsCommand extends Command {
  static override enableJsonFlag = true;

  /** Print a line for people (stderr), unless output is JSON. */
  protected say(message: string): void {
    if (!this.jsonEnabled()) this.logToStderr(message);
  }

  /** Print the command's human-readable result (stdout), unless output is JSON. */
  protected show(text: string): void {
    if (!this.jsonEnabled()) this.log(text);
  }

  /** End with `code` after the result is printed (e.g. validate finding problems). */
  protected finish<T>(result: T, code: ExitCode): T {
    if (code === ExitCode.ok) return result;
    if (this.jsonEnabled()) this.logJson(result);
    this.exit(code);
  }

  protected override async catch(error: Interfaces.CommandError): Promise<unknown> {
    if (error instanceof Errors.ExitError) throw error;
    const json = this.jsonEnabled();
    if (error instanceof Errors.CLIError && !isCsError(error)) {
      // oclif's own parse errors: unknown flags, missing arguments.
      const code = error.oclif.exit === undefined || error.oclif.exit === 1 ? ExitCode.usage : error.oclif.exit;
      if (json) this.logJson({ error: { name: 'UsageError', code: 'USAGE', exitCode: code, message: error.message } });
      else this.logToStderr(`Error: ${error.message}\n  hint: see \`cs ${this.id?.replaceAll(':', ' ') ?? ''} --help\``);
      this.exit(code);
    }
    const report = failureReport(error, json);
    if (report.json !== undefined) this.logJson(report.json);
    for (const line of report.lines) this.logToStderr(line);
    this.exit(report.exitCode);
  }

  /** The command line of a command described as data, typed by its description (see _spec.ts). */
  protected async parseSpec<S extends CommandSpec>(_spec: S): Promise<{ flags: FlagValues<S>; args: Record<string, string | undefined>; argv: string[] }> {
    const { flags, args, argv } = await this.parse();
    return { flags: flags as unknown as FlagValues<S>, args: args as Record<string, string | undefined>, argv: argv as string[] };
  }

  /** What a command described by a CommandSpec is given (see _spec.ts). */
  protected io(): CommandIo {
    return { json: this.jsonEnabled(), say: (line) => this.say(line) };
  }
}

/** oclif's flags for a command described as data. */
export function oclifFlags(spec: CommandSpec): Interfaces.FlagInput {
  const flags: Interfaces.FlagInput = {};
  for (const [name, f] of Object.entries(spec.flags)) {
    const common = {
      description: f.description,
      ...(f.char ? { char: f.char as Interfaces.AlphabetLowercase } : {}),
      ...(f.required ? { required: true } : {}),
    };
    // What the lean parser (_spec.ts) handles, and no more: a description it would read differently fails here, at once.
    if ((f.options || f.default !== undefined) && (f.type !== 'string' || f.multiple)) throw new Error(`flag --${name}: options and defaults are for single string flags`);
    if (f.type === 'boolean') flags[name] = Flags.boolean(common);
    else if (f.type === 'integer') flags[name] = Flags.integer(common);
    else if (f.multiple) flags[name] = Flags.string({ ...common, multiple: true });
    else flags[name] = Flags.string({ ...common, ...(f.options ? { options: [...f.options] } : {}), ...(f.default !== undefined ? { default: f.default } : {}) });
  }
  return flags;
}

/** oclif's arguments for a command described as data. */
export function oclifArgs(spec: CommandSpec): Interfaces.ArgInput {
  const args: Interfaces.ArgInput = {};
  for (const [name, a] of Object.entries(spec.args ?? {})) args[name] = Args.string({ description: a.description, ...(a.required ? { required: true } : {}) });
  return args;
}
