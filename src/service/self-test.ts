import { WORKSPACE_USER } from '../definition/model.js';
import type { Env } from '../util/paths.js';
import { withWorkspaceAgent } from '../workspace/files.js';
import { workspaceEnv } from '../workspace/guest-env.js';
import { readRecord, type WorkspaceRef } from '../workspace/state.js';
import { CREATED_MARKER } from '../workspace/steps.js';

/**
 * What an agent (a program, or a person) wants to know before working in a
 * workspace: where a command starts, its PATH, which common tools are
 * there (and their versions), the kernel, and cs's own markers. One
 * command in the guest, as the owner, with the environment commands get.
 */

const TOOLS = ['sh', 'bash', 'git', 'make', 'gcc', 'cc', 'python3', 'pip3', 'node', 'npm', 'go', 'cargo', 'java', 'curl', 'wget', 'tar', 'ssh'];

export interface SelfTest {
  workspace: string;
  user: string;
  cwd: string;
  path: string;
  kernel: string;
  tools: Record<string, string | null>;
  markers: { sandbox: string; workspace: string; created: boolean; agent: boolean };
}

export async function selfTest(ref: WorkspaceRef, label: string, env?: Env): Promise<SelfTest> {
  const record = await readRecord(ref.dir);
  const guestEnv = record ? workspaceEnv({ sandbox: record.sandbox, workspace: record.name }, record.spec) : {};
  const script = `pwd; echo "$PATH"; uname -r; for t in ${TOOLS.join(' ')}; do p=$(command -v "$t" 2>/dev/null) && echo "$t=$p" || echo "$t="; done; [ -e ${CREATED_MARKER} ] && echo created=1 || echo created=0; [ -x /run/cs/agent ] && echo agent=1 || echo agent=0; echo "sandbox=$CS_SANDBOX"; echo "cs_workspace=$CS_WORKSPACE"`;
  const out = await withWorkspaceAgent(
    ref,
    label,
    async (client) => {
      const result = await client.run({ argv: ['/bin/sh', '-c', script], env: guestEnv, user: WORKSPACE_USER, cwd: guestEnv['HOME'] ?? '/', timeoutMs: 30_000 });
      return result.stdout.toString('utf8').split('\n');
    },
    env,
  );
  const [cwd = '', path = '', kernel = '', ...rest] = out;
  const pairs = new Map(rest.filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as const));
  const tools: Record<string, string | null> = {};
  for (const t of TOOLS) tools[t] = pairs.get(t) || null;
  return {
    workspace: label,
    user: WORKSPACE_USER,
    cwd,
    path,
    kernel,
    tools,
    markers: { sandbox: pairs.get('sandbox') ?? '', workspace: pairs.get('cs_workspace') ?? '', created: pairs.get('created') === '1', agent: pairs.get('agent') === '1' },
  };
}
