import {
  FIRST_LOOK_BACK_S,
  INotice,
  INoticeStore,
  IVisibility,
  NoticeLevel,
  noticeLevel,
  NoticeWatcher,
  pollNotices,
  REMEMBERED
} from '../src/notices';

const NOW = 1_800_000_000;

function notice(at: number, kind = 'over slice (warn)', message = `over at ${at}`): INotice {
  return { at, user: 'alice', lease_id: `lease-${at}`, kind, message };
}

/** localStorage as a browser keeps it: strings by key, shared by every watcher on it. */
class MemoryStore implements INoticeStore {
  items = new Map<string, string>();
  getItem(key: string): string | null {
    return this.items.has(key) ? (this.items.get(key) as string) : null;
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value);
  }
}

function watcher(served: () => INotice[], store: INoticeStore, key = '/user/alice/') {
  const shown: Array<[INotice, NoticeLevel]> = [];
  const watch = new NoticeWatcher(
    async () => served(),
    (n, level) => shown.push([n, level]),
    store,
    key,
    () => NOW
  );
  return { watch, shown };
}

describe('notice levels', () => {
  it('warns for over slice, errors for processes stopped, informs for an idle server stopped', () => {
    expect(noticeLevel('over slice (warn)')).toBe('warning');
    expect(noticeLevel('over slice (stop)')).toBe('warning');
    expect(noticeLevel('stopped')).toBe('error');
    expect(noticeLevel('stopped (GPU idle)')).toBe('info');
    expect(noticeLevel('something new')).toBe('info');
  });
});

describe('showing each notice once', () => {
  it('shows new notices oldest first, and nothing again on the next poll', async () => {
    const store = new MemoryStore();
    let served = [notice(NOW - 5), notice(NOW - 10)]; // the service answers newest first
    const { watch, shown } = watcher(() => served, store);
    await watch.poll();
    expect(shown.map(([n]) => n.at)).toEqual([NOW - 10, NOW - 5]);
    expect(shown.map(([, level]) => level)).toEqual(['warning', 'warning']);
    await watch.poll();
    expect(shown).toHaveLength(2);
    served = [notice(NOW - 1, 'stopped'), ...served];
    expect((await watch.poll()).map(n => n.at)).toEqual([NOW - 1]);
    expect(shown[2][1]).toBe('error');
  });

  it('does not repeat after a reload (a new watcher on the same storage)', async () => {
    const store = new MemoryStore();
    const served = [notice(NOW - 5)];
    const first = watcher(() => served, store);
    await first.watch.poll();
    const reloaded = watcher(() => served, store);
    await reloaded.watch.poll();
    expect(first.shown).toHaveLength(1);
    expect(reloaded.shown).toHaveLength(0);
  });

  it('keeps another server (another user) apart on the same browser', async () => {
    const store = new MemoryStore();
    const served = [notice(NOW - 5)];
    await watcher(() => served, store, '/user/alice/').watch.poll();
    const bob = watcher(() => served, store, '/user/bob/');
    await bob.watch.poll();
    expect(bob.shown).toHaveLength(1);
  });

  it('tells apart two notices of one lease at the same time with other kinds', async () => {
    const store = new MemoryStore();
    const served = [notice(NOW - 5, 'stopped', 'killed'), notice(NOW - 5, 'over slice (stop)', 'over')];
    const { watch, shown } = watcher(() => served, store);
    await watch.poll();
    expect(shown).toHaveLength(2);
  });

  it('on a first visit, leaves out notices older than a day', async () => {
    const store = new MemoryStore();
    const served = [notice(NOW - 60), notice(NOW - FIRST_LOOK_BACK_S - 60)];
    const { watch, shown } = watcher(() => served, store);
    await watch.poll();
    expect(shown.map(([n]) => n.at)).toEqual([NOW - 60]);
  });

  it('remembers a bounded number of keys, dropping the oldest', async () => {
    const store = new MemoryStore();
    const served = Array.from({ length: REMEMBERED + 20 }, (_, i) => notice(NOW - 1000 + i));
    const { watch } = watcher(() => served, store);
    await watch.poll();
    const kept = JSON.parse(store.getItem('/user/alice/') as string).keys as string[];
    expect(kept).toHaveLength(REMEMBERED);
    expect(kept[0].startsWith(`${NOW - 1000 + 20}|`)).toBe(true);
  });

  it('starts over from a damaged entry instead of failing', async () => {
    const store = new MemoryStore();
    store.setItem('/user/alice/', '{not json');
    const { watch, shown } = watcher(() => [notice(NOW - 5)], store);
    await watch.poll();
    expect(shown).toHaveLength(1);
  });
});

class FakeDocument implements IVisibility {
  visibilityState = 'visible';
  listeners: Array<() => void> = [];
  addEventListener(_type: 'visibilitychange', listener: () => void): void {
    this.listeners.push(listener);
  }
  removeEventListener(_type: 'visibilitychange', listener: () => void): void {
    this.listeners = this.listeners.filter(l => l !== listener);
  }
  become(state: string): void {
    this.visibilityState = state;
    this.listeners.forEach(l => l());
  }
}

describe('polling', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  async function settle(): Promise<void> {
    for (let i = 0; i < 5; i++) {
      await Promise.resolve();
    }
  }

  it('polls at once and every interval while shown, never while hidden, at once when shown again', async () => {
    const store = new MemoryStore();
    let reads = 0;
    const watch = new NoticeWatcher(
      async () => {
        reads++;
        return [];
      },
      () => undefined,
      store,
      'k',
      () => NOW
    );
    const page = new FakeDocument();
    const stop = pollNotices(watch, 30_000, page, () => undefined);
    await settle();
    expect(reads).toBe(1);
    jest.advanceTimersByTime(30_000);
    await settle();
    expect(reads).toBe(2);
    page.become('hidden');
    jest.advanceTimersByTime(90_000);
    await settle();
    expect(reads).toBe(2);
    page.become('visible');
    await settle();
    expect(reads).toBe(3);
    stop();
    jest.advanceTimersByTime(90_000);
    page.become('visible');
    await settle();
    expect(reads).toBe(3);
  });

  it('reports a failed poll and tries again at the next tick', async () => {
    const failures: unknown[] = [];
    let fail = true;
    const shown: INotice[] = [];
    const watch = new NoticeWatcher(
      async () => {
        if (fail) {
          throw new Error('service down');
        }
        return [notice(NOW - 1)];
      },
      n => shown.push(n),
      new MemoryStore(),
      'k',
      () => NOW
    );
    const stop = pollNotices(watch, 1000, new FakeDocument(), error => failures.push(error));
    await settle();
    expect(failures).toHaveLength(1);
    fail = false;
    jest.advanceTimersByTime(1000);
    await settle();
    expect(shown).toHaveLength(1);
    stop();
  });
});
