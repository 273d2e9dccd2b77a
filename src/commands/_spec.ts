/**
 * Commands described as data, without oclif: their flags and arguments, and
 * a parser for the plain, common forms of a command line.
 *
 * Why: loading oclif costs about 0.1 s of every start, more than some
 * commands take to do their work (a warm `rootfs assemble`, a pull of a few
 * layers). The commands people run over and over (`cs exec`, `cs image
 * pull`, `cs rootfs assemble`) are described here once; oclif's command class
 * is made from the same description (see `_base.ts`), and `_lean.ts` runs
 * them without oclif when this parser is sure what the command line means.
 *
 * The parser is deliberately narrow. Anything it is not sure of (help, an
 * unknown or repeated flag, a value that looks like a flag, a missing
 * required flag, a bad option, bundled short flags...) makes it give up,
 * and oclif parses the line as always, with its own messages. Where it does
 * answer, it answers what oclif would (a test holds both to that).
 */

export interface FlagSpec {
  type: 'string' | 'boolean' | 'integer';
  description: string;
  char?: string;
  required?: boolean;
  multiple?: boolean;
  options?: readonly string[];
  default?: string;
}

export interface ArgSpec {
  description: string;
  required?: boolean;
}

export interface CommandSpec {
  summary: string;
  description: string;
  examples: readonly string[];
  flags: Readonly<Record<string, FlagSpec>>;
  args?: Readonly<Record<string, ArgSpec>>;
  /** Extra words are the command's `argv` (after `--`) instead of an error. */
  strict?: boolean;
}

/** The value type of one flag as a command sees it. */
type FlagValue<F extends FlagSpec> = F['type'] extends 'boolean'
  ? boolean | undefined
  : F['multiple'] extends true
    ? string[] | undefined
    : F['type'] extends 'integer'
      ? number | undefined
      : F['required'] extends true
        ? string
        : F['default'] extends string
          ? string
          : string | undefined;

export type FlagValues<S extends CommandSpec> = { [K in keyof S['flags']]: FlagValue<S['flags'][K]> };

export interface Parsed {
  flags: Record<string, string | number | boolean | string[] | undefined>;
  args: Record<string, string | undefined>;
  /** Words after `--` (commands that are not strict). */
  argv: string[];
  json: boolean;
}

/** What a command's code is given to talk to its user, with or without oclif. */
export interface CommandIo {
  /** `--json` was given: people's lines are not printed, the result is. */
  json: boolean;
  /** A line for people on stderr, unless output is JSON. */
  say(line: string): void;
}

/**
 * The command line after the command's words, or undefined when oclif
 * should parse it.
 */
export function parseCommandLine(spec: CommandSpec, words: readonly string[]): Parsed | undefined {
  const flags: Parsed['flags'] = {};
  const positional: string[] = [];
  let argv: string[] = [];
  let json = false;
  for (let i = 0; i < words.length; i++) {
    const word = words[i] as string;
    if (word === '--') {
      // A strict command reads the words after `--` as its arguments; oclif knows how.
      if (spec.strict !== false) return undefined;
      argv = words.slice(i + 1);
      break;
    }
    if (word === '--json') {
      if (json) return undefined;
      json = true;
      continue;
    }
    let name: string | undefined;
    let inline: string | undefined;
    if (word.startsWith('--')) {
      const eq = word.indexOf('=');
      name = eq === -1 ? word.slice(2) : word.slice(2, eq);
      if (eq !== -1) inline = word.slice(eq + 1);
      if (!Object.hasOwn(spec.flags, name)) return undefined;
    } else if (word.startsWith('-') && word.length > 1) {
      name = Object.keys(spec.flags).find((key) => spec.flags[key]?.char === word[1]);
      if (name === undefined) return undefined;
      if (word.length > 2) inline = word.slice(2);
      // `-W=x` and bundled booleans (`-it`): oclif's to read.
      if (inline?.startsWith('=')) return undefined;
    } else {
      positional.push(word);
      continue;
    }
    const flag = spec.flags[name] as FlagSpec;
    let value: string | number | boolean;
    if (flag.type === 'boolean') {
      if (inline !== undefined) return undefined;
      value = true;
    } else {
      const text = inline ?? words[++i];
      // oclif refuses a value that could be a flag (`--out=-o`, `-W-i`, `--out -o`); so does this parser.
      if (text === undefined || text === '' || text.startsWith('-')) return undefined;
      if (flag.options && !flag.options.includes(text)) return undefined;
      if (flag.type === 'integer') {
        if (!/^-?\d{1,15}$/.test(text)) return undefined;
        value = Number(text);
      } else value = text;
    }
    const had = flags[name];
    if (flag.multiple) flags[name] = [...((had as string[] | undefined) ?? []), value as string];
    else if (had !== undefined) return undefined;
    else flags[name] = value;
  }
  for (const [name, flag] of Object.entries(spec.flags)) {
    if (flags[name] !== undefined) continue;
    if (flag.required) return undefined;
    if (flag.default !== undefined) flags[name] = flag.default;
  }
  const names = Object.keys(spec.args ?? {});
  // Words a command does not take: an error (strict) or its argv after `--` (not strict); oclif says which.
  if (positional.length > names.length) return undefined;
  const args: Parsed['args'] = {};
  for (const [index, name] of names.entries()) {
    const word = positional[index];
    if (word === undefined && spec.args?.[name]?.required) return undefined;
    args[name] = word;
  }
  return { flags, args, argv, json };
}
