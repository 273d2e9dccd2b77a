import { formatSize } from '../util/progress.js';
import { usageReport, type UsageReport } from '../workspace/usage.js';
import { CsCommand } from './_base.js';
import { table } from './_table.js';

export default class Usage extends CsCommand {
  static override summary = 'Show what your workspaces hold on this machine, against your cap.';
  static override description =
    'Counts the bytes really stored (disks are sparse): each workspace\'s disk, its restore points and logs. A file a clone shares with its source counts once in the total. ' +
    'The cap is `workspaces.quota` in the config (default 25Gi); creating workspaces, clones, imports and restore points is refused when it would be exceeded.';
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json'];

  async run(): Promise<UsageReport> {
    await this.parse(Usage);
    const report = await usageReport();
    const rows = report.workspaces.map((w) => [w.workspace, formatSize(w.bytes), `${w.restorePoints} (${formatSize(w.restorePointBytes)})`, formatSize(w.sharedBytes), formatSize(w.diskBytes)]);
    if (rows.length > 0) this.show(table(['WORKSPACE', 'USED', 'RESTORE POINTS', 'SHARED', 'DISK SIZE'], rows));
    const pct = report.quotaBytes > 0 ? Math.round((report.totalBytes / report.quotaBytes) * 100) : 0;
    this.show(`total: ${formatSize(report.totalBytes)} of ${formatSize(report.quotaBytes)} (${pct}%)`);
    return report;
  }
}
