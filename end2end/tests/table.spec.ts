// The tenant table: search, state filter and pages work on the client side over the /ws
// snapshot, without reloading the page.
import { randomUUID } from "node:crypto";
import { test } from "./fixtures/server";
import {
  addBrokenDb,
  addClientDbs,
  filterState,
  openDashboard,
  saveScreenshot,
  search,
} from "./fixtures/actions";
import {
  expectLive,
  expectNoPageErrors,
  expectPageRange,
  expectRows,
  expectRowState,
  expectTotalClients,
} from "./fixtures/checks";
import * as find from "./fixtures/finders";
import { expect } from "@playwright/test";

test("search keeps only the tenants whose id matches", async ({ page, server }) => {
  const ids = await addClientDbs(server, 5);
  const errors = await openDashboard(page, server);
  await expectLive(page);
  await expectRows(page, ids);

  // A piece from the middle of one id, typed in upper case: only that tenant remains.
  const target = ids[2];
  await search(page, target.slice(9, 18).toUpperCase());
  await expectRows(page, [target]);
  await expectPageRange(page, "1–1 of 1 (filtered from 5)");
  await saveScreenshot(page, "table-search");

  // The path matches too; clearing the box brings every row back.
  await search(page, `${ids[4]}.db`);
  await expectRows(page, [ids[4]]);
  await search(page, "");
  await expectRows(page, ids);
  expectNoPageErrors(errors);
});

test("state filter shows the tenants in error with their reason", async ({ page, server }) => {
  const healthy = await addClientDbs(server, 3);
  const broken = randomUUID();
  await addBrokenDb(server, broken);
  const errors = await openDashboard(page, server);
  await expectLive(page);
  await expectTotalClients(page, 4);
  await expectRowState(page, broken, "error", 5_000);

  await filterState(page, "error");
  await expectRows(page, [broken]);
  await expect(find.clientRow(page, broken).locator(".last-error")).not.toBeEmpty();
  await expect(page.locator("#error-clients")).toHaveText("1");
  await saveScreenshot(page, "table-filter-error");

  await filterState(page, "removed");
  await expectRows(page, []);
  await expect(find.noMatches(page)).toBeVisible();

  await filterState(page, "");
  await expectRows(page, [...healthy, broken].sort());
  expectNoPageErrors(errors);
});

test("150 tenants show as 100 rows and a second page of 50", async ({ page, server }) => {
  const ids = await addClientDbs(server, 150);
  const errors = await openDashboard(page, server);
  await expectLive(page);
  await expectTotalClients(page, 150);
  await expectRows(page, ids.slice(0, 100), 10_000);
  await expectPageRange(page, "1–100 of 150");
  await expect(find.pagePrev(page)).toBeDisabled();
  await saveScreenshot(page, "table-page-1");

  await find.pageNext(page).click();
  await expectRows(page, ids.slice(100));
  await expectPageRange(page, "101–150 of 150");
  await expect(find.pageNext(page)).toBeDisabled();
  await saveScreenshot(page, "table-page-2");

  // Sorting by id descending starts again on page 1, with the largest id first.
  await page.locator('th button.sort[data-sort="Id"]').click();
  await expectRows(page, ids.slice(50).reverse());
  await expectPageRange(page, "1–100 of 150");
  expectNoPageErrors(errors);
});
