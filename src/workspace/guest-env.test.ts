import { describe, expect, it } from 'vitest';
import { parseDefinition } from '../definition/load.js';
import type { Manifest, Workspace } from '../definition/model.js';
import { baseEnv, expand, GUEST_PATH, runDir, runEnv, workspaceEnv } from './guest-env.js';

/**
 * The environment commands get inside a workspace, from definitions parsed
 * the way `cs sandbox create` parses them.
 */

function workspace(yaml: string): Workspace {
  const result = parseDefinition({ file: 'shop.yaml', text: yaml });
  if (!result.ok || result.kind !== 'sandbox') throw new Error(JSON.stringify(result.issues));
  return result.model.workspaces[0] as Workspace;
}

function manifest(yaml: string): Manifest {
  const result = parseDefinition({ file: 'repo/.sandbox/manifest.yaml', text: yaml });
  if (!result.ok || result.kind !== 'manifest') throw new Error(JSON.stringify(result.issues));
  return result.model;
}

const ID = { sandbox: 'shop', workspace: 'api' };

describe('expand', () => {
  it('replaces $NAME and ${NAME} with what is defined, and unknown names with nothing', () => {
    const env = { HOME: '/home/owner', PORT: '8080' };
    expect(expand('$HOME/src:${PORT}', env)).toBe('/home/owner/src:8080');
    expect(expand('${HOME}x $HOMEx', env)).toBe('/home/ownerx ');
    expect(expand('a-$MISSING-b ${ALSO_MISSING}', env)).toBe('a--b ');
  });

  it('leaves a $ that does not start a name alone, and does not expand twice', () => {
    expect(expand('cost: $5, $$, ${1}, $', {})).toBe('cost: $5, $$, ${1}, $');
    expect(expand('$A', { A: '$B', B: 'no' })).toBe('$B');
  });
});

describe('baseEnv', () => {
  it('gives the owner a login-like environment in their home', () => {
    expect(baseEnv(ID)).toEqual({
      PATH: GUEST_PATH,
      HOME: '/home/owner',
      USER: 'owner',
      LOGNAME: 'owner',
      SHELL: '/bin/sh',
      LANG: 'C.UTF-8',
      CS_SANDBOX: 'shop',
      CS_WORKSPACE: 'api',
    });
  });

  it('gives root /root and another user /home/NAME', () => {
    expect(baseEnv(ID, 'root')).toMatchObject({ HOME: '/root', USER: 'root', LOGNAME: 'root' });
    expect(baseEnv(ID, 'postgres')).toMatchObject({ HOME: '/home/postgres', USER: 'postgres' });
  });

  it('puts /usr/local first, the sbin folders on PATH, and the in-workspace cs last', () => {
    const dirs = GUEST_PATH.split(':');
    expect(dirs[0]).toBe('/usr/local/sbin');
    expect(dirs.at(-1)).toBe('/run/cs/bin');
    expect(dirs).toEqual(expect.arrayContaining(['/usr/sbin', '/usr/bin', '/sbin', '/bin']));
  });
});

describe('workspaceEnv and runEnv', () => {
  const ws = workspace(
    [
      'env:',
      '  - GREETING=hello',
      '  - LOG=/var/log',
      'workspaces:',
      '  - name: api',
      '    env:',
      '      - WHO=${GREETING} world',
      '      - LOG=$HOME/logs',
      '      - DATA=$LOG/data',
      '    lifecycle:',
      '      on_create:',
      '        run:',
      '          cmd: make',
      '          dir: src/api',
      '          env:',
      '            - WHO=$WHO again',
      '            - MODE=${APP_MODE}-run',
      '',
    ].join('\n'),
  );

  it('applies the sandbox env, then the workspace env, each seeing what came before', () => {
    const env = workspaceEnv(ID, ws);
    expect(env['WHO']).toBe('hello world');
    // The workspace's LOG replaced the sandbox's, and DATA saw the new one.
    expect(env['LOG']).toBe('/home/owner/logs');
    expect(env['DATA']).toBe('/home/owner/logs/data');
    expect(env['CS_SANDBOX']).toBe('shop');
  });

  it('uses the home of the user it is for', () => {
    expect(workspaceEnv(ID, ws, 'root')['LOG']).toBe('/root/logs');
  });

  it('adds a repo manifest\'s env and then the run\'s own on top', () => {
    const m = manifest('env:\n  - APP_MODE=test\n  - WHO=from the repo\n');
    const run = ws.lifecycle.onCreate?.run;
    if (!run) throw new Error('the definition has an on_create run');
    const env = runEnv(ID, ws, run, m);
    expect(env['APP_MODE']).toBe('test');
    expect(env['WHO']).toBe('from the repo again');
    expect(env['MODE']).toBe('test-run');
    // Without a manifest, its variables are simply not there.
    const bare = runEnv(ID, ws, run);
    expect(bare['WHO']).toBe('hello world again');
    expect(bare['MODE']).toBe('-run');
    expect(bare['APP_MODE']).toBeUndefined();
  });

  it('does not change the definition it reads', () => {
    const before = JSON.stringify(ws);
    runEnv(ID, ws, ws.lifecycle.onCreate?.run ?? { cmd: '', env: [] }, manifest('env:\n  - X=1\n'));
    expect(JSON.stringify(ws)).toBe(before);
  });
});

describe('runDir', () => {
  it('runs in the base folder unless a dir is given, relative dirs under the base', () => {
    expect(runDir({ cmd: 'x', env: [] }, '/home/owner')).toBe('/home/owner');
    expect(runDir({ cmd: 'x', env: [], dir: 'src/api' }, '/home/owner')).toBe('/home/owner/src/api');
    expect(runDir({ cmd: 'x', env: [], dir: 'build/' }, '/home/owner/src/app/')).toBe('/home/owner/src/app/build/');
    expect(runDir({ cmd: 'x', env: [], dir: '/srv/data' }, '/home/owner')).toBe('/srv/data');
  });

  it('takes the dir from a parsed definition', () => {
    const ws = workspace('workspaces:\n  - name: api\n    lifecycle:\n      on_create:\n        run:\n          cmd: make\n          dir: src//api\n');
    expect(runDir(ws.lifecycle.onCreate?.run ?? { cmd: '', env: [] }, '/home/owner')).toBe('/home/owner/src/api');
  });
});
