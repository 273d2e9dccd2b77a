import { Args, Flags } from '@oclif/core';
import { apiClient } from '../../service/client.js';
import type { Job } from '../../service/jobs.js';
import { ExitCode, UsageError } from '../../util/errors.js';
import { CsCommand } from '../_base.js';
import { jobDetails } from './_format.js';

export default class JobsExec extends CsCommand {
  static override summary = 'Queue a command as a job of `cs serve` (now or later), and optionally wait for it.';
  static override description = 'Talks to the service at --url (or CS_URL) with the API key in CS_API_KEY. The same idempotency key never queues a second job. With --wait, exits with the command\'s own exit code.';
  static override examples = [
    { description: 'Run tests in a workspace and wait', command: 'CS_API_KEY=csk_... <%= config.bin %> <%= command.id %> --workspace scratch --wait -- make test' },
    { description: 'In a throwaway workspace, in an hour', command: '<%= config.bin %> <%= command.id %> --ephemeral --image docker.io/library/debian:12 --run-at 2026-01-01T10:00:00Z -- uname -a' },
  ];
  static override strict = false;
  static override args = { command: Args.string({ description: 'The command (after --)', required: true }) };
  static override flags = {
    workspace: Flags.string({ char: 'W', description: 'One of your workspaces', exclusive: ['ephemeral'] }),
    ephemeral: Flags.boolean({ description: 'Run in a fresh workspace from --image, removed afterwards', dependsOn: ['image'] }),
    image: Flags.string({ description: 'The image of an ephemeral workspace' }),
    'timeout-ms': Flags.integer({ description: 'Kill the command after this many milliseconds' }),
    'run-at': Flags.string({ description: 'When to run it (ISO 8601); default now' }),
    'idempotency-key': Flags.string({ description: 'Queue at most one job for this key' }),
    wait: Flags.boolean({ description: 'Wait until it ends and print its output' }),
    url: Flags.string({ description: 'The service (default CS_URL or http://127.0.0.1:8080)' }),
  };

  async run(): Promise<Job> {
    const { argv, flags } = await this.parse(JobsExec);
    if (!flags.workspace && !flags.ephemeral) throw new UsageError('say where: --workspace NAME, or --ephemeral --image REF');
    const client = apiClient(flags.url);
    const command = argv.map(String);
    let job = await client.request<Job>('POST', '/v1/jobs', {
      kind: 'sandbox.exec',
      input: {
        ...(flags.workspace ? { workspace: flags.workspace } : { ephemeral: true, image: flags.image }),
        command: command.length === 1 ? command[0] : command,
        ...(flags['timeout-ms'] ? { timeout_ms: flags['timeout-ms'] } : {}),
      },
      ...(flags['run-at'] ? { run_at: flags['run-at'] } : {}),
      ...(flags['idempotency-key'] ? { idempotency_key: flags['idempotency-key'] } : {}),
    });
    this.say(`job ${job.id} ${job.state}`);
    if (!flags.wait) return job;
    while (job.state === 'queued' || job.state === 'running') {
      await new Promise((r) => setTimeout(r, 250));
      job = await client.request<Job>('GET', `/v1/jobs/${job.id}`);
    }
    const step = job.steps[0];
    if (!this.jsonEnabled()) {
      if (step?.stdout) process.stdout.write(step.stdout);
      if (step?.stderr) process.stderr.write(step.stderr);
      this.say(jobDetails(job).split('\n')[0] ?? '');
    }
    const code = step?.exit_code ?? (job.state === 'succeeded' ? 0 : 5);
    return this.finish(job, (code === 0 ? ExitCode.ok : code) as ExitCode);
  }
}
