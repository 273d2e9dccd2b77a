import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';

/**
 * Address checks for the registry client's safety rules: a registry on the
 * public network must not send cs (and its credentials) to loopback,
 * private or link-local addresses through a token realm or an upload
 * location.
 */

function ipv4Parts(ip: string): number[] {
  return ip.split('.').map(Number);
}

export function isPrivateAddress(ip: string): boolean {
  const unbracketed = ip.replace(/^\[|\]$/g, '');
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(unbracketed);
  const address = mapped?.[1] ?? unbracketed;
  if (isIP(address) === 4) {
    const [a = 0, b = 0] = ipv4Parts(address);
    return (
      a === 0 ||
      a === 10 ||
      a === 127 ||
      (a === 100 && b >= 64 && b <= 127) ||
      (a === 169 && b === 254) ||
      (a === 172 && b >= 16 && b <= 31) ||
      (a === 192 && b === 168)
    );
  }
  if (isIP(address) === 6) {
    const lower = address.toLowerCase();
    return lower === '::1' || lower === '::' || /^f[cd]/.test(lower) || /^fe[89ab]/.test(lower);
  }
  return false;
}

/** Host part of `host[:port]` or `[v6]:port`. */
export function hostOf(registry: string): string {
  if (registry.startsWith('[')) return registry.slice(1, registry.indexOf(']'));
  const colon = registry.lastIndexOf(':');
  return colon > 0 && registry.indexOf(':') === colon ? registry.slice(0, colon) : registry;
}

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || (isIP(h) === 4 && h.startsWith('127.'));
}

/** True when `hostname` is, or resolves to, a private, loopback or link-local address. */
export async function resolvesToPrivate(hostname: string): Promise<boolean> {
  const host = hostname.replace(/^\[|\]$/g, '');
  if (isIP(host)) return isPrivateAddress(host);
  if (host.toLowerCase() === 'localhost') return true;
  try {
    const addresses = await lookup(host, { all: true });
    return addresses.some((a) => isPrivateAddress(a.address));
  } catch {
    return false; // unresolvable: the request itself will fail with a clear error
  }
}
