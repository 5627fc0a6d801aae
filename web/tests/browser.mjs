// The web UI in a real browser (Debian's chromium through playwright-core), against a running
// `flow standalone`. Run by crates/cli/tests/browser.rs, which starts flow and passes:
//   FLOW_URL, ADMIN_PASSWORD, VIEWER_USER, VIEWER_PASSWORD, CHROMIUM (path), CONN_TEST_DB (an
//   SQLite file the Connections page's Test reaches; flow runs with test_connection Enabled)
// Any JavaScript dialog (an injected `alert`) fails the test.
import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const base = process.env.FLOW_URL;
const XSS = "<img src=x onerror=alert(1)>";
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
const dialogs = [];
const errors = [];

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss(); });
  page.on("pageerror", (e) => errors.push(String(e)));
  // Anything the Content-Security-Policy refused (an inline script or style) fails the test.
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy/.test(m.text())) errors.push(m.text());
  });
  page.setDefaultTimeout(30000);
  return page;
}

async function login(page, user, password) {
  await page.goto(base + "/");
  assert.match(page.url(), /\/login\?next=/);
  await page.fill("input[name=username]", user);
  await page.fill("input[name=password]", password);
  await page.click("button[type=submit]");
  await page.waitForSelector("#dag-list");
}

/// Reloads `url` until `check` (run in the page) is true.
async function waitFor(page, url, what, check, seconds = 90) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    await page.goto(url);
    if (await page.evaluate(check)) return;
    if (Date.now() > deadline) throw new Error("timed out waiting for " + what);
    await page.waitForTimeout(500);
  }
}

