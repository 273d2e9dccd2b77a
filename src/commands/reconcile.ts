import { Flags } from '@oclif/core';
import type { ApplyResult } from '../reconcile/engine.js';
import { followRepository, watchDefinitions } from '../reconcile/watch.js';
import { UsageError } from '../util/errors.js';
import { parseDuration } from '../util/units.js';
import { CsCommand } from './_base.js';

function duration(flag: string, value: string): number {
  const ms = /^[0-9]+$/.test(value) ? Number(value) * 1000 : parseDuration(value);
  if (ms === undefined || ms <= 0) throw new UsageError(`--${flag} takes a duration like 30s, 5m or 500ms, not "${value}"`);
  return ms;
}

export default class Reconcile extends CsCommand {
  static override summary = 'Keep workspaces matching their definitions: follow a folder (--watch) or a git repository (--git).';
  static override description = `Runs until stopped (Ctrl-C), applying like \`cs apply\`: at start, on every change of a definition file (--watch; debounced, editors' atomic saves included) or every new commit of the branch (--git), and on a periodic full resync. One reconciler runs per data directory. \`cs sandbox list\` shows for each workspace whether it matches its definition, is being reconciled or failed, and the file version or commit it is at.

With --json, one JSON object per apply is printed on its own line.`;
  static override examples = [
    { description: 'Follow a folder of definitions', command: '<%= config.bin %> <%= command.id %> --watch team/' },
    { description: 'Follow a repository\'s main branch, fetching every 30 s', command: '<%= config.bin %> <%= command.id %> --git https://git.example.com/team/workspaces.git --branch main --path sandboxes' },
    { description: 'One fetch and apply, for a cron job', command: '<%= config.bin %> <%= command.id %> --git https://git.example.com/team/workspaces.git --once --json' },
  ];
  static override flags = {
    watch: Flags.string({ description: 'A definition file or folder to follow', exactlyOne: ['watch', 'git'] }),
    git: Flags.string({ description: 'A git repository URL (or path) to follow', exactlyOne: ['watch', 'git'] }),
    branch: Flags.string({ description: 'The branch to follow (default: the remote\'s HEAD)', dependsOn: ['git'] }),
    path: Flags.string({ description: 'The folder of the repository holding the definitions', dependsOn: ['git'] }),
    interval: Flags.string({ description: 'How often to fetch the repository', default: '30s' }),
    resync: Flags.string({ description: 'A full resync this often, even without changes', default: '60s' }),
    prune: Flags.boolean({ description: 'Remove workspaces and sandboxes that are no longer defined' }),
    'refresh-home': Flags.boolean({ description: 'Apply new home and personal snapshots to existing workspaces too' }),
    once: Flags.boolean({ description: 'Apply once and exit' }),
  };

  async run(): Promise<{ applies: number; failed: number }> {
    const { flags } = await this.parse(Reconcile);
    const interval = duration('interval', flags.interval);
    const resync = duration('resync', flags.resync);
    const controller = new AbortController();
    const stop = (): void => controller.abort();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    let applies = 0;
    let failed = 0;
    const stamp = (): string => new Date().toISOString().slice(11, 19);
    const common = {
      prune: flags.prune,
      refreshHome: flags['refresh-home'],
      resyncMs: resync,
      once: flags.once,
      signal: controller.signal,
      onEvent: (e: { target: string; step: string; phase: string; message?: string }) => {
        if (e.phase === 'start') this.say(`${stamp()} … ${e.target}: ${e.step}`);
        else if (e.phase === 'done') this.say(`${stamp()} ✓ ${e.target}: ${e.step}${e.message ? ` (${e.message})` : ''}`);
        else if (e.phase !== 'progress') this.say(`${stamp()} ${e.phase === 'failed' ? '✗' : '!'} ${e.target}: ${e.message ?? ''}`);
      },
      onApply: (result: ApplyResult, trigger: string) => {
        applies++;
        failed = result.failed.length;
        if (this.jsonEnabled()) {
          process.stdout.write(JSON.stringify({ at: new Date().toISOString(), trigger, ...(result.plan.commit ? { commit: result.plan.commit } : {}), done: result.done, failed: result.failed, issues: result.plan.issues, converged: result.converged }) + '\n');
          return;
        }
        const issues = result.plan.issues.map((i) => `${i.file}:${i.line}:${i.column} ${i.message}`);
        const what = result.done.length === 0 && result.failed.length === 0 ? 'in sync' : `${result.done.length} step(s) applied${result.failed.length ? `, ${result.failed.length} failed` : ''}`;
        this.say(`${stamp()} ${trigger}: ${what}${result.plan.commit ? ` at ${result.plan.commit.slice(0, 12)}` : ''}`);
        for (const issue of issues) this.say(`${stamp()} ✗ invalid definition (nothing changed for it): ${issue}`);
      },
      onError: (error: Error) => this.say(`${stamp()} ✗ ${error.message}`),
    };
    if (flags.watch) {
      if (!flags.once) this.say(`Watching ${flags.watch} (Ctrl-C to stop).`);
      await watchDefinitions({ ...common, path: flags.watch });
    } else {
      if (!flags.once) this.say(`Following ${flags.git}${flags.branch ? ` (${flags.branch})` : ''}, fetching every ${flags.interval} (Ctrl-C to stop).`);
      await followRepository({ ...common, url: flags.git as string, ...(flags.branch ? { branch: flags.branch } : {}), ...(flags.path ? { subdir: flags.path } : {}), intervalMs: interval });
    }
    return { applies, failed };
  }
}
