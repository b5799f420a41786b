// The user's changes to messages: edit, recall, delete for me, and clear
// history (docs/PROTOCOL.md "Changing sent messages"). Each call names its
// target by conv_seq and msg_id and carries a client operation id chosen
// once per action, so a retry after a lost reply changes nothing twice.
// The change shows when its event comes back through the inbox (or a
// large group's timeline), like a sent message: the page never shows a
// state the server did not store.

import type { MessageChangeReply } from "../gen/timeline/v1/timeline_pb.js";
import { retryable } from "./errors.js";
import type { Item } from "./inbox.js";
import { newClientMsgId, RETRY_BASE_DELAY_MS, SEND_ATTEMPTS } from "./outbox.js";
import { CALL_TIMEOUT_MS, type TimelineClient } from "./transport.js";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs `call` with one operation id, retrying transient failures with the same id. */
async function once(call: (clientOpId: string) => Promise<MessageChangeReply>): Promise<MessageChangeReply> {
  const clientOpId = newClientMsgId();
  let delay = RETRY_BASE_DELAY_MS;
  for (let attempt = 1; ; attempt++) {
    try {
      return await call(clientOpId);
    } catch (error) {
      if (!retryable(error) || attempt >= SEND_ATTEMPTS) throw error;
      await sleep(delay);
      delay *= 2;
    }
  }
}

export class Lifecycle {
  constructor(
    private readonly client: TimelineClient,
    private readonly signal?: AbortSignal,
  ) {}

  private get options() {
    return { timeoutMs: CALL_TIMEOUT_MS, signal: this.signal };
  }

  /** Replaces the text of the user's message (within the server's edit window). */
  edit(message: Item, text: string): Promise<MessageChangeReply> {
    return once((clientOpId) =>
      this.client.editMessage(
        { conversationId: message.conversationId, convSeq: message.convSeq, msgId: message.msgId, text, clientOpId },
        this.options,
      ),
    );
  }

  /** Withdraws the user's message for everyone (within the server's recall window). */
  recall(message: Item): Promise<MessageChangeReply> {
    return once((clientOpId) =>
      this.client.recallMessage(
        { conversationId: message.conversationId, convSeq: message.convSeq, msgId: message.msgId, clientOpId },
        this.options,
      ),
    );
  }

  /** Hides a message from this user's devices and History. */
  deleteForMe(message: Item): Promise<MessageChangeReply> {
    return once((clientOpId) =>
      this.client.deleteMessage(
        {
          conversationId: message.conversationId,
          convSeq: message.convSeq,
          msgId: message.msgId,
          forMe: true,
          clientOpId,
        },
        this.options,
      ),
    );
  }

  /**
   * Hides everything through `through` (what the user sees; undefined:
   * everything readable now) from this user's devices, and marks it read.
   */
  clearHistory(conversationId: bigint, through?: bigint): Promise<MessageChangeReply> {
    return once((clientOpId) => this.client.clearHistory({ conversationId, through, clientOpId }, this.options));
  }
}
