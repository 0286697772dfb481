/**
 * The status bar's item: the slice this server holds ("1/8 A100 · 10 GB"); a click opens the panel.
 */
import { Widget } from '@lumino/widgets';

import { getSlice } from './api';
import { ISlice, sliceLabel } from './format';

/** How long after a failed read the slice is asked for again (the service may be restarting). */
export const RETRY_MS = 15000;

export class SliceStatus extends Widget {
  constructor(private readonly openPanel: () => void) {
    super();
    this.addClass('jp-gpuslice-status');
    this.node.title = 'The GPU slice of this server; click for your GPU jobs';
    this.node.textContent = 'GPU slice …';
    this.node.onclick = () => this.openPanel();
    void this.load();
  }

  /** The slice, once read. */
  slice: ISlice | null = null;

  private async load(): Promise<void> {
    try {
      this.slice = await getSlice();
      this.node.textContent = sliceLabel(this.slice);
      this.node.dataset.loaded = 'true';
    } catch (error) {
      this.node.textContent = 'GPU slice unknown';
      this.node.title = String((error as Error).message ?? error);
      window.setTimeout(() => void this.load(), RETRY_MS);
    }
  }
}
