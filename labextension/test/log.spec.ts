import { ILogChunk } from '../src/api';
import { LogFollower } from '../src/log';

/** A log as the service serves it: bytes from an offset, at most `chunk` of them at a time. */
function service(log: () => string, chunk: number, done: () => boolean) {
  const asked: number[] = [];
  const read = async (_jobId: string, offset: number): Promise<ILogChunk> => {
    asked.push(offset);
    const bytes = new TextEncoder().encode(log());
    // Cut on a character boundary, as the service does: never before a continuation byte.
    let end = Math.min(chunk, bytes.length - offset);
    while (end > 0 && offset + end < bytes.length && (bytes[offset + end] & 0xc0) === 0x80) {
      end--;
    }
    const part = bytes.slice(offset, offset + end);
    const data = new TextDecoder().decode(part);
    return { data, next_offset: offset + end, done: done() && offset + end >= bytes.length };
  };
  return { read, asked };
}

describe('following a log', () => {
  it('reads every chunk in order, each from where the last ended, and nothing twice', async () => {
    let text = 'step 1\n';
    let ended = false;
    const { read, asked } = service(() => text, 4, () => ended);
    const follower = new LogFollower('job-1', read);
    expect(await follower.poll()).toBe('step 1\n');
    text += 'step 2 — ünïcode\n';
    expect(await follower.poll()).toBe('step 2 — ünïcode\n');
    expect(follower.done).toBe(false);
    ended = true;
    expect(await follower.poll()).toBe('');
    expect(follower.done).toBe(true);
    expect(follower.text).toBe('step 1\nstep 2 — ünïcode\n');
    expect(asked[0]).toBe(0);
    expect(new Set(asked.slice(0, -1)).size).toBeGreaterThan(3);
  });

  it('refuses a chunk that does not end where its bytes say', async () => {
    const follower = new LogFollower('job-2', async () => ({ data: 'abc', next_offset: 10, done: false }));
    await expect(follower.poll()).rejects.toThrow('does not end at 10');
  });
});
