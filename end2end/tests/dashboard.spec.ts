// The dashboard, end to end: the release binary serves the embedded WASM app, which follows the
// watch directory live over /ws.
import { randomUUID } from "node:crypto";
import { test } from "./fixtures/server";
import { addClientDb, openDashboard, removeClientDb, saveScreenshot } from "./fixtures/actions";
import {
  expectClientRow,
  expectConnection,
  expectLive,
  expectNoClientRow,
  expectNoPageErrors,
  expectTotalClients,
  expectVersionShown,
} from "./fixtures/checks";

/** The product promise: a new tenant database shows up on the dashboard within 2 s. */
const APPEAR_WITHIN_MS = 2_000;

test("dashboard follows client databases live", async ({ page, server }) => {
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
