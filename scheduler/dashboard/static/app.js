// The schedbus dashboard: a monitor connection to the bus that serves this page.
// It registers as a protocol 2 monitor with the token kept in sessionStorage (taken from
// the URL fragment #token=..., which browsers never send to the server, or typed in),
// asks for `stats` every 2 s, keeps the running jobs from the event stream, and sends
// `cancel` and `retry`. It reconnects with backoff when the bus restarts.
"use strict";
(() => {
  const TOKEN_KEY = "schedbus.token";
  const STATS_EVERY_MS = 2000;
  const CHART_POINTS = 150;
  const RECENT = 100;
  const RATE_WINDOW = 5;
  const HELD = new Set(["assigned", "running"]);
  const BAD = new Set(["failed", "dead", "timed_out"]);
  const FINAL = new Set(["succeeded", "failed", "timed_out", "cancelled", "dead", "expired", "skipped"]);

  const $ = (id) => document.getElementById(id);
  const state = {
    token: null,
    ws: null,
    live: false,
    refused: false,
    nextRef: 1,
    pending: new Map(),
    retryMs: 500,
    statsTimer: null,
    held: new Map(),
    recent: [],
    failed: new Map(),
    opened: new Set(),
    stats: null,
    totals: null,
    series: [[], [], [], [], []],
    charts: {},
    drawQueued: false,
  };

  // --- small DOM helpers (no innerHTML with data: job fields are untrusted text) ------

  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "style") Object.assign(el.style, value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  // The bus leaves out fields at their default (omit_defaults): put them back.
  const norm = (job) => ({ task: "sleep", attempt: 0, evictions: 0, ...job });
  const short = (id) => (id || "").slice(0, 8);
  const clock = (epoch) => (epoch ? new Date(epoch * 1000).toLocaleTimeString([], { hour12: false }) : "");
  const seconds = (s) => (s === null || s === undefined ? "–" : s < 1 ? `${Math.round(s * 1000)} ms` : s < 120 ? `${s.toFixed(1)} s` : `${Math.round(s / 60)} min`);
  const priorityColour = (p) => `hsl(${Math.round(4 + Math.min(Math.max(p, 0), 10) * 21)}, 62%, ${p <= 2 ? 46 : 42}%)`;

  function toast(text, bad) {
    const el = $("toast");
    el.textContent = text;
    el.className = bad ? "bad" : "";
    el.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.hidden = true; }, 6000);
  }

  function setConn(kind, text) {
    const el = $("conn");
    el.className = `pill ${kind === "live" ? "on" : kind === "refused" ? "bad" : "off"}`;
    el.dataset.state = kind;
    el.textContent = text || kind;
  }

  // --- the token ---------------------------------------------------------------------

  function takeToken() {
    const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (match) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function askToken(why) {
    $("signin-error").textContent = why || "";
    $("signin").hidden = false;
    $("signin-token").focus();
  }

  // --- the WebSocket -----------------------------------------------------------------

  function send(message, onReply) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
      toast("not connected to the bus", true);
      return false;
    }
    if (onReply) {
      message.ref = state.nextRef++;
      state.pending.set(message.ref, onReply);
    }
    state.ws.send(JSON.stringify(message));
    return true;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(`${scheme}${location.host}/`);
    state.ws = ws;
    setConn("connecting", "connecting…");
    ws.onopen = () => {
      const register = { cmd: "register", type: "monitor", protocol: 2, batch: true };
      if (state.token) register.token = state.token;
      ws.send(JSON.stringify(register));
    };
    ws.onmessage = (frame) => receive(JSON.parse(frame.data));
    ws.onclose = () => {
      state.live = false;
      clearInterval(state.statsTimer);
      for (const reply of state.pending.values()) reply({ type: "error", message: "connection closed" });
      state.pending.clear();
      if (state.ws !== ws) return;
      if (state.refused) return;
      setConn("reconnecting", "reconnecting…");
      setTimeout(connect, state.retryMs);
      state.retryMs = Math.min(state.retryMs * 2, 5000);
    };
  }

  function receive(message) {
    if (message.type === "batch") {
      // The messages of one bus loop turn, in order (never a batch inside a batch).
      for (const inner of message.messages || []) if (inner.type !== "batch") receive(inner);
      return;
    }
    if (message.ref !== undefined && state.pending.has(message.ref)) {
      const reply = state.pending.get(message.ref);
      state.pending.delete(message.ref);
      reply(message);
      return;
    }
    switch (message.type) {
      case "registered": return registered();
      case "event": return onEvent(norm(message));
      case "error": return onError(message);
      default: return undefined;
    }
  }

  function registered() {
    state.live = true;
    state.refused = false;
    state.retryMs = 500;
    $("signin").hidden = true;
    setConn("live");
    state.held.clear();
    send({ cmd: "list_jobs", states: ["assigned", "running"], limit: 1000 }, (reply) => {
      for (const job of reply.jobs || []) state.held.set(job.id, norm(job));
      redraw();
    });
    askStats();
    state.statsTimer = setInterval(askStats, STATS_EVERY_MS);
    loadFailed();
  }

  function onError(message) {
    if (!state.live && (message.field === "token" || /token/i.test(message.message))) {
      state.refused = true;
      setConn("refused", "not signed in");
      askToken(message.message);
      return;
    }
    toast(message.message, true);
  }

  function askStats() {
    send({ cmd: "stats" }, (reply) => { if (reply.type === "stats") onStats(reply); });
  }

  // --- events ------------------------------------------------------------------------

  function onEvent(event) {
    if (event.event === "output") return;
    if (event.event === "progress") {
      const job = state.held.get(event.id);
      if (job) state.held.set(event.id, { ...job, progress: event.progress, message: event.message });
      return redraw();
    }
    state.recent.unshift(event);
    state.recent.length = Math.min(state.recent.length, RECENT);
    if (HELD.has(event.state)) {
      const before = state.held.get(event.id) || {};
      state.held.set(event.id, { ...event, progress: before.progress, message: before.message });
    } else {
      state.held.delete(event.id);
    }
    if (BAD.has(event.state) || BAD.has(event.event)) state.failed.set(event.id, event);
    else if (!FINAL.has(event.state)) state.failed.delete(event.id);
    redraw();
  }

  function redraw() {
    if (state.drawQueued) return;
    state.drawQueued = true;
    requestAnimationFrame(() => {
      state.drawQueued = false;
      drawSchedulers();
      drawEvents();
      drawFailed();
    });
  }

  // --- the HTTP API (token in a header, never in the URL) -----------------------------

  async function api(path) {
    const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
    const response = await fetch(path, { headers, cache: "no-store" });
    if (response.status === 401) {
      askToken("the bus refused this token");
      throw new Error("not signed in");
    }
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  async function fetchJob(id) {
    try {
      return await api(`/api/jobs/${id}`);
    } catch (error) {
      return null;
    }
  }

  async function loadFailed() {
    for (const wanted of ["failed", "dead", "timed_out"]) {
      try {
        const listed = await api(`/api/jobs?state=${wanted}&limit=50`);
        for (const job of listed.jobs) if (!state.failed.has(job.id)) state.failed.set(job.id, norm(job));
      } catch (error) {
        return;
      }
    }
    redraw();
  }

  // --- stats: figures, schedulers, queues, charts -------------------------------------

  function onStats(reply) {
    state.stats = reply;
    const bus = reply.bus;
    $("uptime").textContent = `up ${seconds(bus.uptime_s)}`;
    drawFigures(bus, reply.schedulers);
    drawQueues(bus, reply.schedulers);
    drawSchedulers();
    addPoint(bus);
  }

  function drawFigures(bus, schedulers) {
    const failed = (bus.failed || 0) + (bus.timed_out || 0) + (bus.dead || 0);
    const figures = [
      ["queued", bus.queued || 0], ["running", bus.running || 0], ["scheduled", bus.scheduled || 0],
      ["submitted", bus.submitted || 0], ["succeeded", bus.succeeded || 0], ["failed", failed, failed > 0],
      ["cancelled", bus.cancelled || 0], ["evicted", bus.evicted || 0], ["stolen", bus.stolen || 0],
      ["schedulers", schedulers.length],
    ];
    $("figures").replaceChildren(...figures.map(([name, value, bad]) =>
      h("div", { class: bad ? "figure bad" : "figure", "data-figure": name }, h("b", { text: value }), h("span", { text: name }))));
  }

  function drawQueues(bus, schedulers) {
    const rows = [h("tr", {}, h("th", { text: "where" }), h("th", { class: "num", text: "waiting" }))];
    rows.push(h("tr", {}, h("td", { text: "bus backlog" }), h("td", { class: "num", text: bus.queued || 0 })));
    if (bus.scheduled) rows.push(h("tr", {}, h("td", { text: "scheduled for later" }), h("td", { class: "num", text: bus.scheduled })));
    for (const [task, count] of Object.entries(bus.unserved || {})) {
      rows.push(h("tr", {}, h("td", {}, "no scheduler serves ", h("code", { text: task })), h("td", { class: "num", text: count })));
    }
    for (const s of schedulers) {
      rows.push(h("tr", {}, h("td", {}, "local queue of ", h("b", { text: s.name })), h("td", { class: "num", text: s.queued })));
    }
    const waits = Object.entries(bus.wait_s || {});
    const waitRows = waits.map(([p, w]) => h("tr", {},
      h("td", {}, h("span", { class: "swatch", style: { color: priorityColour(Number(p)) }, text: "■ " }), `priority ${p}`),
      h("td", { class: "num", text: `${seconds(w.p50)} / ${seconds(w.p90)}` })));
    const table = h("table", {}, rows);
    const waitTable = waits.length ? h("table", {}, h("tr", {}, h("th", { text: "wait p50 / p90" }), h("th", {})), waitRows) : null;
    $("queues").replaceChildren(table, waitTable || "");
  }

  function jobBlock(job) {
    const p = job.priority;
    const block = h("div", { class: `job-block ${job.state}`, "data-id": job.id, "data-state": job.state,
      title: `${job.id}\n${job.task} priority ${p}, ${job.state}, attempt ${job.attempt}${job.message ? `\n${job.message}` : ""}`,
      style: { background: priorityColour(p) } },
    h("div", { class: "id", text: `${short(job.id)} · p${p}` }),
    h("div", { class: "task", text: job.task }),
    job.message ? h("div", { class: "msg", text: job.message }) : h("div", { class: "msg", text: job.state === "assigned" ? "starting…" : `since ${clock(job.time)}` }),
    h("button", { class: "x", type: "button", title: "Cancel this job", "aria-label": `cancel ${short(job.id)}`, onclick: () => cancel(job.id) }, "×"));
    if (typeof job.progress === "number") {
      block.append(h("div", { class: "bar", style: { width: `${Math.round(job.progress * 100)}%` } }));
    }
    return block;
  }

  function drawSchedulers() {
    const stats = state.stats;
    if (!stats) return;
    const byScheduler = new Map();
    for (const job of state.held.values()) {
      if (!job.scheduler) continue;
      if (!byScheduler.has(job.scheduler)) byScheduler.set(job.scheduler, []);
      byScheduler.get(job.scheduler).push(job);
    }
    const rows = stats.schedulers.map((s) => {
      const jobs = (byScheduler.get(s.name) || []).sort((a, b) => a.priority - b.priority || a.time - b.time);
      const empty = Math.max(0, s.size - jobs.length);
      const beat = s.heartbeat_age_s === undefined || s.heartbeat_age_s === null ? "" : ` · heartbeat ${seconds(s.heartbeat_age_s)} ago`;
      return h("div", { class: "scheduler", "data-scheduler": s.name },
        h("div", {},
          h("div", { class: "name", text: s.name, title: s.name }),
          h("div", { class: "meta", text: `${s.busy}/${s.size} busy · ${s.queued} queued${beat}` }),
          h("div", { class: "meta", text: `tasks: ${(s.tasks || []).join(", ") || "–"}` }),
          h("div", { class: "meta", text: `done ${s.succeeded} · failed ${s.failed + s.timed_out} · evicted ${s.evicted}` })),
        h("div", { class: "slots" }, jobs.map(jobBlock), Array.from({ length: empty }, () => h("div", { class: "slot" }))));
    });
    $("schedulers").replaceChildren(...(rows.length ? rows : [h("p", { class: "muted", text: "No scheduler connected." })]));
  }

  function drawEvents() {
    $("events").replaceChildren(...state.recent.map((e) => h("tr", {
      class: BAD.has(e.event) ? "final-bad" : e.event === "succeeded" ? "final-good" : "", "data-id": e.id },
    h("td", { text: clock(e.time) }),
    h("td", {}, h("code", { text: short(e.id), title: e.id })),
    h("td", { text: e.event }),
    h("td", { text: e.task }),
    h("td", { class: "num", text: e.priority }),
    h("td", { class: "num", text: e.attempt }),
    h("td", { text: e.scheduler || "" }))));
  }

  function traceback(job) {
    const details = h("details", { open: state.opened.has(job.id) },
      h("summary", { text: "traceback" }), h("pre", { class: "tb", text: job.traceback }));
    details.addEventListener("toggle", () => {
      if (details.open) state.opened.add(job.id);
      else state.opened.delete(job.id);
    });
    return details;
  }

  function drawFailed() {
    const jobs = [...state.failed.values()].sort((a, b) => b.time - a.time).slice(0, 50);
    if (!jobs.length) return $("failed").replaceChildren(h("p", { class: "muted", text: "None." }));
    $("failed").replaceChildren(...jobs.map((job) => h("div", { class: "failed-job", "data-id": job.id },
      h("div", { class: "head" },
        h("code", { text: short(job.id), title: job.id }),
        h("b", { text: job.task }),
        h("span", { class: "muted", text: `${job.state} · attempt ${job.attempt} · ${clock(job.time)}` }),
        h("span", { class: "spacer" }),
        h("button", { class: "quiet small", type: "button", onclick: () => retry(job.id), style: { color: "var(--accent)" } }, "Retry")),
      job.error ? h("div", { class: "err", text: job.error }) : null,
      job.traceback ? traceback(job) : null)));
    return undefined;
  }

  // --- charts ------------------------------------------------------------------------

  // Rates are taken over the last RATE_WINDOW stats replies (about 10 s), so one job
  // ending does not draw a spike; a bus restart (uptime going back) starts over.
  function addPoint(bus) {
    const now = Date.now() / 1000;
    const done = bus.succeeded || 0;
    const bad = (bus.failed || 0) + (bus.timed_out || 0) + (bus.dead || 0);
    const totals = state.totals || (state.totals = []);
    if (totals.length && bus.uptime_s < totals[totals.length - 1].uptime) totals.length = 0;
    totals.push({ now, done, bad, uptime: bus.uptime_s });
    if (totals.length > RATE_WINDOW + 1) totals.shift();
    if (totals.length < 2) return;
    const first = totals[0];
    const dt = Math.max(now - first.now, 0.001);
    const waits = Object.values(bus.wait_s || {});
    const count = waits.reduce((n, w) => n + w.count, 0);
    const p50 = count ? waits.reduce((n, w) => n + w.p50 * w.count, 0) / count : null;
    const p90 = waits.length ? Math.max(...waits.map((w) => w.p90)) : null;
    const point = [now, (done - first.done) / dt, (bad - first.bad) / dt, p50, p90];
    point.forEach((v, i) => { state.series[i].push(v); if (state.series[i].length > CHART_POINTS) state.series[i].shift(); });
    drawCharts();
  }

  function chart(id, series) {
    const el = $(id);
    if (state.charts[id]) return state.charts[id];
    if (typeof uPlot !== "function") return null;
    const options = {
      width: Math.max(el.clientWidth, 200), height: 190,
      legend: { show: true }, cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, 1) * 1.1] } },
      axes: [{ stroke: "#6b7385", grid: { stroke: "#eef0f3" } }, { stroke: "#6b7385", grid: { stroke: "#eef0f3" }, size: 46 }],
      series: [{}, ...series],
    };
    state.charts[id] = new uPlot(options, [[], ...series.map(() => [])], el);
    return state.charts[id];
  }

  function drawCharts() {
    const s = state.series;
    const throughput = chart("chart-throughput", [
      { label: "succeeded/s", stroke: "#23894a", width: 2, fill: "rgba(35,137,74,.08)" },
      { label: "failed/s", stroke: "#c9352b", width: 2 }]);
    const wait = chart("chart-wait", [
      { label: "p50", stroke: "#2f6fdb", width: 2, fill: "rgba(47,111,219,.08)" },
      { label: "p90 (worst priority)", stroke: "#b26b00", width: 2 }]);
    if (throughput) throughput.setData([s[0], s[1], s[2]]);
    if (wait) wait.setData([s[0], s[3], s[4]]);
  }

  window.addEventListener("resize", () => {
    for (const [id, c] of Object.entries(state.charts)) c.setSize({ width: Math.max($(id).clientWidth, 200), height: 190 });
  });

  // --- actions -----------------------------------------------------------------------

  function cancel(id) {
    send({ cmd: "cancel", id }, (reply) => {
      if (reply.type === "error") toast(`cancel ${short(id)}: ${reply.message}`, true);
      else toast(`cancel ${short(id)}: ${reply.message || reply.state}`);
    });
  }

  function retry(id) {
    send({ cmd: "retry", ids: [id] }, (reply) => {
      if (reply.type === "error") return toast(`retry ${short(id)}: ${reply.message}`, true);
      const why = (reply.errors || {})[id];
      if (why) return toast(`retry ${short(id)}: ${why}`, true);
      state.failed.delete(id);
      redraw();
      return toast(`retry ${short(id)}: queued again`);
    });
  }

  // --- search by id or prefix ---------------------------------------------------------

  function known(prefix) {
    const found = new Map();
    for (const job of [...state.recent].reverse()) if (job.id.startsWith(prefix)) found.set(job.id, job);
    for (const job of [...state.failed.values(), ...state.held.values()]) if (job.id.startsWith(prefix)) found.set(job.id, job);
    return found;
  }

  async function search(query) {
    const prefix = query.trim();
    if (!prefix) return undefined;
    const found = known(prefix);
    try {
      const wanted = encodeURIComponent(prefix);
      const listed = await api(`/api/jobs?prefix=${wanted}&limit=20`);
      for (const job of listed.jobs) if (job.id.startsWith(prefix)) found.set(job.id, norm(job));
      if (!found.has(prefix)) {
        const exact = await fetchJob(wanted);
        if (exact) found.set(exact.id, norm(exact));
      }
    } catch (error) {
      if (!found.size) return showFound(prefix, [], error.message);
    }
    return showFound(prefix, [...found.values()], null);
  }

  function detail(job) {
    const rows = [["id", job.id], ["task", job.task], ["state", job.state], ["priority", job.priority],
      ["attempt", job.attempt], ["scheduler", job.scheduler], ["updated", clock(job.time)],
      ["run time", job.wall_s === undefined ? null : seconds(job.wall_s)],
      ["progress", typeof job.progress === "number" ? `${Math.round(job.progress * 100)}% ${job.message || ""}` : null],
      ["error", job.error]].filter(([, v]) => v !== null && v !== undefined && v !== "");
    return h("div", { class: "found-job", "data-id": job.id },
      h("dl", { class: "job-detail" }, rows.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { class: k === "id" ? "mono" : "", text: v })])),
      job.traceback ? h("pre", { class: "tb", text: job.traceback }) : null,
      h("div", { class: "actions" },
        FINAL.has(job.state) ? null : h("button", { class: "danger", type: "button", onclick: () => cancel(job.id) }, "Cancel"),
        FINAL.has(job.state) && job.state !== "succeeded" ? h("button", { type: "button", onclick: () => retry(job.id) }, "Retry") : null));
  }

  function showFound(prefix, jobs, problem) {
    $("found").hidden = false;
    const body = problem ? [h("p", { class: "error", text: problem })]
      : jobs.length ? jobs.slice(0, 20).map(detail)
        : [h("p", { class: "muted", text: `No job id starts with ${prefix}.` })];
    $("found-body").replaceChildren(...body);
  }

  // --- start -------------------------------------------------------------------------

  function start() {
    const legend = $("legend");
    legend.append("priority ");
    for (let p = 0; p <= 10; p++) legend.append(h("i", { style: { background: priorityColour(p) }, text: p }));
    $("search").addEventListener("submit", (e) => { e.preventDefault(); search($("search-input").value); });
    $("found-close").addEventListener("click", () => { $("found").hidden = true; });
    $("sign-out").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      state.refused = true;
      if (state.ws) state.ws.close();
      setConn("refused", "signed out");
      askToken("");
    });
    $("signin-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("signin-token").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      state.token = token;
      state.refused = false;
      $("signin").hidden = true;
      const old = state.ws;
      state.ws = null;
      if (old) old.close();
      connect();
    });
    state.token = takeToken();
    connect();
  }

  start();
})();
