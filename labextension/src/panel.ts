/**
 * The "GPU jobs" sidebar panel: my jobs with their state, queue position and reason, runtime and
 * GPUs, refreshed while the panel is shown; a selected job's live log; cancel; insert fetch cell.
 */
import { Widget } from '@lumino/widgets';

import { cancelJob, listJobs, readLog } from './api';
import {
  CANCELLABLE_STATES,
  canFetch,
  changedStates,
  detailWords,
  IJob,
  runtimeWords
} from './format';
import { LogFollower } from './log';

/** How often the shown panel asks for the jobs and the selected job's log. */
export const POLL_MS = 2000;

/** Adds the code of a fetch cell to the current notebook; false when there is none. */
export type FetchCellInserter = (job: IJob) => boolean;

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

export class JobsPanel extends Widget {
  constructor(private readonly insertFetchCell: FetchCellInserter) {
    super();
    this.id = 'gpuslice-jobs';
    this.addClass('jp-gpuslice-panel');
    this.title.caption = 'GPU jobs';
    const header = element('div', 'jp-gpuslice-header');
    header.appendChild(element('h2', 'jp-gpuslice-heading', 'GPU jobs'));
    this.message = element('div', 'jp-gpuslice-message');
    this.list = element('ul', 'jp-gpuslice-jobs');
    this.detail = element('div', 'jp-gpuslice-detail');
    this.node.append(header, this.message, this.list, this.detail);
  }

  /** The jobs of the last listing, newest first. */
  jobs: IJob[] = [];
  /** The selected job's id, if any. */
  selected: string | null = null;

  protected onAfterShow(): void {
    void this.refresh();
    this.startPolling();
  }

  protected onAfterAttach(): void {
    if (this.isVisible) {
      void this.refresh();
      this.startPolling();
    }
  }

  protected onBeforeHide(): void {
    this.stopPolling();
  }

  protected onBeforeDetach(): void {
    this.stopPolling();
  }

  dispose(): void {
    this.stopPolling();
    super.dispose();
  }

  /** Read the jobs (and the selected job's new log) and show them. */
  async refresh(): Promise<void> {
    if (this.refreshing) {
      return;
    }
    this.refreshing = true;
    try {
      const jobs = await listJobs();
      const changed = new Set(changedStates(this.jobs, jobs));
      this.jobs = jobs;
      this.setMessage(jobs.length ? '' : 'No jobs yet: put %%submit on top of a cell to send it to the queue.');
      this.renderList(changed);
      await this.followLog();
    } catch (error) {
      this.setMessage(String((error as Error).message ?? error), true);
    } finally {
      this.refreshing = false;
    }
  }

  /** Show one job's detail and follow its log. */
  async select(jobId: string): Promise<void> {
    if (this.selected !== jobId) {
      this.selected = jobId;
      this.follower = new LogFollower(jobId, readLog);
      this.renderDetail(true);
    }
    this.renderList(new Set());
    await this.followLog();
  }

  private async followLog(): Promise<void> {
    const follower = this.follower;
    if (!follower || follower.done) {
      this.renderDetail(false);
      return;
    }
    const added = await follower.poll();
    if (follower !== this.follower) {
      return; // another job was selected meanwhile
    }
    this.renderDetail(false);
    if (added && this.logNode) {
      this.logNode.scrollTop = this.logNode.scrollHeight;
    }
  }

  private renderList(changed: Set<string>): void {
    const now = Date.now() / 1000;
    this.list.replaceChildren(
      ...this.jobs.map(job => {
        const row = element('li', 'jp-gpuslice-job');
        row.dataset.jobId = job.id;
        row.dataset.state = job.state;
        row.tabIndex = 0;
        if (job.id === this.selected) {
          row.classList.add('jp-mod-selected');
        }
        if (changed.has(job.id)) {
          row.classList.add('jp-gpuslice-changed');
        }
        const top = element('div', 'jp-gpuslice-job-top');
        top.append(
          element('span', 'jp-gpuslice-job-name', job.name || job.id),
          element('span', `jp-gpuslice-state jp-gpuslice-state-${job.state}`, job.state)
        );
        const facts = element('div', 'jp-gpuslice-job-facts');
        const runtime = runtimeWords(job, now);
        facts.append(
          element('span', 'jp-gpuslice-job-id', job.id),
          element('span', 'jp-gpuslice-job-gpus', `${job.gpus ?? 0} GPU${job.gpus === 1 ? '' : 's'}`),
          element('span', 'jp-gpuslice-job-runtime', runtime)
        );
        row.append(top, facts);
        const detail = detailWords(job);
        if (detail) {
          row.appendChild(element('div', 'jp-gpuslice-job-detail', detail));
        }
        row.onclick = () => void this.select(job.id);
        row.onkeydown = event => {
          if (event.key === 'Enter') {
            void this.select(job.id);
          }
        };
        return row;
      })
    );
  }

  private renderDetail(rebuild: boolean): void {
    const job = this.jobs.find(candidate => candidate.id === this.selected);
    if (!this.selected) {
      this.detail.replaceChildren();
      this.logNode = null;
      return;
    }
    if (rebuild || !this.logNode) {
      const title = element('div', 'jp-gpuslice-detail-title', this.selected);
      const actions = element('div', 'jp-gpuslice-actions');
      this.cancelButton = element('button', 'jp-Button jp-mod-styled jp-mod-warn jp-gpuslice-cancel', 'Cancel job');
      this.cancelButton.onclick = () => void this.cancelSelected();
      this.fetchButton = element(
        'button',
        'jp-Button jp-mod-styled jp-mod-accept jp-gpuslice-fetch',
        'Insert fetch cell'
      );
      this.fetchButton.onclick = () => this.insertFetch();
      actions.append(this.cancelButton, this.fetchButton);
      this.logNode = element('pre', 'jp-gpuslice-log');
      this.detail.replaceChildren(title, actions, this.logNode);
    }
    if (this.cancelButton) {
      this.cancelButton.disabled = !job || !CANCELLABLE_STATES.has(job.state);
    }
    if (this.fetchButton) {
      this.fetchButton.disabled = !job || !canFetch(job);
    }
    if (this.logNode && this.follower) {
      this.logNode.textContent = this.follower.text || '(no output yet)';
    }
  }

  private async cancelSelected(): Promise<void> {
    if (!this.selected) {
      return;
    }
    try {
      await cancelJob(this.selected);
    } catch (error) {
      this.setMessage(String((error as Error).message ?? error), true);
      return;
    }
    await this.refresh();
  }

  private insertFetch(): void {
    const job = this.jobs.find(candidate => candidate.id === this.selected);
    if (job && !this.insertFetchCell(job)) {
      this.setMessage('Open a notebook first: the fetch cell goes below its active cell.', true);
    }
  }

  private setMessage(text: string, error = false): void {
    this.message.textContent = text;
    this.message.classList.toggle('jp-gpuslice-error', error);
  }

  private startPolling(): void {
    if (this.timer === null) {
      this.timer = window.setInterval(() => void this.refresh(), POLL_MS);
    }
  }

  private stopPolling(): void {
    if (this.timer !== null) {
      window.clearInterval(this.timer);
      this.timer = null;
    }
  }

  private readonly message: HTMLDivElement;
  private readonly list: HTMLUListElement;
  private readonly detail: HTMLDivElement;
  private logNode: HTMLPreElement | null = null;
  private cancelButton: HTMLButtonElement | null = null;
  private fetchButton: HTMLButtonElement | null = null;
  private follower: LogFollower | null = null;
  private timer: number | null = null;
  private refreshing = false;
}
