import { Command, Errors, type Interfaces } from '@oclif/core';
import { ExitCode, isCsError } from '../util/errors.js';

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
    if (isCsError(error)) {
      if (json) this.logJson({ error: error.toJSON() });
      else {
        this.logToStderr(`Error: ${error.message}`);
        for (const suggestion of error.suggestions) this.logToStderr(`  hint: ${suggestion}`);
      }
      this.exit(error.exitCode);
    }
    if (error instanceof Errors.CLIError) {
      // oclif's own parse errors: unknown flags, missing arguments.
      const code = error.oclif.exit === undefined || error.oclif.exit === 1 ? ExitCode.usage : error.oclif.exit;
      if (json) this.logJson({ error: { name: 'UsageError', code: 'USAGE', exitCode: code, message: error.message } });
      else this.logToStderr(`Error: ${error.message}\n  hint: see \`cs ${this.id?.replaceAll(':', ' ') ?? ''} --help\``);
      this.exit(code);
    }
    const message = error instanceof Error ? error.message : String(error);
    if (json) this.logJson({ error: { name: 'InternalError', code: 'BUG', exitCode: ExitCode.bug, message } });
    else {
      this.logToStderr(`Internal error: ${message}`);
      this.logToStderr(process.env['CS_DEBUG'] ? String((error as Error).stack) : '  (this is a bug in cs; run with CS_DEBUG=1 for the stack trace and please report it)');
    }
    this.exit(ExitCode.bug);
  }
}
