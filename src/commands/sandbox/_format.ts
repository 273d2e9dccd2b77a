import type { WorkspaceSummary } from '../../workspace/lifecycle.js';
import { formatSize } from '../../util/progress.js';

/** People-facing lines for workspaces (tables for list, details for show). */

export function workspaceTable(rows: readonly WorkspaceSummary[]): string {
  if (rows.length === 0) return 'No sandboxes. Create one with `cs sandbox create NAME -f FILE`.';
  const header = ['SANDBOX', 'WORKSPACE', 'STATUS', 'STEP', 'PORTS'];
  const lines = rows.map((w) => [
    w.sandbox,
    w.workspace,
    w.status,
    w.status === 'starting' ? (w.step ?? w.phase ?? '') : '',
    w.ports.map((p) => `127.0.0.1:${p.hostPort}->${p.guestPort}`).join(' '),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => (l[i] ?? '').length)));
  return [header, ...lines].map((l) => l.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n');
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
