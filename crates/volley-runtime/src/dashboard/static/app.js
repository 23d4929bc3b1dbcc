// volley's dashboard: one page, routes in the URL's hash, every view read from /api/v0.
// Lists are never fetched whole: each request has a limit, and the answer says how many
// rows matched (total), so a cluster with a million tasks costs what one page shows.
"use strict";

const COLUMNS = {
  tasks: ["task_id", "name", "state", "node_id", "worker_pid", "attempt", "submitted_ms",
          "duration_ms", "waiting_for", "error_kind", "error_message"],
  actors: ["actor_id", "class_name", "name", "state", "restarts", "pid", "node_id", "job_id",
           "detached", "death_cause"],
  nodes: ["id", "addr", "driver", "pid", "workers", "cpu_total_milli", "cpu_free_milli",
          "store_used", "store_capacity", "tasks_waiting"],
  workers: ["pid", "node_id", "state", "actor_id", "task_id"],
  objects: ["object_id", "size", "node_id", "state", "pins", "spilled"],
  placement_groups: ["pg_id", "name", "state", "strategy", "bundles", "node_id"],
  jobs: ["job_id", "status", "entrypoint", "driver_pid", "start_ms", "end_ms", "exit_code",
         "message"],
};
const TITLES = {
  overview: "Cluster overview", stream: "Task stream", tasks: "Tasks", actors: "Actors",
  objects: "Objects", placement_groups: "Placement groups", jobs: "Jobs", workers: "Workers",
  nodes: "Nodes", logs: "Logs", task: "Task", actor: "Actor", serve: "Serve",
};

let timer = null;      // the current page's refresh
let generation = 0;    // bumped on each navigation: late answers of the last page are dropped

const $ = (sel, root = document) => root.querySelector(sel);
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

class ApiError extends Error {}

// The answer of `path`, parsed; with `withText`, [answer, its text] (to tell an unchanged
// answer from a new one without drawing it again).
async function api(path, withText = false, withHeaders = false) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  const text = await r.text();
  let body;
  try { body = JSON.parse(text); } catch (_) { body = null; }
  if (r.status === 401) { window.location.href = "/login"; throw new ApiError("not logged in"); }
  if (!r.ok) throw new ApiError((body && body.error) || `${path}: HTTP ${r.status}`);
  if (withHeaders) return [body, r.headers];
  return withText ? [body, text] : body;
}

function showError(msg) {
  const e = $("#error");
  e.textContent = msg || "";
  e.hidden = !msg;
}

