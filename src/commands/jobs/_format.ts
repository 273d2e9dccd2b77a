import type { Job } from '../../service/jobs.js';

export function jobDetails(job: Job): string {
  const lines = [`job ${job.id}: ${job.kind} ${job.state}${job.workspace ? ` in ${job.workspace}` : ''}${job.error ? ` (${job.error})` : ''}`];
  if (job.run_at) lines.push(`  run at:  ${job.run_at}`);
  lines.push(`  created: ${job.created_at}${job.started_at ? `, started ${job.started_at}` : ''}${job.ended_at ? `, ended ${job.ended_at}` : ''}`);
  job.steps.forEach((s, i) => {
    const cmd = typeof s.command === 'string' ? s.command : s.command.join(' ');
    lines.push(`  step ${i + 1}: ${s.state}${s.exit_code !== undefined ? ` (exit ${s.exit_code}${s.timed_out ? ', timed out' : ''})` : ''}: ${cmd}`);
  });
  return lines.join('\n');
}
