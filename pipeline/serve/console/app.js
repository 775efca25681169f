// tagflow console: a read-only view over the /v1 API (nothing here reads anything a script
// could not). The bearer token is asked once per browser session, kept in sessionStorage and
// sent in the Authorization header, never in a URL. Routes live in the fragment:
//   #/segments[/TAG]          every tag's sizes; one tag's sizes, inflow and outflow per day
//   #/segment/TAG/VALUE       one segment per day, and its customers a page at a time
//   #/customer/ID             one customer's tags and history
//   #/tasks                   marketing task results, per task and per day
//   #/health                  published version and age, freshness, runs, quarantine
"use strict";

const TOKEN_KEY = "tagflow.token";
const main = document.getElementById("main");
const statusLine = document.getElementById("status");
const signout = document.getElementById("signout");
const PAGE = 50;
const TASKS_SHOWN = 200;

class Unauthorized extends Error {}

// ---- the API ----

async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(path, { headers });
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    throw new Unauthorized();
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.error ? body.error.message : response.statusText;
    throw new Error(`${path}: ${message}`);
  }
  return body;
}

// ---- building the page ----

/** An element with attributes and children (strings become text: nothing is parsed as HTML). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const pct = (x) => `${(100 * x).toFixed(1)} %`;
const link = (href, text, attrs) => el("a", { href, ...attrs }, text);
const route = (...parts) => "#/" + parts.map(encodeURIComponent).join("/");

function when(text) {
  if (!text) return "–";
  const t = new Date(text);
  return `${t.toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

function age(text) {
  if (!text) return "–";
  const seconds = Math.max(0, (Date.now() - new Date(text).getTime()) / 1000);
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} days`;
}

/** A table: columns are [header, cell(row), numeric?]; `label` names it for screen readers. */
function table(label, columns, rows, attrs) {
  return el("div", { class: "wide" },
    el("table", attrs,
      el("caption", {}, label),
      el("thead", {}, el("tr", {}, columns.map(([h, , n]) => el("th", { scope: "col", class: n ? "n" : null }, h)))),
      el("tbody", {}, rows.map((row) =>
        el("tr", {}, columns.map(([, cell, n]) => el("td", { class: n ? "n" : null }, cell(row))))))));
}

function show(title, ...content) {
  main.replaceChildren(el("h1", {}, title), ...content);
  document.title = `${title} · tagflow`;
  main.focus({ preventScroll: true });
  window.scrollTo(0, 0);
}

// ---- charts (uPlot, vendored) ----

/** The x axis of a daily chart: whole days as YYYY-MM-DD. */
const DAY_AXIS = {
  incrs: [86400, 2 * 86400, 7 * 86400, 28 * 86400],
  values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toISOString().slice(0, 10)),
};

const PALETTE = ["#0b4fbd", "#b3261e", "#0b6b2f", "#7a4a00", "#6b2fa0", "#00677f", "#8a1c5c", "#3d3d3d"];

/** A line chart of `series` ({label, values}) over `days` (YYYY-MM-DD), with a text alternative. */
function lineChart(description, days, series) {
  const box = el("div", { class: "chart", role: "img", "aria-label": description });
  if (!days.length || !window.uPlot) return box;
  const xs = days.map((d) => Date.parse(`${d}T00:00:00Z`) / 1000);
  const opts = {
    width: Math.min(main.clientWidth || 800, 1100),
    height: 260,
    scales: { x: { time: true } },
    axes: [DAY_AXIS, {}],
    series: [{}].concat(series.map((s, i) => ({
      label: s.label, stroke: PALETTE[i % PALETTE.length], width: 2, points: { show: days.length < 40 },
    }))),
  };
  requestAnimationFrame(() => new uPlot(opts, [xs, ...series.map((s) => s.values)], box));
  return box;
}

