import { Args, Flags } from '@oclif/core';
import { apiClient } from '../../service/client.js';
import type { Job } from '../../service/jobs.js';
import { CsCommand } from '../_base.js';
import { jobDetails } from './_format.js';

export default class JobsShow extends CsCommand {
  static override summary = 'Show a job of `cs serve`: its state and each step\'s exit code.';
  static override examples = ['CS_API_KEY=csk_... <%= config.bin %> <%= command.id %> 0123456789abcdef'];
  static override args = { id: Args.string({ description: 'The job\'s id', required: true }) };
  static override flags = { url: Flags.string({ description: 'The service (default CS_URL or http://127.0.0.1:8080)' }) };

  async run(): Promise<Job> {
    const { args, flags } = await this.parse(JobsShow);
    const job = await apiClient(flags.url).request<Job>('GET', `/v1/jobs/${encodeURIComponent(args.id)}`);
    this.show(jobDetails(job));
    return job;
  }
}
