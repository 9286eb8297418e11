// The detail panel of one tenant: restore commands that name it, the restore window once it is
// replicated, and a graceful end when its database file is removed.
import { randomUUID } from "node:crypto";
import { test } from "./fixtures/server";
import {
  addClientDb,
  openDashboard,
  openDetail,
  removeClientDb,
  saveScreenshot,
  writeRows,
} from "./fixtures/actions";
import {
  expectClientRow,
  expectDetailWithRestoreCommands,
  expectLive,
  expectNoPageErrors,
  expectReplicated,
  expectRestoreWindow,
} from "./fixtures/checks";
import * as find from "./fixtures/finders";
import { expect } from "@playwright/test";

test("a tenant's detail shows its restore commands and window", async ({ page, server }) => {
  const clientId = randomUUID();
  const other = randomUUID();
  await addClientDb(server, other);
  await addClientDb(server, clientId);
  await writeRows(server, clientId);
  const errors = await openDashboard(page, server);
  await expectLive(page);
  await expectClientRow(page, clientId);

  await openDetail(page, clientId);
  await expectDetailWithRestoreCommands(page, clientId);
  await expectReplicated(page, clientId, 10_000);
  // The summary follows the rows at once, not only at the server's periodic summary.
  await expect(page.locator("#bytes-uploaded")).not.toHaveText("0 B");
  await expectRestoreWindow(page, 10_000);
  await expect(find.ltxChart(page)).toBeVisible();
  await saveScreenshot(page, "detail-replicated");

  // Copy puts the command on the clipboard.
  await page.context().grantPermissions(["clipboard-read", "clipboard-write"]);
  const copy = page.locator(".command", { has: find.restoreCommand(page, "manager") }).locator("button.copy");
  await copy.click();
  await expect(copy).toHaveText("Copied");
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  expect(copied).toBe(await find.restoreCommand(page, "manager").textContent());

  // Another row switches the panel to that tenant.
  await openDetail(page, other);
  await expectDetailWithRestoreCommands(page, other);

  // The database goes away while its panel is open: the panel says so, commands stay.
  await openDetail(page, clientId);
  await expectDetailWithRestoreCommands(page, clientId);
  await removeClientDb(server, clientId);
  await expect(find.detailRemoved(page)).toBeVisible({ timeout: 5_000 });
  await expect(page.locator("#detail-state")).toHaveText("removed");
  await expect(find.restoreCommand(page, "manager")).toContainText(clientId);
  await saveScreenshot(page, "detail-removed");

  await page.locator("#detail-close").click();
  await expect(find.detail(page)).toHaveCount(0);
  expectNoPageErrors(errors);
});
