// jobctl's web view: the jobs table and a job's detail, updated in place from
// the server's event stream (/api/stream). Plain script, no build step.
// Every name and message from the database goes into the page with
// textContent, never as HTML.
// The page only places texts: the server renders every one of them (change
// texts, log lines, durations, counts) with the CLI's own functions
// (jobctl/serve/stream.py, "Texts"). The one thing computed here is a running
// job's clock, ticking each second without asking the server (`elapsed`).
"use strict";

(function () {
  const STATUSES = ["pending", "running", "completed", "failed", "cancelled"];
  const TIMES = ["started_at", "completed_at", "duration_text"]; // what a message says of a job's times
  const DONE = ["percent_done", "done_text"]; // ... and of its finished children
  const COLUMNS = ["name", "status", "progress", "done", "started", "duration"];
  const MAX_LOG = 500;
  const MAX_EVENTS = 100;
  const token = new URLSearchParams(location.search).get("token");
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  // ------------------------------------------------------------ helpers
  function api(path) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    return fetch(path, { headers: headers, cache: "no-store" }).then(async (response) => {
      let body = null;
      try {
        body = await response.json();
      } catch (e) {
        body = null;
      }
      if (!response.ok) {
        throw new Error((body && body.error) || response.status + " " + response.statusText);
      }
      return body;
    });
  }

  // Invisible characters (bidi overrides, zero-width, line separators) shown escaped,
  // as `\u202e`: the same ones the CLI escapes (jobctl/console.py).
  const INVISIBLE = /[\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]/g;
  const visible = (text) =>
    typeof text === "string" ? text.replace(INVISIBLE, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0")) : text;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = visible(text);
    return node;
  }

  function setText(node, text) {
    text = visible(text);
    if (node.textContent !== text) node.textContent = text;
  }

  function problem(message) {
    const box = $("problem");
    box.hidden = !message;
    setText(box, message || "");
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (isNaN(d.getTime())) return iso;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + clock(iso);
  }

  function clock(iso) {
    const d = new Date(iso);
    if (isNaN(d.getTime())) return iso || "";
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  // A running job's clock, from its start to now: the server renders every
  // finished job's duration (duration_text), but a running one's grows each
  // second, and asking the server each second for each row would cost far more
  // than this (the format of jobctl.model.duration_text: 42s, 1m35s, 2h01m).
  function elapsed(startedAt) {
    let s = Math.max(0, Math.floor((Date.now() - Date.parse(startedAt)) / 1000));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    s %= 60;
    if (h) return h + "h" + pad(m) + "m";
    if (m) return m + "m" + pad(s) + "s";
    return s + "s";
  }

  function duration(job) {
    if (job.status === "running" && job.started_at) return elapsed(job.started_at);
    return job.duration_text || "—";
  }

  function copy(job, m, keys) {
    for (const k of keys) job[k] = m[k];
  }

  function progressOf(m) {
    if (!m.total_children) return null;
    const p = { total_children: m.total_children, progress_text: m.progress_text };
    for (const s of STATUSES) p[s + "_children"] = m[s + "_children"];
    return p;
  }

  function applyProgress(job, m) {
    job.status = m.status;
    copy(job, m, TIMES);
    copy(job, m, DONE);
    job.progress = progressOf(m);
  }

  function setBadge(badge, status) {
    setText(badge, status || "…");
    badge.className = "badge" + (STATUSES.includes(status) ? " " + status : "");
  }

  // The bar of finished children (by final status) and the percentage beside it.
  function doneBar() {
    const root = el("span", "donebar");
    const bar = el("span", "bar");
    bar.setAttribute("role", "img");
    const parts = {};
    for (const s of ["completed", "failed", "cancelled", "running"]) {
      parts[s] = el("span", s);
      bar.appendChild(parts[s]);
    }
    const pct = el("span", "pct");
    root.append(bar, pct);
    return {
      root: root,
      update(job) {
        const p = job.progress;
        root.hidden = !p || job.percent_done === null || job.percent_done === undefined;
        if (root.hidden) return;
        for (const s in parts) parts[s].style.width = (100 * p[s + "_children"]) / p.total_children + "%";
        setText(pct, job.percent_done + "%");
        bar.setAttribute("aria-label", job.done_text);
      },
    };
  }

  // ---------------------------------------------------------------- rows
  function makeRow(job, open) {
    const tr = el("tr");
    tr.tabIndex = 0;
    tr.dataset.jobId = job.id;
    const cells = {};
    for (const k of COLUMNS) {
      cells[k] = el("td", k);
      tr.appendChild(cells[k]);
    }
    cells.label = el("span", "label");
    cells.id = el("span", "id");
    cells.name.append(cells.label, cells.id);
    cells.badge = el("span", "badge");
    cells.status.appendChild(cells.badge);
    cells.bar = doneBar();
    cells.done.appendChild(cells.bar.root);
    tr.addEventListener("click", () => open(job.id));
    tr.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        open(job.id);
      }
    });
    const row = { tr: tr, cells: cells, job: job };
    fillRow(row);
    return row;
  }

  // `waiting on P.2` (the server's text) while the job is pending.
  function waiting(job) {
    return job.status === "pending" ? job.waiting_text : null;
  }

  function fillRow(row) {
    const c = row.cells;
    const job = row.job;
    setText(c.label, job.name === null || job.name === undefined ? "…" : job.name);
    setText(c.id, job.id);
    setBadge(c.badge, job.status);
    setText(c.progress, job.progress ? job.progress.progress_text : waiting(job) || "—");
    c.bar.update(job);
    setText(c.started, when(job.started_at));
    setText(c.duration, duration(job));
  }

  // Changes are applied to the data at once and drawn once per frame.
  const dirtyRows = new Set();
  let detailDirty = false;
  let drawScheduled = false;

  function redraw(row) {
    if (row) dirtyRows.add(row);
    if (drawScheduled) return;
    drawScheduled = true;
    const run = () => {
      if (!drawScheduled) return;
      drawScheduled = false;
      for (const r of dirtyRows) fillRow(r);
      dirtyRows.clear();
      if (detailDirty) {
        detailDirty = false;
        drawDetail();
      }
    };
    requestAnimationFrame(run);
    setTimeout(run, 100); // a hidden tab gets no animation frames
  }

  // ----------------------------------------------------------- jobs table
  const top = { jobs: new Map(), rows: new Map() };
  let cursor = null; // the stream position: the list's snapshot, then each message's id

  function openJob(id) {
    location.hash = "#/job/" + enc(id);
  }

  function addTop(job, first) {
    const row = makeRow(job, openJob);
    top.jobs.set(job.id, job);
    top.rows.set(job.id, row);
    const body = $("jobs").tBodies[0];
    if (first) body.prepend(row.tr);
    else body.appendChild(row.tr);
    $("jobs-empty").hidden = true;
    return row;
  }

  async function loadList() {
    const data = await api("/api/jobs");
    $("jobs").tBodies[0].replaceChildren();
    top.jobs.clear();
    top.rows.clear();
    for (const job of data.jobs) addTop(job, false);
    $("jobs-empty").hidden = data.jobs.length > 0;
    $("jobs-more").hidden = !data.more;
    cursor = String(data.cursor);
  }

  // A top-level job we have not seen: its row now, its name from the server.
  function newTop(m) {
    const job = { id: m.job_id, name: null, status: null, started_at: null, completed_at: null, progress: null };
    job.parent_id = null;
    job.root_id = m.root_id;
    const row = addTop(job, true);
    api("/api/jobs/" + enc(m.job_id))
      .then((j) => {
        job.name = j.name;
        job.type = j.type;
        job.created_at = j.created_at;
        redraw(row);
      })
      .catch((e) => problem(e.message));
    return job;
  }

  // ---------------------------------------------------------------- stream
  let source = null;
  let retry = null;

  function setConnection(state, text) {
    const node = $("connection");
    node.className = "connection " + state;
    setText(node, text);
  }

  function connect() {
    if (source) source.close();
    const q = new URLSearchParams();
    if (cursor !== null) q.set("since", cursor);
    if (token) q.set("token", token);
    source = new EventSource("/api/stream?" + q.toString());
    source.onopen = () => setConnection("live", "live");
    source.onmessage = (ev) => {
      if (ev.lastEventId) cursor = ev.lastEventId;
      handle(JSON.parse(ev.data));
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // refused (the server said no, or is stopping): try again from our cursor
        setConnection("down", "disconnected, retrying…");
        clearTimeout(retry);
        retry = setTimeout(connect, 3000);
      } else {
        setConnection("down", "reconnecting…");
      }
    };
  }

  function handle(m) {
    if (m.type === "parent_job_progress" && m.parent_id === null) {
      const job = top.jobs.get(m.job_id) || newTop(m);
      applyProgress(job, m);
      redraw(top.rows.get(m.job_id));
    }
    if (m.type === "child_status_change") refreshDependents(m.child_id);
    else if (m.type === "parent_job_progress" && m.parent_id === null && m.text) refreshDependents(m.job_id);
    if (detail.id === null) return;
    if (detail.loading) detail.buffer.push(m);
    else detailHandle(m);
  }

  // A job that waits on others (--after) shows their statuses and `waiting on P.2`
  // (the server's texts): when one of those changes, the rows that name it ask the
  // server for their texts again.
  function dependsOn(job, id) {
    return (job.waiting_on || []).includes(id) || (job.after || []).some((d) => d.id === id);
  }

  function refreshDependents(id) {
    const rows = [...top.rows.values()];
    if (detail.id !== null && !detail.loading) rows.push(...detail.children.values());
    for (const row of rows) if (dependsOn(row.job, id)) refetchTexts(row.job, () => redraw(row));
    if (detail.id !== null && detail.job && dependsOn(detail.job, id)) {
      refetchTexts(detail.job, () => {
        detailDirty = true;
        redraw(null);
      });
    }
  }

  function refetchTexts(job, then) {
    api("/api/jobs/" + enc(job.id))
      .then((j) => {
        for (const key of ["after", "waiting_on", "after_text", "waiting_text"]) job[key] = j[key];
        then();
      })
      .catch(() => {});
  }

  // ---------------------------------------------------------------- detail
  let detail = { id: null };

  function fresh(id) {
    return {
      id: id,
      job: null,
      loading: true,
      buffer: [],
      children: new Map(),
      logReady: false,
      logQueue: [],
      logMax: 0,
      eventsNext: 0,
      eventsBusy: false,
      eventsAgain: false,
      eventsTimer: null,
      from: null,
    };
  }

  function drawDetail() {
    const job = detail.job;
    if (!job) return;
    setText($("detail-name"), job.name);
    setText($("detail-id"), job.id);
    let badge = $("detail-status").firstElementChild;
    if (!badge) {
      badge = el("span", "badge");
      $("detail-status").appendChild(badge);
    }
    setBadge(badge, job.status);
    setText($("detail-progress"), job.progress ? job.progress.progress_text : waiting(job) || "no children");
    setText($("detail-after"), job.after_text || "—");
    detail.bar.update(job);
    setText($("detail-started"), when(job.started_at));
    setText($("detail-duration"), duration(job));
    setText($("detail-type"), job.type || "—");
    const parent = $("detail-parent");
    if (job.parent_id) {
      let link = parent.firstElementChild;
      if (!link) {
        link = el("a");
        parent.replaceChildren(link);
      }
      link.href = "#/job/" + enc(job.parent_id);
      setText(link, job.parent_id);
    } else {
      parent.replaceChildren();
      setText(parent, "— (top-level)");
    }
  }

  function addChild(job) {
    const row = makeRow(job, openJob);
    detail.children.set(job.id, row);
    $("children").tBodies[0].appendChild(row.tr); // oldest first: a new child goes last
    $("children-empty").hidden = true;
    return row;
  }

  async function openDetail(id) {
    detail = fresh(id);
    $("list-view").hidden = true;
    $("detail-view").hidden = false;
    $("children").tBodies[0].replaceChildren();
    $("events").tBodies[0].replaceChildren();
    $("log").replaceChildren();
    $("detail-bar").replaceChildren();
    detail.bar = doneBar();
    $("detail-bar").appendChild(detail.bar.root);
    for (const k of ["name", "id", "progress", "started", "duration", "type", "parent"]) setText($("detail-" + k), "");
    $("detail-status").replaceChildren();
    $("log-empty").hidden = true;
    $("children-empty").hidden = true;
    $("children-more").hidden = true;
    try {
      const data = await api("/api/jobs?parent=" + enc(id) + "&limit=1000");
      if (detail.id !== id) return;
      detail.job = data.parent;
      drawDetail();
      document.title = visible(data.parent.name) + " · jobctl";
      for (const job of data.jobs.slice().reverse()) addChild(job); // oldest first: .1, .2, ...
      $("children-empty").hidden = data.jobs.length > 0;
      $("children-more").hidden = !data.more;
      detail.loading = false;
      for (const m of detail.buffer) if (m.event_id > data.cursor) detailHandle(m);
      detail.buffer = [];
      $("detail-name").focus();
      loadLog(id);
      detail.eventsNext = Math.max(0, data.cursor - 2000);
      fetchEvents(id);
    } catch (e) {
      if (detail.id === id) problem(e.message);
    }
  }

  function detailHandle(m) {
    const job = detail.job;
    if (m.type === "parent_job_progress") {
      if (m.job_id === job.id) {
        applyProgress(job, m);
        if (m.text) logLine(m.event_id, m.timestamp, "info", m.text); // its own change (a top-level job's)
        detailDirty = true;
        redraw(null);
      }
      const child = detail.children.get(m.job_id);
      if (child) {
        applyProgress(child.job, m);
        redraw(child);
      }
    } else if (m.type === "child_status_change") {
      if (m.job_id === job.id) {
        let child = detail.children.get(m.child_id);
        if (!child && m.old_status === null) {
          const kid = { id: m.child_id, name: null, status: null, started_at: null, completed_at: null, progress: null };
          child = addChild(kid);
          nameChild(child);
        }
        if (child) {
          child.job.status = m.new_status;
          copy(child.job, m, TIMES);
          redraw(child);
        }
        if (m.parent_text) logLine(m.event_id, m.timestamp, "info", m.parent_text);
      }
      if (m.child_id === job.id) {
        job.status = m.new_status;
        copy(job, m, TIMES);
        detailDirty = true;
        redraw(null);
        logLine(m.event_id, m.timestamp, "info", m.text);
      }
    } else if (m.type === "log") {
      if (m.job_id === job.id) logLine(m.event_id, m.timestamp, m.level, m.text);
      else if (m.parent_id === job.id) logLine(m.event_id, m.timestamp, m.level, m.parent_text);
    }
    if (m.root_id === job.root_id) scheduleEvents();
  }

  function nameChild(row) {
    const id = detail.id;
    api("/api/jobs/" + enc(row.job.id))
      .then((j) => {
        if (detail.id !== id) return;
        row.job.name = j.name;
        redraw(row);
      })
      .catch(() => {});
  }

  // ------------------------------------------------------------------ log
  async function loadLog(id) {
    try {
      const data = await api("/api/jobs/" + enc(id) + "/logs?children=true&tail=" + MAX_LOG);
      if (detail.id !== id) return;
      for (const line of data.lines) appendLine(line.at, line.level, line.text);
      detail.logMax = data.lines.length ? data.lines[data.lines.length - 1].event_id : 0;
      detail.logReady = true;
      const queued = detail.logQueue;
      detail.logQueue = [];
      for (const q of queued) logLine(q[0], q[1], q[2], q[3]);
      $("log-empty").hidden = $("log").children.length > 0;
    } catch (e) {
      if (detail.id === id) problem(e.message);
    }
  }

  // A live log line, unless the loaded log has it already (by event id).
  function logLine(eventId, at, level, text) {
    if (!detail.logReady) {
      detail.logQueue.push([eventId, at, level, text]);
      return null;
    }
    if (eventId <= detail.logMax) return null;
    $("log-empty").hidden = true;
    return appendLine(at, level, text);
  }

  function appendLine(at, level, text) {
    const log = $("log");
    const follow = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    const li = el("li");
    li.append(el("span", "muted", clock(at) + " "), el("span", "level " + (level || "info"), "[" + (level || "info") + "] "));
    const body = el("span", "text", text);
    li.appendChild(body);
    log.appendChild(li);
    while (log.children.length > MAX_LOG) log.firstElementChild.remove();
    if (follow) log.scrollTop = log.scrollHeight;
    return body;
  }

  // --------------------------------------------------------------- events
  function scheduleEvents() {
    if (detail.eventsTimer !== null) return;
    const id = detail.id;
    detail.eventsTimer = setTimeout(() => {
      if (detail.id !== id) return;
      detail.eventsTimer = null;
      fetchEvents(id);
    }, 150);
  }

  async function fetchEvents(id) {
    if (detail.eventsBusy) {
      detail.eventsAgain = true;
      return;
    }
    detail.eventsBusy = true;
    try {
      for (let page = 0; page < 20; page++) {
        const data = await api("/api/jobs/" + enc(id) + "/events?since=" + detail.eventsNext + "&limit=500");
        if (detail.id !== id) return;
        detail.eventsNext = data.next;
        const body = $("events").tBodies[0];
        for (const e of data.events) {
          const tr = el("tr");
          tr.append(el("td", null, String(e.id)), el("td", null, clock(e.at)), el("td", null, e.job_id), el("td", null, e.text));
          body.prepend(tr);
        }
        while (body.children.length > MAX_EVENTS) body.lastElementChild.remove();
        if (!data.more) break;
      }
    } catch (e) {
      if (detail.id === id) problem(e.message);
    } finally {
      if (detail.id === id) {
        detail.eventsBusy = false;
        if (detail.eventsAgain) {
          detail.eventsAgain = false;
          fetchEvents(id);
        }
      }
    }
  }

  // --------------------------------------------------------------- routing
  function showList() {
    const from = detail.id;
    detail = { id: null };
    document.title = "jobctl";
    $("detail-view").hidden = true;
    $("list-view").hidden = false;
    const row = from !== null ? top.rows.get(from) : null;
    if (row) row.tr.focus();
  }

  function route() {
    problem("");
    const m = location.hash.match(/^#\/job\/(.+)$/);
    if (m) openDetail(decodeURIComponent(m[1]));
    else showList();
  }

  function back() {
    if (location.hash) location.hash = "";
  }

  window.addEventListener("hashchange", route);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && detail.id !== null) back();
  });

  // Running jobs' durations go on ticking.
  setInterval(() => {
    for (const row of top.rows.values()) if (row.job.status === "running") setText(row.cells.duration, duration(row.job));
    if (detail.id === null || !detail.job) return;
    for (const row of detail.children.values()) if (row.job.status === "running") setText(row.cells.duration, duration(row.job));
    if (detail.job.status === "running") setText($("detail-duration"), duration(detail.job));
  }, 1000);

  async function start() {
    $("back").addEventListener("click", back);
    $("home").addEventListener("click", (e) => {
      e.preventDefault();
      back();
    });
    api("/api/health")
      .then((h) => setText($("database"), h.store === "postgresql" ? "PostgreSQL" : "SQLite"))
      .catch(() => {});
    try {
      await loadList();
    } catch (e) {
      problem(e.message);
      setConnection("down", "not connected");
      return;
    }
    connect();
    route();
  }

  start();
})();