function stamp() {
  $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function fmtBytes(n) {
  if (n == null) return "";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function fmt(key, v) {
  if (v == null) return "";
  if (key.endsWith("_ms") && !key.startsWith("duration") && typeof v === "number" && v > 1e12)
    return new Date(v).toLocaleTimeString();
  if (key === "duration_ms" && typeof v === "number") return v < 1000 ? `${v.toFixed(1)} ms` : `${(v / 1000).toFixed(2)} s`;
  if ((key === "size" || key.startsWith("store_")) && typeof v === "number") return fmtBytes(v);
  if (key.endsWith("_milli") && typeof v === "number") return (v / 1000).toString();
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function bar(used, total) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  // Styles are set through the DOM: the page's Content-Security-Policy refuses style attributes.
  const fill = el("span");
  fill.style.width = `${pct}%`;
  return el("span", { class: "bar", title: `${pct.toFixed(0)}%` }, fill);
}

// ------------------------------------------------------------------ router

function route() {
  generation++;
  if (timer) { clearInterval(timer); timer = null; }
  showError("");
  const hash = decodeURIComponent(window.location.hash.slice(1)) || "overview";
  const [page, ...rest] = hash.split("/");
  const arg = rest.join("/");
  for (const a of document.querySelectorAll("#nav a"))
    a.classList.toggle("active", a.getAttribute("href") === "#" + page);
  $("#page-title").textContent = TITLES[page] ? TITLES[page] + (arg ? " " + arg : "") : "Not found";
  const root = $("#page");
  root.replaceChildren();
  root.dataset.page = page;
  const g = generation;
  const run = (fn, every) => {
    const tick = () => fn(root, g, arg).then(stamp).catch((e) => { if (g === generation) showError(e.message); });
    tick();
    if (every) timer = setInterval(tick, every);
  };
  if (page === "overview") run(overview, 2000);
  else if (page === "stream") run(stream, 1500);
  else if (page === "logs") logsPage(root, g);
  else if (page === "serve") run(serve, 2000);
  else if (page === "task") run(taskDetail, 0);
  else if (page === "actor") run(actorDetail, 0);
  else if (COLUMNS[page]) tablePage(root, page);
  else showError(`no page ${page}`);
}

// ------------------------------------------------------------------ overview

async function overview(root, g) {
  const c = await api("/api/v0/cluster");
  if (g !== generation) return;
  const t = c.totals;
  const card = (k, v, extra) => el("div", { class: "card" }, el("div", { class: "v", text: v }), el("div", { class: "k", text: k }), ...(extra ? [extra] : []));
  const cards = el("div", { class: "cards", id: "totals" },
    card("nodes", String(t.nodes)),
    card("CPUs used / total", `${t.cpus_used} / ${t.cpus}`, bar(t.cpus_used, t.cpus)),
    ...Object.entries(t.resources).map(([name, [total, used]]) => card(`${name} used / total`, `${used} / ${total}`, bar(used, total))),
    card("workers", String(t.workers)),
    card("actors", String(t.actors)),
    card("object store", `${fmtBytes(t.store_used)} / ${fmtBytes(t.store_capacity)}`, bar(t.store_used, t.store_capacity)),
    card("tasks waiting", String(t.tasks_waiting)),
    card("actor restarts", String(c.nodes.reduce((n, x) => n + (x.sched.actor_restarts || 0), 0))),
    card("worker crashes", String(c.nodes.reduce((n, x) => n + (x.sched.worker_crashes || 0), 0))),
  );
  // Related figures share a cell (a value over its detail, a bar under the figure), so that
  // the table fits a 1400-px window without scrolling sideways.
  const table = el("table", { id: "nodes-table" });
  table.append(el("tr", {}, ...["node", "address / pid", "CPU used / total", "resources",
    "workers (blocked)", "object store (spilled)", "host memory", "restarts / crashes",
    "heartbeat", "tasks waiting / queued / running", "why tasks wait"].map((h) => el("th", { text: h }))));
  const two = (top, below, cls) => el("td", cls ? { class: cls } : {}, el("div", { text: top }), below);
  const used = (u, t, fmtv) => el("td", { class: "used" }, el("div", { text: `${fmtv(u)} / ${fmtv(t)}` }), bar(u, t));
  for (const n of c.nodes) {
    const res = n.resources.filter((r) => !r[0].startsWith("pg:")).map(([name, tot, free]) => `${name} ${(tot - free) / 1000}/${tot / 1000}`).join(", ");
    const s = n.sched;
    const store = used(n.store_used, n.store_capacity, fmtBytes);
    store.append(el("div", { class: "muted", text: `spilled ${n.store.objects_spilled} (${fmtBytes(n.store.spilled_bytes)})` }));
    table.append(el("tr", { class: "node-row" },
      two(String(n.id), el("div", { class: "muted", text: n.driver ? "driver" : (n.id === 1 ? "head" : (n.id === 0 ? "local" : "node")) })),
      two(n.addr || "-", el("div", { class: "muted", text: `pid ${n.pid}` })),
      used(n.cpu_total_milli - n.cpu_free_milli, n.cpu_total_milli, (v) => String(v / 1000)),
      el("td", { class: "wrap-words", text: res }),
      el("td", { text: `${n.workers} (${s.workers_blocked})` }),
      store,
      n.mem_total ? used(n.mem_used, n.mem_total, fmtBytes) : el("td", { text: "-" }),
      el("td", { class: "health", text: `${s.actor_restarts || 0} / ${s.worker_crashes || 0}` }),
      el("td", { text: !n.heartbeat_rtt_us ? "-" : n.heartbeat_rtt_us < 1000 ? `${n.heartbeat_rtt_us} \u00b5s` : `${(n.heartbeat_rtt_us / 1000).toFixed(1)} ms` }),
      el("td", { text: `${s.tasks_waiting_deps} / ${s.tasks_queued} / ${s.tasks_assigned}` }),
      el("td", { class: "wrap", text: (n.waiting || []).join("\n") }),
    ));
  }
  root.replaceChildren(cards, el("h2", { text: "Nodes" }), table);
}

// ------------------------------------------------------------------ serve

// The last answer of /api/v0/serve, to turn two answers' counts into requests per second.
let servePrev = null;

function fmtSecs(s) {
  if (s == null) return "-";
  return s < 1 ? `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms` : `${s.toFixed(2)} s`;
}

async function serve(root, g) {
  const v = await api("/api/v0/serve");
  if (g !== generation) return;
  const key = (d) => `${d.app}/${d.deployment}`;
  const before = {};
  if (servePrev) for (const d of servePrev.deployments) before[key(d)] = d.http.requests;
  const secs = servePrev ? (v.now_ms - servePrev.now_ms) / 1000 : 0;
  const rate = (d) => (secs > 0 && before[key(d)] != null) ? ((d.http.requests - before[key(d)]) / secs).toFixed(1) : "-";
  servePrev = v;
  const codes = (c) => Object.entries(c).map(([k, n]) => `${k}: ${n}`).join(", ") || "-";
  const total = v.deployments.reduce((n, d) => n + d.http.requests, 0) + v.no_route.requests;
  const queued = v.deployments.reduce((n, d) => n + d.queued, 0);
  const running = v.deployments.reduce((n, d) => n + d.replicas.filter((r) => r.state === "RUNNING").length, 0);
  const card = (k, val) => el("div", { class: "card" }, el("div", { class: "v", text: val }), el("div", { class: "k", text: k }));
  const cards = el("div", { class: "cards", id: "serve-totals" },
    card("applications", String(new Set(v.deployments.map((d) => d.app)).size)),
    card("deployments", String(v.deployments.length)),
    card("replicas running", String(running)),
    card("HTTP requests", String(total)),
    card("queued in the ingress", String(queued)),
    card("no route (404)", String(v.no_route.requests)),
  );
  const deps = el("table", { id: "serve-deployments" });
  deps.append(el("tr", {}, ...["app", "deployment", "route prefix", "status", "replicas (running / target)",
    "requests", "requests/s", "by code", "p50", "p99", "ongoing", "queued", "autoscaling up / down"].map((h) => el("th", { text: h }))));
  const reps = el("table", { id: "serve-replicas" });
  reps.append(el("tr", {}, ...["app", "deployment", "replica", "actor", "node", "state", "ongoing"].map((h) => el("th", { text: h }))));
  for (const d of v.deployments) {
    const run = d.replicas.filter((r) => r.state === "RUNNING").length;
    deps.append(el("tr", { class: "serve-deployment", "data-key": key(d) },
      el("td", { text: d.app }), el("td", { text: d.deployment }),
      el("td", { text: d.ingress && d.route_prefix ? d.route_prefix : "-" }),
      el("td", { class: `state-${d.status}`, text: d.status }),
      el("td", { text: `${run} / ${d.target}` }),
      el("td", { class: "requests", text: String(d.http.requests) }),
      el("td", { text: rate(d) }),
      el("td", { class: "codes", text: codes(d.http.codes) }),
      el("td", { text: fmtSecs(d.http.p50_s) }), el("td", { text: fmtSecs(d.http.p99_s) }),
      el("td", { text: String(d.http.ongoing) }),
      el("td", { class: "queued", text: String(d.queued) }),
      el("td", { text: `${d.autoscaling.up} / ${d.autoscaling.down}` }),
    ));
    for (const r of d.replicas) {
      const actor = el("td", {}, el("a", { href: `#actor/${r.actor_id}`, text: r.actor_id.slice(0, 12) }));
      reps.append(el("tr", { class: "serve-replica" },
        el("td", { text: d.app }), el("td", { text: d.deployment }), el("td", { text: r.id }), actor,
        el("td", { text: r.node == null ? "-" : String(r.node) }),
        el("td", { class: `state-${r.state}`, text: r.state }),
        el("td", { text: r.ongoing == null ? "-" : String(r.ongoing) }),
      ));
    }
  }
  const parts = [cards, el("h2", { text: "Deployments" })];
  parts.push(v.deployments.length ? deps : el("p", { class: "muted", id: "serve-none", text: "No serve application runs (serve.run, or volley serve deploy)." }));
  parts.push(el("h2", { text: "Replicas" }), reps);
  parts.push(el("p", { class: "muted", text: `Requests with no route: ${codes(v.no_route.codes)}. Figures of this ingress since it started; /metrics has them for Prometheus.` }));
  root.replaceChildren(...parts);
}

// ------------------------------------------------------------------ tables

function parseFilters(text) {
  return text.split(",").map((s) => s.trim()).filter(Boolean);
}

function tablePage(root, kind) {
  const filter = el("input", { type: "text", id: "filter", placeholder: "key=value, key!=value (e.g. state=FAILED)" });
  const limit = el("select", { id: "limit" }, ...[100, 1000, 10000].map((n) => el("option", { value: String(n), text: `${n} rows` })));
  const summary = el("span", { id: "summary", class: "muted" });
  const table = el("table", { id: "rows" });
  const pager = el("div", { id: "pager", class: "controls" });
  // Nodes that did not answer a cluster-wide question (workers, objects): named above the
  // table, so that a partial list is never taken for the whole one.
  const missing = el("div", { id: "missing", class: "warn", hidden: "" });
  const state = { rows: [], sortKey: null, desc: false, cols: COLUMNS[kind], text: null, page: 0, pager };
  const g = generation;
  let busy = false; // a refresh still waiting (a silent node holds an answer up to 3 s)
  const load = async (force = true) => {
    const q = new URLSearchParams();
    for (const f of parseFilters(filter.value)) q.append("filter", f);
    q.set("limit", limit.value);
    try {
      const [a, text] = await api(`/api/v0/${kind}?${q}`, true);
      if (g !== generation) return;
      showError("");
      stamp();
      if (!force && text === state.text) return; // unchanged: nothing to draw again
      state.text = text;
      state.rows = a.rows;
      showMissing(missing, a.missing || []);
      summary.textContent = `${a.rows.length} shown of ${a.total} matching` + (a.missing && a.missing.length ? ` from the nodes that answered (${a.missing.length} did not)` : "") + (a.truncated ? " (raise the limit or filter to see more)" : "") + (a.dropped ? `; ${a.dropped} finished rows were dropped by the bounded table` : "");
      render(table, state, kind);
    } catch (e) {
      if (g === generation) { showError(e.message); summary.textContent = ""; showMissing(missing, []); table.replaceChildren(); }
    }
  };
  filter.addEventListener("keydown", (e) => { if (e.key === "Enter") load(); });
  limit.addEventListener("change", () => load());
  root.append(el("div", { class: "controls" }, filter, el("button", { onclick: () => load(), text: "Apply" }), limit, summary), missing, pager, table);
  load();
  // Refreshed every 3 s while the answer is small; a large one only on Apply (fetching ten
  // thousand rows again every few seconds would keep the page and the node busy).
  timer = setInterval(() => {
    if (busy || Number(limit.value) > 1000) return;
    busy = true;
    load(false).finally(() => { busy = false; });
  }, 3000);
}

function showMissing(banner, missing) {
  banner.hidden = !missing.length;
  banner.replaceChildren(...(missing.length ? [
    el("strong", { text: `Partial list: ${missing.length} node(s) did not answer; their rows are not shown.` }),
    el("ul", {}, ...missing.map((m) => el("li", { class: "missing-node", text: m }))),
  ] : []));
}

// Draws one page of PAGE rows (sorted over every row fetched): the cost of a redraw stays
// that of one page, whether the answer held a hundred rows or ten thousand.
const PAGE = 500;

function render(table, state, kind) {
  const cols = state.cols;
  const head = el("tr", {}, ...cols.map((c) => {
    const th = el("th", { text: c, onclick: () => { state.desc = state.sortKey === c ? !state.desc : false; state.sortKey = c; state.page = 0; render(table, state, kind); } });
    if (state.sortKey === c) th.className = state.desc ? "sorted-desc" : "sorted-asc";
    return th;
  }));
  let rows = state.rows;
  if (state.sortKey) {
    const k = state.sortKey, sign = state.desc ? -1 : 1;
    rows = rows.slice().sort((a, b) => {
      const x = a[k], y = b[k];
      if (x == null) return 1; if (y == null) return -1;
      return (x < y ? -1 : x > y ? 1 : 0) * sign;
    });
  }
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  state.page = Math.min(state.page || 0, pages - 1);
  const from = state.page * PAGE, to = Math.min(rows.length, from + PAGE);
  const detail = kind === "tasks" ? "task" : kind === "actors" ? "actor" : null;
  const idKey = kind === "tasks" ? "task_id" : "actor_id";
  const frag = document.createDocumentFragment();
  frag.append(head);
  for (let i = from; i < to; i++) {
    const r = rows[i];
    const tr = el("tr", detail ? { class: "link" } : {});
    if (detail) tr.addEventListener("click", () => { window.location.hash = `${detail}/${r[idKey]}`; });
    for (const c of cols) {
      const td = el("td", { text: fmt(c, r[c]) });
      if (c === "state" || c === "status") td.className = `state-${r[c]}`;
      tr.append(td);
    }
    frag.append(tr);
  }
  table.replaceChildren(frag);
  const pager = state.pager;
  if (pager) {
    const go = (p) => { state.page = p; render(table, state, kind); };
    pager.replaceChildren(
      el("button", { id: "prev", onclick: () => go(state.page - 1), ...(state.page === 0 ? { disabled: "" } : {}), text: "\u2039 prev" }),
      ` rows ${rows.length ? from + 1 : 0}\u2013${to} of ${rows.length} `,
      el("button", { id: "next", onclick: () => go(state.page + 1), ...(state.page >= pages - 1 ? { disabled: "" } : {}), text: "next \u203a" }),
    );
    pager.hidden = pages < 2;
  }
}

// ------------------------------------------------------------------ details

function fields(row) {
  const dl = el("dl", { id: "fields" });
  for (const [k, v] of Object.entries(row)) {
    if (k === "traceback") continue;
    dl.append(el("dt", { text: k }), el("dd", { class: k === "state" ? `state-${v}` : "", text: fmt(k, v) }));
  }
  return dl;
}

async function taskDetail(root, g, id) {
  const a = await api(`/api/v0/tasks?filter=${encodeURIComponent("task_id=" + id)}&detail=1&limit=1`);
  if (g !== generation) return;
  if (!a.rows.length) throw new ApiError(`no task ${id}`);
  const t = a.rows[0];
  const parts = [fields(t)];
  if (t.error_message) parts.push(el("h2", { text: "Error" }), el("pre", { id: "error-message", text: `${t.error_kind || ""}: ${t.error_message}` }));
  if (t.traceback) parts.push(el("h2", { text: "Traceback" }), el("pre", { id: "traceback", text: t.traceback }));
  root.replaceChildren(...parts);
}

async function actorDetail(root, g, id) {
  const a = await api(`/api/v0/actors?filter=${encodeURIComponent("actor_id=" + id)}&detail=1&limit=1`);
  if (g !== generation) return;
  if (!a.rows.length) throw new ApiError(`no actor ${id}`);
  const parts = [fields(a.rows[0])];
  const t = await api(`/api/v0/tasks?filter=${encodeURIComponent("actor_id=" + id)}&limit=100`);
  if (g !== generation) return;
  const table = el("table", { id: "rows" });
  render(table, { rows: t.rows, cols: COLUMNS.tasks, sortKey: null, desc: false, page: 0 }, "tasks");
  parts.push(el("h2", { text: `Calls (${t.rows.length} of ${t.total})` }), table);
  root.replaceChildren(...parts);
}

// ------------------------------------------------------------------ task stream

const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f", "#bab0ac"];
function colour(name, state) {
  if (state === "FAILED") return "#e15759";
  let h = 0;
  for (const ch of name || "") h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

// The stream page keeps the rows it has seen and, after its first look, asks only for those
// that changed since (`changed_ms>`): with a million tasks in the table, fetching the newest
// 2,000 again every 1.5 s cost the node about 105 ms of CPU a time. "Since" is the node's
// clock at the last answer (`X-Volley-Now-Ms`), less a slack for the rows of other nodes,
// which reach the head with their heartbeat, stamped by their own clocks.
const streamSeen = { gen: -1, rows: new Map(), since: 0 };
const STREAM_SLACK_MS = 5000;

async function streamFetch(g) {
  const seen = streamSeen;
  if (seen.gen !== g) { seen.gen = g; seen.rows = new Map(); seen.since = 0; }
  // The time filter first: a row that fails it is not compared again (the node tests the
  // filters in order).
  const states = "filter=state!=QUEUED&filter=state!=WAITING_ARGS";
  const url = seen.since
    ? `/api/v0/tasks?limit=2000&filter=${encodeURIComponent(`changed_ms>${seen.since - STREAM_SLACK_MS}`)}&${states}`
    : `/api/v0/tasks?limit=2000&${states}`;
  const [a, headers] = await api(url, false, true);
  for (const t of a.rows) seen.rows.set(t.task_id, t);
  const now = Number(headers.get("x-volley-now-ms"));
  seen.since = Number.isFinite(now) && now > 0 ? now : 0;
  return a;
}

async function stream(root, g) {
  let canvas = $("#stream-canvas", root);
  if (!canvas) {
    canvas = el("canvas", { id: "stream-canvas", width: "1200", height: "300" });
    root.replaceChildren(
      el("p", { class: "muted", text: "Each row is a worker (node:pid); each bar a task, from start to end, over the last 60 s. Running tasks grow to the right." }),
      canvas, el("div", { class: "legend", id: "legend" }), el("p", { id: "stream-count", class: "muted" }));
  }
  const a = await streamFetch(g);
  if (g !== generation) return;
  canvas.dataset.fetched = String(a.rows.length);
  const now = Date.now(), span = 60000, from = now - span;
  const lanes = new Map();
  const names = new Set();
  let shown = 0;
  for (const [id, t] of streamSeen.rows) {
    if (t.started_ms == null) continue;
    const end = t.ended_ms == null ? now : t.ended_ms;
    if (end < from) { streamSeen.rows.delete(id); continue; }
    const lane = `${t.node_id}:${t.worker_pid}`;
    if (!lanes.has(lane)) lanes.set(lane, []);
    lanes.get(lane).push([t.started_ms, end, t.name, t.state]);
    names.add(t.name);
    shown++;
  }
  const keys = [...lanes.keys()].sort();
  const laneH = 22, left = 130, width = canvas.clientWidth || 1200;
  canvas.width = width;
  canvas.height = Math.max(60, keys.length * laneH + 30);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "12px system-ui, sans-serif";
  const x = (ms) => left + ((ms - from) / span) * (width - left - 10);
  keys.forEach((k, i) => {
    const y = 10 + i * laneH;
    ctx.fillStyle = "#5b6477";
    ctx.fillText(k, 4, y + 14);
    for (const [s, e, name, st] of lanes.get(k)) {
      ctx.fillStyle = colour(name, st);
      const x0 = Math.max(left, x(s));
      ctx.fillRect(x0, y + 2, Math.max(2, x(e) - x0), laneH - 6);
    }
  });
  ctx.fillStyle = "#8a93a6";
  for (let s = 0; s <= 60; s += 10) ctx.fillText(`-${60 - s}s`, x(from + s * 1000) - 10, canvas.height - 4);
  canvas.dataset.slices = String(shown);
  $("#stream-count", root).textContent = `${shown} task(s) on ${keys.length} worker(s) in the last 60 s (${a.rows.length} fetched, ${a.total} changed since the last look)`;
  $("#legend", root).replaceChildren(...[...names].sort().map((n) => {
    const swatch = el("i");
    swatch.style.background = colour(n);
    return el("span", {}, swatch, n);
  }));
}

// ------------------------------------------------------------------ logs

function logsPage(root, g) {
  const inputs = {};
  const ctl = el("div", { class: "controls" });
  for (const k of ["node", "worker", "task", "actor", "job"]) {
    inputs[k] = el("input", { type: "text", id: `log-${k}`, placeholder: k, size: "10" });
    ctl.append(inputs[k]);
  }
  const follow = el("input", { type: "checkbox", id: "follow", checked: "" });
  const pre = el("pre", { id: "logtext" });
  let offset = null;
  const load = async () => {
    const q = new URLSearchParams();
    for (const [k, i] of Object.entries(inputs)) if (i.value.trim()) q.set(k, i.value.trim());
    if (offset != null) q.set("offset", String(offset));
    try {
      const a = await api(`/api/v0/logs?${q}`);
      if (g !== generation) return;
      showError("");
      const lines = a.lines || [];
      if (lines.length) pre.append(document.createTextNode(lines.join("\n") + "\n"));
      if (a.offset != null) offset = a.offset;
      pre.scrollTop = pre.scrollHeight;
      stamp();
    } catch (e) { if (g === generation) showError(e.message); }
  };
  const show = () => { offset = null; pre.replaceChildren(); load(); };
  ctl.append(el("button", { onclick: show, text: "Show" }), el("label", {}, follow, " follow"));
  root.append(ctl, pre);
  show();
  timer = setInterval(() => { if (follow.checked) load(); }, 1000);
}

window.addEventListener("hashchange", route);
route();
