/**
 * Following one job's log: each read starts where the last ended, so nothing is shown twice and
 * nothing is skipped, however the service cuts the log into chunks.
 */
import { ILogChunk } from './api';

export type LogReader = (jobId: string, offset: number) => Promise<ILogChunk>;

/** Bytes of UTF-8 text, as the service counts offsets. */
function utf8Length(text: string): number {
  return new TextEncoder().encode(text).length;
}

export class LogFollower {
  constructor(
    readonly jobId: string,
    private readonly read: LogReader
  ) {}

  /** The log as read so far. */
  text = '';
  /** Where the next read starts, in bytes. */
  offset = 0;
  /** Whether the job has ended and everything was read. */
  done = false;

  /** Read everything written since the last call (several chunks if need be); the new text. */
  async poll(maxChunks = 50): Promise<string> {
    let added = '';
    for (let index = 0; index < maxChunks; index++) {
      const chunk = await this.read(this.jobId, this.offset);
      if (chunk.next_offset !== this.offset + utf8Length(chunk.data)) {
        // The service always answers the bytes from the offset asked; anything else is a bug there.
        throw new Error(`log of ${this.jobId}: chunk at ${this.offset} does not end at ${chunk.next_offset}`);
      }
      added += chunk.data;
      this.offset = chunk.next_offset;
      if (!chunk.data) {
        this.done = chunk.done;
        break;
      }
    }
    this.text += added;
    return added;
  }
}
