/**
 * How the panel and the status bar word a job and a slice: pure functions, unit-tested with jest.
 */

/** A job as the service's API describes it (the fields the panel shows). */
export interface IJob {
  id: string;
  name?: string;
  state: string;
  payload_kind?: string;
  gpus?: number;
  queue_position?: number | null;
  jobs_ahead?: number | null;
  waiting_reason?: string | null;
  reason?: string | null;
  created_at?: number | null;
  started_at?: number | null;
  ended_at?: number | null;
  attempts?: number;
}

/** The slice this server holds, as the server extension answers `gpuslice/slice`. */
export interface ISlice {
  profile: string;
  milli_gpu: number;
  gpus: number;
  memory_mib: number;
  model: string;
  simulated: boolean;
  memory_used_mib?: number | null;
}

/** States a job never leaves. */
export const FINAL_STATES = new Set(['succeeded', 'failed', 'cancelled']);

/** States in which a job can still be cancelled. */
export const CANCELLABLE_STATES = new Set(['queued', 'running', 'preempted']);

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

/** A share of a GPU in milli-GPU as a person says it: 125 -> "1/8", 1000 -> "1", 2500 -> "5/2". */
export function shareWords(milli: number): string {
  if (milli % 1000 === 0) {
    return String(milli / 1000);
  }
  const divisor = gcd(milli, 1000);
  return `${milli / divisor}/${1000 / divisor}`;
}

/** Memory in MiB as GB the way the profiles name it: 10240 -> "10 GB", 5120 -> "5 GB", 1536 -> "1.5 GB". */
export function memoryWords(mib: number): string {
  const gb = mib / 1024;
  const rounded = Number.isInteger(gb) ? String(gb) : gb.toFixed(1).replace(/\.0$/, '');
  return `${rounded} GB`;
}

/** The model's short name: "NVIDIA A100-SXM4-80GB" -> "A100", "A100-80GB" -> "A100". */
export function modelWords(model: string): string {
  const name = model.replace(/^NVIDIA\s+/i, '').trim();
  return name.split(/[-\s]/)[0] || name;
}

/** The status bar's words for the slice: "1/8 A100 · 10 GB", "2 × A100 · 160 GB", "CPU only". */
export function sliceLabel(slice: ISlice | null): string {
  if (!slice || slice.milli_gpu <= 0) {
    return 'CPU only';
  }
  const model = slice.model ? modelWords(slice.model) : slice.profile || 'GPU';
  const whole = slice.milli_gpu % 1000 === 0 && slice.milli_gpu > 1000;
  const share = whole ? `${slice.milli_gpu / 1000} × ${model}` : `${shareWords(slice.milli_gpu)} ${model}`;
  const parts = [share];
  if (slice.memory_mib > 0) {
    parts.push(
      slice.memory_used_mib !== null && slice.memory_used_mib !== undefined
        ? `${memoryWords(slice.memory_used_mib)} of ${memoryWords(slice.memory_mib)}`
        : memoryWords(slice.memory_mib)
    );
  }
  return parts.join(' · ') + (slice.simulated ? ' (simulated)' : '');
}

/** Seconds as h:mm:ss, as the magic's status line shows them. */
export function elapsedWords(seconds: number): string {
  const total = Math.max(0, Math.floor(seconds));
  const minutes = Math.floor(total / 60) % 60;
  const secs = total % 60;
  return `${Math.floor(total / 3600)}:${String(minutes).padStart(2, '0')}:${String(secs).padStart(2, '0')}`;
}

/** How long the job has run (so far, or in all), empty before it starts. */
export function runtimeWords(job: IJob, nowSeconds: number): string {
  if (!job.started_at) {
    return '';
  }
  const end = job.ended_at ?? (FINAL_STATES.has(job.state) ? job.started_at : nowSeconds);
  return elapsedWords(end - job.started_at);
}

/** The second line of a job's row: its queue position and reason, or why it ended. */
export function detailWords(job: IJob): string {
  if (job.state === 'queued') {
    const parts: string[] = [];
    if (job.queue_position !== null && job.queue_position !== undefined) {
      parts.push(
        `position ${job.queue_position}` + (job.jobs_ahead ? ` (${job.jobs_ahead} jobs ahead in the queue)` : '')
      );
    }
    if (job.waiting_reason) {
      parts.push(job.waiting_reason);
    }
    return parts.join(' · ');
  }
  if (job.state === 'preempted') {
    return `checkpointing: ${job.reason ?? ''}`.trim();
  }
  if (FINAL_STATES.has(job.state) && job.state !== 'succeeded') {
    return job.reason ?? '';
  }
  return '';
}

/** Whether "insert fetch cell" applies: a cell job that has ended with values to fetch (or its error). */
export function canFetch(job: IJob): boolean {
  return job.payload_kind !== 'script' && (job.state === 'succeeded' || job.state === 'failed');
}

/** The code of the cell "insert fetch cell" adds: the magic brings the values back into the kernel. */
export function fetchCellSource(job: IJob): string {
  return `%job fetch ${job.id}`;
}

/** The ids whose state changed between two listings (new jobs included), for highlighting. */
export function changedStates(before: IJob[], after: IJob[]): string[] {
  const previous = new Map(before.map(job => [job.id, job.state]));
  return after.filter(job => previous.get(job.id) !== job.state).map(job => job.id);
}
