/**
 * Progress for long work, drawn on a terminal only: per-item lines (a layer
 * being pulled, a phase of a boot) redrawn in place at most ten times a
 * second. When stderr is not a TTY, or output is JSON, it stays silent: logs
 * and scripts get the final result, not a stream of carriage returns.
 */

export interface ProgressItem {
  label: string;
  done: number;
  total?: number;
  status: string;
}

export interface ProgressOptions {
  stream?: NodeJS.WriteStream;
  enabled?: boolean;
}

export class Progress {
  private readonly items = new Map<string, ProgressItem>();
  private readonly stream: NodeJS.WriteStream;
  private readonly enabled: boolean;
  private drawnLines = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(options: ProgressOptions = {}) {
    this.stream = options.stream ?? process.stderr;
    this.enabled = (options.enabled ?? true) && this.stream.isTTY === true && process.env['TERM'] !== 'dumb';
  }

  update(key: string, item: Partial<ProgressItem> & { label?: string }): void {
    if (!this.enabled) return;
    const current = this.items.get(key) ?? { label: item.label ?? key, done: 0, status: '' };
    this.items.set(key, { ...current, ...item });
    this.schedule();
  }

  private schedule(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.draw();
    }, 100);
  }

  private draw(): void {
    if (!this.enabled) return;
    const width = Math.max(40, (this.stream.columns ?? 80) - 1);
    const lines = [...this.items.values()].map((item) => {
      const amount = item.total ? `${formatSize(item.done)} / ${formatSize(item.total)}` : item.done ? formatSize(item.done) : '';
      return `${item.label}  ${item.status}${amount ? `  ${amount}` : ''}`.slice(0, width);
    });
    let out = this.drawnLines > 0 ? `\x1b[${this.drawnLines}A` : '';
    for (const line of lines) out += `\x1b[2K${line}\n`;
    this.stream.write(out);
    this.drawnLines = lines.length;
  }

  /** Draw the final state and stop. */
  finish(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.enabled && this.items.size > 0) this.draw();
  }
}

export function formatSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}
