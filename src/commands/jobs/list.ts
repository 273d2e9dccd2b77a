import { Flags } from '@oclif/core';
import { apiClient } from '../../service/client.js';
import type { Job } from '../../service/jobs.js';
import { CsCommand } from '../_base.js';
import { table } from '../_table.js';

export default class JobsList extends CsCommand {
  static override summary = 'List your jobs on `cs serve`.';
  static override examples = ['CS_API_KEY=csk_... <%= config.bin %> <%= command.id %>', '<%= config.bin %> <%= command.id %> --json'];
  static override flags = { url: Flags.string({ description: 'The service (default CS_URL or http://127.0.0.1:8080)' }) };

  async run(): Promise<{ jobs: Job[] }> {
    const { flags } = await this.parse(JobsList);
    const { jobs } = await apiClient(flags.url).request<{ jobs: Job[] }>('GET', '/v1/jobs');
    this.show(jobs.length === 0 ? 'No jobs.' : table(['ID', 'KIND', 'STATE', 'WORKSPACE', 'CREATED'], jobs.map((j) => [j.id, j.kind, j.state, j.workspace ?? '', j.created_at])));
    return { jobs };
  }
}
