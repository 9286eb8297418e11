// The dashboard, end to end: the release binary serves the embedded WASM app, which follows the
// watch directory live over /ws.
import { randomUUID } from "node:crypto";
import { test } from "./fixtures/server";
import { addClientDb, openDashboard, removeClientDb, saveScreenshot } from "./fixtures/actions";
import {
  expectClientRow,
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