try {
  // /health needs no login and sees the standalone's scheduler (once its first pass ran).
  let health = {};
  for (let i = 0; i < 60; i++) {
    health = await (await fetch(base + "/health")).json();
    if (health.scheduler.status === "healthy") break;
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.equal(health.metadatabase.status, "healthy");
  assert.equal(health.scheduler.status, "healthy", JSON.stringify(health));

  const admin = await newPage();
  await login(admin, "admin", process.env.ADMIN_PASSWORD);

  // The example ETL DAG starts paused: unpause it from the list.
  const row = admin.locator('tr[data-dag-id="etl_daily"]');
  await row.locator("button[data-action=pause-toggle]").click();
  await admin.waitForSelector('tr[data-dag-id="etl_daily"] button.toggle.on');

  // orders_report runs on the asset etl_daily's load updates: unpause it too.
  await admin.locator('tr[data-dag-id="orders_report"] button[data-action=pause-toggle]').click();
  await admin.waitForSelector('tr[data-dag-id="orders_report"] button.toggle.on');

  // Trigger it with a param from the generated form.
  await admin.goto(base + "/dags/etl_daily/trigger");
  await admin.fill('input[name="param.region"]', "us");
  await admin.click("#trigger-form button[type=submit]");
  await admin.waitForURL(/\/dags\/etl_daily$/);

  // Watch the grid until the newest run (rightmost column) is green all the way down.
  await waitFor(admin, base + "/dags/etl_daily", "the triggered run to succeed", () => {
    const rows = [...document.querySelectorAll("#grid tbody tr")];
    return rows.length > 0 && rows.every((r) => {
      const cells = r.querySelectorAll("td");
      return cells.length > 0 && cells[cells.length - 1].classList.contains("st-success");
    });
  });

  // The grid's columns are headed by the run's date; a click on a cell opens the details
  // panel beside the grid without leaving the page, and the URL keeps the selection.
  assert.match(await admin.textContent("#grid tr.dates th.run:last-child"), /\d\d-\d\d \d\d:\d\d/);
  const gridUrl = admin.url();
  const extract = admin.locator("#grid tbody tr").first().locator("td").last();
  await extract.click();
  await admin.waitForSelector("#details-task[data-task=extract]");
  assert.match(admin.url(), /task_id=extract/);
  assert.match(await admin.textContent("#details-state"), /success/);
  assert.match(await admin.textContent("#details"), /try\s*1 of/);
  // A note on the task instance, kept when the page comes back to the panel.
  await admin.fill("#ti-note-form textarea", "extract looked fine");
  await admin.click("#ti-note-form button[type=submit]");
  await admin.waitForSelector("#details-task[data-task=extract]");
  assert.equal(await admin.inputValue("#ti-note-form textarea"), "extract looked fine");
  // The run's head opens the run: its conf (the param we gave) and a note form.
  await admin.locator("#grid tr.dates th.run").last().locator("a").click();
  await admin.waitForSelector("#details-run");
  assert.match(await admin.textContent("#details-run"), /"region": "us"/);
  await admin.fill("#note-form textarea", "checked by the browser test");
  await admin.click("#note-form button[type=submit]");
  await admin.waitForSelector("#details-run");
  assert.match(await admin.inputValue("#note-form textarea"), /checked by the browser test/);
  // Keyboard: the cursor starts at the newest cell of the first row, arrows move it, Enter
  // opens what it is on, Escape closes the panel.
  await admin.focus("#grid");
  await admin.keyboard.press("ArrowDown");
  await admin.keyboard.press("ArrowDown");
  await admin.keyboard.press("Enter");
  await admin.waitForSelector("#details-task");
  const second = await admin.getAttribute("#details-task", "data-task");
  assert.notEqual(second, "extract", "the cursor moved down a row");
  await admin.keyboard.press("Escape");
  await admin.waitForSelector("#details", { state: "hidden" });
  assert.equal(admin.url().includes("task_id="), false);
  // Open a task's log from the panel: it ran for the param we gave.
  await admin.goto(gridUrl);
  await admin.locator("#grid tbody tr").first().locator("td").last().click();
  await admin.click("#details-log");
  await admin.waitForSelector("#log");
  const log = await admin.textContent("#log");
  assert.match(log, /Running command/);
  assert.match(await admin.textContent("body"), /us/);

  // Clear it: the confirmation lists what will be cleared, then it runs again.
  await admin.click("text=Clear…");
  await admin.waitForSelector("#to-clear");
  assert.match(await admin.textContent("#to-clear"), /extract/);
  await admin.click("#confirm-clear");
  await admin.waitForURL(/\/dags\/etl_daily$/);

  // Assets: the orders table lists its producer and consumer and the load's event, and the
  // event triggered orders_report.
  await waitFor(admin, base + "/assets", "the load's asset event", () => {
    const row = document.querySelector('tr[data-asset="warehouse://orders"]');
    return row !== null && /etl_daily/.test(row.textContent) && /orders_report/.test(row.textContent)
      && /\d{4}-\d{2}-\d{2}/.test(row.textContent);
  });
  await admin.click('tr[data-asset="warehouse://orders"] a[href^="/assets/"]');
  await admin.waitForSelector("#asset-events");
  assert.match(await admin.textContent("#asset-events"), /etl_daily\.load/);
  await waitFor(admin, admin.url(), "orders_report to be triggered", () =>
    /orders_report/.test(document.querySelector("#asset-events tbody tr").textContent));
  // An operator records an event by hand: it is listed, with its extra.
  await admin.fill('#asset-event-form input[name=extra]', '{"rows": 7}');
  await admin.click("#asset-event-form button[type=submit]");
  await admin.waitForSelector("#asset-events");
  assert.match(await admin.textContent("#asset-events tbody tr"), /"rows":7/);

  // The audit log saw all of it.
  await admin.goto(base + "/audit");
  const audit = await admin.textContent("#audit");
  for (const event of ["unpaused", "trigger", "clear"]) assert.match(audit, new RegExp(event));

  // The cluster page: the standalone's components are healthy, the last day is charted.
  await admin.goto(base + "/cluster");
  await admin.waitForSelector("#components");
  const components = await admin.textContent("#components");
  assert.match(components, /scheduler/);
  assert.match(components, /worker/);
  assert.equal(await admin.locator('#components tr[data-health="unhealthy"]').count(), 0);
  assert.match(await admin.textContent("#pool-use"), /default_pool/);
  assert.ok(await admin.locator("svg.chart#tries-chart rect.bar.st-success").count() > 0, "tries charted");
  // Ctrl+K from any page goes to the DAG search.
  await admin.keyboard.press("Control+K");
  assert.equal(await admin.evaluate(() => document.activeElement.id), "dag-search");
  await admin.keyboard.type("orders_rep");
  await admin.keyboard.press("Enter");
  await admin.waitForSelector('tr[data-dag-id="orders_report"]');
  assert.equal(await admin.locator('tr[data-dag-id="etl_daily"]').count(), 0);
  // The home overview counts the DAGs; a favourite comes first.
  await admin.goto(base + "/");
  assert.match(await admin.textContent("#overview"), /active DAGs/);
  assert.ok(await admin.locator("svg.chart#home-tries-chart").count() === 1);
  await admin.locator('tr[data-dag-id="orders_report"] button[data-action=favorite]').click();
  await admin.waitForSelector('tr[data-dag-id="orders_report"] button.star.on');
  assert.equal(await admin.locator("#dag-list tbody tr").first().getAttribute("data-dag-id"), "orders_report");

  // A DAG's Overview: the calendar marks today's successful run, the durations are charted.
  await admin.goto(base + "/dags/etl_daily?tab=overview");
  await admin.waitForSelector("#calendar");
  assert.ok(await admin.locator("#calendar .day.cal-success").count() >= 1, "today's run on the calendar");
  assert.ok(await admin.locator("svg.chart#run-durations-chart rect.bar").count() >= 1);

  assert.ok(await admin.locator("svg.chart#task-durations-chart circle.series-0").count() >= 1, "task durations charted");
  assert.match(await admin.textContent("#task-durations-legend"), /extract|load|transform/);

  // Versions: the DAG's file, all added in its first version.
  await admin.goto(base + "/dags/etl_daily?tab=versions");
  await admin.waitForSelector("#versions");
  assert.match(await admin.textContent("#diff-title"), /v1/);
  assert.ok(await admin.locator("#diff .dl.add").count() > 3);

  // Task groups collapse to one row with the state of their tasks, and stay collapsed.
  await admin.goto(base + "/dags/grouped_ui/trigger");
  await admin.click("#trigger-form button[type=submit]");
  await admin.waitForURL(/\/dags\/grouped_ui$/);
  await waitFor(admin, base + "/dags/grouped_ui", "the grouped run to succeed", () => {
    const g = document.querySelector('#grid tr[data-group="stage"] td:last-child');
    return g !== null && g.classList.contains("st-success");
  });
  assert.equal(await admin.locator('#grid tr[data-groups="stage"]').count(), 2);
  await admin.click('#grid tr[data-group="stage"] button.toggle-group');
  assert.equal(await admin.locator('#grid tr[data-groups="stage"]:visible').count(), 0);
  await admin.reload();
  assert.equal(await admin.locator('#grid tr[data-groups="stage"]:visible').count(), 0, "still collapsed after a reload");
  await admin.click('#grid tr[data-group="stage"] button.toggle-group');
  assert.equal(await admin.locator('#grid tr[data-groups="stage"]:visible').count(), 2);
  await admin.locator('#grid tr[data-group="stage"] td').last().click();
  await admin.waitForSelector("#details-group");
  assert.match(await admin.textContent("#details-group"), /stage\.a/);

  // Times in a chosen zone: Tokyo from the header's link, back to UTC after.
  await admin.click("#tz-link");
  await admin.waitForSelector("#tz-form");
  await admin.selectOption("#tz-select", "Asia/Tokyo");
  await admin.click("#tz-form button[type=submit]");
  await admin.waitForURL(/\/dags\/grouped_ui/);
  assert.match(await admin.textContent("#tz-link"), /Asia\/Tokyo/);
  await admin.goto(base + "/settings");
  await admin.selectOption("#tz-select", "");
  await admin.click("#tz-form button[type=submit]");
  await admin.goto(base + "/");
  assert.match(await admin.textContent("#tz-link"), /UTC/);

  // XSS: a DAG whose description, params, task log and run conf carry markup.
  await admin.goto(base + "/dags/xss_probe/trigger");
  await admin.click("#trigger-form summary");
  await admin.fill("textarea[name=conf]", JSON.stringify({ note: XSS }));
  const probeRun = "probe_" + Date.now();
  await admin.fill("input[name=run_id]", probeRun);
  await admin.click("#trigger-form button[type=submit]");
  await admin.waitForURL(/\/dags\/xss_probe$/);
  for (const path of ["/", "/dags/xss_probe?tab=runs", "/dags/xss_probe?tab=details", "/dags/xss_probe?tab=code", "/audit", "/cluster", "/dags/xss_probe?tab=overview", "/dags/xss_probe?tab=versions", "/settings", "/dags/xss_probe?tab=grid&run_id=" + probeRun, "/dags/xss_probe?tab=grid&run_id=" + probeRun + "&task_id=shout"]) {
    await admin.goto(base + path);
    assert.equal(await admin.locator("img[src=x]").count(), 0, path + " rendered an injected <img>");
  }

  // Live tail: open a running task's log and watch lines arrive without reloading.
  await admin.goto(base + "/dags/live_tail/trigger");
  await admin.click("#trigger-form button[type=submit]");
  await admin.waitForURL(/\/dags\/live_tail$/);
  await waitFor(admin, base + "/dags/live_tail", "the ticker to run", () => {
    const cells = document.querySelectorAll("#grid tbody td");
    return cells.length > 0 && cells[cells.length - 1].classList.contains("st-running");
  }, 60);
  await admin.locator("#grid tbody td").last().click();
  await admin.click("#details-log");
  await admin.waitForSelector("#log[data-live=true]");
  await admin.waitForFunction(() => document.getElementById("log").textContent.includes("tick 6"), null, { timeout: 30000 });
  await admin.waitForFunction(() => document.getElementById("ti-state").textContent === "success", null, { timeout: 30000 });

  // Connections: add one, edit it, test it, delete it; its secrets never reach the page.
  const SECRET = "pw-browser-Sekr3t-5150";
  const EXTRA_SECRET = "tok-browser-Sekr3t-6160";
  const noSecret = async (where) => {
    const html = await admin.content();
    assert.ok(!html.includes(SECRET) && !html.includes(EXTRA_SECRET), where + " shows a secret");
  };
  await admin.goto(base + "/connections");
  await admin.fill("#connection-form input[name=conn_id]", "browser_db");
  await admin.fill("#connection-form input[name=conn_type]", "sqlite");
  await admin.fill("#connection-form input[name=host]", process.env.CONN_TEST_DB);
  await admin.fill("#connection-form input[name=password]", SECRET);
  await admin.fill("#connection-form textarea[name=extra]", JSON.stringify({ token: EXTRA_SECRET, timeout: 5 }));
  await admin.click("#connection-form button[type=submit]");
  const connRow = admin.locator('tr[data-conn-id="browser_db"]');
  await connRow.waitFor();
  assert.match(await connRow.textContent(), /sqlite.*set.*\*\*\*/s);
  await noSecret("the connection list");
  await connRow.locator("text=Edit").click();
  await admin.waitForURL(/\/connections\/browser_db\/edit$/);
  await noSecret("the edit form");
  assert.equal(await admin.inputValue("#connection-form input[name=password]"), "");
  await admin.fill("#connection-form input[name=description]", "edited in the browser");
  await admin.click("#connection-form button[type=submit]");
  await admin.waitForURL(/\/connections$/);
  assert.match(await connRow.textContent(), /edited in the browser/);
  await connRow.locator("button[data-action=test]").click();
  await admin.waitForSelector("#test-result");
  assert.equal(await admin.getAttribute("#test-result", "data-ok"), "true", await admin.textContent("#test-result"));
  assert.match(await admin.textContent("#test-result"), /Connection successfully tested/);
  await noSecret("the test result");
  // A bad port is refused on the form, naming the field.
  await admin.goto(base + "/connections");
  await admin.fill("#connection-form input[name=conn_id]", "bad_port");
  await admin.fill("#connection-form input[name=conn_type]", "http");
  await admin.fill("#connection-form input[name=port]", "70000");
  await admin.click("#connection-form button[type=submit]");
  await admin.waitForSelector("#form-error");
  assert.match(await admin.textContent("#form-error"), /port/);
  await admin.goto(base + "/connections");
  await admin.locator('tr[data-conn-id="browser_db"] button.danger').click();
  await admin.waitForURL(/\/connections$/);
  assert.equal(await admin.locator('tr[data-conn-id="browser_db"]').count(), 0);

  // Users: create one, change its role, reset its password, delete it.
  await admin.goto(base + "/users");
  await admin.fill("#user-form input[name=username]", "browser_bob");
  await admin.selectOption("#user-form select[name=role]", "Viewer");
  await admin.fill("#user-form input[name=password]", "bob-password-1");
  await admin.click("#user-form button[type=submit]");
  const bobRow = admin.locator('tr[data-username="browser_bob"]');
  await bobRow.waitFor();
  await bobRow.locator("select[name=role]").selectOption("Op");
  await bobRow.locator("button[data-action=set-role]").click();
  await admin.waitForURL(/\/users$/);
  assert.equal(await bobRow.locator("select[name=role]").inputValue(), "Op");
  await bobRow.locator("input[name=password]").fill("bob-password-2");
  await bobRow.locator("button[data-action=reset-password]").click();
  await admin.waitForSelector("#notice");
  assert.match(await admin.textContent("#notice"), /browser_bob was reset/);
  const bob = await newPage();
  await login(bob, "browser_bob", "bob-password-2");
  assert.equal(await bob.locator('nav a[href="/connections"]').count(), 1, "an Op sees Connections");
  assert.equal(await bob.locator('nav a[href="/users"]').count(), 0, "only Admins see Users");
  await bobRow.locator("button.danger").click();
  await admin.waitForURL(/\/users$/);
  assert.equal(await admin.locator('tr[data-username="browser_bob"]').count(), 0);
  await bob.goto(base + "/");
  assert.match(bob.url(), /\/login/, "a deleted user's session ends");
  // An Admin is offered no Delete of themself (the server refuses it too).
  assert.equal(await admin.locator('tr[data-username="admin"] button.danger').count(), 0);

  // A Viewer finds no action anywhere.
  const viewer = await newPage();
  await login(viewer, process.env.VIEWER_USER, process.env.VIEWER_PASSWORD);
  for (const path of ["/", "/dags/etl_daily", "/dags/etl_daily?tab=runs"]) {
    await viewer.goto(base + path);
    const body = await viewer.textContent("main");
    assert.doesNotMatch(body, /Trigger|Mark success|Mark failed|Delete|Clear…/, path);
    assert.equal(await viewer.locator('form[action$="/pause"]').count(), 0, path + " has a pause form");
  }
  const cell = viewer.locator("#grid tbody td").first();
  await viewer.goto(base + "/dags/etl_daily");
  await cell.click();
  await viewer.waitForSelector("#details-task");
  assert.doesNotMatch(await viewer.textContent("#details"), /Mark success|Clear…/);
  await viewer.click("#details-log");
  await viewer.waitForSelector("#log");
  assert.doesNotMatch(await viewer.textContent("main"), /Mark success|Clear…/);
  await viewer.goto(base + "/assets");
  await viewer.click('tr[data-asset="warehouse://orders"] a[href^="/assets/"]');
  await viewer.waitForSelector("#asset-events");
  assert.equal(await viewer.locator("#asset-event-form").count(), 0, "a Viewer may not record events");
  const refused = await viewer.goto(base + "/dags/etl_daily/trigger");
  assert.equal(refused.status(), 403);
  assert.equal(await viewer.locator('nav a[href="/connections"], nav a[href="/users"]').count(), 0);
  for (const path of ["/connections", "/users"]) {
    assert.equal((await viewer.goto(base + path)).status(), 403, path);
  }

  assert.deepEqual(dialogs, [], "a dialog fired: " + dialogs.join(", "));
  assert.deepEqual(errors, [], "page errors: " + errors.join(", "));
  console.log("browser test passed");
} finally {
  await browser.close();
}
