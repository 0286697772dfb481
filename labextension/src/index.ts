/**
 * jupyterlab-gpuslice: my batch jobs in a "GPU jobs" sidebar panel and my slice in the status bar,
 * through the notebook server's own token (see spawner/magic/server_extension.py).
 */
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { PageConfig } from '@jupyterlab/coreutils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import { listNotices } from './api';
import { fetchCellSource, IJob } from './format';
import { NoticeWatcher, pollNotices } from './notices';
import { JobsPanel } from './panel';
import { SliceStatus } from './status';

const GPU_ICON = new LabIcon({
  name: 'gpuslice:jobs',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
    '<path d="M3 7h18v10H3z" fill-opacity="0"/><path d="M2 6h20v12H2zm2 2v8h16V8zm2 2h4v4H6zm6 0h6v1h-6zm0 3h6v1h-6z' +
    'M5 4h2v2H5zm4 0h2v2H9zm4 0h2v2h-2zm4 0h2v2h-2zM5 18h2v2H5zm4 0h2v2H9zm4 0h2v2h-2zm4 0h2v2h-2z"/></g></svg>'
});

export const OPEN_COMMAND = 'gpuslice:open-jobs';
/** How often the lab asks for new GPU notices while its tab is shown. The monitor samples every
 * 5 s and a 'stop' waits a grace period (GPUMonitor.grace_s), so 20 s leaves time to react. */
const NOTICE_INTERVAL_MS = 20_000;

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyterlab-gpuslice:plugin',
  description: 'GPU jobs panel and GPU slice status for jupyterhub-gpuslice',
  autoStart: true,
  requires: [ILabShell],
  optional: [INotebookTracker, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell,
    notebooks: INotebookTracker | null,
    statusBar: IStatusBar | null
  ) => {
    const insertFetchCell = (job: IJob): boolean => {
      const current = notebooks?.currentWidget;
      if (!current) {
        return false;
      }
      NotebookActions.insertBelow(current.content);
      current.content.activeCell?.model.sharedModel.setSource(fetchCellSource(job));
      shell.activateById(current.id);
      return true;
    };
    const panel = new JobsPanel(insertFetchCell);
    panel.title.icon = GPU_ICON;
    shell.add(panel, 'left', { rank: 600 });

    app.commands.addCommand(OPEN_COMMAND, {
      label: 'Show GPU jobs',
      execute: () => shell.activateById(panel.id)
    });

    // The GPU monitor's notices (over slice, stopped), each shown once as a notification.
    const watcher = new NoticeWatcher(
      listNotices,
      (notice, level) =>
        Notification.emit(`GPU slice: ${notice.message}`, level, {
          autoClose: level === 'info' ? 30_000 : false
        }),
      window.localStorage,
      `gpuslice:notices-shown:${PageConfig.getBaseUrl()}`
    );
    pollNotices(watcher, NOTICE_INTERVAL_MS, document, error =>
      console.warn('gpuslice: the GPU notices could not be read', error)
    );

    if (statusBar) {
      statusBar.registerStatusItem('jupyterlab-gpuslice:slice', {
        item: new SliceStatus(() => void app.commands.execute(OPEN_COMMAND)),
        align: 'left',
        rank: 4
      });
    }
  }
};

export default plugin;
