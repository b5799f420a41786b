// The message lifecycle in the web inbox, in headless Chromium against a
// real syncd: an edit and a recall made elsewhere (tl, or another device of
// the user) replace a message a page already showed, on the page and in its
// browser storage; the user's own edit and recall from the page; the
// server's refusal past the recall window; unread counts and previews
// taken back; a large group's recall read from its timeline; delete for me
// and clear history on the user's devices only. A screenshot goes to
// target/web-test/ (lifecycle-tombstones.png, lifecycle.png).

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import puppeteer from "puppeteer-core";
import { outputDir, sleep, Syncd, WEB_DIR } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** Generous bound for a change to reach a page (push, or a large group's poll). */
const SETTLE_MS = 20_000;
/**
 * A large group's message must reach a live page by its push notice within
 * this, far below the page's backstop poll (LARGE_GROUP_POLL_MS, 30 s).
 */
const PUSHED_MS = 10_000;
/** The server's recall window in these tests: short, so its end can be waited for. */
const RECALL_WINDOW_SECS = 4;
/** Groups above this many members use read fanout on this server. */
const LARGE_GROUP_THRESHOLD = 2;

describe("the message lifecycle in the web inbox", () => {
  let server;
  let browser;
  let pageA;
  let pageB;
  let alice;
  let aliceLaptop;
  let bob;
  let group;
  let side;
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
      "--recall-window-secs",
      String(RECALL_WINDOW_SECS),
      "--large-group-threshold",
      String(LARGE_GROUP_THRESHOLD),
    ]);
    alice = server.deviceToken(1, "browser");
    aliceLaptop = server.deviceToken(1, "laptop");
    bob = server.deviceToken(2, "cli");
    group = server.tl(bob, ["conversation", "create", "--members", "1", "--title", "Lifecycle"]).trim();
    side = server.tl(bob, ["conversation", "create", "--members", "1", "--title", "Side"]).trim();
    large = server.tl(bob, ["conversation", "create", "--members", "1,3", "--title", "Everyone"]).trim();
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ["--no-sandbox", "--disable-dev-shm-usage"],
    });
    // Two devices of the same user: separate storage, separate checkpoints.
    pageA = await (await browser.createBrowserContext()).newPage();
    pageB = await (await browser.createBrowserContext()).newPage();
    for (const page of [pageA, pageB]) {
      await page.setViewport({ width: 1100, height: 720 });
      page.on("pageerror", (error) => console.error("page error:", error));
    }
  });

  after(async () => {
    await browser?.close();
    await server?.stop().catch(() => server.kill9());
  });

  async function signIn(page, token) {
    await page.goto(server.url);
    await page.waitForSelector("textarea[name=token]");
    await page.$eval("textarea[name=token]", (e, value) => (e.value = value), token);
    await page.click("button[type=submit]");
    await page.waitForSelector("#status.live", { timeout: SETTLE_MS });
  }
  const open = async (page, id) => {
    await page.evaluate((c) => (location.hash = `#/c/${c}`), id);
    await page.waitForSelector(`#conversations li.open[data-conversation-id="${id}"]`, { timeout: SETTLE_MS });
  };
  /** Sends as bob with tl; returns the message's conv_seq. */
  const bobSends = (conversation, text) =>
    String(server.tlJson(bob, ["send", "--conversation", conversation, "--text", text])[0].conv_seq);
  const message = (convSeq) => `#messages .msg[data-conv-seq="${convSeq}"]`;
  /** Everything the page keeps in browser storage, as one string (key: value lines). */
  const stored = (page) =>
    page.evaluate(() =>
      Object.keys(localStorage)
        .map((key) => `${key}: ${localStorage.getItem(key)}`)
        .join("\n"),
    );
  /** Waits until no stored value matches `pattern`; the failure names the keys that still do. */
  async function leavesStorage(page, pattern) {
    const deadline = Date.now() + SETTLE_MS;
    for (;;) {
      const holding = (await stored(page)).split("\n").filter((line) => pattern.test(line));
      if (holding.length === 0) return;
      if (Date.now() > deadline) {
        throw new Error(`still stored: ${holding.map((line) => line.slice(0, line.indexOf(": "))).join(", ")}`);
      }
      await sleep(50);
    }
  }
  /** Clicks a message's action in the page (the list is redrawn as entries arrive). */
  const act = (page, convSeq, action) =>
    page.waitForFunction(
      (selector) => {
        const button = document.querySelector(selector);
        button?.click();
        return button !== null;
      },
      { timeout: SETTLE_MS },
      `${message(convSeq)} [data-action=${action}]`,
    );
  const waitForText = (page, convSeq, text) =>
    page.waitForFunction(
      (selector, want) => document.querySelector(`${selector} .bubble`)?.textContent === want,
      { timeout: SETTLE_MS },
      message(convSeq),
      text,
    );
  const waitForTextWithin = (page, convSeq, text, timeout) =>
    page.waitForFunction(
      (selector, want) => document.querySelector(`${selector} .bubble`)?.textContent === want,
      { timeout },
      message(convSeq),
      text,
    );
  const waitForTombstone = (page, convSeq, kind, words) =>
    page.waitForFunction(
      (selector, kind, words) => {
        const shown = document.querySelector(selector);
        return shown?.dataset.removed === kind && shown.querySelector(".bubble.tombstone")?.textContent.startsWith(words);
      },
      { timeout: SETTLE_MS },
      message(convSeq),
      kind,
      words,
    );
  const waitGone = (page, convSeq) =>
    page.waitForFunction((selector) => !document.querySelector(selector), { timeout: SETTLE_MS }, message(convSeq));
  const pageText = (page) => page.$eval("#messages", (e) => e.textContent);
  const badge = (page, id) =>
    page.$eval(`#conversations li[data-conversation-id="${id}"]`, (li) => ({
      unread: li.dataset.unread,
      preview: li.querySelector(".preview")?.textContent,
    }));
  async function until(what, check, timeout = SETTLE_MS) {
    const deadline = Date.now() + timeout;
    for (;;) {
      const value = await check();
      if (value) return value;
      if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
      await sleep(50);
    }
  }

  test("an edit and a recall made elsewhere replace what the page showed, on the page and in storage", async () => {
    await signIn(pageA, alice);
    await open(pageA, group);
    const seq = bobSends(group, "the launch code is 1234");
    await waitForText(pageA, seq, "the launch code is 1234");
    await until("the message is stored", async () => (await stored(pageA)).includes("the launch code is 1234"));

    server.tl(bob, ["edit", "--conversation", group, "--conv-seq", seq, "--text", "the launch code is 5678"]);
    await waitForText(pageA, seq, "the launch code is 5678");
    assert.equal(await pageA.$eval(message(seq), (e) => e.dataset.edited), "", "marked edited");
    assert.match(await pageA.$eval(`${message(seq)} .meta`, (e) => e.textContent), /edited/);

    server.tl(bob, ["recall", "--conversation", group, "--conv-seq", seq]);
    await waitForTombstone(pageA, seq, "recalled", "Recalled by user 2");
    assert.doesNotMatch(await pageText(pageA), /launch code/);
    await leavesStorage(pageA, /launch code/);
    // What a reload reads from storage has no text either.
    await pageA.reload();
    await pageA.waitForSelector("#status.live", { timeout: SETTLE_MS });
    await waitForTombstone(pageA, seq, "recalled", "Recalled by user 2");
    assert.doesNotMatch(await pageText(pageA), /launch code/);
    assert.doesNotMatch(await stored(pageA), /launch code/);
  });

  test("the user's own message, edited then recalled on one device, follows on the other", async () => {
    await signIn(pageB, aliceLaptop);
    await open(pageB, group);
    await pageA.type("input[name=text]", "meet at noon");
    await pageA.keyboard.press("Enter");
    const seq = await (
      await pageA.waitForFunction(
        () =>
          [...document.querySelectorAll("#messages .msg.mine[data-conv-seq]")].find(
            (e) => e.querySelector(".bubble")?.textContent === "meet at noon",
          )?.dataset.convSeq,
        { timeout: SETTLE_MS },
      )
    ).jsonValue();
    await waitForText(pageB, seq, "meet at noon");
    await until("pageB stores it", async () => (await stored(pageB)).includes("meet at noon"));

    await act(pageA, seq, "edit");
    assert.equal(await pageA.$eval("input[name=text]", (e) => e.value), "meet at noon", "the text to edit");
    assert.match(await pageA.$eval("#editing", (e) => e.textContent), /Editing/);
    await pageA.$eval("input[name=text]", (e) => (e.value = ""));
    await pageA.type("input[name=text]", "meet at one");
    await pageA.keyboard.press("Enter");
    for (const page of [pageA, pageB]) await waitForText(page, seq, "meet at one");
    assert.equal(await pageB.$eval(message(seq), (e) => e.dataset.edited), "");

    await act(pageA, seq, "recall");
    for (const page of [pageA, pageB]) await waitForTombstone(page, seq, "recalled", "Recalled by you");
    assert.equal(await pageA.$(`${message(seq)} [data-action=edit]`), null, "a tombstone is not edited");
    for (const page of [pageA, pageB]) {
      assert.doesNotMatch(await pageText(page), /meet at/);
      await leavesStorage(page, /meet at/);
    }
    const history = server.tlJson(bob, ["history", "--conversation", group]);
    const recalled = history.find((e) => String(e.conv_seq) === seq);
    assert.equal(recalled.recalled, true);
    assert.equal(recalled.text, "");
    await pageB.screenshot({ path: join(outputDir(), "lifecycle-tombstones.png") });
  });

  test("an edit and a recall of the previewed message change the list; the recall takes back the unread count", async () => {
    bobSends(side, "first in side");
    const last = bobSends(side, "second in sid");
    await until("two unread in side", async () => (await badge(pageA, side)).unread === "2");
    server.tl(bob, ["edit", "--conversation", side, "--conv-seq", last, "--text", "second in side"]);
    await until("the preview shows the edit", async () => (await badge(pageA, side)).preview === "User 2: second in side (edited)");
    assert.equal((await badge(pageA, side)).unread, "2", "an edit is not unread");
    server.tl(bob, ["recall", "--conversation", side, "--conv-seq", last]);
    await until("the recall is taken back", async () => (await badge(pageA, side)).unread === "1");
    assert.equal((await badge(pageA, side)).preview, "User 2: message removed");
    assert.doesNotMatch(await stored(pageA), /second in sid/);
    // The server counts the same.
    const row = server.tlJson(aliceLaptop, ["conversations"]).find((l) => String(l.conversation_id) === side);
    assert.equal(row.unread, 1);
  });

  test("a recall past the window shows the server's refusal and changes nothing", async () => {
    await pageA.type("input[name=text]", "too late to take back");
    await pageA.keyboard.press("Enter");
    const seq = await (
      await pageA.waitForFunction(
        () =>
          [...document.querySelectorAll("#messages .msg.mine[data-conv-seq]")].find(
            (e) => e.querySelector(".bubble")?.textContent === "too late to take back",
          )?.dataset.convSeq,
        { timeout: SETTLE_MS },
      )
    ).jsonValue();
    await sleep((RECALL_WINDOW_SECS + 1) * 1000);
    await act(pageA, seq, "recall");
    await pageA.waitForFunction(
      () => /failed precondition/.test(document.querySelector("#conversation-error")?.textContent ?? ""),
      { timeout: SETTLE_MS },
    );
    const error = await pageA.$eval("#conversation-error", (e) => e.textContent);
    assert.match(error, /window/, error);
    assert.equal(await pageA.$eval(`${message(seq)} .bubble`, (e) => e.textContent), "too late to take back");
    const history = server.tlJson(bob, ["history", "--conversation", group]);
    assert.equal(history.find((e) => String(e.conv_seq) === seq).text, "too late to take back");
  });

  test("a large group's message reaches a live page by push, well before the backstop poll", async () => {
    await open(pageA, large);
    // Let the stream settle in the group's registry.
    await sleep(500);
    const started = Date.now();
    const seq = bobSends(large, "pushed to the group");
    await waitForTextWithin(pageA, seq, "pushed to the group", PUSHED_MS);
    assert.ok(Date.now() - started < PUSHED_MS, "arrived by push");
  });

  test("a large group's recall, read from its timeline, replaces the text", async () => {
    await open(pageA, large);
    const seq = bobSends(large, "large group secret");
    await waitForText(pageA, seq, "large group secret");
    // The list as it stood before the recall, with the message's text: the
    // page's rows (from such replies) must not keep it once the recall is
    // read from the timeline.
    await until("the page's list shows the message", async () =>
      /large group secret/.test((await badge(pageA, large)).preview),
    );
    server.tl(bob, ["recall", "--conversation", large, "--conv-seq", seq]);
    await waitForTombstone(pageA, seq, "recalled", "Recalled by user 2");
    await leavesStorage(pageA, /large group secret/);
    await until("the list's preview drops it", async () => (await badge(pageA, large)).preview === "User 2: message removed");
  });

  test("delete for me and clear history hide messages on the user's devices only", async () => {
    await open(pageA, group);
    const hide = bobSends(group, "hide this one");
    const keep = bobSends(group, "keep this one");
    for (const page of [pageA, pageB]) await waitForText(page, keep, "keep this one");
    await act(pageA, hide, "delete-for-me");
    for (const page of [pageA, pageB]) await waitGone(page, hide);
    assert.equal(await pageB.$eval(`${message(keep)} .bubble`, (e) => e.textContent), "keep this one");
    for (const page of [pageA, pageB]) {
      await leavesStorage(page, /hide this one/);
    }
    const bobsHistory = () => server.tlJson(bob, ["history", "--conversation", group]);
    assert.ok(bobsHistory().some((e) => e.text === "hide this one"), "other members still see it");

    pageB.once("dialog", (dialog) => dialog.accept());
    await pageB.click("#clear-history");
    for (const page of [pageA, pageB]) {
      await page.waitForFunction(() => document.querySelectorAll("#messages .msg[data-conv-seq]").length === 0, {
        timeout: SETTLE_MS,
      });
    }
    assert.ok(bobsHistory().some((e) => e.text === "keep this one"), "other members still see it");
    assert.deepEqual(server.tlJson(aliceLaptop, ["history", "--conversation", group]), [], "nothing for the user");
    const after = bobSends(group, "after the clear");
    for (const page of [pageA, pageB]) await waitForText(page, after, "after the clear");
    // A reload brings nothing cleared back.
    await pageA.reload();
    await pageA.waitForSelector("#status.live", { timeout: SETTLE_MS });
    await waitForText(pageA, after, "after the clear");
    const shown = await pageA.$$eval("#messages .msg[data-conv-seq]", (l) => l.map((e) => e.dataset.convSeq));
    assert.deepEqual(shown, [after]);
    await pageA.screenshot({ path: join(outputDir(), "lifecycle.png") });
  });
});
