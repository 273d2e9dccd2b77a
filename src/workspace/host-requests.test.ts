/**
 * What the host agrees to run for a guest's `cs`: the snapshot commands of
 * that workspace only. (The round trip through a real guest is in
 * test/vm/snapshot.test.ts.)
 */
import { describe, expect, it } from 'vitest';
import { decideHostRequest } from './host-requests.js';

describe('decideHostRequest', () => {
  it('runs snapshot create for this workspace', () => {
    expect(decideHostRequest(['snapshot', 'create', 'dev-base'], 'demo/dev')).toEqual({ ok: true, argv: ['snapshot', 'create', 'dev-base', '-W', 'demo/dev'] });
    expect(decideHostRequest(['snapshot', 'create', '--home', 'h', '--force', '--json'], 'demo/dev')).toEqual({ ok: true, argv: ['snapshot', 'create', 'h', '--home', '-f', '--json', '-W', 'demo/dev'] });
  });

  it('passes the read-only catalogue commands as they are', () => {
    expect(decideHostRequest(['snapshot', 'list', '--json'], 'demo/dev')).toEqual({ ok: true, argv: ['snapshot', 'list', '--json'] });
    expect(decideHostRequest(['snapshot', 'personal', 'get-default'], 'demo/dev')).toMatchObject({ ok: true });
  });

  it('refuses everything else, and anything naming host folders or other workspaces', () => {
    for (const args of [
      ['sandbox', 'list'],
      ['exec', '-W', 'other/ws', '--', 'id'],
      ['snapshot', 'remove', 'x'],
      ['snapshot', 'create', 'x', '-W', 'other/ws'],
      ['snapshot', 'create', 'x', '--workspace=other/ws'],
      ['snapshot', 'create', 'x', '--from-dir', '/etc'],
      ['snapshot', 'create', 'x', '--from-dir=/etc'],
      ['snapshot', 'create', 'x', '--parent', 'y'],
      // oclif reads these as -W: the command line is rebuilt from allowed tokens only.
      ['snapshot', 'create', 'x', '-Wother/ws'],
      ['snapshot', 'create', 'x', '-fW', 'other/ws'],
      ['snapshot', 'create', 'x', '--set-personal-default', '--personal'],
      ['snapshot', 'create', '-bad-name'],
      ['snapshot', 'create', 'a', 'b'],
      ['snapshot', 'create', 'x', '--home', '--personal'],
      ['snapshot', 'personal', 'set-default', 'x'],
      ['snapshot', 'list', '-c', 'name'],
      [],
    ]) {
      expect(decideHostRequest(args, 'demo/dev').ok, args.join(' ')).toBe(false);
    }
  });
});
