// The "My jobs" page: fills the table from the REST API every two seconds, follows the selected
// job's log, and cancels it on request. Every text from the server goes in with textContent,
// never as HTML: job names, reasons and log lines are whatever their owners wrote.
//
// Calls authenticate with the login cookie the hub's OAuth left, and carry the page's XSRF token
// in X-XSRFToken: the service refuses cookie-authenticated calls without it.
"use strict";

(function () {
  const body = document.body;
  const apiUrl = body.dataset.apiUrl;
  const xsrfToken = body.dataset.xsrfToken;
  const terminalStates = new Set(document.currentScript.dataset.terminalStates.split(","));
  const POLL_MS = 2000;
  const RETRY_MS = 2000;

  const elements = {
    message: document.getElementById("message"),
    rows: document.getElementById("jobs-body"),
    empty: document.getElementById("jobs-empty"),
    loading: document.getElementById("jobs-loading"),
    detail: document.getElementById("job-detail"),
    detailId: document.getElementById("detail-id"),
    detailName: document.getElementById("detail-name"),
    detailState: document.getElementById("detail-state"),
    detailReason: document.getElementById("detail-reason"),
    detailExit: document.getElementById("detail-exit"),
    detailRuntime: document.getElementById("detail-runtime"),
    detailPlacement: document.getElementById("detail-placement"),
    cancel: document.getElementById("cancel-button"),
    result: document.getElementById("result-link"),
    log: document.getElementById("job-log"),
    logStatus: document.getElementById("log-status"),
  };

  // What the page shows now: the last list, the selected job, and the follow loop of its log.
  const view = { jobs: new Map(), selectedId: null, following: null, resultChecked: null };

  class APIError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const response = await fetch(apiUrl + path, {
      credentials: "same-origin",
      ...options,
      headers: { Accept: "application/json", "X-XSRFToken": xsrfToken, ...(options.headers || {}) },
    });
    let answer = null;
    try {
      answer = await response.json();
    } catch (error) {
      answer = null;
    }
    if (!response.ok) {
      const message = answer && answer.message ? answer.message : `${response.status} ${response.statusText}`;
      throw new APIError(response.status, message);
    }
    return answer;
  }

  function showMessage(text) {
    elements.message.textContent = text || "";
    elements.message.hidden = !text;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  function duration(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    const parts = [];
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]]) {
      if (seconds >= size || (unit === "s" && parts.length === 0)) {
        parts.push(`${Math.floor(seconds / size)}${unit}`);
        seconds %= size;
      }
    }
    return parts.join(" ");
  }

  function runtime(job) {
    if (!job.started_at) {
      return "";
    }
    const end = job.ended_at || Date.now() / 1000;
    return duration(end - job.started_at);
  }

  function queueText(job) {
    if (job.state !== "queued") {
      return "";
    }
    const position = job.queue_position === null || job.queue_position === undefined ? "" : `#${job.queue_position}`;
    const reason = job.waiting_reason || job.reason || "";
    return [position, reason].filter(Boolean).join(" · ");
  }

  function cell(row, className, text) {
    const td = document.createElement("td");
    td.className = className;
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function renderRows(jobs) {
    const rows = jobs.map((job) => {
      const row = document.createElement("tr");
      row.dataset.jobId = job.id;
      row.className = "job-row";
      if (job.id === view.selectedId) {
        row.classList.add("selected");
      }
      const idCell = document.createElement("td");
      idCell.className = "job-id";
      const link = document.createElement("a");
      link.href = `?job=${encodeURIComponent(job.id)}`;
      link.textContent = job.id;
      link.addEventListener("click", (event) => {
        event.preventDefault();
        select(job.id);
      });
      idCell.appendChild(link);
      row.appendChild(idCell);
      cell(row, "job-name", job.name);
      const state = cell(row, "job-state", job.state);
      state.dataset.state = job.state;
      cell(row, "job-position", queueText(job));
      cell(row, "job-gpus", String(job.gpus));
      cell(row, "job-submitted", new Date(job.created_at * 1000).toLocaleString());
      cell(row, "job-runtime", runtime(job));
      row.addEventListener("click", (event) => {
        if (event.target.tagName !== "A") {
          select(job.id);
        }
      });
      return row;
    });
    elements.rows.replaceChildren(...rows);
    elements.empty.hidden = jobs.length > 0;
    elements.loading.hidden = true;
  }

  function renderDetail() {
    const job = view.jobs.get(view.selectedId);
    if (!job) {
      return;
    }
    elements.detail.hidden = false;
    elements.detailId.textContent = job.id;
    elements.detailName.textContent = job.name;
    elements.detailState.textContent = job.state;
    elements.detailState.dataset.state = job.state;
    elements.detailReason.textContent = queueText(job) || job.reason || "";
    elements.detailExit.textContent = job.exit_code === null || job.exit_code === undefined ? "" : String(job.exit_code);
    elements.detailRuntime.textContent = runtime(job);
    const gpus = (job.gpu_uuids || []).join(", ");
    elements.detailPlacement.textContent = job.node ? `${job.node}: ${gpus}` : `${job.gpus} GPU(s), not placed yet`;
    elements.cancel.disabled = terminalStates.has(job.state);
    if (terminalStates.has(job.state) && view.resultChecked !== job.id) {
      view.resultChecked = job.id;
      showResultLink(job.id);
    }
  }

  // Reloads the list (and a selected job that is not in it); false when that job cannot be read.
  async function refresh() {
    const answer = await api("jobs");
    view.jobs = new Map(answer.jobs.map((job) => [job.id, job]));
    renderRows(answer.jobs);
    if (view.selectedId !== null && !view.jobs.has(view.selectedId)) {
      // Not one of this user's jobs: an admin may still open anyone's (the admin page links
      // here); anyone else reads the service's refusal.
      try {
        const single = await api(`jobs/${encodeURIComponent(view.selectedId)}`);
        view.jobs.set(single.job.id, single.job);
      } catch (error) {
        showMessage(`Job ${view.selectedId}: ${error.message}`);
        return false;
      }
    }
    renderDetail();
    return true;
  }

  async function pollForever() {
    for (;;) {
      try {
        if (await refresh()) {
          showMessage("");
        }
      } catch (error) {
        showMessage(`Could not load your jobs: ${error.message}`);
      }
      await sleep(POLL_MS);
    }
  }

  // Appends the log from the start, then waits for more (follow=1 answers as soon as there is
  // some, or empty after a while) until the service says the log is complete.
  async function followLog(jobId, controller) {
    let offset = 0;
    elements.logStatus.textContent = "(following)";
    while (!controller.signal.aborted) {
      let answer;
      try {
        answer = await api(`jobs/${encodeURIComponent(jobId)}/logs?offset=${offset}&follow=1`, {
          signal: controller.signal,
        });
      } catch (error) {
        if (controller.signal.aborted) {
          return;
        }
        if (error.status === 403 || error.status === 404) {
          elements.logStatus.textContent = `(no log: ${error.message})`;
          return;
        }
        elements.logStatus.textContent = `(could not read the log: ${error.message}; trying again)`;
        await sleep(RETRY_MS);
        continue;
      }
      if (controller.signal.aborted) {
        return;
      }
      if (answer.data) {
        const atBottom = elements.log.scrollTop + elements.log.clientHeight >= elements.log.scrollHeight - 4;
        elements.log.append(document.createTextNode(answer.data));
        if (atBottom) {
          elements.log.scrollTop = elements.log.scrollHeight;
        }
      }
      offset = answer.next_offset;
      if (answer.done) {
        elements.logStatus.textContent = `(complete: the job ${answer.state})`;
        return;
      }
      elements.logStatus.textContent = "(following)";
    }
  }

  async function showResultLink(jobId) {
    try {
      const result = await api(`jobs/${encodeURIComponent(jobId)}/result`);
      // values_available is absent where the service does not keep result values.
      if (result && result.values_available === true && view.selectedId === jobId) {
        elements.result.href = `${apiUrl}jobs/${encodeURIComponent(jobId)}/result/values`;
        elements.result.hidden = false;
      }
    } catch (error) {
      showMessage(`Could not read the result of job ${jobId}: ${error.message}`);
    }
  }

  function select(jobId) {
    if (view.following) {
      view.following.abort();
    }
    view.selectedId = jobId;
    view.resultChecked = null;
    elements.log.replaceChildren();
    elements.result.hidden = true;
    elements.result.removeAttribute("href");
    for (const row of elements.rows.querySelectorAll("tr")) {
      row.classList.toggle("selected", row.dataset.jobId === jobId);
    }
    const url = new URL(window.location.href);
    url.searchParams.set("job", jobId);
    window.history.replaceState(null, "", url);
    view.following = new AbortController();
    followLog(jobId, view.following);
    renderDetail();
  }

  elements.cancel.addEventListener("click", async () => {
    const jobId = view.selectedId;
    if (jobId === null || !window.confirm(`Cancel job ${jobId}? A running job is stopped.`)) {
      return;
    }
    elements.cancel.disabled = true;
    try {
      const answer = await api(`jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
      view.jobs.set(jobId, answer.job);
      renderDetail();
      await refresh();
      showMessage("");
    } catch (error) {
      showMessage(`Could not cancel job ${jobId}: ${error.message}`);
      renderDetail();
    }
  });

  const asked = new URL(window.location.href).searchParams.get("job");
  if (asked) {
    select(asked);
  }
  pollForever();
})();
