import { relative } from 'node:path';
import { formatIssue } from '../definition/index.js';
import type { ApplyResult } from '../reconcile/engine.js';
import type { Effect, FieldChange, Plan } from '../reconcile/plan.js';

/** Plans and apply results in words (cs diff, cs apply, cs reconcile) and as plain JSON. */

const EFFECT: Record<Effect, string> = {
  'in-place': 'applied in place, no restart',
  restart: 'restart: stop and start, disk kept',
  'refresh-root': 'refresh root: the new base replaces the root, /home is kept (a restore point is taken first)',
  'rebuild-root': 'rebuild root: the new snapshot goes under the disk\'s files (restart)',
  held: 'held',
  recorded: 'recorded',
};

function shown(path: string): string {
  const rel = relative(process.cwd(), path);
  return rel !== '' && !rel.startsWith('..') ? rel : path;
}

function clip(text: string | undefined): string {
  if (text === undefined) return '(none)';
  const one = text.replace(/\s+/g, ' ').trim();
  return one.length > 60 ? `${one.slice(0, 57)}...` : one === '' ? '""' : one;
}

function changeLine(c: FieldChange): string {
  const what = c.from === undefined ? `added ${clip(c.to)}` : c.to === undefined ? `removed (was ${clip(c.from)})` : `${clip(c.from)} -> ${clip(c.to)}`;
  const effect = c.note ? `${EFFECT[c.effect]}: ${c.note}` : EFFECT[c.effect];
  return `      ${c.field}: ${what}\n        => ${effect}`;
}

export function formatPlan(plan: Plan): string {
  const lines: string[] = [];
  const source = `${shown(plan.path)}${plan.commit ? ` at commit ${plan.commit.slice(0, 12)}` : ''}`;
  for (const s of plan.sandboxes) {
    const file = s.file ? ` (${shown(s.file)})` : '';
    if (s.action === 'create') {
      lines.push(`+ sandbox ${s.sandbox}${file}: will be created with ${s.workspaces.map((w) => w.workspace).join(', ')}`);
      continue;
    }
    if (s.action === 'blocked' && s.workspaces.length === 0) {
      lines.push(`! sandbox ${s.sandbox}${file}: ${s.reason ?? 'blocked'}`);
      continue;
    }
    if (s.action === 'remove' || (s.action === 'keep' && s.reason)) {
      lines.push(`${s.action === 'remove' ? '-' : '='} sandbox ${s.sandbox}${file}: ${s.action === 'remove' ? 'will be removed' : 'kept'} (${s.reason})`);
      continue;
    }
    if (s.action === 'blocked') {
      lines.push(`! sandbox ${s.sandbox}${file}: nothing is changed; ${s.reason ?? ''}`);
      continue;
    }
    lines.push(`${s.action === 'none' ? '=' : '~'} sandbox ${s.sandbox}${file}${s.action === 'none' ? ': matches its definition' : ''}`);
    for (const w of s.workspaces) {
      const status = w.status ? ` (${w.status})` : '';
      if (w.action === 'create') lines.push(`  + ${w.workspace}: will be created`);
      else if (w.action === 'remove') lines.push(`  - ${w.workspace}${status}: will be removed (${w.reason})`);
      else if (w.action === 'keep') lines.push(`  = ${w.workspace}${status}: ${w.reason}`);
      else if (w.action === 'none' && w.changes.length === 0) lines.push(`  = ${w.workspace}${status}: matches its definition`);
      else {
        lines.push(`  ${w.action === 'none' ? '=' : '~'} ${w.workspace}${status}${w.action === 'none' ? ': matches its definition, with held changes' : ''}`);
        for (const c of w.changes) lines.push(changeLine(c));
        for (const p of w.pending) lines.push(`      pending: ${p}`);
        if (w.changes.length === 0 && w.pending.length === 0) lines.push('      the record is brought to the definition\'s version');
      }
    }
  }
  if (plan.sandboxes.length === 0) lines.push(`No sandboxes are defined in ${source}.`);
  if (plan.issues.length > 0) {
    lines.push('', 'Definition problems (their sandboxes are left as they are):');
    for (const issue of plan.issues) lines.push(`  ${formatIssue(issue)}`);
  }
  const nothing = plan.issues.length > 0 ? 'Nothing else to do until the problems above are fixed.' : `Nothing to do: the workspaces match ${source}.`;
  lines.push('', plan.empty ? nothing : `Plan for ${source}; apply it with \`cs apply -f ${shown(plan.path)}\`.`);
  return lines.join('\n');
}

/** The plan without the engine's handles (models, folders), for --json. */
export function planJson(plan: Plan): Record<string, unknown> {
  return {
    path: plan.path,
    ...(plan.commit ? { commit: plan.commit } : {}),
    empty: plan.empty,
    sandboxes: plan.sandboxes.map((s) => ({
      sandbox: s.sandbox,
      file: s.file,
      action: s.action,
      ...(s.reason ? { reason: s.reason } : {}),
      workspaces: s.workspaces.map((w) => ({
        workspace: w.workspace,
        action: w.action,
        ...(w.status ? { status: w.status } : {}),
        changes: w.changes,
        pending: w.pending,
        ...(w.reason ? { reason: w.reason } : {}),
      })),
    })),
    issues: plan.issues,
  };
}

export function resultJson(result: ApplyResult): Record<string, unknown> {
  return { plan: planJson(result.plan), done: result.done, failed: result.failed, rounds: result.rounds, converged: result.converged };
}

export function formatResult(result: ApplyResult): string {
  const lines: string[] = [];
  if (result.done.length === 0 && result.failed.length === 0) lines.push(result.plan.issues.length > 0 ? 'Nothing applied.' : 'Nothing to do: the workspaces match their definitions.');
  else lines.push(`Applied ${result.done.length} step${result.done.length === 1 ? '' : 's'} in ${result.rounds} round${result.rounds === 1 ? '' : 's'}.`);
  for (const f of result.failed) lines.push(`✗ ${f.target}: ${f.reason}`);
  if (result.plan.issues.length > 0) {
    lines.push('Definition problems (their sandboxes were left as they are):');
    for (const issue of result.plan.issues) lines.push(`  ${formatIssue(issue)}`);
  }
  return lines.join('\n');
}
