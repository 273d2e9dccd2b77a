import { Flags } from '@oclif/core';
import { formatSize } from '../util/progress.js';
import { setup, type SetupResult } from '../workspace/setup.js';
import { CsCommand } from './_base.js';

export default class Setup extends CsCommand {
  static override summary = 'Make this host ready to boot workspaces (idempotent).';
  static override description =
    'Installs missing system packages (as root, with apt), fetches the guest kernel (Debian\'s linux-image-cloud-amd64, through apt), ' +
    'builds the guest agent and initramfs, probes the accelerator (KVM only when a probe guest really runs on it, else TCG), ' +
    'and with --base builds a Debian base image (localhost/debian:bookworm) with debootstrap.';
  static override examples = ['sudo <%= config.bin %> <%= command.id %>', 'sudo <%= config.bin %> <%= command.id %> --base', '<%= config.bin %> <%= command.id %> --json'];
  static override flags = {
    base: Flags.boolean({ description: 'Also build the Debian base image localhost/debian:bookworm if it is missing' }),
  };

  async run(): Promise<SetupResult> {
    const { flags } = await this.parse(Setup);
    const result = await setup({ base: flags.base, onPhase: (p) => this.say(`… ${p}`) });
    if (result.installed.length > 0) this.say(`Installed ${result.installed.join(', ')}`);
    this.say(`Kernel ${result.kernel.version} (${result.kernel.source})`);
    this.say(`Initramfs ${result.initramfs.path} (${formatSize(result.initramfs.bytes)})`);
    this.say(`Accelerator ${result.accel.accel}: ${result.accel.reason}`);
    if (result.base) this.say(`Base image ${result.base.reference}${result.base.built ? ' built' : ' already there'}`);
    return result;
  }
}