/** Inflow (up) and outflow (down) bars per day. */
function flowChart(description, days, inflow, outflow) {
  const box = el("div", { class: "chart", role: "img", "aria-label": description });
  if (!days.length || !window.uPlot) return box;
  const xs = days.map((d) => Date.parse(`${d}T00:00:00Z`) / 1000);
  const bars = uPlot.paths.bars({ size: [0.6, 40] });
  const opts = {
    width: Math.min(main.clientWidth || 800, 1100),
    height: 200,
    scales: { x: { time: true } },
    axes: [DAY_AXIS, {}],
    series: [{},
      { label: "inflow", stroke: "#0b6b2f", fill: "#0b6b2f99", paths: bars, points: { show: false } },
      { label: "outflow", stroke: "#b3261e", fill: "#b3261e99", paths: bars, points: { show: false } }],
  };
  const down = outflow.map((v) => (v === null ? null : -v));
  requestAnimationFrame(() => new uPlot(opts, [xs, inflow, down], box));
  return box;
}

// ---- views ----

async function segmentsView(tag) {
  const overview = await api("/v1/segments");
  const tags = overview.tags;
  // Without a choice, chart the largest tag with a handful of values (readable as lines).
  const few = tags.filter((t) => t.values.length <= 8).sort((a, b) => b.customers - a.customers);
  const chosen = tag || (few[0] || tags[0] || {}).tag;
  const rows = table("Every tag: customers per value (click a value to list its customers)", [
    ["Tag", (t) => link(route("segments", t.tag), t.tag, { "aria-current": t.tag === chosen ? "true" : null })],
    ["Family", (t) => t.family],
    ["Customers", (t) => el("span", { "data-tag": t.tag }, fmt(t.customers)), true],
    ["Values", (t) => el("span", { class: "values" }, t.values.map((v) =>
      link(route("segment", t.tag, v.value), [v.value, " ", el("span", { class: "count", "data-tag": t.tag, "data-value": v.value }, fmt(v.customers))])))],
  ], tags, { id: "segments" });
  const parts = [
    el("p", { class: "meta" }, `Version ${overview.version} · as of ${when(overview.as_of)} · `,
      el("span", { id: "customers" }, fmt(overview.customers)), " customers with tags"),
    rows,
  ];
  if (chosen) parts.push(...(await dailyOf(chosen, null)));
  show("Segments", ...parts);
}

/** The daily charts and table of a tag (every value) or of one value. */
async function dailyOf(tag, value) {
  const query = value === null ? "" : `&value=${encodeURIComponent(value)}`;
  const daily = await api(`/v1/segments/${encodeURIComponent(tag)}/daily?days=90${query}`);
  const days = [...new Set(daily.days.map((d) => d.day))];
  const values = [...new Set(daily.days.map((d) => d.value))].sort();
  const at = new Map(daily.days.map((d) => [`${d.day}\u0000${d.value}`, d]));
  const sizes = values.map((v) => ({ label: v, values: days.map((d) => (at.get(`${d}\u0000${v}`) || { size: 0 }).size) }));
  const sum = (key) => days.map((d) => {
    const known = daily.days.filter((x) => x.day === d && x[key] !== null);
    return known.length ? known.reduce((a, x) => a + x[key], 0) : null;
  });
  const name = value === null ? tag : `${tag} = ${value}`;
  return [
    el("h2", {}, `${name} per day`),
    lineChart(`Customers per day and value of ${name}, ${days.length} days`, days, sizes),
    flowChart(`Customers flowing in and out of ${name} per day`, days, sum("inflow"), sum("outflow")),
    el("details", {}, el("summary", {}, `The numbers per day (${daily.days.length} rows)`),
      table(`${name}: size at the end of each day, inflow and outflow over its publishes (– where only the backfilled history knows the day)`, [
      ["Day", (d) => d.day],
      ["Value", (d) => d.value],
      ["Size", (d) => fmt(d.size), true],
      ["Inflow", (d) => fmt(d.inflow), true],
      ["Outflow", (d) => fmt(d.outflow), true],
      ["Version", (d) => (d.version === null ? "history" : d.version)],
    ], daily.days.slice().reverse(), { id: "daily", "data-tag": tag })),
  ];
}

// Cursors of the pages seen, per segment, so that "Previous" goes back exactly.
const pages = { key: null, cursors: [null] , at: 0 };

