// Messages the user sent that the server has not confirmed yet. Each has
// its client message id from the moment it is typed, kept in storage, so a
// retry (automatic, by the user, or after a reload) can never store a
// second message: the server answers a repeat with the first result.

import { ConnectError } from "@connectrpc/connect";
import { describe, retryable } from "./errors.js";
import type { KeyValue } from "./storage.js";
import { CALL_TIMEOUT_MS, type TimelineClient } from "./transport.js";

/** Attempts per send before it waits for the user (the Rust client's SEND_ATTEMPTS). */
export const SEND_ATTEMPTS = 5;
/** First retry delay; doubles per attempt. */
export const RETRY_BASE_DELAY_MS = 200;
/** Unconfirmed messages kept; a send beyond it is refused on the page. */
export const MAX_PENDING = 100;

export interface Pending {
  clientMsgId: string;
  conversationId: bigint;
  text: string;
  /** Members the message mentions, and whether it mentions everyone. */
  mentions: bigint[];
  mentionAll: boolean;
  /** "sent": stored, waiting for the inbox to bring it (in order). */
  state: "sending" | "sent" | "failed";
  error?: string;
}

/** A random (version 4) UUID; works on pages that are not a secure context. */
export function newClientMsgId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export class Outbox {
  readonly #pending = new Map<string, Pending>();
  readonly #listeners = new Set<() => void>();

  constructor(
    private readonly client: TimelineClient,
    private readonly storage: KeyValue,
    private readonly key: string,
  ) {
    this.reload();
  }

  /** Reads the stored outbox again (another tab of the device wrote it). */
  reload(): void {
    try {
      const stored = JSON.parse(this.storage.get(this.key) ?? "[]") as any[];
      for (const p of stored) {
        if (this.#pending.has(p.clientMsgId)) continue;
        this.#pending.set(p.clientMsgId, {
          ...p,
          conversationId: BigInt(p.conversationId),
          mentions: ((p.mentions ?? []) as string[]).map(BigInt),
          mentionAll: p.mentionAll === true,
          state: "failed",
        });
      }
    } catch {
      // Nothing to resend.
    }
    for (const listener of this.#listeners) listener();
  }

  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  pending(conversationId: bigint): Pending[] {
    return [...this.#pending.values()].filter((p) => p.conversationId === conversationId);
  }

  /**
   * Sends a new message (a fresh client message id), mentioning `mentions`
   * (members) and everyone with `mentionAll`. A retry sends the same.
   */
  send(conversationId: bigint, text: string, mentions: bigint[] = [], mentionAll = false): Promise<void> {
    if (this.#pending.size >= MAX_PENDING) {
      return Promise.reject(new Error(`${MAX_PENDING} messages are still unsent: wait for the server`));
    }
    const pending: Pending = {
      clientMsgId: newClientMsgId(),
      conversationId,
      text,
      mentions,
      mentionAll,
      state: "sending",
    };
    this.#pending.set(pending.clientMsgId, pending);
    this.changed();
    return this.attempt(pending);
  }

  /** Sends again with the same client message id. */
  retry(clientMsgId: string): Promise<void> {
    const pending = this.#pending.get(clientMsgId);
    if (!pending || pending.state !== "failed") return Promise.resolve();
    pending.state = "sending";
    pending.error = undefined;
    this.changed();
    return this.attempt(pending);
  }

  /** Resends what a previous page left unconfirmed. */
  resumeAll(): void {
    for (const pending of this.#pending.values()) void this.retry(pending.clientMsgId);
  }

  /** The inbox delivered the message: it is no longer pending. */
  confirmed(clientMsgId: string): void {
    if (this.#pending.delete(clientMsgId)) this.changed();
  }

  private async attempt(pending: Pending): Promise<void> {
    let delay = RETRY_BASE_DELAY_MS;
    for (let attempt = 1; ; attempt++) {
      try {
        await this.client.send(
          {
            conversationId: pending.conversationId,
            text: pending.text,
            clientMsgId: pending.clientMsgId,
            mentions: pending.mentions,
            mentionAll: pending.mentionAll,
          },
          { timeoutMs: CALL_TIMEOUT_MS },
        );
        // Stored: it stays here until the inbox brings it in its place,
        // so the page never shows it twice or not at all.
        if (this.#pending.has(pending.clientMsgId)) {
          pending.state = "sent";
          this.changed();
        }
        return;
      } catch (error) {
        if (retryable(error) && attempt < SEND_ATTEMPTS) {
          await sleep(delay);
          delay *= 2;
          continue;
        }
        pending.state = "failed";
        pending.error = describe(ConnectError.from(error));
        this.changed();
        return;
      }
    }
  }

  private changed(): void {
    const stored = [...this.#pending.values()].map((p) => ({
      clientMsgId: p.clientMsgId,
      conversationId: p.conversationId.toString(),
      text: p.text,
      mentions: p.mentions.map(String),
      mentionAll: p.mentionAll,
    }));
    this.storage.set(this.key, JSON.stringify(stored));
    for (const listener of this.#listeners) listener();
  }
}

/**
 * The mentions a typed message makes: `@<user id>` of a member (not the
 * sender), and `@all` for everyone in a group. Other `@` words are text.
 */
export function mentionsIn(
  text: string,
  members: readonly bigint[],
  me: bigint,
  group: boolean,
): { mentions: bigint[]; mentionAll: boolean } {
  const mentions: bigint[] = [];
  for (const match of text.matchAll(/(?:^|[^\w@])@(\d{1,20})\b/g)) {
    const id = BigInt(match[1]);
    if (id !== me && members.includes(id) && !mentions.includes(id)) mentions.push(id);
  }
  const mentionAll = group && /(?:^|[^\w@])@all\b/.test(text);
  return { mentions, mentionAll };
}
