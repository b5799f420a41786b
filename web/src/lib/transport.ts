// The connection to syncd: gRPC-Web over fetch, the bearer token on every
// call. Each call site sets its own deadline (CALL_TIMEOUT_MS).

import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { Timeline } from "../gen/timeline/v1/timeline_pb.js";

/** Deadline for unary calls (the Rust client's CALL_TIMEOUT). */
export const CALL_TIMEOUT_MS = 30_000;

export type TimelineClient = Client<typeof Timeline>;

/** A client for `baseUrl` (an origin: the page's own when syncd serves it). */
export function connect(baseUrl: string, token: string): TimelineClient {
  const bearer = `Bearer ${token.trim()}`;
  const auth: Interceptor = (next) => async (request) => {
    request.header.set("authorization", bearer);
    return await next(request);
  };
  const transport = createGrpcWebTransport({ baseUrl, interceptors: [auth] });
  return createClient(Timeline, transport);
}
