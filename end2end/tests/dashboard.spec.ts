// The dashboard, end to end: the release binary serves the embedded WASM app, which follows the
// watch directory live over /ws.
import { randomUUID } from "node:crypto";
import { expect, test } from "./fixtures/server";
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { addClientDb, addIgnoredFile, openDashboard, removeClientDb, saveScreenshot } from "./fixtures/actions";
import {
  expectClientRow,
  expectConnection,
  expectDuplicateListed,
  expectLive,
  expectNoClientRow,
  expectNoPageErrors,
  expectSkippedFiles,
  expectTotalClients,
  expectVersionShown,
} from "./fixtures/checks";

/** The product promise: a new tenant database shows up on the dashboard within 2 s. */
const APPEAR_WITHIN_MS = 2_000;

test("dashboard follows client databases live", async ({ page, server }) => {
  // The WebSocket's snapshot is the first load: no second copy of every row over HTTP.
  const statusRequests: string[] = [];
  page.on("request", (r) => {
    if (new URL(r.url()).pathname === "/api/status") statusRequests.push(r.url());
  });
  const errors = await openDashboard(page, server);
  await expectLive(page);
  await expectVersionShown(page);
  await expectTotalClients(page, 0);

  const clientId = randomUUID();
  await addClientDb(server, clientId);
  await expectClientRow(page, clientId, APPEAR_WITHIN_MS);
  await expectTotalClients(page, 1);
  await saveScreenshot(page, "dashboard-one-client");

  await removeClientDb(server, clientId);
  await expectNoClientRow(page, clientId);
  await expectTotalClients(page, 0);
  await saveScreenshot(page, "dashboard-after-removal");

  expectNoPageErrors(errors);
  expect(statusRequests, "GET /api/status on load").toEqual([]);
});

/** Files the manager does not replicate are counted on the page, duplicates named in a tooltip. */
test("dashboard shows ignored and duplicate files", async ({ page, server }) => {
  const errors = await openDashboard(page, server);
  await expectLive(page);
  await expectSkippedFiles(page, 0, 0);

  await addIgnoredFile(server, "notes.txt");
  const clientId = randomUUID();
  await addClientDb(server, clientId);
  await expectClientRow(page, clientId, APPEAR_WITHIN_MS);
  // The same tenant id under another extension: not replicated, reported as a duplicate.
  const duplicate = path.join(server.clientsDir, `${clientId}.sqlite`);
  await writeFile(duplicate, "");
  await expectSkippedFiles(page, 1, 1);
  await expectDuplicateListed(page, `${clientId}.sqlite`);
  await saveScreenshot(page, "dashboard-skipped-files");
  expectNoPageErrors(errors);
});

/** A server restart: the page says it lost the link, reconnects by itself and resynchronises. */
test("dashboard reconnects after a server restart", async ({ page, server }) => {
  const before = randomUUID();
  await addClientDb(server, before);
  const errors = await openDashboard(page, server);
  await expectLive(page);
  await expectClientRow(page, before);

  await server.stop();
  await expectConnection(page, /^(offline|connecting)$/);
  await saveScreenshot(page, "dashboard-offline");
  // While the server is down a tenant goes away and another arrives.
  await removeClientDb(server, before);
  const after = randomUUID();
  await addClientDb(server, after);
  await server.start();

  // Backoff starts at 0.5 s and doubles; a restart within ~1 s is picked up in a few seconds.
  await expectConnection(page, "live", 10_000);
  await expectClientRow(page, after, APPEAR_WITHIN_MS);
  await expectNoClientRow(page, before);
  await expectTotalClients(page, 1);
  await saveScreenshot(page, "dashboard-reconnected");

  // Failed WebSocket attempts while the server was down are logged by the browser; anything
  // else is a real error.
  expectNoPageErrors(errors.filter((e) => !/WebSocket|ERR_CONNECTION_REFUSED/.test(e)));
});
