import type { CopyEvent } from '../oci/copy.js';
import { Progress } from '../util/progress.js';

/** Per-layer progress lines for pulls and pushes (terminal only). */
export function transferProgress(enabled: boolean): { onEvent: (event: CopyEvent) => void; finish: () => void } {
  const progress = new Progress({ enabled });
  const short = (digest: string) => digest.replace(/^sha256:/, '').slice(0, 12);
  return {
    onEvent: (event) => {
      const key = event.descriptor.digest;
      const label = short(key);
      const total = event.descriptor.size;
      if (event.kind === 'skip') progress.update(key, { label, status: event.reason === 'mounted' ? 'mounted' : 'already there', done: total, total });
      else if (event.kind === 'start') progress.update(key, { label, status: 'transferring', done: 0, total });
      else if (event.kind === 'progress') progress.update(key, { label, status: 'transferring', done: event.bytes, total });
      else progress.update(key, { label, status: 'done', done: total, total });
    },
    finish: () => progress.finish(),
  };
}
