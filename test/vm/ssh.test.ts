/**
 * `cs ssh` and `cs exec -t`: a shell on a real terminal. The terminal is a
 * pseudo-terminal made by util-linux `script`, the way a terminal emulator
 * gives one to a user's shell; input is typed into it and what the user
 * would see is read back. The workspace boots from the tiny busybox image.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, ensureBuilt, ROOT, runCs, userEnv } from '../helpers/cli.js';
import { importTinyImage, vmHome, writeDefinition } from '../helpers/vm.js';

function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/**
 * Runs `cs ARGS` on a fresh terminal of ROWS x COLS, types `input` into it,
 * and returns everything the terminal showed; `script -e` exits with cs's
 * code. The input side stays open, as a user's keyboard does: at the end of
 * its input `script` would type an end-of-file that reaches the guest as a
 * stray byte once cs has switched the terminal to raw mode.
 */
async function onTerminal(args: string[], options: { env: Record<string, string>; input: string; rows?: number; cols?: number }) {
  const cs = [process.execPath, BIN, ...args].map(shellQuote).join(' ');
  const size = `stty rows ${options.rows ?? 30} cols ${options.cols ?? 100}`;
  const child = execa('script', ['-qfec', `${size}; exec ${cs}`, '/dev/null'], {
    cwd: ROOT,
    env: { ...userEnv(options.env), TERM: 'xterm-256color' },
    extendEnv: false,
    stdin: 'pipe',
    reject: false,
    timeout: 90_000,
  });
  child.stdin.write(options.input);
  const result = await child;
  // The terminal ends lines with CR LF.
  return { exitCode: result.exitCode, output: String(result.stdout).replace(/\r/g, '') };
}

describe('a shell in a workspace', () => {
  let home: Awaited<ReturnType<typeof vmHome>> | undefined;
  let work: string | undefined;
  let env: Record<string, string>;

  beforeAll(async () => {
    await ensureBuilt('ssh');
    home = await vmHome();
    env = home.env;
    work = await mkdtemp(join(tmpdir(), 'cs-ssh-'));
    await importTinyImage(env);
    const file = await writeDefinition(
      work,
      'sshbox',
      ['workspaces:', '  - name: dev', '    base_snapshot: oci://localhost/test/tiny:1', '    resources: { memory: 256Mi, disk: 1Gi }', '    env:', '      - EDITOR=vi', ''].join('\n'),
    );
    const created = await runCs(['sandbox', 'create', '-f', file, '--wait'], { env, timeoutMs: 240_000 });
    expect(created.exitCode, created.stderr).toBe(0);
  }, 300_000);

  afterAll(async () => {
    if (home) {
      await runCs(['sandbox', 'remove', 'sshbox'], { env: home.env, timeoutMs: 60_000 });
      await home.cleanup();
    }
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('opens a login shell on a terminal, runs what is typed and exits with the shell\'s code', async () => {
    const { exitCode, output } = await onTerminal(['ssh', '-W', 'sshbox/dev'], { env, input: 'echo $((6*7)); tty; exit 3\n' });
    expect(output).toMatch(/^42$/m);
    expect(output).toMatch(/^\/dev\/pts\/\d+$/m);
    expect(exitCode).toBe(3);
  }, 120_000);

  it('logs in as the owner, in their home, with the workspace env, the terminal type and size', async () => {
    const { exitCode, output } = await onTerminal(['ssh', '-W', 'sshbox/dev'], {
      env,
      input: 'echo "id=$(id -un) pwd=$(pwd) editor=$EDITOR term=$TERM size=$(stty size)"; exit\n',
      rows: 33,
      cols: 111,
    });
    expect(output).toContain('id=owner pwd=/home/owner editor=vi term=xterm-256color size=33 111');
    expect(exitCode).toBe(0);
  }, 120_000);

  it('logs in as root with --user root', async () => {
    const { exitCode, output } = await onTerminal(['ssh', '-W', 'sshbox/dev', '--user', 'root'], { env, input: 'echo "uid=$(id -u) home=$HOME"; exit 0\n' });
    expect(output).toContain('uid=0 home=/root');
    expect(exitCode).toBe(0);
  }, 120_000);

  it('refuses to run without a terminal and says to use cs exec', async () => {
    const result = await runCs(['ssh', '-W', 'sshbox/dev'], { env, input: 'echo should-not-run\n' });
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toContain('needs a terminal');
    expect(result.stderr).toContain('cs exec');
    expect(result.stdout).not.toContain('should-not-run');
  });

  it('gives a command a terminal with exec -t, and passes its exit code through', async () => {
    const withTty = await onTerminal(['exec', '-t', '-W', 'sshbox/dev', '--', 'sh', '-c', 'tty; stty size; exit 4'], { env, input: '', rows: 25, cols: 80 });
    expect(withTty.output).toMatch(/^\/dev\/pts\/\d+$/m);
    expect(withTty.output).toMatch(/^25 80$/m);
    expect(withTty.exitCode).toBe(4);
  }, 120_000);

  it('runs a command without a terminal from a pipe, even with -t', async () => {
    const plain = await runCs(['exec', '-W', 'sshbox/dev', '--', 'tty'], { env });
    expect(plain.stdout).toBe('not a tty');
    expect(plain.exitCode).toBe(1);
    const forced = await runCs(['exec', '-t', '-W', 'sshbox/dev', '--', 'sh', '-c', 'tty; echo done'], { env });
    expect(forced.stdout).toBe('not a tty\ndone');
    expect(forced.exitCode).toBe(0);
  });

  it('with stdin on a terminal, exec -i passes typed input to the command', async () => {
    const { exitCode, output } = await onTerminal(['exec', '-i', '-W', 'sshbox/dev', '--', 'sh', '-c', 'read line; echo "got:$line"'], { env, input: 'typed words\n' });
    expect(output).toMatch(/^got:typed words$/m);
    expect(exitCode).toBe(0);
  }, 120_000);
});
