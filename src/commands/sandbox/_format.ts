import { syncCell, type SyncSummary } from '../../reconcile/status.js';
import type { WorkspaceSummary } from '../../workspace/lifecycle.js';
import { formatSize } from '../../util/progress.js';
import { table } from '../_table.js';

/** People-facing lines for workspaces (tables for list, details for show). */

export function workspaceTable(rows: readonly (WorkspaceSummary & { sync?: SyncSummary })[]): string {
  if (rows.length === 0) return 'No sandboxes. Create one with `cs sandbox create NAME -f FILE` or `cs apply -f PATH`.';
  const lines = rows.map((w) => [
    w.sandbox,
    w.workspace,
    w.status,
    w.status === 'starting' ? (w.step ?? w.phase ?? '') : '',
    w.ports.map((p) => `127.0.0.1:${p.hostPort}->${p.guestPort}`).join(' '),
    ...(rows.some((r) => r.sync) ? [w.sync ? syncCell(w.sync) : '-'] : []),
  ]);
  return table(['SANDBOX', 'WORKSPACE', 'STATUS', 'STEP', 'PORTS', ...(rows.some((r) => r.sync) ? ['SYNC'] : [])], lines);
}

export function workspaceDetails(w: WorkspaceSummary): string {
  const lines = [
    `${w.sandbox}/${w.workspace}: ${w.status}${w.status === 'starting' && w.step ? ` (${w.step})` : ''}`,
    `  resources: ${w.cpus} cpu, ${w.memoryMiB} MiB memory, ${formatSize(w.diskBytes)} disk; accelerator ${w.accel}`,
    `  created:   ${w.createdAt} ${w.file ? `from ${w.file}` : 'by cs workspace create'}`,
  ];
  if (w.pid) lines.push(`  qemu pid:  ${w.pid}`);
  for (const p of w.ports) lines.push(`  port:      ${p.name} 127.0.0.1:${p.hostPort} -> ${p.guestPort}/${p.protocol}`);
  if (w.timings?.['agentReady'] !== undefined) lines.push(`  boot:      agent ready after ${(w.timings['agentReady'] / 1000).toFixed(2)} s${w.timings['ready'] !== undefined ? `, ready after ${(w.timings['ready'] / 1000).toFixed(2)} s` : ''}`);
  if (w.error) lines.push(`  error:     ${w.error.split('\n').join('\n             ')}`);
  return lines.join('\n');
}
