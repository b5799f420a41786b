// The web inbox: sign in with a device token, the conversation list with
// unread counts, a conversation's history with paging, live entries,
// sending (with mentions), read markers and receipts, and the user's
// changes to messages (edit, recall, delete for me, clear history, with
// tombstones and an "edited" marker). All protocol logic
// lives in ../lib; this file only draws it and decides when the user has
// seen a conversation (open, and the page visible).

import { Code } from "@connectrpc/connect";
import { EntryKind } from "../gen/timeline/v1/timeline_pb.js";
import { codeOf, describe, explain } from "../lib/errors.js";
import type { ConversationRow } from "../lib/conversations.js";
import { tombstoneOf, type Item } from "../lib/inbox.js";
import { mentionsIn, type Pending } from "../lib/outbox.js";
import { Device, type DeviceStatus } from "../lib/device.js";
import { browserStorage } from "../lib/storage.js";
import { TokenError } from "../lib/token.js";
import { h, timeOf } from "./dom.js";

const TOKEN_KEY = "timeline:v1:signed-in";
const storage = browserStorage();
const root = document.getElementById("app")!;

let device: Device | null = null;
let openId: bigint | null = null;
let conversationError: string | null = null;
/** The user's message being edited in the compose box (its conv_seq names it). */
let editing: Item | null = null;

interface Saved {
  server: string;
  token: string;
}

function savedSignIn(): Saved | null {
  try {
    return JSON.parse(storage.get(TOKEN_KEY) ?? "null") as Saved | null;
  } catch {
    return null;
  }
}

// ---- sign in ---------------------------------------------------------------

function showSignIn(error?: string, tried?: Saved): void {
  device?.stop();
  device = null;
  const saved = tried ?? savedSignIn();
  const token = h("textarea", { name: "token", placeholder: "tl1.…", spellcheck: "false" });
  token.value = saved?.token ?? "";
  const server = h("input", { name: "server", value: saved?.server ?? location.origin });
  const problem = h("div", { class: "error", role: "alert", id: "signin-error" }, error ?? "");
  problem.hidden = !error;
  const form = h(
    "form",
    {
      class: "signin",
      onsubmit: (event: Event) => {
        event.preventDefault();
        try {
          signIn(server.value.trim().replace(/\/+$/, ""), token.value.trim());
        } catch (e) {
          problem.textContent = e instanceof TokenError ? `Not a device token: ${e.message}` : String(e);
          problem.hidden = false;
        }
      },
    },
    h("h1", {}, "Timeline"),
    h("p", {}, "Sign in with a device token (syncd token --user N --device NAME)."),
    h("label", {}, "Device token", token),
    h("label", {}, "Server", server),
    problem,
    h("button", { type: "submit" }, "Sign in"),
  );
  root.replaceChildren(form);
}

function signIn(server: string, token: string): void {
  const next = new Device(server, token, storage);
  storage.set(TOKEN_KEY, JSON.stringify({ server, token } satisfies Saved));
  device = next;
  showInbox(next);
  next.onStatus((status) => {
    if (status.kind === "stopped" && status.code === Code.Unauthenticated) {
      storage.remove(TOKEN_KEY);
      showSignIn(`The server refused the token (${status.error}). Sign in with a valid device token.`, {
        server,
        token,
      });
    }
  });
  next.start();
}

function signOut(): void {
  storage.remove(TOKEN_KEY);
  location.hash = "";
  showSignIn();
}

// ---- the inbox -------------------------------------------------------------

const parts = {
  status: h("span", { class: "status connecting", id: "status" }, "Connecting"),
  list: h("ul", { id: "conversations" }),
  more: h("button", { class: "ghost more", id: "more-conversations" }, "More conversations"),
  pane: h("section", { class: "conversation" }),
  messages: h("div", { class: "messages", id: "messages" }),
  banner: h("div", { class: "error banner", role: "alert", id: "conversation-error" }),
  title: h("h2", {}),
  members: h("div", { class: "members" }),
  compose: h("input", { name: "text", placeholder: "Write a message", autocomplete: "off" }),
  editing: h("div", { class: "editing", id: "editing" }),
  clear: h("button", { class: "ghost", id: "clear-history", title: "Hide every message shown here from your devices" }, "Clear history"),
};

