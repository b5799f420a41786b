// The web inbox in headless Chromium (the system's `chromium`, driven by
// puppeteer-core: nothing is downloaded) against a real syncd serving the
// built app from --web-root: live delivery, sending, reload while messages
// keep arriving, a server restart, and a refused token. Screenshots go to
// target/web-test/.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import puppeteer from "puppeteer-core";
import { outputDir, sleep, Syncd, tempDir, WEB_DIR } from "./harness.mjs";

/** The browser binary; CHROMIUM overrides. */
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** How long a pushed message may take to show in the page. */
const PUSH_DEADLINE_MS = 1_000;
/** Generous bound for things that involve reconnecting. */
const RECOVERY_MS = 20_000;

const uuid = randomUUID;

describe("the web inbox in a browser", () => {
  let server;
  let browser;
  let page;
  let alice;
  let bob;
  let conversation;
  const aliceSeen = [];

  before(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`no browser at ${CHROMIUM}: install Debian's chromium package (or set CHROMIUM)`);
    }
    if (!existsSync(join(WEB_DIR, "dist", "index.html"))) {
      throw new Error("web/dist is not built: run scripts/web-build");
    }
    server = await Syncd.start(["--web-root", join(WEB_DIR, "dist")]);
    alice = server.deviceToken(1, "browser");
    bob = server.deviceToken(2, "cli");
    conversation = server.tl(bob, ["conversation", "create", "--members", "1", "--title", "Design review"]).trim();
    server.tl(bob, ["send", "--conversation", conversation, "--text", "Welcome to the review"]);
    const direct = server.tl(bob, ["conversation", "create", "--kind", "direct", "--members", "1"]).trim();
    server.tl(bob, ["send", "--conversation", direct, "--text", "Lunch at noon?"]);
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      // Root in a container has no user namespaces for the sandbox.
      args: ["--no-sandbox", "--disable-dev-shm-usage"],
    });
    page = await browser.newPage();
    await page.setViewport({ width: 1100, height: 720 });
    page.on("pageerror", (error) => console.error("page error:", error));
    page.on("console", (message) => console.error("page:", message.text()));
  });

  after(async () => {
    await browser?.close();
    await server?.stop().catch(() => server.kill9());
  });

  const snapshot = () => page.evaluate(() => window.timeline.snapshot());
  const statusText = () => page.$eval("#status", (e) => e.textContent);
  const waitForStatus = (kind, timeout = RECOVERY_MS) =>
    page.waitForSelector(`#status.${kind}`, { timeout });
  /** conv_seqs of the entries shown in the open conversation, in order. */
  const shownConvSeqs = () =>
    page.$$eval("#messages .msg[data-conv-seq]", (list) => list.map((e) => e.dataset.convSeq));

  /** Waits until the open conversation is read and the page has applied the whole inbox. */
  async function inboxSettled() {
    const deadline = Date.now() + RECOVERY_MS;
    const unread = () =>
      server.tlJson(alice, ["conversations"]).find((l) => String(l.conversation_id) === conversation)?.unread;
    while (unread() !== 0) {
      assert.ok(Date.now() < deadline, "the open conversation was not marked read");
      await sleep(50);
    }
    const everything = server.tlJson(alice, ["sync", "--state", join(tempDir("truth"), "state.json")]);
    const top = String(everything.at(-1).seq);
    await page.waitForFunction(
      (seq) => BigInt(window.timeline.snapshot()?.checkpoint ?? "0") >= BigInt(seq),
      { timeout: RECOVERY_MS },
      top,
    );
  }

  async function signIn(target, token) {
    await target.goto(server.url);
    await target.waitForSelector("textarea[name=token]");
    await target.$eval("textarea[name=token]", (e, value) => (e.value = value), token);
    await target.click("button[type=submit]");
  }

  test("signing in shows the conversation list and goes live", async () => {
    await signIn(page, alice);
    await waitForStatus("live");
    await page.waitForFunction(
      (id, title) =>
        [...document.querySelectorAll("#conversations li")].some(
          (li) => li.dataset.conversationId === id && li.textContent.includes(title),
        ),
      { timeout: RECOVERY_MS },
      conversation,
      "Design review",
    );
    // Clicked in the page: the list is redrawn as rows arrive, so a handle
    // taken before the click may be gone by the time it lands.
    await page.$eval(`#conversations li[data-conversation-id="${conversation}"]`, (li) => li.click());
    await page.waitForFunction(
      () => document.querySelector("#messages")?.textContent.includes("Welcome to the review"),
    );
  });

  test("a message sent with tl appears in the open page within a second", async (t) => {
    const id = uuid();
    const waiting = page.waitForSelector(`#messages .msg[data-client-msg-id="${id}"][data-seq]`, {
      timeout: PUSH_DEADLINE_MS + 5_000,
    });
    const sent = await server.tlAsync(bob, ["send", "--conversation", conversation, "--text", "pushed to the page", "--client-msg-id", id]);
    const acknowledged = Date.now();
    await waiting;
    const took = Date.now() - acknowledged;
    t.diagnostic(`shown ${took} ms after tl send returned`);
    assert.ok(took <= PUSH_DEADLINE_MS, `shown ${took} ms after tl send returned (${sent.trim()})`);
  });

  test("the page sends a message that tl sync receives", async () => {
    await page.type("input[name=text]", "typed in the browser");
    await page.keyboard.press("Enter");
    // It shows at once (pending), then in its place from the inbox, once.
    const delivered = await page.waitForFunction(
      (text) => {
        const shown = [...document.querySelectorAll("#messages .msg")].filter(
          (e) => e.querySelector(".bubble")?.textContent === text,
        );
        return shown.length === 1 && shown[0].dataset.seq ? shown[0].dataset.clientMsgId : null;
      },
      { timeout: RECOVERY_MS },
      "typed in the browser",
    );
    const clientMsgId = await delivered.jsonValue();
    assert.match(clientMsgId, /^[0-9a-f-]{36}$/);
    const received = server.tlJson(bob, ["sync", "--state", join(server.dataDir, "bob.json")]);
    const copies = received.filter((e) => e.client_msg_id === clientMsgId);
    assert.equal(copies.length, 1, JSON.stringify(received));
    assert.equal(copies[0].text, "typed in the browser");
    assert.equal(copies[0].sender_id, 1);
  });

  test("a reload resumes from the stored checkpoint: nothing missing, nothing twice", async () => {
    // At least enough for more than one History page (50) in the next test,
    // and on until the reloads are over: messages keep arriving throughout.
    const sends = 60;
    // Below what the page keeps per conversation (200), so all of it shows.
    const cap = 150;
    const texts = [];
    let sent = 0;
    let reloading = true;
    const sender = (async () => {
      while ((sent < sends || reloading) && sent < cap) {
        const text = `burst ${sent}`;
        await server.tlAsync(bob, ["send", "--conversation", conversation, "--text", text]);
        texts.push(text);
        sent++;
      }
    })();
    // Reloads while the sender keeps going: after 10, 25 and 40 sends.
    for (const after of [10, 25, 40]) {
      while (sent < after) await sleep(20);
      const seen = BigInt((await snapshot()).checkpoint);
      await page.reload();
      await waitForStatus("live");
      // The page started from what it had stored, not from the beginning.
      const resumedFrom = BigInt((await snapshot()).resumedFrom);
      assert.ok(resumedFrom >= seen && resumedFrom > 0n, `resumed from ${resumedFrom}, had ${seen}`);
    }
    reloading = false;
    await sender;
    const truthSync = () =>
      server.tlJson(server.deviceToken(1, "truth"), ["sync", "--state", join(server.dataDir, "truth.json")]);
    const truth = truthSync();
    const lastSeq = String(truth.at(-1).seq);
    await page.waitForFunction(
      (seq) => BigInt(window.timeline.snapshot()?.checkpoint ?? "0") >= BigInt(seq),
      { timeout: RECOVERY_MS },
      lastSeq,
    );
    const { journal } = await snapshot();
    // The open conversation is marked read as messages arrive, so the inbox
    // goes on growing (read markers): compare up to what the page applied.
    truth.push(...truthSync());
    const upTo = BigInt(journal.at(-1));
    // Every inbox entry applied exactly once, in order, across the reloads.
    assert.deepEqual(
      journal,
      truth.map((e) => String(e.seq)).filter((seq) => BigInt(seq) <= upTo),
    );
    // And the conversation shows each entry once, in conv_seq order.
    const history = server.tlJson(bob, ["history", "--conversation", conversation, "--limit", "500"]);
    const shown = await shownConvSeqs();
    assert.deepEqual(shown, history.map((e) => String(e.conv_seq)));
    for (const text of texts) {
      const count = await page.$$eval(
        "#messages .msg .bubble",
        (list, t) => list.filter((e) => e.textContent === t).length,
        text,
      );
      assert.equal(count, 1, text);
    }
    aliceSeen.push(...journal);
  });

  test("a member who joined later pages back through the history", async () => {
    server.tl(server.serviceToken("ops"), ["conversation", "add-members", "--conversation", conversation, "--members", "3"]);
    const context = await browser.createBrowserContext();
    const carol = await context.newPage();
    await carol.setViewport({ width: 1100, height: 720 });
    await signIn(carol, server.deviceToken(3, "browser"));
    await carol.waitForSelector(`#conversations li[data-conversation-id="${conversation}"]`, { timeout: RECOVERY_MS });
    await carol.$eval(`#conversations li[data-conversation-id="${conversation}"]`, (li) => li.click());
    const history = server.tlJson(bob, ["history", "--conversation", conversation, "--limit", "500"]);
    const all = history.map((e) => String(e.conv_seq));
    const shown = () => carol.$$eval("#messages .msg[data-conv-seq]", (list) => list.map((e) => e.dataset.convSeq));
    // The newest page first: one page of 50 does not hold everything.
    await carol.waitForFunction((n) => document.querySelectorAll("#messages .msg[data-conv-seq]").length >= n, {}, 50);
    assert.ok((await shown()).length < all.length, `${(await shown()).length} of ${all.length} at first`);
    let pages = 0;
    while (await carol.$("#load-earlier:not([disabled])")) {
      const before = (await shown()).length;
      await carol.click("#load-earlier");
      await carol.waitForFunction(
        (n) =>
          document.querySelectorAll("#messages .msg[data-conv-seq]").length > n ||
          !document.querySelector("#load-earlier"),
        { timeout: RECOVERY_MS },
        before,
      );
      assert.ok(++pages < 10, "paging does not end");
    }
    assert.deepEqual(await shown(), all);
    await context.close();
  });

  test("a server restart while the page is open is ridden through", async () => {
    await server.stop();
    await waitForStatus("offline");
    assert.match(await statusText(), /Offline: unavailable/);
    await page.screenshot({ path: join(outputDir(), "offline.png") });
    // Sent while the server is down: retried with the same client message id.
    await page.type("input[name=text]", "sent while the server was down");
    await page.keyboard.press("Enter");
    await sleep(300);
    await server.startAgain();
    await waitForStatus("live");
    const id = uuid();
    server.tl(bob, ["send", "--conversation", conversation, "--text", "after the restart", "--client-msg-id", id]);
    await page.waitForSelector(`#messages .msg[data-client-msg-id="${id}"]`, { timeout: RECOVERY_MS });
    await page.waitForFunction(
      () => !document.querySelector("#messages .msg.pending"),
      { timeout: RECOVERY_MS },
    );
    const received = server.tlJson(bob, ["sync", "--state", join(server.dataDir, "bob.json")]);
    assert.equal(received.filter((e) => e.text === "sent while the server was down").length, 1);
    const { journal } = await snapshot();
    assert.equal(new Set(journal).size, journal.length, "no inbox entry applied twice");
    await page.screenshot({ path: join(outputDir(), "inbox.png") });
  });

  test("a server killed with SIGKILL mid-stream is ridden through too", async () => {
    server.kill9();
    await waitForStatus("offline");
    await server.startAgain();
    await waitForStatus("live");
    const id = uuid();
    server.tl(bob, ["send", "--conversation", conversation, "--text", "after SIGKILL", "--client-msg-id", id]);
    await page.waitForSelector(`#messages .msg[data-client-msg-id="${id}"]`, { timeout: RECOVERY_MS });
    const { journal } = await snapshot();
    assert.equal(new Set(journal).size, journal.length, "no inbox entry applied twice");
  });

  test("a second tab of the device waits for the first, then takes over", async () => {
    // The open conversation was marked read as the last test's message
    // came, which adds a marker to the inbox: let it land first. (Once the
    // second tab is in front, the first is hidden and marks nothing.)
    await inboxSettled();
    const second = await browser.newPage();
    await second.setViewport({ width: 1100, height: 720 });
    await second.goto(`${server.url}/#/c/${conversation}`);
    await second.waitForSelector("#status.waiting", { timeout: RECOVERY_MS });
    assert.match(await second.$eval("#status", (e) => e.textContent), /open in another tab/);
    // The first tab goes on syncing while the second waits.
    const id = uuid();
    server.tl(bob, ["send", "--conversation", conversation, "--text", "while the second tab waited", "--client-msg-id", id]);
    await page.waitForSelector(`#messages .msg[data-client-msg-id="${id}"]`, { timeout: RECOVERY_MS });
    const first = await snapshot();
    await page.close();
    page = second;
    await waitForStatus("live");
    const taken = await snapshot();
    assert.equal(taken.resumedFrom, first.checkpoint, "the second tab started where the first stopped");
    await page.waitForSelector(`#messages .msg[data-client-msg-id="${id}"]`, { timeout: RECOVERY_MS });
    assert.equal(new Set(taken.journal).size, taken.journal.length, "no inbox entry applied twice");
  });

  test("a conversation the user is not in shows why", async () => {
    const other = server.tl(bob, ["conversation", "create", "--members", "3"]).trim();
    await page.evaluate((id) => (location.hash = `#/c/${id}`), other);
    await page.waitForFunction(
      () => /not a member/.test(document.querySelector("#conversation-error")?.textContent ?? ""),
      { timeout: RECOVERY_MS },
    );
    assert.match(await page.$eval("#conversation-error", (e) => e.textContent), /permission denied/);
  });

  test("a bad token shows the UNAUTHENTICATED error", async () => {
    const context = await browser.createBrowserContext();
    const fresh = await context.newPage();
    await fresh.setViewport({ width: 1100, height: 720 });
    const forged = `${alice.slice(0, -3)}abc`;
    await signIn(fresh, forged);
    await fresh.waitForFunction(
      () => /unauthenticated/.test(document.querySelector("#signin-error")?.textContent ?? ""),
      { timeout: RECOVERY_MS },
    );
    const message = await fresh.$eval("#signin-error", (e) => e.textContent);
    assert.match(message, /refused the token \(unauthenticated: /);
    await fresh.screenshot({ path: join(outputDir(), "bad-token.png") });
    await context.close();
  });
});
