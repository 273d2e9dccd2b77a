import { describe, expect, it } from 'vitest';
import { kernelCommandLine, qemuArgs, type MachineSpec } from './qemu.js';

/**
 * The QEMU command line, read the way QEMU reads it: as option/value pairs.
 * (The VM tests boot these arguments for real; here each setting is pinned.)
 */

const NOW = Date.UTC(2025, 0, 2, 3, 4, 5, 678);

function spec(over: Partial<MachineSpec> = {}): MachineSpec {
  return {
    accel: 'tcg',
    cpus: 2,
    memoryMiB: 512,
    kernel: '/k/vmlinuz',
    initrd: '/k/initramfs.cpio',
    lowers: ['/images/base.erofs'],
    disk: 'disk.ext4',
    agentSocket: 'agent.sock',
    qmpSocket: 'qmp.sock',
    consoleLog: 'console.log',
    hostname: 'dev',
    network: true,
    ...over,
  };
}

/** Every value given to `option` (QEMU options may repeat). */
function values(args: readonly string[], option: string): string[] {
  const out: string[] = [];
  args.forEach((a, i) => {
    if (a === option && i + 1 < args.length) out.push(args[i + 1] as string);
  });
  return out;
}

function one(args: readonly string[], option: string): string {
  const found = values(args, option);
  expect(found, option).toHaveLength(1);
  return found[0] as string;
}

describe('qemuArgs', () => {
  it('boots a microvm under TCG with the given size, kernel and initramfs, and no reboot on panic', () => {
    const args = qemuArgs(spec(), NOW);
    expect(one(args, '-M')).toMatch(/^microvm,/);
    expect(one(args, '-accel')).toBe('tcg');
    expect(args).not.toContain('-cpu');
    expect(one(args, '-smp')).toBe('2');
    expect(one(args, '-m')).toBe('512M');
    expect(one(args, '-kernel')).toBe('/k/vmlinuz');
    expect(one(args, '-initrd')).toBe('/k/initramfs.cpio');
    for (const flag of ['-nodefaults', '-no-user-config', '-nographic', '-no-reboot']) expect(args).toContain(flag);
    expect(one(args, '-append')).toBe(kernelCommandLine(spec(), NOW));
    expect(one(args, '-append')).toContain('tsc_early_khz=');
    expect(one(args, '-serial')).toBe('chardev:console');
  });

  it('uses the host CPU model under KVM and leaves out the TCG timer workarounds', () => {
    const args = qemuArgs(spec({ accel: 'kvm' }), NOW);
    expect(one(args, '-accel')).toBe('kvm');
    expect(one(args, '-cpu')).toBe('host');
    expect(one(args, '-append')).not.toContain('tsc_early_khz');
    expect(one(args, '-append')).not.toContain('no_timer_check');
  });

  it('attaches each snapshot image read-only in order, and the disk writable, told apart by serial', () => {
    const args = qemuArgs(spec({ lowers: ['/i/top.erofs', '/i/base.erofs'] }), NOW);
    expect(values(args, '-drive')).toEqual([
      'id=lower0,file=/i/top.erofs,format=raw,if=none,readonly=on',
      'id=lower1,file=/i/base.erofs,format=raw,if=none,readonly=on',
      'id=disk,file=disk.ext4,format=raw,if=none,discard=unmap,detect-zeroes=unmap',
    ]);
    const devices = values(args, '-device');
    expect(devices).toContain('virtio-blk-device,drive=lower0,serial=cs-lower0');
    expect(devices).toContain('virtio-blk-device,drive=lower1,serial=cs-lower1');
    expect(devices).toContain('virtio-blk-device,drive=disk,serial=cs-disk');
  });

  it('doubles commas in every path inside an option list, so a path cannot add options', () => {
    const args = qemuArgs(
      spec({
        lowers: ['/i/a,readonly=off.erofs'],
        disk: '/w/my,disk.ext4',
        consoleLog: '/w/con,sole.log',
        agentSocket: '/w/a,gent.sock',
        qmpSocket: '/w/q,mp.sock',
      }),
      NOW,
    );
    const drives = values(args, '-drive');
    expect(drives[0]).toBe('id=lower0,file=/i/a,,readonly=off.erofs,format=raw,if=none,readonly=on');
    expect(drives[1]).toContain('file=/w/my,,disk.ext4,');
    expect(values(args, '-chardev')).toEqual(['file,id=console,path=/w/con,,sole.log', 'socket,id=agent,path=/w/a,,gent.sock,server=on,wait=off']);
    expect(one(args, '-qmp')).toBe('unix:/w/q,,mp.sock,server=on,wait=off');
    // -kernel and -initrd take a plain file name: nothing to escape there.
    const plain = qemuArgs(spec({ kernel: '/k,1/vmlinuz' }), NOW);
    expect(one(plain, '-kernel')).toBe('/k,1/vmlinuz');
  });

  it('renders port forwards on the user-mode network, and no network when none is wanted', () => {
    const args = qemuArgs(
      spec({
        forwards: [
          { protocol: 'tcp', hostAddress: '127.0.0.1', hostPort: 18080, guestPort: 8080 },
          { protocol: 'udp', hostAddress: '127.0.0.1', hostPort: 5353, guestPort: 53 },
        ],
      }),
      NOW,
    );
    expect(one(args, '-netdev')).toBe('user,id=net0,hostfwd=tcp:127.0.0.1:18080-:8080,hostfwd=udp:127.0.0.1:5353-:53');
    expect(values(args, '-device')).toContain('virtio-net-device,netdev=net0');
    expect(one(qemuArgs(spec(), NOW), '-netdev')).toBe('user,id=net0');

    const offline = qemuArgs(spec({ network: false, forwards: [{ protocol: 'tcp', hostAddress: '127.0.0.1', hostPort: 1, guestPort: 2 }] }), NOW);
    expect(offline).not.toContain('-netdev');
    expect(values(offline, '-device').some((d) => d.startsWith('virtio-net'))).toBe(false);
  });

  it('leaves out the agent port, the disk and QMP when they are not asked for (the accelerator probe)', () => {
    const args = qemuArgs({ accel: 'kvm', cpus: 1, memoryMiB: 256, kernel: 'k', initrd: 'i', lowers: [], consoleLog: 'c.log', settings: { probe: '1' } }, NOW);
    expect(args).not.toContain('-drive');
    expect(args).not.toContain('-qmp');
    expect(args).not.toContain('-netdev');
    expect(values(args, '-device')).toEqual([]);
    expect(values(args, '-chardev')).toEqual(['file,id=console,path=c.log']);
    expect(one(args, '-append')).toContain(' cs.probe=1');
  });
});

