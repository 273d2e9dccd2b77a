import type { IncomingMessage, ServerResponse } from 'node:http';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { z } from 'zod';
import { currentUser } from '../snapshot/catalogue.js';
import type { Env } from '../util/paths.js';
import { listFiles, readWorkspaceFile, withWorkspaceAgent, writeWorkspaceFile } from '../workspace/files.js';
import { resolveWorkspace } from '../workspace/lifecycle.js';
import { SCOPES, type Principal } from './keys.js';
import { Captured, execIn, inTarget } from './run.js';

/**
 * The Model Context Protocol face of cs: one `terminal` tool that runs a
 * command, or reads, writes or lists files, in one of the caller's
 * workspaces or in an ephemeral one from an image; every answer names the
 * workspace used. Served at POST /v1/mcp (stateless streamable HTTP, behind
 * the API key) and on stdio by `cs mcp serve` for local agents. The
 * protocol itself is the official SDK's.
 */

const INPUT = {
  action: z.enum(['exec', 'read_file', 'write_file', 'list_files']).default('exec').describe('What to do (default exec)'),
  command: z.string().optional().describe('exec: the command line, run with /bin/sh -c'),
  path: z.string().optional().describe('read_file, write_file, list_files: a path in the home folder'),
  content: z.string().optional().describe('write_file: the text to write'),
  workspace: z.string().optional().describe('One of your workspaces (NAME or SANDBOX/WORKSPACE)'),
  image: z.string().optional().describe('With no workspace: run in a fresh workspace from this image, removed afterwards'),
  timeout_ms: z.number().int().positive().max(24 * 3_600_000).optional().describe('exec: kill the command after this long (at most a day)'),
};

export function mcpServer(principal: Principal, options: { env?: Env; maxFileBytes: number; maxOutputBytes: number }): McpServer {
  const server = new McpServer({ name: 'cs', version: '1' });
  server.registerTool(
    'terminal',
    {
      title: 'Terminal in a cs workspace',
      description: 'Run a shell command, or read, write or list files, in a cs workspace (a microVM). Give `workspace` for one of yours, or `image` for a fresh one that is removed afterwards. The answer names the workspace used.',
      inputSchema: INPUT,
    },
    async (args, extra) => {
      const need = (scope: (typeof SCOPES)[number]): void => {
        if (!principal.scopes.has(scope)) throw new Error(`this API key lacks the "${scope}" scope`);
      };
      try {
        if (args.workspace !== undefined && args.image !== undefined) throw new Error('give either workspace or image, not both');
        // Scopes first: nothing (an ephemeral workspace least of all) is made for a call that is refused.
        need(args.action === 'exec' ? 'exec' : 'files');
        if (args.image !== undefined) need('exec');
        const where = { ...(args.workspace !== undefined ? { workspace: args.workspace } : {}), ...(args.image !== undefined ? { image: args.image } : {}) };
        const result = await inTarget(
          principal,
          where,
          async (target, ephemeral) => {
            if (args.action === 'exec') {
              if (!args.command) throw new Error('exec needs a command');
              const out = new Captured(options.maxOutputBytes);
              const run = await execIn(target, args.command, out, { ...(args.timeout_ms ? { timeoutMs: args.timeout_ms } : {}), signal: extra.signal, ...(options.env ? { envOverride: options.env } : {}) });
              return { workspace: target, ephemeral, ...run, ...out.result() };
            }
            if (!args.path) throw new Error(`${args.action} needs a path`);
            const ref = await resolveWorkspace(target, options.env);
            return withWorkspaceAgent(
              ref,
              target,
              async (client) => {
                if (args.action === 'list_files') return { workspace: target, ephemeral, ...(await listFiles(client, args.path as string)) };
                if (args.action === 'read_file') {
                  const { path, bytes } = await readWorkspaceFile(client, args.path as string, options.maxFileBytes);
                  return { workspace: target, ephemeral, path, content: bytes.toString('utf8') };
                }
                return { workspace: target, ephemeral, ...(await writeWorkspaceFile(client, args.path as string, Buffer.from(args.content ?? '', 'utf8'))) };
              },
              options.env,
            );
          },
          { ...(options.env ? { env: options.env } : {}), signal: extra.signal },
        );
        return { content: [{ type: 'text' as const, text: JSON.stringify(result) }], structuredContent: result as unknown as Record<string, unknown> };
      } catch (error) {
        return { content: [{ type: 'text' as const, text: (error as Error).message }], isError: true };
      }
    },
  );
  return server;
}

/** POST /v1/mcp: one stateless exchange per request. */
export async function handleMcp(req: IncomingMessage, res: ServerResponse, body: unknown, principal: Principal, options: { env?: Env; maxFileBytes: number; maxOutputBytes: number }): Promise<void> {
  const server = mcpServer(principal, options);
  // No session id generator: stateless, each request stands alone.
  const transport = new StreamableHTTPServerTransport({ enableJsonResponse: true });
  res.on('close', () => {
    void transport.close();
    void server.close();
  });
  await server.connect(transport);
  await transport.handleRequest(req, res, body);
}

/** `cs mcp serve`: the local user, every scope, on stdin and stdout. */
export async function serveMcpStdio(options: { env?: Env; maxFileBytes?: number; maxOutputBytes?: number } = {}): Promise<void> {
  const principal: Principal = { keyId: 'stdio', owner: currentUser().user, scopes: new Set(SCOPES) };
  const server = mcpServer(principal, { ...(options.env ? { env: options.env } : {}), maxFileBytes: options.maxFileBytes ?? 16 * 1024 * 1024, maxOutputBytes: options.maxOutputBytes ?? 1024 * 1024 });
  const transport = new StdioServerTransport();
  const closed = new Promise<void>((resolve) => (transport.onclose = () => resolve()));
  await server.connect(transport);
  await closed;
}
