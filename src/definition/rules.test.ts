import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatIssue } from './issues.js';
import { validateFile } from './load.js';

/**
 * Every rule of the definition format, one invalid file each, written to disk
 * and read back the way `cs validate` reads it. Each case lists the exact
 * `LINE:COL [path]: message` lines a user must see, in order.
 */

/** Strip the indentation common to all lines, so cases read as YAML. */
function y(text: string): string {
  const lines = text.replace(/^\n/, '').split('\n');
  const indent = Math.min(...lines.filter((l) => l.trim()).map((l) => /^ */.exec(l)?.[0].length ?? 0));
  return lines.map((l) => l.slice(indent)).join('\n');
}

interface Case {
  name: string;
  file?: string;
  text: string;
  expected: string[];
}

const cases: Case[] = [
  // --- schema: fields and types -------------------------------------------
  {
    name: 'misspelt top-level field, with did-you-mean, and the missing one',
    text: y(`
      workspace:
        - name: dev
    `),
    expected: [
      '1:1: missing required field "workspaces"',
      '1:1 [workspace]: unknown field "workspace"; did you mean "workspaces"?',
    ],
  },
  {
    name: 'misspelt workspace field',
    text: y(`
      workspaces:
        - name: dev
          base_snaphot: debian
    `),
    expected: ['3:5 [workspaces.0.base_snaphot]: unknown field "base_snaphot"; did you mean "base_snapshot"?'],
  },
  {
    name: 'Crafting-only field gets its own explanation',
    text: y(`
      workspaces:
        - name: dev
      dependencies:
        - name: mysql
    `),
    expected: [
      '3:1 [dependencies]: unknown field "dependencies" (a Crafting field cs does not support: cs has no managed dependencies; run the service as a daemon in a workspace)',
    ],
  },
  {
    name: 'unknown field far from any known one lists the known fields',
    text: y(`
      workspaces:
        - name: dev
          checkouts:
            - path: src
              repo:
                svn: http://example.com/repo
    `),
    expected: [
      '5:9 [workspaces.0.checkouts.0.repo]: missing required field "git"',
      '6:11 [workspaces.0.checkouts.0.repo.svn]: unknown field "svn"; expected one of: git',
    ],
  },
  {
    name: 'workspace without a name',
    text: y(`
      workspaces:
        - description: nameless
    `),
    expected: ['2:5 [workspaces.0]: missing required field "name"'],
  },
  {
    name: 'workspaces is not a list',
    text: y(`
      workspaces: dev
    `),
    expected: ['1:13 [workspaces]: must be a list, not the string "dev"'],
  },
  {
    name: 'empty workspaces list',
    text: y(`
      workspaces: []
    `),
    expected: ['1:13 [workspaces]: must have at least one entry'],
  },
  {
    name: 'the document is a list',
    text: y(`
      - name: dev
    `),
    expected: ['1:1: must be a mapping (key: value), not a list'],
  },
  {
    name: 'protocol in the wrong case, port out of range',
    text: y(`
      workspaces:
        - name: dev
          ports:
            - name: http
              port: 70000
              protocol: http
    `),
    expected: [
      '5:15 [workspaces.0.ports.0.port]: must be from 1 to 65535, not 70000',
      '6:19 [workspaces.0.ports.0.protocol]: the string "http" is not allowed; must be one of TCP, UDP, HTTP, HTTPS, GRPC (did you mean "HTTP"?)',
    ],
  },
  {
    name: 'names that cannot be host names',
    text: y(`
      name: my_sandbox
      workspaces:
        - name: -dev
        - name: dev-
        - name: 9lives
    `),
    expected: [
      "1:7 [name]: must start with a letter, contain only letters, digits and '-', not end with '-', and be at most 63 characters (it becomes a host name)",
      "3:11 [workspaces.0.name]: must start with a letter, contain only letters, digits and '-', not end with '-', and be at most 63 characters (it becomes a host name)",
      "4:11 [workspaces.1.name]: must start with a letter, contain only letters, digits and '-', not end with '-', and be at most 63 characters (it becomes a host name)",
      "5:11 [workspaces.2.name]: must start with a letter, contain only letters, digits and '-', not end with '-', and be at most 63 characters (it becomes a host name)",
    ],
  },
  {
    name: 'a name longer than 63 characters',
    text: y(`
      workspaces:
        - name: ${'a'.repeat(64)}
    `),
    expected: ['2:11 [workspaces.0.name]: must be at most 63 characters'],
  },
  {
    name: 'sizes, durations and paths that do not parse',
    text: y(`
      workspaces:
        - name: dev
          resources:
            cpus: 0
            memory: lots
            disk: 10Gb
          probes:
            readiness:
              - http_get:
                  port: 80
                  path: healthz
          lifecycle:
            on_create:
              run:
                cmd: make
              timeout: 5 minutes
    `),
    expected: [
      '4:13 [workspaces.0.resources.cpus]: must be from 1 to 64, not 0',
      '5:15 [workspaces.0.resources.memory]: must be a size like 512Mi, 2Gi or 10G (a bare number is MiB)',
      '6:13 [workspaces.0.resources.disk]: must be a size like 512Mi, 2Gi or 10G (a bare number is MiB)',
      '11:19 [workspaces.0.probes.readiness.0.http_get.path]: must start with /',
      '16:18 [workspaces.0.lifecycle.on_create.timeout]: must be a duration like 30s, 5m or 1h',
    ],
  },
  {
    name: 'resources below the minimum',
    text: y(`
      workspaces:
        - name: dev
          resources:
            memory: 64Mi
            disk: 100
    `),
    expected: [
      '4:15 [workspaces.0.resources.memory]: memory must be at least 128Mi',
      '5:13 [workspaces.0.resources.disk]: disk must be at least 256Mi',
    ],
  },
  {
    name: 'empty strings',
    text: y(`
      workspaces:
        - name: dev
          base_snapshot: ""
          system:
            daemons:
              - name: web
                run:
                  cmd: ""
    `),
    expected: [
      '3:20 [workspaces.0.base_snapshot]: must not be empty',
      '8:18 [workspaces.0.system.daemons.0.run.cmd]: must not be empty',
    ],
  },
  // --- semantic: env --------------------------------------------------------
  {
    name: 'env entries: no =, bad names, set twice',
    text: y(`
      env:
        - GOOD=1
        - GOOD=2
      workspaces:
        - name: dev
          env:
            - 1BAD=x
            - "MY-VAR=x"
            - novalue
            - EMPTY=
    `),
    expected: [
      '3:5 [env.1]: environment variable "GOOD" is already set at line 2',
      '7:9 [workspaces.0.env.0]: "1BAD" is not a valid environment variable name (letters, digits and \'_\', not starting with a digit)',
      '8:9 [workspaces.0.env.1]: "MY-VAR" is not a valid environment variable name (letters, digits and \'_\', not starting with a digit)',
      '9:9 [workspaces.0.env.2]: must be NAME=value',
    ],
  },
  // --- semantic: uniqueness -------------------------------------------------
  {
    name: 'workspace names are unique case-insensitively',
    text: y(`
      workspaces:
        - name: api
        - name: web
        - name: API
    `),
    expected: ['4:11 [workspaces.2.name]: workspace name "API" is already used at line 2'],
  },
  {
    name: 'ports: names unique, one service per number and transport',
    text: y(`
      workspaces:
        - name: dev
          ports:
            - name: web
              port: 80
            - name: WEB
              port: 81
            - name: alt
              port: 80
              protocol: HTTP
            - name: dns
              port: 80
              protocol: UDP
    `),
    expected: [
      '6:15 [workspaces.0.ports.1.name]: port name "WEB" is already used at line 4',
      '9:15 [workspaces.0.ports.2.port]: port 80/tcp is already declared at line 5',
    ],
  },
  {
    name: 'daemon and probe names are unique',
    text: y(`
      workspaces:
        - name: dev
          system:
            daemons:
              - name: web
                run: {cmd: a}
              - name: Web
                run: {cmd: b}
          probes:
            readiness:
              - name: up
                tcp_port: 80
              - name: up
                tcp_port: 81
    `),
    expected: [
      '7:17 [workspaces.0.system.daemons.1.name]: daemon name "Web" is already used at line 5',
      '13:17 [workspaces.0.probes.readiness.1.name]: probe name "up" is already used at line 11',
    ],
  },
  // --- semantic: checkouts --------------------------------------------------
  {
    name: 'checkout paths stay inside home and do not overlap',
    text: y(`
      workspaces:
        - name: dev
          checkouts:
            - path: /srv/app
              repo: {git: a}
            - path: ../outside
              repo: {git: a}
            - path: ~/code
              repo: {git: a}
            - path: ./
              repo: {git: a}
            - path: src/app
              repo: {git: a}
            - path: src/app/
              repo: {git: a}
            - path: src
              repo: {git: a}
            - path: lib/./sub/../x
              repo: {git: a}
    `),
    expected: [
      '4:15 [workspaces.0.checkouts.0.path]: checkout path must be relative to the home folder, not "/srv/app"',
      '6:15 [workspaces.0.checkouts.1.path]: checkout path must stay inside the home folder: ".." is not allowed',
      '8:15 [workspaces.0.checkouts.2.path]: checkout path must be relative to the home folder, not "~/code"',
      '10:15 [workspaces.0.checkouts.3.path]: checkout path must name a folder inside the home folder, not the home folder itself',
      '14:15 [workspaces.0.checkouts.5.path]: checkout path "src/app" is the same as "src/app" at line 12',
      '16:15 [workspaces.0.checkouts.6.path]: checkout path "src" overlaps "src/app" at line 12',
      '18:15 [workspaces.0.checkouts.7.path]: checkout path must stay inside the home folder: ".." is not allowed',
    ],
  },
  // --- semantic: snapshot and kernel references ------------------------------
  {
    name: 'snapshot references: names, oci references pointing at the bad part',
    text: y(`
      workspaces:
        - name: a
          base_snapshot: docker.io/library/debian:12
          home_snapshot: my home
        - name: b
          base_snapshot: oci://registry.example.com/team/base:bad!tag
        - name: c
          base_snapshot: "oci://registry.example.com/Team/base"
        - name: d
          base_snapshot: oci://localhost:5000/base@sha256:abc
          kernel: vmlinuz-6.1
    `),
    expected: [
      "3:20 [workspaces.0.base_snapshot]: must be a snapshot name or oci://REF: a snapshot name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit; to use an image directly write oci://docker.io/library/debian:12",
      "4:20 [workspaces.0.home_snapshot]: must be a snapshot name or oci://REF: a snapshot name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
      '6:60 [workspaces.1.base_snapshot]: invalid image reference: invalid tag "bad!tag": a tag is 1 to 128 characters of letters, digits, "_", ".", "-", not starting with "." or "-"',
      '8:48 [workspaces.2.base_snapshot]: invalid image reference: repository name must be lowercase: found "T" in path component "Team"',
      '10:53 [workspaces.3.base_snapshot]: invalid image reference: invalid digest "sha256:abc": a sha256 digest is exactly 64 lowercase hex digits, got 3',
      '11:13 [workspaces.3.kernel]: must be "default" or oci://REF of a kernel image',
    ],
  },
  // --- semantic: system files -------------------------------------------------
  {
    name: 'system files: absolute paths, one source, octal modes, unique paths',
    text: y(`
      workspaces:
        - name: dev
          system:
            files:
              - path: etc/motd
                content: hi
              - path: /etc/a
              - path: /etc/b
                content: x
                symlink: /etc/c
              - path: /etc/d
                mode: 0999
                content: x
              - path: /etc/d/
                content: y
              - path: /
                content: z
    `),
    expected: [
      '5:17 [workspaces.0.system.files.0.path]: file path must be an absolute path, not "etc/motd"',
      '7:11 [workspaces.0.system.files.1]: needs one of "content", "template" or "symlink"',
      '8:11 [workspaces.0.system.files.2]: has "content" and "symlink"; give exactly one of "content", "template" or "symlink"',
      '12:17 [workspaces.0.system.files.3.mode]: must be octal permissions like "0644", not "0999"',
      '14:17 [workspaces.0.system.files.4.path]: file "/etc/d" is already declared at line 11',
      '16:17 [workspaces.0.system.files.5.path]: file path must name a file, not "/"',
    ],
  },
  // --- semantic: probes, wait_for, port forwards ------------------------------
  {
    name: 'probes check exactly one thing',
    text: y(`
      workspaces:
        - name: dev
          probes:
            readiness:
              - name: nothing
              - command: "true"
                tcp_port: 22
    `),
    expected: [
      '5:11 [workspaces.0.probes.readiness.0]: a readiness probe needs one of "command", "tcp_port" or "http_get"',
      '6:11 [workspaces.0.probes.readiness.1]: has "command" and "tcp_port"; a probe checks exactly one of "command", "tcp_port" or "http_get"',
    ],
  },
  {
    name: 'wait_for names existing other workspaces, without cycles',
    text: y(`
      workspaces:
        - name: a
          wait_for: [b, ghost, a]
        - name: b
          wait_for: [c]
        - name: c
          wait_for: [a, c, c]
    `),
    expected: [
      '3:19 [workspaces.0.wait_for.1]: no workspace named "ghost" in this sandbox (workspaces: a, b, c)',
      '3:26 [workspaces.0.wait_for.2]: a workspace cannot wait for itself',
      '7:16 [workspaces.2.wait_for.0]: wait_for forms a cycle: a -> b -> c -> a',
      '7:19 [workspaces.2.wait_for.1]: a workspace cannot wait for itself',
      '7:22 [workspaces.2.wait_for.2]: a workspace cannot wait for itself',
    ],
  },
  {
    name: 'port forwards target another workspace and a declared port',
    text: y(`
      workspaces:
        - name: db
          ports:
            - name: pg
              port: 5432
        - name: app
          port_forward_rules:
            - local: 5432
              remote: {target: db, port: mysql}
            - local: 99999
              remote: {target: db, port: pg}
            - local: 5433
              remote: {target: app, port: 1}
            - local: 5434
              remote: {target: cache, port: 6379}
            - local: 127.0.0.1:5432
              remote: {target: db, port: 5432}
    `),
    expected: [
      '9:36 [workspaces.1.port_forward_rules.0.remote.port]: workspace "db" declares no port named "mysql" (its ports: pg)',
      '10:16 [workspaces.1.port_forward_rules.1.local]: must be [HOST:]PORT with a port from 1 to 65535 and HOST an IP address or "localhost", e.g. 3306 or 127.0.0.1:3306',
      '13:26 [workspaces.1.port_forward_rules.2.remote.target]: a forward must target another workspace; its own ports are already on its loopback',
      '15:26 [workspaces.1.port_forward_rules.3.remote.target]: no workspace named "cache" in this sandbox (workspaces: db, app)',
      '16:16 [workspaces.1.port_forward_rules.4.local]: local address 127.0.0.1:5432 is already forwarded at line 8',
    ],
  },
  // --- the sandbox's name ---------------------------------------------------------
  {
    name: 'a file name that cannot name the sandbox',
    file: 'My Sandbox.yaml',
    text: y(`
      workspaces:
        - name: dev
    `),
    expected: [
      '1:1 [name]: the file name "My Sandbox" cannot be the sandbox\'s name (a name must start with a letter, contain only letters, digits and \'-\', not end with \'-\', and be at most 63 characters); add a top-level "name:" field',
    ],
  },
  // --- YAML itself --------------------------------------------------------------
  {
    name: 'tab indentation',
    text: 'workspaces:\n\t- name: dev\n',
    expected: ['2:1: a tab is used for indentation; YAML indents with spaces only'],
  },
  {
    name: 'duplicate key names the first one',
    text: y(`
      workspaces:
        - name: dev
          env: [A=1]
          env: [B=2]
    `),
    expected: ['4:5: duplicate key "env" (first set at line 3): each key may appear once in a mapping'],
  },
  {
    name: 'unclosed quote',
    text: y(`
      workspaces:
        - name: "dev
    `),
    expected: ["3:1: YAML syntax: missing closing \"quote"],
  },
  {
    name: 'two documents in one file',
    text: 'workspaces:\n  - name: a\n---\nworkspaces:\n  - name: b\n',
    expected: ['3:1: more than one YAML document in this file; put each definition in a file of its own'],
  },
  {
    name: 'custom tags are refused',
    text: 'workspaces:\n  - name: !env NAME\n',
    expected: ['2:11: unknown YAML tag; definitions use plain YAML without custom tags (!env)'],
  },
  {
    name: 'alias bombs are refused',
    text: y(`
      a: &a [x, x, x, x, x, x, x, x, x, x]
      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
      workspaces: [*d]
    `),
    expected: ['1:1: aliases expand to too much data (more than 100 alias uses)'],
  },
  {
    name: 'an alias without its anchor',
    text: 'workspaces: *nothing\n',
    expected: ['1:13: alias "*nothing" has no anchor "&nothing" before it'],
  },
  // --- repo manifests -------------------------------------------------------------
  {
    name: 'manifest: hook fields, daemon names, job schedules',
    file: 'repo/.sandbox/manifest.yaml',
    text: y(`
      env: [PORT=3000]
      hooks:
        postcheckout:
          cmd: npm ci
        build: make
      daemons:
        web_server:
          run: {cmd: npm start}
      jobs:
        nightly:
          run: {cmd: make clean}
          schedule: "every night"
    `),
    expected: [
      '3:3 [hooks.postcheckout]: unknown field "postcheckout"; did you mean "post-checkout"?',
      '5:10 [hooks.build]: must be a mapping (key: value), not the string "make"',
      "7:3 [daemons.web_server]: name \"web_server\" must start with a letter, contain only letters, digits and '-', not end with '-', and be at most 63 characters",
      '12:15 [jobs.nightly.schedule]: must be a cron expression with five fields, e.g. "*/30 * * * *"',
    ],
  },
];

describe('definition rules (one invalid file per rule)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cs-rules-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it.each(cases)('$name', async ({ file = 'case.yaml', text, expected }) => {
    const path = join(dir, String(cases.findIndex((c) => c.text === text)), file);
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, text);
    const result = await validateFile(path);
    expect(result.ok).toBe(false);
    const lines = result.issues.map((issue) => formatIssue(issue).slice(path.length + 1));
    if (process.env['DUMP']) console.log(JSON.stringify(lines, null, 2));
    expect(lines).toEqual(expected);
    for (const issue of result.issues) expect(issue.file).toBe(path);
  });
});
