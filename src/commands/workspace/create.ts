import { Flags } from '@oclif/core';
import { parseSize } from '../../util/units.js';
import { UsageError } from '../../util/errors.js';
import { createStandalone, type WorkspaceInfo } from '../../workspace/standalone.js';
import { CsCommand } from '../_base.js';
import { infoDetails } from './_format.js';

/** Flags shared with `cs workspace import`: what a workspace without a definition boots and how big it is. */
export const machineFlags = {
  image: Flags.string({ description: 'OCI image to boot (oci://REF or REF)' }),
  snapshot: Flags.string({ description: 'Base snapshot to boot (see `cs snapshot list`)' }),
  disk: Flags.string({ description: 'Disk size, sparse (default: workspaces.disk_size in the config, 10Gi)' }),
  cpus: Flags.integer({ description: 'Virtual CPUs (default 1)', min: 1 }),
  memory: Flags.string({ description: 'Memory, e.g. 512Mi or 2Gi (default 1Gi)' }),
  label: Flags.string({ description: 'A free-form label shown in lists' }),
  personal: Flags.string({ description: 'Personal snapshot to apply (default: your default; NONE for none)' }),
};

export function machineOptions(flags: { image?: string | undefined; snapshot?: string | undefined; disk?: string | undefined; cpus?: number | undefined; memory?: string | undefined; label?: string | undefined; personal?: string | undefined }) {
  const size = (value: string | undefined, flag: string): number | undefined => {
    if (value === undefined) return undefined;
    const bytes = parseSize(value);
    if (bytes === undefined) throw new UsageError(`--${flag} takes a size like 512Mi or 10Gi, not "${value}"`);
    return bytes;
  };
  const disk = size(flags.disk, 'disk');
  const memory = size(flags.memory, 'memory');
  return {
    ...(flags.image ? { image: flags.image } : {}),
    ...(flags.snapshot ? { snapshot: flags.snapshot } : {}),
    ...(disk !== undefined ? { diskBytes: disk } : {}),
    ...(flags.cpus !== undefined ? { cpus: flags.cpus } : {}),
    ...(memory !== undefined ? { memoryMiB: Math.floor(memory / 1024 ** 2) } : {}),
    ...(flags.label ? { label: flags.label } : {}),
    ...(flags.personal ? { personal: flags.personal } : {}),
  };
}

export default class WorkspaceCreate extends CsCommand {
  static override summary = 'Create a workspace without a definition: a named disk that outlives every session.';
  static override description =
    'The workspace boots the image or base snapshot you name, or starts as a copy of another (stopped) workspace with --clone-from. ' +
    'It is created stopped unless --start: the first `cs exec -W NAME` starts it. Names follow one rule for every workspace and sandbox: ' +
    'a letter first, then letters, digits and "-", at most 63 characters, unique per user regardless of case.';
  static override examples = [
    '<%= config.bin %> <%= command.id %> --name scratch --image docker.io/library/debian:12',
    '<%= config.bin %> <%= command.id %> --name golden --snapshot team-base --template --label "team template"',
    '<%= config.bin %> <%= command.id %> --name feature-login --clone-from golden',
    '<%= config.bin %> <%= command.id %> --name big --image debian:12 --disk 50Gi --cpus 4 --memory 8Gi --start',
  ];
  static override flags = {
    name: Flags.string({ char: 'n', description: 'The workspace\'s name', required: true }),
    ...machineFlags,
    template: Flags.boolean({ description: 'Mark it as a template (to be cloned with --clone-from)' }),
    'clone-from': Flags.string({ description: 'Start as a copy of this stopped workspace\'s disk and settings' }),
    start: Flags.boolean({ description: 'Boot it now and wait until it is ready' }),
  };

  async run(): Promise<WorkspaceInfo> {
    const { flags } = await this.parse(WorkspaceCreate);
    const result = await createStandalone({
      name: flags.name,
      ...machineOptions(flags),
      ...(flags.template ? { template: true } : {}),
      ...(flags['clone-from'] ? { cloneFrom: flags['clone-from'] } : {}),
      start: flags.start,
      onPhase: (phase) => this.say(`… ${phase}`),
    });
    this.show(infoDetails(result));
    return result;
  }
}