function showInbox(current: Device): void {
  const openForm = h(
    "form",
    {
      onsubmit: (event: Event) => {
        event.preventDefault();
        const input = (event.target as HTMLFormElement).elements.namedItem("id") as HTMLInputElement;
        if (/^\d+$/.test(input.value.trim())) {
          location.hash = `#/c/${input.value.trim()}`;
          input.value = "";
        }
      },
    },
    h("input", { name: "id", placeholder: "Open conversation by id", inputmode: "numeric" }),
    h("button", { type: "submit", class: "ghost" }, "Open"),
  );
  const composeForm = h(
    "form",
    {
      class: "compose",
      onsubmit: (event: Event) => {
        event.preventDefault();
        const text = parts.compose.value;
        if (!text.trim() || openId === null) return;
        parts.compose.value = "";
        if (editing) {
          const message = editing;
          stopEditing();
          // The new text shows when the edit comes back through the inbox.
          current.lifecycle.edit(message, text).catch((e) => showConversationError(explainHere(e)));
          return;
        }
        const record = current.cache.conversations.get(openId)?.record;
        const { mentions, mentionAll } = mentionsIn(
          text,
          record?.members ?? [],
          current.info.userId,
          record !== undefined && !record.direct,
        );
        current.outbox.send(openId, text, mentions, mentionAll).catch((e) => showConversationError(String(e)));
      },
    },
    parts.compose,
    h("button", { type: "submit" }, "Send"),
  );
  parts.clear.onclick = () => {
    const id = openId;
    if (id === null || !confirm("Clear this conversation's history on all your devices?")) return;
    // Through what the page shows: what arrives meanwhile stays.
    const through = current.cache.entries(id).at(-1)?.convSeq;
    current.lifecycle.clearHistory(id, through).catch((e) => showConversationError(explainHere(e)));
  };
  parts.pane.replaceChildren(
    h("header", {}, h("div", { class: "heading" }, parts.title, parts.clear), parts.members),
    parts.banner,
    parts.messages,
    parts.editing,
    composeForm,
  );
  stopEditing();
  root.replaceChildren(
    h(
      "header",
      { class: "top" },
      h("span", { class: "brand" }, "Timeline"),
      parts.status,
      h("span", { class: "who", id: "who" }, `User ${current.info.userId} · ${current.info.deviceId}`),
      h("button", { class: "ghost", onclick: signOut }, "Sign out"),
    ),
    h("main", { class: "inbox" }, h("aside", { class: "list" }, openForm, parts.list, parts.more), parts.pane),
  );
  parts.more.onclick = () => {
    parts.more.disabled = true;
    current.list.loadMore().then(
      () => (parts.more.disabled = false),
      (error) => {
        parts.more.disabled = false;
        showConversationError(explain(error));
      },
    );
  };
  current.onStatus(drawStatus);
  current.cache.onChange((id) => {
    drawList(current);
    if (id === null || id === openId) {
      drawConversation(current);
      markIfSeen(current);
    }
  });
  current.list.onChange(() => {
    drawList(current);
    // Receipts (the peer's marker) and the open conversation's counts.
    drawConversation(current);
    markIfSeen(current);
  });
  current.outbox.onChange(() => drawConversation(current));
  drawStatus(current.status);
  openFromHash(current);
}

function drawStatus(status: DeviceStatus): void {
  const text = {
    waiting: status.kind === "waiting" ? `Paused: ${status.reason}` : "",
    connecting: "Connecting",
    live: "Live",
    offline: status.kind === "offline" ? `Offline: ${status.error}. Retrying` : "",
    stopped: status.kind === "stopped" ? `Stopped: ${status.error}` : "",
  }[status.kind];
  parts.status.className = `status ${status.kind}`;
  parts.status.textContent = text;
}

function titleOf(current: Device, id: bigint): string {
  const row = current.list.row(id);
  if (row?.title) return row.title;
  const record = current.cache.conversations.get(id)?.record;
  if (record?.title) return record.title;
  if (record?.direct || row?.direct) {
    const other = record?.members.find((m) => m !== current.info.userId);
    return other === undefined ? "Direct" : `User ${other}`;
  }
  return `Conversation ${id}`;
}

function previewOf(row: ConversationRow, me: bigint): string {
  const last = row.last;
  if (!last) return row.member ? "No messages yet" : "You left";
  const text = last.removed ? "message removed" : last.edited ? `${last.text} (edited)` : last.text;
  if (last.senderId === 0n) return text;
  return `${last.senderId === me ? "You" : `User ${last.senderId}`}: ${text}`;
}

