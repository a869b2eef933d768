// The admin console in headless Chromium (the distribution's, driven by playwright-core),
// against the real gateway started by tests/console_browser.rs. Each step asserts what a
// person would see; every page's source is checked for the injected upstream secret, and a
// screenshot of each page is saved under $SHOTS. Prints one JSON line of measurements.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const CONSOLE = env("CONSOLE_URL"); // http://127.0.0.1:ADMIN
const PROXY = env("PROXY_URL");
const MCP = env("MCP_URL");
const ADMIN_KEY = env("ADMIN_KEY");
const READER_KEY = env("READER_KEY");
const SECRET = env("UPSTREAM_SECRET");
const AUDIT = env("AUDIT_PATH");
const SHOTS = env("SHOTS");
const require = createRequire(path.join(env("NODE_MODULES"), "noop.js"));
const { chromium } = require("playwright-core");

function check(cond, msg) {
  if (!cond) throw new Error(`check failed: ${msg}`);
}

async function proxy(method, p, headers = {}, body) {
  const r = await fetch(PROXY + p, {
    method,
    headers: { host: "localhost", "x-api-key": READER_KEY, ...headers },
    body,
  });
  return { status: r.status, json: await r.json().catch(() => null) };
}

async function mcpCall(args) {
  const r = await fetch(MCP, {
    method: "POST",
    headers: {
      "x-api-key": READER_KEY,
      accept: "application/json, text/event-stream",
      "content-type": "application/json",
      "mcp-protocol-version": "2026-07-28",
      "mcp-method": "tools/call",
      "mcp-name": "api_gateway",
    },
    body: JSON.stringify({
      jsonrpc: "2.0",
      id: 1,
      method: "tools/call",
      params: {
        name: "api_gateway",
        arguments: args,
        _meta: {
          "io.modelcontextprotocol/protocolVersion": "2026-07-28",
          "io.modelcontextprotocol/clientCapabilities": {},
          "io.modelcontextprotocol/clientInfo": { name: "browser-test", version: "1" },
        },
      },
    }),
  });
  const text = await r.text();
  const line = text.split("\n").find((l) => l.startsWith("data:")) ?? text;
  return JSON.parse(line.replace(/^data:\s*/, ""));
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const out = {};
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => {
    // A refused login's 403 is a page working; anything else (a CSP violation, a script
    // error) is not.
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push(m.text());
  });
  // Every page's source, as served, is checked for the secret.
  const sources = [];
  page.on("response", async (r) => {
    if (r.url().startsWith(CONSOLE)) {
      try {
        sources.push([r.url(), await r.text()]);
      } catch {
        /* a redirect or a stream has no body to read */
      }
    }
  });
  const shot = async (name) => {
    check(!(await page.content()).includes(SECRET), `${name}: the page holds the upstream secret`);
    await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
  };

  // Log in: the console sends a stranger to the form; a reader's key is refused.
  await page.goto(CONSOLE + "/console/");
  check(page.url().endsWith("/console/login"), `not sent to log in: ${page.url()}`);
  await shot("login");
  await page.fill("#credential", READER_KEY);
  await page.click("#login-submit");
  const refusedText = await page.textContent("#login-error");
  check(refusedText.includes("admin"), `a reader logged in: ${refusedText}`);
  await page.fill("#credential", ADMIN_KEY);
  await page.click("#login-submit");
  await page.waitForSelector("#apis");
  check((await page.textContent("#who")) === "key:ops", "the header names the admin");

  // Traffic for the charts: calls through both doors.
  for (let i = 0; i < 2; i++) check((await proxy("GET", "/w/items")).status === 200, "a proxy call");
  await page.goto(CONSOLE + "/console/");
  await page.waitForSelector("#rate-chart polyline");
  check((await page.textContent("#apis")).includes("up"), "w is up");
  await shot("apis");

  // A refusal through the MCP door reaches the decision stream within 2 s, and its explain
  // names the same rule.
  await page.goto(CONSOLE + "/console/decisions");
  await page.waitForFunction(() => document.getElementById("stream-state").textContent === "Live.");
  const before = await page.$$eval("#decisions tbody tr", (rows) => rows.length);
  const t0 = Date.now();
  const res = await mcpCall({ api: "w", method: "GET", endpoint: "/private/report" });
  const refusal = res.result?.structuredContent ?? {};
  check(res.result?.isError === true && refusal.reason === "not_permitted", `the MCP call was not refused: ${JSON.stringify(res)}`);
  await page
    .waitForFunction((n) => document.querySelectorAll("#decisions tbody tr").length > n, before, {
      timeout: 2000,
    })
    .catch(async (e) => {
      const html = await page.innerHTML("main");
      throw new Error(`no new row within 2 s (${errors.join("; ")}): ${JSON.stringify(html)}`);
    });
  out.decision_to_page_ms = Date.now() - t0;
  const row = page.locator("#decisions tbody tr").first();
  const rule = (await row.locator(".rule").textContent()).trim();
  check(rule === refusal.rule, `the stream shows rule ${rule}, the tool result ${refusal.rule}`);
  check((await row.textContent()).includes("mcp"), "the row names the MCP door");
  await shot("decisions");
  await row.locator("a.explain").click();
  await page.waitForSelector("#explain-rule");
  const explained = (await page.textContent("#explain-rule")).trim();
  check(explained === rule, `explain names ${explained}, the stream ${rule}`);
  await shot("explain");

  // Limits: the reader uses up w's 3 calls a minute (2 already); resetting lets the next in.
  check((await proxy("GET", "/w/items")).status === 200, "the third call");
  check((await proxy("GET", "/w/items")).status === 429, "the fourth call is limited");
  await page.goto(CONSOLE + "/console/limits");
  const limitRow = page.locator('#limits tr[data-principal="key:suite"][data-api="w"]');
  check((await limitRow.locator(".remaining").first().textContent()).startsWith("0/3"), "the counter is full");
  await shot("limits");
  await limitRow.locator("button").click();
  await page.waitForSelector("#reset-done");
  check((await proxy("GET", "/w/items")).status === 200, "the reset let the next call through");

  // Approvals: a held refund, approved in the console, then the identical call runs.
  const refundBody = JSON.stringify({ amount: 12 });
  const held = await proxy("POST", "/w/refunds/77", { "content-type": "application/json" }, refundBody);
  check(held.status === 202, `the refund was not held: ${held.status}`);
  const id = held.json.approval_id;
  await page.goto(CONSOLE + "/console/approvals");
  await shot("approvals");
  await page.locator(`#approvals tr[data-id="${id}"] button.approve`).click();
  await page.waitForSelector(`#approvals tr[data-id="${id}"] .badge.approved`);
  const ran = await proxy("POST", "/w/refunds/77", { "content-type": "application/json", "approval-id": id }, refundBody);
  check(ran.status === 200, `the approved call did not run: ${ran.status}`);

  // Usage and config.
  await page.goto(CONSOLE + "/console/usage?window=1h");
  await page.waitForSelector("#usage-chart");
  await shot("usage");
  await page.goto(CONSOLE + "/console/config");
  check((await page.textContent("#config")).includes("${AGM_TEST_SECRET}"), "the config shows the reference");
  await shot("config");

  // Audit: search, then an edited record makes verification name its line.
  await page.goto(CONSOLE + "/console/audit?decision=deny");
  await page.waitForSelector("#audit tbody tr");
  await shot("audit");
  await page.click("#verify");
  check((await page.textContent("#verify-result")).includes("intact"), "the chain starts intact");
  const lines = fs.readFileSync(AUDIT, "utf8").split("\n");
  const k = 2; // the third record
  lines[k] = lines[k].replace('"method":"GET"', '"method":"PUT"').replace('"method":"POST"', '"method":"PUT"');
  fs.writeFileSync(AUDIT, lines.join("\n"));
  await page.click("#verify");
  const verdict = await page.textContent("#verify-result");
  check(verdict.includes(`line ${k + 1} `), `verification says: ${verdict}`);
  await shot("audit-broken");

  for (const [url, body] of sources) check(!body.includes(SECRET), `${url} holds the upstream secret`);
  check(errors.length === 0, `the pages logged errors: ${errors.join("; ")}`);
  out.pages_checked = sources.length;
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}