async function segmentView(tag, value, move) {
  const key = `${tag}\u0000${value}`;
  if (pages.key !== key) Object.assign(pages, { key, cursors: [null], at: 0 });
  const at = Math.max(0, Math.min(pages.at + (move || 0), pages.cursors.length - 1));
  const cursor = pages.cursors[at];
  const query = `value=${encodeURIComponent(value)}&limit=${PAGE}` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : "");
  const page = await api(`/v1/segments/${encodeURIComponent(tag)}?${query}`);
  pages.at = at;
  if (page.next_cursor) pages.cursors[at + 1] = page.next_cursor;
  const first = at * PAGE + 1;
  const last = at * PAGE + page.customers.length;
  const members = table(`Customers ${fmt(first)}–${fmt(last)} of ${fmt(page.total)}`, [
    ["Customer", (m) => link(route("customer", m.customer_id), m.customer_id)],
    ["Value", (m) => m.value],
    ["Score", (m) => (m.score === null ? "–" : m.score.toFixed(3)), true],
  ], page.customers, { id: "members" });
  const pager = el("div", { class: "pager" },
    el("button", { type: "button", disabled: at === 0, onclick: () => segmentView(tag, value, -1) }, "Previous"),
    el("button", { type: "button", disabled: !page.next_cursor, onclick: () => segmentView(tag, value, +1) }, "Next"));
  show(`${tag} = ${value}`,
    el("p", { class: "meta" }, `Version ${page.version} · `, el("span", { id: "total" }, fmt(page.total)), " customers · ",
      link(route("segments", tag), `all values of ${tag}`)),
    ...(await dailyOf(tag, value)),
    el("h2", {}, "Customers"), members, pager);
}

async function customerView(id) {
  const [tags, changes] = await Promise.all([
    api(`/v1/customers/${encodeURIComponent(id)}/tags`).catch((e) => ({ missing: e.message, tags: [] })),
    api(`/v1/customers/${encodeURIComponent(id)}/changes?limit=100`),
  ]);
  show(`Customer ${id}`,
    el("p", { class: "meta" }, tags.missing ? tags.missing : `Version ${tags.version} · as of ${when(tags.as_of)}`),
    table("Tags now", [
      ["Family", (t) => t.family],
      ["Tag", (t) => link(route("segments", t.tag), t.tag)],
      ["Value", (t) => link(route("segment", t.tag, t.value), t.value)],
      ["Score", (t) => (t.score === null || t.score === undefined ? "–" : t.score.toFixed(3)), true],
      ["Since", (t) => when(t.as_of)],
    ], tags.tags, { id: "tags" }),
    el("h2", {}, "History"),
    table("Changes, newest first", [
      ["Version", (c) => c.to_version, true],
      ["Tag", (c) => c.tag],
      ["Change", (c) => c.change],
      ["From", (c) => c.old_value ?? "–"],
      ["To", (c) => c.new_value ?? "–"],
      ["As of", (c) => when(c.as_of)],
    ], changes.changes, { id: "changes" }));
}

async function tasksView() {
  const report = await api("/v1/tasks");
  const figures = [
    ["Sent", (t) => fmt(t.sent), true],
    ["Replied", (t) => fmt(t.replied), true],
    ["Ordered", (t) => fmt(t.ordered), true],
    ["Order rate", (t) => pct(t.order_rate), true],
    ["Paid amount", (t) => t.paid_amount.toFixed(2), true],
  ];
  const days = report.days.slice().reverse();
  show("Marketing tasks",
    el("p", { class: "meta" }, report.tasks.length ? `${report.tasks.length} tasks · as of ${when(report.as_of)}` : "No task results are published yet."),
    lineChart("Customers sent to and who ordered, per day of first send", days.map((d) => d.period), [
      { label: "sent", values: days.map((d) => d.sent) },
      { label: "ordered", values: days.map((d) => d.ordered) },
    ]),
    table("Per day of first send", [["Day", (d) => d.period], ["Tasks", (d) => fmt(d.tasks), true], ...figures], report.days, { id: "task-days" }),
    el("h2", {}, "Per task"),
    table(report.tasks.length > TASKS_SHOWN ? `The newest ${TASKS_SHOWN} of ${fmt(report.tasks.length)} tasks (every task: /v1/tasks)` : "Tasks, newest first", [
      ["Task", (t) => t.task_id], ["Type", (t) => t.task_type ?? "–"], ["First sent", (t) => when(t.first_sent_at)], ...figures,
    ], report.tasks.slice(0, TASKS_SHOWN), { id: "tasks" }));
}