function drawList(current: Device): void {
  const rows = current.list.rows();
  const items = rows.map((row) => {
    // A direct conversation is named after the other member (its record).
    if (!row.title && !current.cache.conversations.get(row.id)?.record) {
      current.fetchRecord(row.id).catch(() => undefined);
    }
    return h(
      "li",
      {
        class: [row.id === openId ? "open" : "", row.member ? "" : "left", row.unread ? "unread" : ""].join(" ").trim(),
        "data-conversation-id": row.id.toString(),
        "data-unread": String(row.unread),
        "data-mentions": String(row.mentions),
        onclick: () => (location.hash = `#/c/${row.id}`),
      },
      h("span", { class: "title" }, titleOf(current, row.id)),
      h("span", { class: "time" }, timeOf(row.lastActivityMs)),
      h("span", { class: "preview" }, previewOf(row, current.info.userId)),
      h(
        "span",
        { class: "counts" },
        row.mentions ? h("span", { class: "mention", title: `${row.mentions} unread mentions` }, "@") : null,
        row.unread ? h("span", { class: "badge", title: `${row.unread} unread` }, String(row.unread)) : null,
      ),
    );
  });
  if (items.length === 0) {
    items.push(h("li", { class: "empty" }, current.list.loaded ? "No conversations yet." : "Loading conversations…"));
  }
  parts.list.replaceChildren(...items);
  parts.more.hidden = !current.list.hasMore;
  const total = current.list.totalUnread;
  document.title = total > 0 ? `(${total}) Timeline` : "Timeline";
}

/** The user sees the open conversation: the page is visible and this tab syncs. */
function seeing(id: bigint): boolean {
  return openId === id && document.visibilityState === "visible";
}

/** Marks the open conversation read through what it shows, if the user sees it. */
function markIfSeen(current: Device): void {
  const id = openId;
  if (id === null || !seeing(id) || !current.syncing) return;
  current.markSeen(id, () => seeing(id)).catch((error) => {
    if (openId === id) showConversationError(explainHere(error));
  });
}

function showConversationError(message: string | null): void {
  conversationError = message;
  parts.banner.textContent = message ?? "";
  parts.banner.hidden = message === null;
}

function openFromHash(current: Device): void {
  const match = /^#\/c\/(\d+)$/.exec(location.hash);
  openId = match ? BigInt(match[1]) : null;
  stopEditing();
  showConversationError(null);
  drawList(current);
  drawConversation(current, true);
  if (openId === null) return;
  const id = openId;
  current.fetchRecord(id).catch((error) => {
    if (openId === id) showConversationError(explainHere(error));
  });
  current.loadHistory(id).then(
    () => {
      if (openId === id && conversationError === null) drawConversation(current, true);
      markIfSeen(current);
    },
    (error) => openId === id && showConversationError(explainHere(error)),
  );
}

function explainHere(error: unknown): string {
  return codeOf(error) === Code.PermissionDenied
    ? `You are not a member of this conversation (${describe(error)}).`
    : explain(error);
}

function startEditing(item: Item): void {
  editing = item;
  parts.compose.value = item.text;
  parts.compose.focus();
  parts.editing.replaceChildren(
    `Editing your message`,
    h("button", { type: "button", class: "ghost", id: "cancel-edit", onclick: () => stopEditing(true) }, "Cancel"),
  );
  parts.editing.hidden = false;
}

function stopEditing(clear = false): void {
  editing = null;
  if (clear) parts.compose.value = "";
  parts.editing.replaceChildren();
  parts.editing.hidden = true;
}

/** Runs a change to a message; a refusal (say, past the recall window) shows in the banner. */
function change(action: Promise<unknown>): void {
  showConversationError(null);
  action.catch((error) => showConversationError(explainHere(error)));
}

/** What the user can do with a message: their own are edited and recalled; any is deleted for them. */
function actionsOf(current: Device, item: Item, mine: boolean): HTMLElement {
  const button = (action: string, label: string, run: () => void) =>
    h("button", { type: "button", class: "ghost", "data-action": action, onclick: run }, label);
  return h(
    "span",
    { class: "actions" },
    mine && !item.removed ? button("edit", "Edit", () => startEditing(item)) : null,
    mine && !item.removed ? button("recall", "Recall", () => change(current.lifecycle.recall(item))) : null,
    button("delete-for-me", "Delete for me", () => change(current.lifecycle.deleteForMe(item))),
  );
}