describe('kernelCommandLine', () => {
  it('passes the host clock in seconds, the hostname and the settings as cs.* words', () => {
    const line = kernelCommandLine({ accel: 'tcg', hostname: 'api', settings: { 'probe': '1', 'net.mode': 'user_1-x' } }, NOW);
    const words = line.split(' ');
    expect(words).toContain('console=ttyS0');
    expect(words).toContain('panic=-1');
    expect(words).toContain(`cs.time=${Math.floor(NOW / 1000)}`);
    expect(words).toContain('cs.hostname=api');
    expect(words).toContain('cs.probe=1');
    expect(words).toContain('cs.net.mode=user_1-x');
    expect(words).toContain('tsc_early_khz=2000000');
  });

  it('says nothing of a hostname it was not given', () => {
    expect(kernelCommandLine({ accel: 'kvm' }, NOW)).not.toContain('cs.hostname');
  });

  it('refuses settings that would split into other kernel arguments or are not cs.* names', () => {
    for (const settings of [{ 'Probe': '1' }, { '1st': 'x' }, { 'a b': 'x' }, { 'a=b': 'x' }, { ok: 'two words' }, { ok: 'tab\there' }, { ok: 'new\nline' }]) {
      expect(() => kernelCommandLine({ accel: 'tcg', settings }, NOW), JSON.stringify(settings)).toThrow(/bad guest setting/);
    }
  });
});
