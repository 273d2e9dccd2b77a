import { syncSummary, type SyncSummary } from '../../reconcile/status.js';
import { listSandboxes, type WorkspaceSummary } from '../../workspace/lifecycle.js';
import { readRecord } from '../../workspace/state.js';
import { CsCommand } from '../_base.js';
import { workspaceTable } from './_format.js';

export default class SandboxList extends CsCommand {
  static override summary = 'List sandboxes and the state of their workspaces.';
  static override description = 'SYNC says whether each workspace matches its definition as last applied by `cs apply` or `cs reconcile` (with the file version or git commit it is at), is being reconciled, or failed and why; `-` for workspaces no reconciler manages.';
  static override examples = ['<%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json'];

  async run(): Promise<{ workspaces: (WorkspaceSummary & { sync: SyncSummary })[] }> {
    await this.parse(SandboxList);
    const workspaces: (WorkspaceSummary & { sync: SyncSummary })[] = [];
    for (const w of await listSandboxes()) {
      const record = await readRecord(w.dir);
      workspaces.push({ ...w, sync: record ? await syncSummary(w.dir, record) : { state: 'unmanaged' } });
    }
    this.show(workspaceTable(workspaces));
    return { workspaces };
  }
}
