// Read state in the web inbox, in headless Chromium against a real syncd:
// unread and mention badges from the server's list, opening a conversation
// marks it read (as `tl conversations` then shows), a read on another
// device of the user clears the badge live, read receipts in a direct
// conversation, large-group copies shown once, mentions typed in the page,
// and a reload that keeps the counts. A screenshot of the badges goes to
// target/web-test/read-state.png.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import puppeteer from "puppeteer-core";
import { outputDir, sleep, Syncd, WEB_DIR } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** How long a read on another device may take to clear the badge. */
const LIVE_DEADLINE_MS = 1_000;
/** Generous bound for things that involve several calls. */
const SETTLE_MS = 20_000;
/** Groups above this many members use read fanout on this server. */
const LARGE_GROUP_THRESHOLD = 2;

describe("read state in the web inbox", () => {
  let server;
  let browser;
  let page;
  let alice;
  let alicePhone;
  let bob;
  let group;
  let direct;
  let large;

  before(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`no browser at ${CHROMIUM}: install Debian's chromium package (or set CHROMIUM)`);
    }
    if (!existsSync(join(WEB_DIR, "dist", "index.html"))) {
      throw new Error("web/dist is not built: run scripts/web-build");
    }
    server = await Syncd.start([
      "--web-root",
      join(WEB_DIR, "dist"),
      "--large-group-threshold",
      String(LARGE_GROUP_THRESHOLD),
    ]);
    alice = server.deviceToken(1, "browser");
    alicePhone = server.deviceToken(1, "phone");
    bob = server.deviceToken(2, "cli");
    group = server.tl(bob, ["conversation", "create", "--members", "1", "--title", "Launch plan"]).trim();
    direct = server.tl(bob, ["conversation", "create", "--kind", "direct", "--members", "1"]).trim();
    server.tl(bob, ["send", "--conversation", direct, "--text", "Are you around?"]);
    large = server.tl(bob, ["conversation", "create", "--members", "1,3", "--title", "Everyone"]).trim();
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-dev-shm-usage"],
    });
    page = await browser.newPage();
    await page.setViewport({ width: 1100, height: 720 });
    page.on("pageerror", (error) => console.error("page error:", error));
  });

  after(async () => {
    await browser?.close();
    await server?.stop().catch(() => server.kill9());
  });

  /** Unread and mention counts per conversation as the list shows them. */
  const badges = () =>
    page.$$eval("#conversations li[data-conversation-id]", (list) =>
      Object.fromEntries(
        list.map((li) => [
          li.dataset.conversationId,
          {
            unread: Number(li.querySelector(".badge")?.textContent ?? 0),
            mention: li.querySelector(".mention") !== null,
          },
        ]),
      ),
    );
  const badgeOf = (id) => `#conversations li[data-conversation-id="${id}"] .badge`;
  const waitForBadge = (id, text, timeout = SETTLE_MS) =>
    page.waitForFunction(
      (selector, want) => (document.querySelector(selector)?.textContent ?? "") === want,
      { timeout },
      badgeOf(id),
      text,
    );
  /** `tl conversations` for user 1: the server's counts by conversation. */
  const serverCounts = () => {
    const lines = server.tlJson(alicePhone, ["conversations"]);
    const totals = lines.pop();
    const rows = Object.fromEntries(lines.map((l) => [String(l.conversation_id), l]));
    return { rows, totals };
  };
  const open = async (id) => {
    await page.evaluate((c) => (location.hash = `#/c/${c}`), id);
    await page.waitForSelector(`#conversations li.open[data-conversation-id="${id}"]`);
  };
  const close = () => page.evaluate(() => (location.hash = ""));
  async function until(what, check, timeout = SETTLE_MS) {
    const deadline = Date.now() + timeout;
    for (;;) {
      const value = await check();
      if (value) return value;
      if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
      await sleep(50);
    }
  }

  test("the list comes from the server with its counts; a message sent with tl shows a badge of 1", async () => {
    await page.goto(server.url);
    await page.waitForSelector("textarea[name=token]");
    await page.$eval("textarea[name=token]", (e, value) => (e.value = value), alice);
    await page.click("button[type=submit]");
    await page.waitForSelector("#status.live", { timeout: SETTLE_MS });
    await waitForBadge(direct, "1");
    assert.equal((await badges())[group].unread, 0);
    // Most recent activity first, as the server orders it.
    const order = await page.$$eval("#conversations li[data-conversation-id]", (l) => l.map((e) => e.dataset.conversationId));
    assert.deepEqual(order, [large, direct, group]);

    server.tl(bob, ["send", "--conversation", group, "--text", "@alice the plan is up", "--mention", "1"]);
    await waitForBadge(group, "1");
    const shown = await badges();
    assert.deepEqual(shown[group], { unread: 1, mention: true });
    assert.equal(await page.title(), "(2) Timeline");
    const preview = await page.$eval(`#conversations li[data-conversation-id="${group}"] .preview`, (e) => e.textContent);
    assert.equal(preview, "User 2: @alice the plan is up");
    await page.screenshot({ path: join(outputDir(), "read-state.png") });
  });

  test("opening a conversation marks it read: the badge goes and the server counts 0", async () => {
    await open(group);
    await page.waitForFunction((sel) => !document.querySelector(sel), { timeout: SETTLE_MS }, badgeOf(group));
    const { rows, totals } = serverCounts();
    assert.equal(rows[group].unread, 0);
    assert.equal(rows[group].mentions, 0);
    assert.equal(totals.total_unread, 1, "the direct conversation is still unread");
    await page.waitForFunction(() => document.title === "(1) Timeline", { timeout: SETTLE_MS });
  });

  test("messages arriving in the open, visible conversation are read as they come", async () => {
    const id = randomUUID();
    server.tl(bob, ["send", "--conversation", group, "--text", "seen at once", "--client-msg-id", id]);
    await page.waitForSelector(`#messages .msg[data-client-msg-id="${id}"]`, { timeout: SETTLE_MS });
    await until("the server counts the open conversation read", () => serverCounts().rows[group].unread === 0);
    assert.equal((await badges())[group].unread, 0);
  });

  test("a read on another device of the user clears the badge in the open page within a second", async () => {
    assert.equal((await badges())[direct].unread, 1);
    const read = server.tlJson(alicePhone, ["read", "--conversation", direct]);
    const done = Date.now();
    assert.equal(read[0].unread, 0);
    await page.waitForFunction((sel) => !document.querySelector(sel), { timeout: LIVE_DEADLINE_MS + 5_000 }, badgeOf(direct));
    const took = Date.now() - done;
    assert.ok(took <= LIVE_DEADLINE_MS, `cleared ${took} ms after tl read returned`);
    await page.waitForFunction(() => document.title === "Timeline", { timeout: SETTLE_MS });
  });

  test("a direct conversation shows which of the user's messages the peer has read", async () => {
    await open(direct);
    await page.type("input[name=text]", "Yes, what's up?");
    await page.keyboard.press("Enter");
    const mine = `#messages .msg.mine[data-seq]:not([data-seq="0"])`;
    await page.waitForSelector(mine, { timeout: SETTLE_MS });
    assert.equal(await page.$(`${mine}[data-read]`), null, "not read yet");
    server.tl(bob, ["read", "--conversation", direct]);
    await page.waitForSelector(`${mine}[data-read] .read`, { timeout: SETTLE_MS });
    await page.screenshot({ path: join(outputDir(), "read-receipt.png") });
  });

  test("a large group's message that mentions the user is shown once and counted", async () => {
    await close();
    const id = randomUUID();
    server.tl(bob, ["send", "--conversation", large, "--text", "all hands at 3", "--mention", "1", "--client-msg-id", id]);
    await waitForBadge(large, "1");
    assert.deepEqual((await badges())[large], { unread: 1, mention: true });
    await open(large);
    await page.waitForSelector(`#messages .msg[data-client-msg-id="${id}"]`, { timeout: SETTLE_MS });
    assert.equal((await page.$$(`#messages .msg[data-client-msg-id="${id}"]`)).length, 1);
    await page.waitForFunction((sel) => !document.querySelector(sel), { timeout: SETTLE_MS }, badgeOf(large));
    await until("the server counts the large group read", () => serverCounts().rows[large].unread === 0);
  });

  test("a mention typed in the page reaches the member it names", async () => {
    await open(group);
    await page.type("input[name=text]", "@2 can you review?");
    await page.keyboard.press("Enter");
    const lines = await until("bob's inbox has the mention", () => {
      const found = server.tlJson(bob, ["sync", "--state", join(server.dataDir, "bob.json")]);
      return found.find((e) => e.text === "@2 can you review?");
    });
    assert.deepEqual(lines.mentions, [2]);
    const bobList = server.tlJson(bob, ["conversations"]);
    assert.equal(bobList.find((l) => String(l.conversation_id) === group).mentions, 1);
  });

  test("a hidden page marks nothing; coming back to it marks what it shows", async () => {
    await open(group);
    const setHidden = (hidden) =>
      page.evaluate((h) => {
        Object.defineProperty(document, "visibilityState", { value: h ? "hidden" : "visible", configurable: true });
        document.dispatchEvent(new Event("visibilitychange"));
      }, hidden);
    await setHidden(true);
    const id = randomUUID();
    server.tl(bob, ["send", "--conversation", group, "--text", "while you were away", "--client-msg-id", id]);
    await page.waitForSelector(`#messages .msg[data-client-msg-id="${id}"]`, { timeout: SETTLE_MS });
    await waitForBadge(group, "1");
    // Long enough for a mark to have been made and answered, were one made.
    await sleep(500);
    assert.equal(serverCounts().rows[group].unread, 1);
    assert.equal((await badges())[group].unread, 1);
    await setHidden(false);
    await page.waitForFunction((sel) => !document.querySelector(sel), { timeout: SETTLE_MS }, badgeOf(group));
    assert.equal(serverCounts().rows[group].unread, 0);
  });

  test("a reload keeps the counts right", async () => {
    await close();
    server.tl(bob, ["send", "--conversation", direct, "--text", "one"]);
    server.tl(bob, ["send", "--conversation", direct, "--text", "two"]);
    await waitForBadge(direct, "2");
    const before = await badges();
    await page.reload();
    await page.waitForSelector("#status.live", { timeout: SETTLE_MS });
    await waitForBadge(direct, "2");
    assert.deepEqual(await badges(), before);
    server.tl(bob, ["send", "--conversation", direct, "--text", "three"]);
    await waitForBadge(direct, "3");
    // Every badge is the server's count.
    const { rows, totals } = serverCounts();
    const shown = await badges();
    for (const [id, row] of Object.entries(rows)) {
      assert.equal(shown[id]?.unread, row.unread, `conversation ${id}`);
      assert.equal(shown[id]?.mention, row.mentions > 0, `conversation ${id}`);
    }
    assert.equal(await page.title(), `(${totals.total_unread}) Timeline`);
    await page.screenshot({ path: join(outputDir(), "read-state-reloaded.png") });
  });

  test("a long list is paged: more conversations come by the cursor, in the server's order", async () => {
    // One page (LIST_PAGE, 50) and a bit: the page shows the first page only.
    for (let i = 0; i < 52; i++) {
      server.tl(bob, ["conversation", "create", "--members", "1", "--title", `Topic ${i}`]);
    }
    const all = server
      .tlJson(alicePhone, ["conversations", "--limit", "500"])
      .slice(0, -1)
      .map((l) => String(l.conversation_id));
    assert.equal(all.length, 55);
    // A new device of the user: nothing stored, the list starts at its first page.
    const context = await browser.createBrowserContext();
    const tablet = await context.newPage();
    await tablet.setViewport({ width: 1100, height: 720 });
    await tablet.goto(server.url);
    await tablet.waitForSelector("textarea[name=token]");
    await tablet.$eval("textarea[name=token]", (e, value) => (e.value = value), server.deviceToken(1, "tablet"));
    await tablet.click("button[type=submit]");
    await tablet.waitForSelector("#status.live", { timeout: SETTLE_MS });
    const shown = () =>
      tablet.$$eval("#conversations li[data-conversation-id]", (l) => l.map((e) => e.dataset.conversationId));
    await until("the first page shows", async () => (await shown()).length > 0);
    assert.deepEqual(await shown(), all.slice(0, 50));
    await tablet.click("#more-conversations");
    await until("the second page shows", async () => (await shown()).length === all.length);
    assert.deepEqual(await shown(), all);
    assert.equal(await tablet.$eval("#more-conversations", (e) => e.hidden), true, "no more pages");
    // The counts are the same on every device of the user.
    const tabletBadge = await tablet.$eval(badgeOf(direct), (e) => e.textContent);
    assert.equal(tabletBadge, "3");
    assert.equal(await tablet.title(), await page.title());
    await context.close();
  });
});
