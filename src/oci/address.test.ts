/**
 * The address rules behind the registry client's refusals (token realms and
 * upload locations on private addresses). A realm pointing at a private or
 * link-local address cannot be exercised end to end on loopback (a loopback
 * registry is allowed a loopback realm, see test/oci/hostile.test.ts, which
 * also drives the client with fetch stubbed), so the rule is tested here
 * where it lives. No test here resolves a name through DNS.
 */
import { describe, expect, it } from 'vitest';
import { hostOf, isLoopbackHost, isPrivateAddress, resolvesToPrivate } from './address.js';

describe('isPrivateAddress', () => {
  it.each([
    '10.0.0.1',
    '10.255.255.255',
    '172.16.0.1',
    '172.31.255.254',
    '192.168.0.1',
    '127.0.0.1',
    '127.10.20.30',
    '0.0.0.0',
    '100.64.0.1',
    '100.127.255.254',
    '169.254.169.254',
    '169.254.0.1',
  ])('IPv4 %s is private', (ip) => {
    expect(isPrivateAddress(ip)).toBe(true);
  });

  it.each(['8.8.8.8', '1.1.1.1', '172.15.255.255', '172.32.0.1', '192.169.0.1', '100.63.255.255', '100.128.0.1', '169.253.1.1', '11.0.0.1', '203.0.113.7'])(
    'IPv4 %s is public',
    (ip) => {
      expect(isPrivateAddress(ip)).toBe(false);
    },
  );

  it.each([
    ['::1', 'loopback'],
    ['[::1]', 'loopback, bracketed'],
    ['0:0:0:0:0:0:0:1', 'loopback, written out'],
    ['::', 'unspecified'],
    ['fc00::1', 'unique local fc00::/7'],
    ['fd12:3456:789a::1', 'unique local fc00::/7'],
    ['fdff:ffff::1', 'unique local fc00::/7'],
    ['fe80::1', 'link-local fe80::/10'],
    ['fe80::1%eth0', 'link-local with a zone'],
    ['febf:ffff::1', 'link-local fe80::/10, upper end'],
    ['::ffff:10.0.0.1', 'IPv4-mapped private, dotted'],
    ['::ffff:a00:1', 'IPv4-mapped private, hex (as the URL parser writes it)'],
    ['::ffff:169.254.169.254', 'IPv4-mapped link-local'],
    ['::ffff:a9fe:a9fe', 'IPv4-mapped link-local, hex'],
    ['::ffff:127.0.0.1', 'IPv4-mapped loopback'],
    ['64:ff9b::a9fe:a9fe', 'NAT64 of a link-local address'],
  ])('IPv6 %s is private (%s)', (ip) => {
    expect(isPrivateAddress(ip)).toBe(true);
  });

  it.each(['2001:db8::1', '2606:4700:4700::1111', '::ffff:8.8.8.8', '::ffff:808:808', 'fe00::1', '2a00:1450:4001::200e', '64:ff9b::808:808'])(
    'IPv6 %s is public',
    (ip) => {
      expect(isPrivateAddress(ip)).toBe(false);
    },
  );

  it('is false for things that are not addresses', () => {
    expect(isPrivateAddress('localhost')).toBe(false);
    expect(isPrivateAddress('registry.example.com')).toBe(false);
    expect(isPrivateAddress('')).toBe(false);
    expect(isPrivateAddress('10.0.0')).toBe(false);
  });

  it('agrees with the URL parser on every way of writing a mapped private address', () => {
    for (const literal of ['[::ffff:10.0.0.1]', '[::ffff:192.168.1.1]', '[::ffff:169.254.169.254]', '[0:0:0:0:0:ffff:7f00:1]']) {
      const hostname = new URL(`https://${literal}/token`).hostname;
      expect(isPrivateAddress(hostname), `${literal} → ${hostname}`).toBe(true);
    }
  });
});

describe('resolvesToPrivate (literals and localhost only: no DNS)', () => {
  it('checks IP literals without resolving', async () => {
    expect(await resolvesToPrivate('10.0.0.1')).toBe(true);
    expect(await resolvesToPrivate('[fe80::1]')).toBe(true);
    expect(await resolvesToPrivate('[::ffff:a00:1]')).toBe(true);
    expect(await resolvesToPrivate('8.8.8.8')).toBe(false);
    expect(await resolvesToPrivate('[2001:db8::1]')).toBe(false);
  });

  it('treats localhost as private', async () => {
    expect(await resolvesToPrivate('localhost')).toBe(true);
    expect(await resolvesToPrivate('LOCALHOST')).toBe(true);
  });
});

describe('hostOf', () => {
  it.each([
    ['registry.example.com', 'registry.example.com'],
    ['registry.example.com:5000', 'registry.example.com'],
    ['127.0.0.1:5000', '127.0.0.1'],
    ['localhost', 'localhost'],
    ['localhost:5000', 'localhost'],
    ['[::1]:5000', '::1'],
    ['[::1]', '::1'],
    ['[fe80::1]:443', 'fe80::1'],
    ['::1', '::1'],
  ])('%s → %s', (registry, host) => {
    expect(hostOf(registry)).toBe(host);
  });
});

describe('isLoopbackHost', () => {
  it.each(['localhost', 'LOCALHOST', '127.0.0.1', '127.1.2.3', '::1', '[::1]'])('%s is loopback', (host) => {
    expect(isLoopbackHost(host)).toBe(true);
  });

  it.each(['10.0.0.1', 'registry.example.com', 'localhost.example.com', '128.0.0.1', '::2', 'fe80::1'])('%s is not loopback', (host) => {
    expect(isLoopbackHost(host)).toBe(false);
  });
});
