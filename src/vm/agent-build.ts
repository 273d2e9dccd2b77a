import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ProcessError, VmError } from '../util/errors.js';
import { dataDir, type Env } from '../util/paths.js';
import { packageRoot } from '../util/package-root.js';
import { run } from '../util/process.js';

/**
 * The guest agent (guest/agent/*.c) is compiled on the host, statically, the
 * first time a VM needs it: $CS_HOME/agent/<hash of the sources>/cs-agent.
 * A change to the sources or the flags gives a new folder; an existing build
 * is reused.
 */

export interface BuildAgentOptions {
  env?: Env;
}

const COMPILER = 'cc';
const FLAGS = ['-std=gnu11', '-static', '-O2', '-Wall', '-Wextra'] as const;
const BINARY = 'cs-agent';

export function agentSourceDir(): string {
  return join(packageRoot(), 'guest', 'agent');
}

interface Sources {
  files: string[];
  hash: string;
}

async function readSources(dir: string): Promise<Sources> {
  let names: string[];
  try {
    names = (await readdir(dir)).filter((n) => n.endsWith('.c') || n.endsWith('.h')).sort();
  } catch (error) {
    throw new VmError(`cannot read the guest agent's sources in ${dir}: ${(error as Error).message}`, { code: 'AGENT_BUILD', cause: error });
  }
  if (!names.some((n) => n.endsWith('.c'))) throw new VmError(`no guest agent sources (*.c) in ${dir}`, { code: 'AGENT_BUILD' });
  const hash = createHash('sha256');
  hash.update(`${COMPILER} ${FLAGS.join(' ')}\0`);
  for (const name of names) {
    const content = await readFile(join(dir, name));
    hash.update(`${name}\0${content.length}\0`).update(content);
  }
  return { files: names.filter((n) => n.endsWith('.c')).map((n) => join(dir, n)), hash: hash.digest('hex').slice(0, 16) };
}

function isMissingProgram(error: unknown): boolean {
  return error instanceof ProcessError && error.details.exitCode === undefined
    && (error.cause as { code?: unknown } | undefined)?.code === 'ENOENT';
}

/** Compiles the agent unless this version is built already; returns the binary's path. */
export async function buildAgent(options: BuildAgentOptions = {}): Promise<string> {
  const sources = await readSources(agentSourceDir());
  const base = join(dataDir(options.env), 'agent');
  const final = join(base, sources.hash);
  const binary = join(final, BINARY);
  if (existsSync(binary)) return binary;

  await mkdir(base, { recursive: true });
  const tmp = await mkdtemp(join(base, '.build-'));
  try {
    try {
      await run(COMPILER, [...FLAGS, '-o', join(tmp, BINARY), ...sources.files]);
    } catch (error) {
      if (isMissingProgram(error)) {
        throw new VmError('cannot build the guest agent: no C compiler (cc) found', {
          code: 'AGENT_BUILD',
          cause: error,
          suggestions: ['install gcc and libc6-dev (e.g. `apt-get install gcc libc6-dev`), or run `cs setup`'],
        });
      }
      const stderr = error instanceof ProcessError ? error.details.stderrTail : '';
      const noStaticLibc = /cannot find -lc\b|stdio\.h: No such file/.test(stderr);
      throw new VmError(`cannot build the guest agent: ${(error as Error).message}`, {
        code: 'AGENT_BUILD',
        cause: error,
        suggestions: noStaticLibc ? ['install libc6-dev (static C library and headers), or run `cs setup`'] : [],
      });
    }
    try {
      await rename(tmp, final);
    } catch (error) {
      // Another build of the same sources finished first: use it.
      if (!existsSync(binary)) throw error;
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return binary;
}