/** `peerRead`: in a direct conversation, how far the other member has read. */
function entryView(current: Device, item: Item, me: bigint, peerRead: bigint): HTMLElement {
  const attrs = {
    "data-conv-seq": item.convSeq.toString(),
    "data-seq": item.seq.toString(),
    "data-client-msg-id": item.clientMsgId,
  };
  if (item.kind !== EntryKind.MESSAGE) {
    const names = item.members.map((m) => (m === me ? "you" : `user ${m}`)).join(", ");
    const what = {
      [EntryKind.CONVERSATION_CREATED]: `Conversation created with ${names}`,
      [EntryKind.MEMBERS_ADDED]: `${names} joined`,
      [EntryKind.MEMBERS_REMOVED]: `${names} left`,
    }[item.kind as number] ?? "";
    return h("div", { class: "msg event", ...attrs }, h("div", { class: "bubble" }, what));
  }
  const mine = item.senderId === me;
  const who = item.senderId === 0n ? "System" : mine ? "You" : `User ${item.senderId}`;
  const read = mine && item.convSeq <= peerRead;
  const edited = item.version > 0n && !item.removed;
  const removedAt = item.removed ? ` · ${timeOf(item.removed.atMs)}` : "";
  return h(
    "div",
    {
      class: `msg message${mine ? " mine" : ""}${item.senderId === 0n ? " system" : ""}${item.removed ? " removed" : ""}`,
      ...attrs,
      "data-read": read,
      "data-removed": item.removed?.kind ?? false,
      "data-edited": edited,
    },
    item.removed
      ? h("div", { class: "bubble tombstone" }, `${tombstoneOf(item.removed, me)}${removedAt}`)
      : h("div", { class: "bubble" }, item.text),
    h(
      "div",
      { class: "meta" },
      `${who} · ${timeOf(item.sentAtMs)}`,
      edited ? h("span", { class: "edited", title: `version ${item.version}` }, " · edited") : null,
      read ? h("span", { class: "read" }, " · Read") : null,
      actionsOf(current, item, mine),
    ),
  );
}

function pendingView(current: Device, pending: Pending): HTMLElement {
  const state = {
    sending: "Sending…",
    sent: "Sent",
    failed: `Not sent: ${pending.error ?? "will retry"}`,
  }[pending.state];
  return h(
    "div",
    {
      class: `msg mine pending ${pending.state}`,
      "data-client-msg-id": pending.clientMsgId,
      "data-pending": pending.state,
    },
    h("div", { class: "bubble" }, pending.text),
    h(
      "div",
      { class: "meta" },
      state,
      pending.state === "failed"
        ? h("button", { class: "ghost", onclick: () => void current.outbox.retry(pending.clientMsgId) }, "Retry")
        : null,
    ),
  );
}

function drawConversation(current: Device, scrollToEnd = false): void {
  if (openId === null) {
    parts.title.textContent = "";
    parts.members.textContent = "";
    parts.messages.replaceChildren(h("div", { class: "placeholder" }, "Choose a conversation"));
    parts.compose.disabled = true;
    parts.clear.hidden = true;
    return;
  }
  parts.clear.hidden = false;
  const id = openId;
  const summary = current.cache.conversations.get(id);
  const me = current.info.userId;
  const row = current.list.row(id);
  parts.title.textContent = titleOf(current, id);
  parts.members.textContent = summary?.record
    ? `${summary.record.memberCount ?? summary.record.members.length} members${summary.record.readFanout ? " · large group" : ""}`
    : "";
  parts.compose.disabled = false;
  parts.compose.placeholder =
    summary?.record && !summary.record.direct ? "Write a message (@2 mentions user 2, @all everyone)" : "Write a message";
  const peerRead = summary?.record?.direct || row?.direct ? (row?.peerReadThrough ?? 0n) : 0n;
  const box = parts.messages;
  const atEnd = scrollToEnd || box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const items = current.cache.entries(id);
  const shown = new Set(items.map((i) => i.clientMsgId).filter(Boolean));
  const earlier =
    summary?.hasEarlier !== false && items.length > 0
      ? h(
          "button",
          {
            class: "ghost earlier",
            id: "load-earlier",
            onclick: (event: Event) => {
              const button = event.target as HTMLButtonElement;
              button.disabled = true;
              const height = box.scrollHeight;
              current.loadHistory(id, items[0].convSeq).then(
                () => (box.scrollTop = box.scrollHeight - height),
                (error) => showConversationError(explainHere(error)),
              );
            },
          },
          "Load earlier messages",
        )
      : null;
  box.replaceChildren(
    ...[earlier].filter((e): e is HTMLButtonElement => e !== null),
    ...items.map((item) => entryView(current, item, me, peerRead)),
    ...current.outbox
      .pending(id)
      .filter((p) => !shown.has(p.clientMsgId))
      .map((p) => pendingView(current, p)),
  );
  if (atEnd) box.scrollTop = box.scrollHeight;
}

window.addEventListener("hashchange", () => device && openFromHash(device));
// Back to the tab: what arrived while it was hidden is seen now.
document.addEventListener("visibilitychange", () => device && markIfSeen(device));

// For the tests and the curious: what the sync loop has done.
(window as any).timeline = {
  snapshot: () =>
    device && {
      userId: device.info.userId.toString(),
      checkpoint: device.checkpoint.seq.toString(),
      resumedFrom: device.resumedFrom.toString(),
      journal: device.checkpoint.journal.map(String),
      status: device.status.kind,
      totalUnread: device.list.totalUnread,
    },
};

const saved = savedSignIn();
if (saved) {
  try {
    signIn(saved.server, saved.token);
  } catch {
    showSignIn();
  }
} else {
  showSignIn();
}
