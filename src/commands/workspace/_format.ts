import { formatSize } from '../../util/progress.js';
import type { WorkspaceInfo } from '../../workspace/standalone.js';
import { table } from '../_table.js';

/** People-facing lines for `cs workspace` results. */

export function infoTable(rows: readonly WorkspaceInfo[]): string {
  if (rows.length === 0) return 'No workspaces. Make one with `cs workspace create --name NAME --image REF` (or `cs sandbox create -f FILE`).';
  const lines = rows.map((w) => [w.id, w.status, w.base ?? '', String(w.restorePoints), w.template ? 'yes' : '', w.label ?? '']);
  return table(['NAME', 'STATUS', 'BASE', 'RESTORE POINTS', 'TEMPLATE', 'LABEL'], lines);
}

export function infoDetails(w: WorkspaceInfo & { bytes?: number }): string {
  const lines = [
    `${w.id}: ${w.status}${w.template ? ' (template)' : ''}${w.label ? ` — ${w.label}` : ''}`,
    `  resources: ${w.cpus} cpu, ${w.memoryMiB} MiB memory, ${formatSize(w.diskBytes)} disk${w.bytes !== undefined ? ` (${formatSize(w.bytes)} used on the host)` : ''}`,
    `  created:   ${w.createdAt}${w.file ? ` from ${w.file}` : ''}`,
  ];
  if (w.base) lines.push(`  base:      ${w.base}`);
  if (w.origin?.clonedFrom) lines.push(`  cloned:    from ${w.origin.clonedFrom}`);
  if (w.origin?.git) lines.push(`  git:       ${w.origin.git.url}${w.origin.git.ref ? ` ${w.origin.git.ref}` : ''} at ${w.origin.git.commit.slice(0, 12)} in ${w.origin.git.path}`);
  lines.push(`  restore points: ${w.restorePoints}`);
  for (const p of w.ports) lines.push(`  port:      ${p.name} 127.0.0.1:${p.hostPort} -> ${p.guestPort}/${p.protocol}`);
  if (w.error) lines.push(`  error:     ${w.error.split('\n').join('\n             ')}`);
  return lines.join('\n');
}
