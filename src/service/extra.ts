import type { Env } from '../util/paths.js';
import { checkJobRequest, JOB_KINDS, listJobs, ownedJob, startRunner, submitJob } from './jobs.js';
import { handleMcp } from './mcp.js';
import { sweepEphemeral } from './run.js';
import { HttpError, readJson, type Route } from './server.js';

/**
 * The routes of `cs serve` beyond workspaces and exec: jobs and MCP, and
 * the job runner that goes with them.
 */

let poke: (() => void) | undefined;

export async function serviceRoutes(_options: { log?: (line: string) => void } = {}): Promise<Route[]> {
  return [
    {
      method: 'GET',
      path: /^\/v1\/jobs\/kinds$/,
      scope: 'jobs',
      handler: async () => ({ kinds: Object.entries(JOB_KINDS).map(([kind, k]) => ({ kind, description: k.description, input_schema: k.input })) }),
    },
    {
      method: 'POST',
      path: /^\/v1\/jobs$/,
      scope: 'jobs',
      handler: async (ctx) => {
        // A job runs a command: queueing one takes the exec scope too.
        if (!ctx.principal.scopes.has('exec')) throw new HttpError(403, 'FORBIDDEN', 'this API key lacks the "exec" scope, which queueing a job needs');
        const request = checkJobRequest(await readJson(ctx.req, 1024 * 1024));
        const { job, created } = await submitJob(ctx.principal, request, ctx.options.env);
        ctx.res.statusCode = created ? 201 : 200;
        poke?.();
        return job;
      },
    },
    {
      method: 'GET',
      path: /^\/v1\/jobs$/,
      scope: 'jobs',
      handler: async (ctx) => ({ jobs: (await listJobs(ctx.options.env)).filter((j) => j.owner === ctx.principal.owner) }),
    },
    {
      method: 'GET',
      path: /^\/v1\/jobs\/([0-9a-f]{16})$/,
      scope: 'jobs',
      handler: async (ctx) => ownedJob(ctx.principal, ctx.params[0] ?? '', ctx.options.env),
    },
    {
      method: 'POST',
      path: /^\/v1\/mcp$/,
      scope: 'exec',
      handler: async (ctx) => {
        const body = await readJson(ctx.req, 1024 * 1024);
        await handleMcp(ctx.req, ctx.res, body, ctx.principal, { ...ctx.envOpt, maxFileBytes: ctx.options.maxFileBytes, maxOutputBytes: ctx.options.maxOutputBytes });
        return undefined;
      },
    },
  ];
}

export async function resumeJobs(options: { env?: Env; log?: (line: string) => void } = {}): Promise<() => Promise<void>> {
  const swept = await sweepEphemeral(options);
  if (swept.length > 0) options.log?.(`removed ephemeral workspaces a previous stop left: ${swept.join(', ')}`);
  const runner = await startRunner(options);
  poke = runner.poke;
  return async () => {
    poke = undefined;
    await runner.stop();
  };
}
