/**
 * The GPU monitor's notices in JupyterLab: a slice over its memory, a process stopped, a server
 * stopped for being GPU-idle (spawner/service/telemetry/monitor.py writes them; the service serves
 * them at `GET notices`, the server extension passes them on for this server's user only).
 *
 * Each notice is shown once, as a JupyterLab notification. Which ones were shown is remembered in
 * the browser's storage, so a reload or a second tab does not show them again. This file holds
 * the logic only (no JupyterLab import) so jest tests it as it runs in the lab.
 */

/** One notice, as `GET notices` answers. */
export interface INotice {
  at: number;
  user: string;
  lease_id: string;
  kind: string;
  message: string;
}

/** How loud a notice is shown: JupyterLab's Notification types. */
export type NoticeLevel = 'warning' | 'error' | 'info';

/** The part of the browser's Storage the watcher needs (localStorage in the lab). */
export interface INoticeStore {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/**
 * The level of a notice, by its kind: over its slice is a warning (nothing was done yet);
 * processes stopped for using too much is an error (work was lost); a server stopped for
 * being GPU-idle is information (the user was not using it).
 */
export function noticeLevel(kind: string): NoticeLevel {
  if (kind.startsWith('over slice')) {
    return 'warning';
  }
  if (kind.startsWith('stopped')) {
    return kind.includes('idle') ? 'info' : 'error';
  }
  return 'info';
}

/** What tells two notices apart: the service gives them no id, and no two share all of these. */
export function noticeKey(notice: INotice): string {
  return `${notice.at}|${notice.lease_id}|${notice.kind}|${notice.message}`;
}

/** How many shown keys are remembered: more than the service keeps (GPUMonitor.notices_kept). */
export const REMEMBERED = 500;
/** On a browser that has shown nothing yet, notices older than this (seconds) are not shown. */
export const FIRST_LOOK_BACK_S = 24 * 3600;

interface IShownState {
  keys: string[];
  since: number;
}

/**
 * Shows each new notice once. `read` fetches the user's notices; `show` displays one; `store`
 * and `storeKey` are where the shown ones are remembered (per server, so two users of one
 * browser do not share them); `now` is the clock in seconds.
 */
export class NoticeWatcher {
  constructor(
    private readonly read: () => Promise<INotice[]>,
    private readonly show: (notice: INotice, level: NoticeLevel) => void,
    private readonly store: INoticeStore,
    private readonly storeKey: string,
    private readonly now: () => number = () => Date.now() / 1000
  ) {}

  /** Read the notices and show the ones not shown before, oldest first; returns those shown. */
  async poll(): Promise<INotice[]> {
    const notices = await this.read();
    const state = this.load();
    const shown = new Set(state.keys);
    const fresh = notices
      .filter(notice => notice.at >= state.since && !shown.has(noticeKey(notice)))
      .sort((a, b) => a.at - b.at);
    for (const notice of fresh) {
      this.show(notice, noticeLevel(notice.kind));
      state.keys.push(noticeKey(notice));
    }
    this.save(state);
    return fresh;
  }

  private load(): IShownState {
    const text = this.store.getItem(this.storeKey);
    if (text) {
      try {
        const state = JSON.parse(text) as IShownState;
        if (Array.isArray(state.keys) && typeof state.since === 'number') {
          return state;
        }
      } catch {
        // A damaged entry is replaced below, as on a first visit.
      }
    }
    return { keys: [], since: this.now() - FIRST_LOOK_BACK_S };
  }

  private save(state: IShownState): void {
    // Keys are added oldest first, so the ones dropped are the oldest shown.
    const keys = state.keys.slice(-REMEMBERED);
    this.store.setItem(this.storeKey, JSON.stringify({ keys, since: state.since }));
  }
}

/** The part of `document` the poller needs: whether the tab is shown, and when that changes. */
export interface IVisibility {
  readonly visibilityState: string;
  addEventListener(type: 'visibilitychange', listener: () => void): void;
  removeEventListener(type: 'visibilitychange', listener: () => void): void;
}

/**
 * Polls `watcher` now and every `intervalMs` while the tab is shown; a hidden tab does not poll,
 * and polls at once when shown again (so a notice waits at most one interval once it is seen).
 * A failed poll is reported to `failed` and retried at the next tick. Returns a stop function.
 */
export function pollNotices(
  watcher: NoticeWatcher,
  intervalMs: number,
  visibility: IVisibility,
  failed: (error: unknown) => void
): () => void {
  let running = false;
  const tick = async (): Promise<void> => {
    if (running || visibility.visibilityState === 'hidden') {
      return;
    }
    running = true;
    try {
      await watcher.poll();
    } catch (error) {
      failed(error);
    } finally {
      running = false;
    }
  };
  const onVisible = (): void => {
    if (visibility.visibilityState !== 'hidden') {
      void tick();
    }
  };
  const timer = setInterval(() => void tick(), intervalMs);
  visibility.addEventListener('visibilitychange', onVisible);
  void tick();
  return () => {
    clearInterval(timer);
    visibility.removeEventListener('visibilitychange', onVisible);
  };
}
