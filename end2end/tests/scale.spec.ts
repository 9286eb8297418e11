// Opt-in: the table with many tenants (E2E_TENANTS=10000 npx playwright test scale). Not part
// of the default suite: the server needs a while to register and replicate that many databases.
import { test } from "./fixtures/server";
import { addClientDbs, openDashboard, saveScreenshot, search } from "./fixtures/actions";
import { expectLive, expectNoPageErrors, expectPageRange, expectRows, expectTotalClients } from "./fixtures/checks";
import * as find from "./fixtures/finders";

const TENANTS = Number(process.env.E2E_TENANTS ?? 0);

test("the table stays responsive with many tenants", async ({ page, server }) => {
  test.skip(!TENANTS, "set E2E_TENANTS (e.g. 10000) to run");
  test.setTimeout(300_000);
  const ids: string[] = [];
  for (let i = 0; i < TENANTS; i += 500) {
    ids.push(...(await addClientDbs(server, Math.min(500, TENANTS - i))));
  }
  ids.sort();
  // Count the /ws frames the page receives, to relate the main-thread figures to the load.
  const frames = { n: 0, bytes: 0 };
  page.on("websocket", (ws) =>
    ws.on("framereceived", (f) => {
      frames.n += 1;
      frames.bytes += typeof f.payload === "string" ? f.payload.length : f.payload.byteLength;
    }),
  );
  const errors = await openDashboard(page, server);
  await expectLive(page);
  let t = Date.now();
  await expectTotalClients(page, TENANTS);
  await expectRows(page, ids.slice(0, 100), 120_000);
  console.log(`all ${TENANTS} tenants listed ${Date.now() - t} ms after the page went live`);

  const timed = async (what: string, f: () => Promise<void>) => {
    const start = Date.now();
    await f();
    console.log(`${what}: ${Date.now() - start} ms`);
  };
  await timed("search for one id", async () => {
    await search(page, ids[1234 % TENANTS]);
    await expectRows(page, [ids[1234 % TENANTS]]);
  });
  await timed("clear the search", async () => {
    await search(page, "");
    await expectPageRange(page, `1–100 of ${TENANTS}`);
  });
  await timed("next page", async () => {
    await find.pageNext(page).click();
    await expectRows(page, ids.slice(100, 200));
  });
  await timed("sort by lag", async () => {
    await page.locator('th button.sort[data-sort="Lag"]').click();
    await expectPageRange(page, `1–100 of ${TENANTS}`);
  });
  // How long the main thread is blocked while live updates stream in.
  const framesBefore = { ...frames };
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Performance.enable");
  const metrics = async () =>
    Object.fromEntries(((await cdp.send("Performance.getMetrics")).metrics as { name: string; value: number }[]).map((m) => [m.name, m.value]));
  const m0 = await metrics();
  const longTasks = await page.evaluate(async () => {
    const durations: number[] = [];
    let last = performance.now();
    const deadline = last + 3000;
    while (performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 0));
      const now = performance.now();
      durations.push(now - last);
      last = now;
    }
    return { max: Math.max(...durations), over50: durations.filter((d) => d > 50).length };
  });
  const m1 = await metrics();
  const busy = (k: string) => (((m1[k] - m0[k]) / (m1.Timestamp - m0.Timestamp)) * 100).toFixed(1);
  console.log(
    `renderer main thread over that window: script ${busy("ScriptDuration")} %, layout ${busy("LayoutDuration")} %, ` +
      `style ${busy("RecalcStyleDuration")} %, all tasks ${busy("TaskDuration")} %`,
  );
  console.log(
    `event loop over 3 s of live updates (${frames.n - framesBefore.n} /ws frames, ` +
      `${frames.bytes - framesBefore.bytes} bytes): longest gap ${longTasks.max.toFixed(1)} ms, ` +
      `gaps > 50 ms: ${longTasks.over50}`,
  );
  await saveScreenshot(page, "table-scale");
  expectNoPageErrors(errors);
});
