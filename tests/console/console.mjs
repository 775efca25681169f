// Drives tagflow's console in headless Chromium (playwright-core) for tests/it/console.rs:
//   node console.mjs BASE_URL TOKEN SCREENSHOT_DIR
// It signs in (a wrong token first), reads the numbers each view shows and checks them
// against the /v1 API, walks from a segment to a customer with the keyboard only, runs the
// axe-core accessibility rules (WCAG 2 A/AA, colour contrast included) on every view,
// takes screenshots and fails on any page error. Prints a JSON report on stdout.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const [base, token, shots] = process.argv.slice(2);
const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

async function api(path) {
  const response = await fetch(base + path, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(response.status, 200, `${path}: ${response.status}`);
  return response.json();
}

const number = (text) => (text.trim() === "–" ? null : Number(text.replace(/,/g, "")));

const browser = await chromium.launch({
  executablePath: process.env.TAGFLOW_TEST_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const report = { views: {} };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error") problems.push(m.text()); });
  page.on("pageerror", (e) => problems.push(String(e)));

  /** Wait until the view of the current fragment has rendered; its time in ms. */
  const ready = async () => {
    const started = Date.now();
    await page.waitForFunction(() => document.body.dataset.ready === (location.hash || "#/segments"), null, { timeout: 20000 });
    return Date.now() - started;
  };
  const accessible = async (view) => {
    await page.evaluate(axeSource); // through the DevTools protocol, which the page's CSP does not govern
    const result = await page.evaluate(() => axe.run(document, { runOnly: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] }));
    const found = result.violations.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`);
    assert.deepEqual(found, [], `axe on ${view}`);
    report.views[view] = { axe_rules_passed: result.passes.length };
  };

  // Sign in: the form comes first; a wrong token is refused; the right one opens the view.
  await page.goto(`${base}/ui/#/segments`);
  await page.waitForSelector("#token");
  await page.fill("#token", "not-the-token-at-all");
  await page.keyboard.press("Enter");
  await page.waitForSelector("text=That token was refused.");
  await page.fill("#token", token);
  await page.keyboard.press("Enter");
  await ready();
  problems.length = 0; // the refused token's 401 is logged by the browser as an error
  assert.ok(!page.url().includes(token), "the token is not in the URL");
  assert.ok(!(await page.evaluate(() => JSON.stringify(localStorage))).includes(token), "nor in localStorage");

  // A fresh load with the session's token: time until the segments view is interactive.
  const loadStarted = Date.now();
  await page.reload();
  await ready();
  report.interactive_ms = Date.now() - loadStarted;

  // Segments: every size shown equals the API's.
  const overview = await api("/v1/segments");
  const shown = await page.$$eval("#segments span[data-value]", (els) => els.map((e) => [e.dataset.tag, e.dataset.value, e.textContent]));
  const expected = overview.tags.flatMap((t) => t.values.map((v) => [t.tag, v.value, v.customers]));
  assert.deepEqual(shown.map(([t, v, n]) => [t, v, number(n)]), expected, "segment sizes");
  assert.equal(number(await page.textContent("#customers")), overview.customers);
  report.segments = shown.map(([t, v, n]) => [t, v, number(n)]);
  report.version = overview.version;
  const charted = await page.getAttribute("#daily", "data-tag");
  const daily = await api(`/v1/segments/${encodeURIComponent(charted)}/daily?days=90`);
  const dailyShown = await page.$$eval("#daily tbody tr", (rows) => rows.map((r) => [...r.cells].map((c) => c.textContent)));
  assert.deepEqual(
    dailyShown.map((c) => [c[0], c[1], number(c[2]), number(c[3]), number(c[4])]),
    daily.days.slice().reverse().map((d) => [d.day, d.value, d.size, d.inflow, d.outflow]),
    "daily sizes and flows");
  report.daily_rows = dailyShown.length;
  report.history_rows = daily.days.filter((d) => d.version === null).length;
  assert.ok((await page.$$(".chart canvas")).length >= 2, "the size and flow charts are drawn");
  await accessible("segments");
  await page.screenshot({ path: `${shots}/segments.png`, fullPage: true });

  // Keyboard only: Tab to the first segment value, Enter; then to its first customer, Enter.
  const tabTo = async (prefix) => {
    for (let presses = 1; presses <= 80; presses++) {
      await page.keyboard.press("Tab");
      const href = await page.evaluate(() => document.activeElement && document.activeElement.getAttribute("href"));
      if (href && href.startsWith(prefix)) return presses;
    }
    throw new Error(`no link to ${prefix} within 80 Tab presses`);
  };
  report.tabs_to_segment = await tabTo("#/segment/");
  await page.keyboard.press("Enter");
  await ready();
  const [, , tag, value] = (await page.evaluate(() => location.hash)).split("/").map(decodeURIComponent);
  const members = await api(`/v1/segments/${encodeURIComponent(tag)}?value=${encodeURIComponent(value)}&limit=50`);
  assert.equal(number(await page.textContent("#total")), members.total, "segment total");
  const ids = await page.$$eval("#members tbody tr td:first-child", (cells) => cells.map((c) => c.textContent));
  assert.deepEqual(ids, members.customers.map((m) => m.customer_id), "first page of the segment");
  await accessible("segment");
  if (members.next_cursor) {
    await page.click("text=Next");
    await ready();
    const next = await api(`/v1/segments/${encodeURIComponent(tag)}?cursor=${encodeURIComponent(members.next_cursor)}&value=${encodeURIComponent(value)}&limit=50`);
    const idsNext = await page.$$eval("#members tbody tr td:first-child", (cells) => cells.map((c) => c.textContent));
    assert.deepEqual(idsNext, next.customers.map((m) => m.customer_id), "second page of the segment");
    await page.click("text=Previous");
    await ready();
  }
  await page.focus("main");
  report.tabs_to_customer = await tabTo("#/customer/");
  await page.keyboard.press("Enter");
  await ready();
  const id = decodeURIComponent((await page.evaluate(() => location.hash)).split("/")[2]);
  const customer = await api(`/v1/customers/${encodeURIComponent(id)}/tags`);
  const tagsShown = await page.$$eval("#tags tbody tr", (rows) => rows.map((r) => [r.cells[1].textContent, r.cells[2].textContent]));
  assert.deepEqual(tagsShown, customer.tags.map((t) => [t.tag, t.value]), `tags of ${id}`);
  await accessible("customer");

  // Tasks: every task's figures.
  await page.click("nav >> text=Tasks");
  await ready();
  const tasks = await api("/v1/tasks");
  const tasksShown = await page.$$eval("#tasks tbody tr", (rows) => rows.map((r) => [r.cells[0].textContent, r.cells[3].textContent, r.cells[5].textContent]));
  assert.deepEqual(tasksShown.map(([t, s, o]) => [t, number(s), number(o)]), tasks.tasks.slice(0, 200).map((t) => [t.task_id, t.sent, t.ordered]), "tasks (the newest 200)");
  const daysShown = await page.$$eval("#task-days tbody tr", (rows) => rows.map((r) => [r.cells[0].textContent, r.cells[2].textContent, r.cells[4].textContent]));
  assert.deepEqual(daysShown.map(([d, s, o]) => [d, number(s), number(o)]), tasks.days.map((d) => [d.period, d.sent, d.ordered]), "tasks per day");
  report.tasks = tasksShown.length;
  await accessible("tasks");

  // Health: the published version, the runs and the quarantine area.
  await page.click("nav >> text=Health");
  await ready();
  const snapshots = await api("/v1/snapshots");
  const runs = await api("/v1/runs?limit=20");
  const quarantine = await api("/v1/quarantine");
  assert.equal(number(await page.textContent("#published-version")), snapshots.find((s) => s.as_of).version);
  const statuses = await page.$$eval("#runs tbody tr td:nth-child(2)", (cells) => cells.map((c) => c.textContent));
  assert.deepEqual(statuses, runs.runs.map((r) => r.status), "runs");
  const sources = await page.$$eval("#quarantine tbody tr td:nth-child(5)", (cells) => cells.map((c) => c.textContent));
  assert.deepEqual(sources, quarantine.map((q) => q.source), "quarantine");
  report.runs = statuses.length;
  report.quarantined = sources.length;
  await accessible("health");
  await page.screenshot({ path: `${shots}/health.png`, fullPage: true });

  assert.deepEqual(problems, [], "no errors in the page");
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
