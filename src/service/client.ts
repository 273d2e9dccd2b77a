import { InputError, UsageError } from '../util/errors.js';

/**
 * A small client of `cs serve` for the CLI (`cs jobs …`): the URL from
 * --url or CS_URL (default http://127.0.0.1:8080), the key from CS_API_KEY
 * (never a flag: flags show in process lists).
 */

export interface ApiClient {
  request<T>(method: string, path: string, body?: unknown): Promise<T>;
}

export function apiClient(url: string | undefined): ApiClient {
  const base = (url ?? process.env['CS_URL'] ?? 'http://127.0.0.1:8080').replace(/\/+$/, '');
  const key = process.env['CS_API_KEY'];
  if (!key) throw new UsageError('set CS_API_KEY to an API key of the service (`cs apikey create`)');
  return {
    async request<T>(method: string, path: string, body?: unknown): Promise<T> {
      let res: Response;
      try {
        res = await fetch(`${base}${path}`, {
          method,
          headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
          ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        });
      } catch (error) {
        throw new InputError(`cannot reach cs serve at ${base}: ${(error as Error).message}`, { code: 'UNREACHABLE', suggestions: ['start it with `cs serve`, or give --url'] });
      }
      const text = await res.text();
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch {
        throw new InputError(`cs serve answered ${res.status} with something that is not JSON`);
      }
      if (!res.ok) {
        const error = (parsed as { error?: { code?: string; message?: string } }).error;
        throw new InputError(`cs serve: ${error?.message ?? `HTTP ${res.status}`}`, { code: error?.code ?? 'HTTP' });
      }
      return parsed as T;
    },
  };
}
