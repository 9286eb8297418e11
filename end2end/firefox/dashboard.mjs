// The dashboard in Firefox (Debian's firefox-esr), driven over WebDriver BiDi by puppeteer-core:
// Playwright drives only its own patched Firefox builds, which cannot be downloaded here.
// Against the release binary with a temporary watch directory, as the Playwright tests: the WASM
// app loads and goes live, tenants appear within 2 s, search filters the table, a tenant's
// detail opens with its restore commands, a removed tenant disappears, no page error. Saves
// screenshots/firefox-*.png. Exit code 0 = every check passed.
//
//   node firefox/dashboard.mjs            (FIREFOX_PATH, LITESTREAM_MANAGER_BIN override defaults)
import puppeteer from "puppeteer-core";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdirSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const BINARY =
  process.env.LITESTREAM_MANAGER_BIN ?? path.resolve(here, "../../target/release/litestream-manager");
const FIREFOX = process.env.FIREFOX_PATH ?? "/usr/bin/firefox-esr";
const SCREENSHOTS = path.resolve(here, "../screenshots");
/** The product promise: a new tenant database shows up on the dashboard within 2 s. */
const APPEAR_WITHIN_MS = 2_000;

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function startManager(root) {
  const dirs = Object.fromEntries(["clients", "replica", "state"].map((d) => [d, path.join(root, d)]));
  await mkdir(dirs.clients, { recursive: true });
  const port = await freePort();
  let log = "";
  const child = spawn(
    BINARY,
    ["-watch-dir", dirs.clients, "-replica-dir", dirs.replica, "-state-dir", dirs.state, "-port", String(port)],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  child.stdout.on("data", (d) => (log += d));
  child.stderr.on("data", (d) => (log += d));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`litestream-manager exited with ${child.exitCode}:\n${log}`);
    try {
      if ((await fetch(`${url}/api/status`)).ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`litestream-manager did not answer within 15 s:\n${log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
  };
  return { url, dirs, stop, log: () => log };
}

/** Waits until `fn(arg)` is true in the page; fails with `what` after `timeout` ms. */
async function until(page, what, timeout, fn, arg) {
  try {
    await page.waitForFunction(fn, { timeout, polling: 50 }, arg);
  } catch (e) {
    throw new Error(`${what} (not within ${timeout} ms): ${e.message}`);
  }
}

const rowCount = (id) => document.querySelectorAll(`tr.client-row[data-client-id="${id}"]`).length;

async function main() {
  const root = await mkdtemp(path.join(tmpdir(), "lsm-firefox-"));
  const server = await startManager(root);
  const browser = await puppeteer.launch({
    browser: "firefox",
    executablePath: FIREFOX,
    headless: true,
  });
  const errors = [];
  const checks = [];
  const check = (name) => checks.push(name);
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 800 });
    page.on("pageerror", (e) => errors.push(String(e?.message ?? e)));
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    await page.goto(server.url);
    await until(page, "the app goes live", 15_000, () => document.querySelector("#connection")?.textContent === "live");
    check("WASM app rendered, WebSocket live");
    const version = await page.$eval("#version", (e) => e.textContent);
    if (!/^v\d+\.\d+\.\d+/.test(version)) throw new Error(`version shown: ${JSON.stringify(version)}`);
    check(`server function answered (${version})`);

    const ids = [randomUUID(), randomUUID(), randomUUID()].sort();
    const t0 = Date.now();
    await Promise.all(ids.map((id) => writeFile(path.join(server.dirs.clients, `${id}.db`), "")));
    for (const id of ids) {
      await until(page, `row ${id} appears`, APPEAR_WITHIN_MS - (Date.now() - t0), rowCount, id);
    }
    check(`3 new tenants on the page after ${Date.now() - t0} ms`);
    await until(page, "total clients shows 3", 5_000, () => document.querySelector("#total-clients")?.textContent === "3");

    await page.type("#client-search", ids[1].slice(0, 13));
    await until(page, "search keeps only the matching row", 5_000, (id) => {
      const rows = [...document.querySelectorAll("tr.client-row")];
      return rows.length === 1 && rows[0].dataset.clientId === id;
    }, ids[1]);
    check("search filters the table to the one matching tenant");

    await page.click(`tr.client-row[data-client-id="${ids[1]}"] button.open-detail`);
    await until(page, "the detail opens with its restore commands", 5_000, (id) => {
      const text = (sel) => document.querySelector(sel)?.textContent ?? "";
      return (
        text("#detail-id") === id &&
        text("#restore-manager").includes("litestream-manager restore") &&
        text("#restore-manager").includes(id) &&
        text("#restore-litestream").includes("litestream restore") &&
        text("#restore-litestream").includes(id)
      );
    }, ids[1]);
    check("the tenant's detail opens with both restore commands");
    mkdirSync(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: path.join(SCREENSHOTS, "firefox-detail.png"), fullPage: true });

    await page.$eval("#client-search", (e) => {
      e.value = "";
      e.dispatchEvent(new Event("input", { bubbles: true }));
    });
    await until(page, "all rows back after clearing the search", 5_000, () => document.querySelectorAll("tr.client-row").length === 3);
    await rm(path.join(server.dirs.clients, `${ids[0]}.db`), { force: true });
    await until(page, `row ${ids[0]} disappears`, 5_000, (id) => document.querySelectorAll(`tr.client-row[data-client-id="${id}"]`).length === 0, ids[0]);
    check("a removed tenant disappears");
    await page.screenshot({ path: path.join(SCREENSHOTS, "firefox-dashboard.png"), fullPage: true });

    if (errors.length) throw new Error(`uncaught errors in the page:\n${errors.join("\n")}`);
    check("no page errors");
    const ua = await browser.version();
    console.log(`firefox dashboard check passed in ${ua}:\n  - ${checks.join("\n  - ")}`);
  } catch (e) {
    console.error(`firefox dashboard check FAILED after: ${checks.join("; ") || "nothing"}\n${e.stack ?? e}`);
    console.error(`server log:\n${server.log()}`);
    process.exitCode = 1;
  } finally {
    await browser.close();
    await server.stop();
    await rm(root, { recursive: true, force: true });
  }
}

await main();
