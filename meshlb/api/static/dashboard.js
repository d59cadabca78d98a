// meshlb dashboard: polls the node that served it (which asks its peers) and draws
// the mesh. Vanilla JS and inline SVG; nothing is loaded from anywhere else.
"use strict";

const WINDOW_S = 15 * 60; // samples kept (and the widest chart)
const STALE_S = 10; // a member's own numbers older than this are not shown as current
const PALETTE = ["#6cb4ff", "#5cc27a", "#e8b64c", "#d27cf0", "#ff8a65", "#4dd0c8",
  "#f06292", "#a1887f", "#c5e1a5", "#90a4ae"];

const S = {
  peers: [],          // /v1/peers
  series: {},         // node -> array of sample rows (fields below)
  fields: [],         // names of the columns of a sample row
  status: {},         // node -> {..., heardAt: browser ms}
  offset: 0,          // serving node's wall clock minus the browser's, seconds
  colors: {},
  tasks: [],
  placements: [],
  mesh: [],
  served: "",
  failures: 0,
  windowS: WINDOW_S,  // what the charts show: 1, 5 or 15 minutes
};

const $ = (sel) => document.querySelector(sel);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g,
  (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const nowS = () => Date.now() / 1000 + S.offset; // the serving node's wall clock

async function getJSON(url, options) {
  const r = await fetch(url, { cache: "no-store", ...(options || {}) });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

function colorOf(node) {
  if (!(node in S.colors)) {
    S.colors[node] = PALETTE[Object.keys(S.colors).length % PALETTE.length];
  }
  return S.colors[node];
}

function ago(seconds) {
  if (seconds == null || !isFinite(seconds)) return "never";
  if (seconds < 1.5) return "just now";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

function num(v, digits = 1) {
  if (v == null || !isFinite(v)) return "—";
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en");
  return Number(v.toFixed(digits)).toString();
}

function usedOf(used, limit) {
  if (limit == null) return `${num(used, 0)} / ∞`;
  const pct = limit > 0 ? Math.min(100, (100 * used) / limit) : 100;
  return `${num(used, 0)} / ${num(limit, 0)}<span class="meter"><i class="${pct > 85 ? "hot" : ""}"` +
    ` style="width:${pct.toFixed(0)}%"></i></span>`;
}

function clock(t) {
  const d = new Date((t - S.offset) * 1000);
  return d.toLocaleTimeString("en-GB", { hour12: false });
}

// ---- members ---------------------------------------------------------------------

function memberRow(p, index) {
  const st = S.status[p.id];
  const heardS = st ? (Date.now() - st.heardAt) / 1000 : null;
  const gone = p.state === "dead" || p.state === "left";
  const fresh = !gone && st != null && heardS < STALE_S;
  // Load: the member's own fresh answer, else gossip's (alive only); never a dead one's.
  const load = gone ? null : fresh ? st : p.state === "alive" ? { ...p.load, viaGossip: true } : null;
  const up = fresh ? st.ollama_up : p.ollama_up;
  const loaded = new Set(fresh ? st.loaded : []);
  const models = (p.models || []).map((m) =>
    `<span class="model${loaded.has(m) ? " loaded" : ""}">${esc(m)}</span>`).join("") || "—";
  let depth = "—";
  if (load && load.depth_by_priority) {
    const parts = Object.entries(load.depth_by_priority).filter(([, n]) => n > 0)
      .sort((a, b) => b[0] - a[0]).map(([pr, n]) => `p${esc(pr)}: ${n}`);
    depth = `${load.queued}` + (parts.length ? ` <span class="sub">(${parts.join(", ")})</span>` : "");
  } else if (load) {
    depth = `${load.queued}`;
  }
  let freshness;
  if (gone) {
    const since = p.last_change ? nowS() - p.last_change : null;
    freshness = `${p.state} ${ago(since)}` + (st ? ` · last data ${ago(heardS)}` : "");
  } else if (fresh) {
    freshness = `updated ${ago(heardS)}`;
  } else if (load) {
    freshness = `via gossip` + (st ? ` · own data ${ago(heardS)}` : "");
  } else {
    freshness = `${p.state}: load unknown` + (st ? ` · last data ${ago(heardS)}` : "");
  }
  const cls = [gone ? "gone" : "", !gone && !fresh ? "stale" : ""].join(" ");
  const dash = "—";
  return `<tr data-node="${esc(p.id)}" data-state="${esc(p.state)}" class="${cls}">
    <td><span style="color:${colorOf(p.id)}">■</span> <b>${esc(p.id)}</b>
      ${index === 0 ? '<span class="me">(this node)</span>' : ""}
      <span class="addr">${esc(p.http_addr || "")}</span></td>
    <td class="state"><span class="badge s-${esc(p.state)}">${esc(p.state)}</span></td>
    <td>${gone || up == null ? dash : `<span class="badge ${up ? "up" : "down"}">${up ? "up" : "down"}</span>`}</td>
    <td class="models">${models}</td>
    <td class="load">${depth}</td>
    <td class="load">${load ? `${load.running} / ${load.max_concurrency ?? "∞"}` : dash}</td>
    <td class="load">${load ? usedOf(load.rpm_used, load.rpm_limit) : dash}</td>
    <td class="load">${load ? usedOf(load.tpm_used, load.tpm_limit) : dash}</td>
    <td class="load">${load ? num(load.tokens_per_s) : dash}</td>
    <td class="fresh ${!gone && !fresh ? "late" : ""}">${esc(freshness)}</td></tr>`;
}

function renderMembers() {
  const rows = S.peers.map(memberRow).join("");
  $("#members tbody").innerHTML = rows || '<tr><td colspan="10">no members</td></tr>';
  const by = {};
  for (const p of S.peers) by[p.state] = (by[p.state] || 0) + 1;
  const live = S.peers.filter((p) => p.state === "alive" || p.state === "suspect");
  const sum = (k) => live.reduce((a, p) => a + ((S.status[p.id] || p.load)[k] || 0), 0);
  $("#totals").innerHTML = `<b>${S.peers.length}</b> members: ` +
    ["alive", "suspect", "dead", "left"].filter((s) => by[s]).map((s) => `${by[s]} ${s}`).join(", ") +
    ` · <b>${sum("queued")}</b> queued · <b>${sum("running")}</b> running`;
}

// ---- charts ----------------------------------------------------------------------

function col(name) { return S.fields.indexOf(name); }

function drawChart(svg, lines, unit) {
  // lines: [{node, idx, dashed}]; x: the last WINDOW_S seconds of the serving node's clock.
  const W = 640, H = 180, L = 44, R = 8, T = 8, B = 20;
  const span = S.windowS, end = nowS(), start = end - span;
  let peak = 0, latest = 0;
  for (const ln of lines) {
    for (const r of S.series[ln.node] || []) if (r[0] >= start) peak = Math.max(peak, r[ln.idx]);
  }
  const top = peak > 0 ? niceCeil(peak * 1.1) : 1;
  const x = (t) => L + ((t - start) / span) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  let out = "";
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4, yy = y(v).toFixed(1);
    out += `<line class="grid-line" x1="${L}" x2="${W - R}" y1="${yy}" y2="${yy}"/>` +
      `<text x="${L - 5}" y="${Number(yy) + 4}" text-anchor="end">${num(v, v < 10 ? 1 : 0)}</text>`;
  }
  const ticks = span > 600 ? [15, 10, 5, 0] : span > 120 ? [5, 4, 3, 2, 1, 0] : [1, 0.5, 0];
  for (const m of ticks) {
    const anchor = m * 60 === span ? "start" : m === 0 ? "end" : "middle";
    const label = m === 0 ? "now" : m < 1 ? `−${m * 60} s` : `−${m} min`;
    out += `<text x="${x(end - m * 60).toFixed(1)}" y="${H - 4}" text-anchor="${anchor}">${label}</text>`;
  }
  for (const ln of lines) {
    const rows = (S.series[ln.node] || []).filter((r) => r[0] >= start);
    const gap = 3 * (S.interval || 2);
    let seg = [], prev = null;
    const flush = () => {
      if (seg.length > 1) {
        out += `<polyline class="line${ln.dashed ? " p99" : ""}" stroke="${colorOf(ln.node)}" ` +
          `points="${seg.join(" ")}"/>`;
      } else if (seg.length === 1) {
        const [px, py] = seg[0].split(",");
        out += `<circle cx="${px}" cy="${py}" r="2" fill="${colorOf(ln.node)}"/>`;
      }
      seg = [];
    };
    for (const r of rows) {
      if (prev && r[0] - prev[0] > gap) flush(); // a silent node leaves a gap, not a ramp
      seg.push(`${x(r[0]).toFixed(1)},${y(r[ln.idx]).toFixed(1)}`);
      prev = r;
    }
    flush();
    const last = rows[rows.length - 1];
    if (last && end - last[0] < 10 && !ln.dashed) latest += last[ln.idx];
  }
  svg.innerHTML = out;
  svg.dataset.peak = String(peak);
  svg.dataset.latest = String(latest);
  return { peak, latest };
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function renderCharts() {
  const nodes = Object.keys(S.series).sort();
  if (!S.fields.length) return;
  const rps = drawChart($("#chart-rps"), nodes.map((n) => ({ node: n, idx: col("rps") })));
  $("#rps-now").textContent = `mesh now ${num(rps.latest)} req/s · node peak ${num(rps.peak)}`;
  const q = drawChart($("#chart-queue"), nodes.map((n) => ({ node: n, idx: col("queued") })));
  $("#queue-now").textContent = `mesh now ${num(q.latest, 0)} · node peak ${num(q.peak, 0)}`;
  const lines = [];
  for (const n of nodes) {
    lines.push({ node: n, idx: col("ttft_p50_ms") }, { node: n, idx: col("ttft_p99_ms"), dashed: true });
  }
  const t = drawChart($("#chart-ttft"), lines);
  $("#ttft-now").textContent = `peak ${num(t.peak, 0)} ms`;
  $("#legend").innerHTML = nodes.map((n) => `<span style="--c:${colorOf(n)}">${esc(n)}</span>`).join("");
}

function mergeSeries(doc) {
  S.fields = doc.fields;
  S.interval = doc.interval_s;
  const cutoff = nowS() - WINDOW_S - 60;
  for (const [node, ans] of Object.entries(doc.nodes || {})) {
    const rows = S.series[node] || (S.series[node] = []);
    const lastT = rows.length ? rows[rows.length - 1][0] : -Infinity;
    for (const r of ans.samples || []) if (r[0] > lastT) rows.push(r);
    while (rows.length && rows[0][0] < cutoff) rows.shift();
    S.status[node] = { ...ans.status, heardAt: Date.now() };
  }
}

function seriesSince() {
  // The oldest newest-sample among nodes heard lately: no node misses samples.
  let since = Infinity;
  for (const [node, rows] of Object.entries(S.series)) {
    const st = S.status[node];
    if (!rows.length || !st || Date.now() - st.heardAt > 30000) continue;
    since = Math.min(since, rows[rows.length - 1][0]);
  }
  return since === Infinity ? 0 : since;
}

// ---- tasks -----------------------------------------------------------------------

function renderTasks() {
  const q = $("#task-search").value.trim().toLowerCase();
  let rows = S.tasks;
  if (q) rows = rows.filter((t) => t.id.toLowerCase().includes(q));
  if (q && !rows.length && S.found && S.found.id.toLowerCase().includes(q)) rows = [S.found];
  const now = nowS();
  $("#tasks tbody").innerHTML = rows.slice(0, 200).map((t) => {
    const final = ["succeeded", "failed", "cancelled"].includes(t.state);
    return `<tr data-task-id="${esc(t.id)}" data-state="${esc(t.state)}">
      <td><code>${esc(t.id)}</code></td>
      <td class="st-${esc(t.state)}">${esc(t.state)}</td>
      <td>${esc(t.node || (t.origin ? `${t.origin} (accepted)` : "—"))}</td><td>${esc(t.priority)}</td><td>${esc(t.model)}</td>
      <td>${t.created_at ? ago(now - t.created_at).replace(" ago", "") : "—"}</td>
      <td>${final ? "" : `<button class="cancel" data-id="${esc(t.id)}">cancel</button>`}</td></tr>`;
  }).join("") || `<tr><td colspan="7" class="sub">${q ? "no task matches" : "no queued or running tasks"}</td></tr>`;
  const running = S.tasks.filter((t) => t.state === "running").length;
  $("#task-count").textContent = `${running} running, ${S.tasks.length - running} queued`;
}

async function searchTask() {
  const q = $("#task-search").value.trim();
  S.found = null;
  renderTasks();
  if (q.length < 6 || S.tasks.some((t) => t.id.includes(q))) return;
  try {
    S.found = await getJSON(`/v1/tasks/${encodeURIComponent(q)}`);
    $("#task-msg").textContent = "";
  } catch (e) {
    $("#task-msg").textContent = `no task ${q} in the mesh`;
  }
  renderTasks();
}

async function cancelTask(id, button) {
  button.disabled = true;
  const msg = $("#task-msg");
  try {
    const t = await getJSON(`/v1/tasks/${encodeURIComponent(id)}`, { method: "DELETE" });
    msg.className = "msg";
    msg.textContent = `task ${id}: ${t.state}`;
  } catch (e) {
    msg.className = "msg bad";
    msg.textContent = `task ${id} not cancelled: ${e.message}`;
    button.disabled = false;
  }
  pollTasks();
}

// ---- events ----------------------------------------------------------------------

function collapse(rows) {
  // The same decision for the same reason from the same node (a burst of requests) is
  // one line with a count, at its newest time; task placements stay one per task.
  const out = [], seen = new Map();
  for (const e of rows) {
    const key = e.task ? null : [e.reporter, e.decision, e.model, e.reason].join("\u0000");
    const held = key && seen.get(key);
    if (held) { held.times += 1; continue; }
    const row = { ...e, times: 1 };
    if (key) seen.set(key, row);
    out.push(row);
  }
  return out;
}

function renderEvents() {
  $("#placements").innerHTML = collapse(S.placements).map((e) =>
    `<li data-decision="${esc(e.decision)}"><span class="when">${clock(e.at)}</span>` +
    `<span class="who">${esc(e.reporter)}</span><b class="d-${esc(e.decision)}">${esc(e.decision)}</b> ` +
    `${esc(e.model)} — ${esc(e.reason)}${e.task ? ` <code>${esc(e.task)}</code>` : ""}` +
    `${e.times > 1 ? ` <span class="times">×${e.times}</span>` : ""}</li>`).join("") ||
    '<li class="sub">no placement decisions yet</li>';
  $("#mesh-events").innerHTML = S.mesh.map((e) =>
    `<li data-kind="${esc(e.kind)}" data-node="${esc(e.node)}"><span class="when">${clock(e.at)}</span>` +
    `<span class="who">${esc(e.reporter)}</span><b class="k-${esc(e.kind)}">${esc(e.kind.replace("_", " "))}</b> ` +
    `${esc(e.text)}</li>`).join("") || '<li class="sub">no membership events yet</li>';
}

// ---- polling ---------------------------------------------------------------------

function connected(ok, err) {
  const c = $("#conn");
  S.failures = ok ? 0 : S.failures + 1;
  if (ok) { c.className = "conn"; c.textContent = `live · ${new Date().toLocaleTimeString("en-GB")}`; }
  else if (S.failures > 1) { c.className = "conn bad"; c.textContent = `node unreachable: ${err}`; }
}

async function pollPeers() {
  try {
    S.peers = await getJSON("/v1/peers");
    if (S.peers[0]) $("#served-by").textContent = S.peers[0].id;
    renderMembers();
    connected(true);
  } catch (e) { connected(false, e.message); }
}

async function pollSeries() {
  try {
    const before = Date.now();
    const doc = await getJSON(`/v1/series?since=${seriesSince()}`);
    S.offset = doc.now - (before + Date.now()) / 2000;
    mergeSeries(doc);
    renderCharts();
    renderMembers();
  } catch (e) { connected(false, e.message); }
}

async function pollTasks() {
  try {
    const [running, queued] = await Promise.all([
      getJSON("/v1/tasks?state=running&limit=200"), getJSON("/v1/tasks?state=queued&limit=200")]);
    S.tasks = [...running.tasks, ...queued.tasks];
    renderTasks();
  } catch (e) { connected(false, e.message); }
}

async function pollEvents() {
  try {
    const doc = await getJSON("/v1/events?limit=80");
    S.placements = doc.placements;
    S.mesh = doc.mesh;
    renderEvents();
  } catch (e) { connected(false, e.message); }
}

function every(ms, fn) {
  let busy = false; // never two of the same poll in flight
  const run = async () => { if (busy) return; busy = true; try { await fn(); } finally { busy = false; } };
  run();
  setInterval(run, ms);
}

$("#task-search").addEventListener("input", searchTask);
document.querySelectorAll("#window button").forEach((b) => b.addEventListener("click", () => {
  S.windowS = Number(b.dataset.s);
  document.querySelectorAll("#window button").forEach((o) => o.classList.toggle("on", o === b));
  renderCharts();
}));
$("#tasks").addEventListener("click", (ev) => {
  const b = ev.target.closest("button.cancel");
  if (b) cancelTask(b.dataset.id, b);
});
every(1000, pollPeers);
every(2000, pollSeries);
every(2000, pollTasks);
every(2000, pollEvents);
setInterval(renderCharts, 5000); // the x axis moves on even when no data comes
