/**
 * Calls to the notebook server's gpuslice handlers (spawner/magic/server_extension.py), which call
 * the service with the server's own token: the browser holds no token of the hub's.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IJob, ISlice } from './format';
import { INotice } from './notices';

/** One chunk of a job's log, as `GET jobs/{id}/logs` answers. */
export interface ILogChunk {
  data: string;
  next_offset: number;
  done: boolean;
}

/** The error the panel shows: the service's own sentence when it gave one. */
export class GPUSliceError extends Error {}

async function call<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'gpuslice', path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new GPUSliceError(`the notebook server cannot be reached: ${error}`);
  }
  const text = await response.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    throw new GPUSliceError(body?.message ?? `HTTP ${response.status} from ${path}`);
  }
  return body as T;
}

/** The slice this server holds. */
export function getSlice(): Promise<ISlice> {
  return call<ISlice>('slice');
}

/** The user's jobs, newest first. */
export async function listJobs(): Promise<IJob[]> {
  return (await call<{ jobs: IJob[] }>('api/jobs')).jobs;
}

/** Log text from `offset` on (never waiting: the panel polls). */
export function readLog(jobId: string, offset: number): Promise<ILogChunk> {
  return call<ILogChunk>(`api/jobs/${encodeURIComponent(jobId)}/logs?offset=${offset}`);
}

/** Cancel a job; the job after. */
export async function cancelJob(jobId: string): Promise<IJob> {
  return (await call<{ job: IJob }>(`api/jobs/${encodeURIComponent(jobId)}/cancel`, { method: 'POST' })).job;
}

/** The GPU monitor's notices for this server's user, newest first (the server extension asks
 * for that user only, whoever's token it holds). */
export async function listNotices(): Promise<INotice[]> {
  return (await call<{ notices: INotice[] }>('api/notices')).notices;
}