async function healthView() {
  const [snapshots, runs, quarantine] = await Promise.all([api("/v1/snapshots"), api("/v1/runs?limit=20"), api("/v1/quarantine")]);
  const latest = snapshots.find((s) => s.as_of);
  const checks = (run) => (Array.isArray(run.jobs) ? run.jobs : [])
    .flatMap((j) => (j.failed_checks || []).map((c) => `${j.job}: ${c.check}${c.detail ? ` (${c.detail})` : ""}`));
  const duration = (r) => `${((new Date(r.finished_at) - new Date(r.started_at)) / 1000).toFixed(1)} s`;
  show("Health",
    el("p", { class: "meta" }, latest
      ? ["Published version ", el("span", { id: "published-version" }, latest.version), ` · committed ${age(latest.committed_at)} ago · as of ${when(latest.as_of)} · ${fmt(latest.customers)} customers`]
      : "Nothing is published yet."),
    el("h2", {}, "Runs"),
    table("The latest runs and follow batches, newest first; freshness is landing to publish", [
      ["Started", (r) => when(r.started_at)],
      ["Status", (r) => el("span", { class: `badge ${r.status}` }, r.status)],
      ["Took", duration, true],
      ["Files", (r) => fmt(r.files_read), true],
      ["Events", (r) => fmt(r.events), true],
      ["Quarantined files / rows", (r) => `${fmt(r.files_quarantined)} / ${fmt(r.rows_quarantined)}`, true],
      ["Version", (r) => r.published_version ?? "–", true],
      ["Freshness p95", (r) => (r.freshness_p95_ms === null || r.freshness_p95_ms === undefined ? "–" : `${fmt(r.freshness_p95_ms)} ms`), true],
      ["Failed checks / error", (r) => [checks(r).join("; "), r.error ? el("span", { class: "error" }, r.error) : null]],
    ], runs.runs, { id: "runs" }),
    el("h2", {}, "Quarantine"),
    table(`${quarantine.length} quarantined files or row sets, newest first`, [
      ["When", (q) => when(q.quarantined_at)],
      ["Stream", (q) => q.stream],
      ["Kind", (q) => q.kind],
      ["Rows", (q) => fmt(q.rows), true],
      ["Landing file", (q) => q.source],
      ["Reason", (q) => q.reason],
    ], quarantine, { id: "quarantine" }));
}

// ---- sign-in and routing ----

function loginView(message) {
  signout.hidden = true;
  const input = el("input", { id: "token", type: "password", autocomplete: "current-password", required: true });
  const form = el("form", { class: "login", onsubmit: (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value);
    render();
  } },
  el("label", { for: "token" }, "API token (kept for this browser session only)"), input,
  el("button", { type: "submit" }, "Open the console"),
  message ? el("p", { class: "error", role: "alert" }, message) : null);
  show("Sign in", form);
  input.focus();
}

async function render() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const [view, ...args] = parts;
  for (const a of document.querySelectorAll("nav a")) {
    const current = a.getAttribute("href") === `#/${view || "segments"}` || (view === "segment" && a.getAttribute("href") === "#/segments")
      || (view === "customer" && a.getAttribute("href") === "#/segments");
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const started = performance.now();
  statusLine.textContent = "Loading…";
  try {
    if (view === "segment" && args.length === 2) await segmentView(args[0], args[1], 0);
    else if (view === "customer" && args.length === 1) await customerView(args[0]);
    else if (view === "tasks") await tasksView();
    else if (view === "health") await healthView();
    else await segmentsView(args[0] || null);
    signout.hidden = !sessionStorage.getItem(TOKEN_KEY);
    statusLine.textContent = `Loaded in ${Math.round(performance.now() - started)} ms`;
    document.body.dataset.ready = location.hash || "#/segments";
  } catch (error) {
    statusLine.textContent = "";
    if (error instanceof Unauthorized) {
      loginView(sessionStorage.getItem(TOKEN_KEY) === null && document.body.dataset.tried ? "That token was refused." : null);
      document.body.dataset.tried = "1";
    } else {
      show("Cannot show this view", el("p", { class: "error", role: "alert" }, error.message));
    }
    document.body.dataset.ready = "error";
  }
}

signout.addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  delete document.body.dataset.tried;
  render();
});
window.addEventListener("hashchange", render);
render();
