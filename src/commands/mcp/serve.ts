import { serveMcpStdio } from '../../service/mcp.js';
import { CsCommand } from '../_base.js';

export default class McpServe extends CsCommand {
  static override summary = 'Serve the Model Context Protocol on stdin and stdout, for a local agent.';
  static override description = 'One tool, `terminal`: run a command, or read, write or list files, in one of your workspaces or in an ephemeral one from an image; each answer names the workspace used. It acts as you, with every scope. The same tool is served over HTTP at POST /v1/mcp by `cs serve`.';
  static override examples = [
    { description: 'In an MCP client\'s configuration', command: '<%= config.bin %> <%= command.id %>' },
  ];
  static override enableJsonFlag = false;

  async run(): Promise<void> {
    await this.parse(McpServe);
    await serveMcpStdio();
  }
}
