// How call failures are classified and told to the user. One place, like the
// Rust client's `describe` and `retryable`.

import { Code, ConnectError } from "@connectrpc/connect";

/**
 * The error as a status. fetch reports an unreachable server as a
 * TypeError, which the transport passes on as UNKNOWN; it is told as what it
 * is, UNAVAILABLE, like a refused connection over native gRPC.
 */
export function statusOf(error: unknown): ConnectError {
  const e = ConnectError.from(error);
  if ((e.code === Code.Unknown || e.code === Code.Internal) && e.cause instanceof TypeError) {
    return new ConnectError(`cannot reach the server (${e.rawMessage})`, Code.Unavailable, undefined, undefined, e.cause);
  }
  return e;
}

/** Failures worth retrying: the server or the network, not the request. */
export function retryable(error: unknown): boolean {
  const code = statusOf(error).code;
  return (
    code === Code.Unavailable || code === Code.DeadlineExceeded || code === Code.Unknown || code === Code.Aborted
  );
}

const CODE_NAMES: Record<number, string> = {
  [Code.Canceled]: "cancelled",
  [Code.Unknown]: "unknown",
  [Code.InvalidArgument]: "invalid argument",
  [Code.DeadlineExceeded]: "deadline exceeded",
  [Code.NotFound]: "not found",
  [Code.AlreadyExists]: "already exists",
  [Code.PermissionDenied]: "permission denied",
  [Code.ResourceExhausted]: "resource exhausted",
  [Code.FailedPrecondition]: "failed precondition",
  [Code.Aborted]: "aborted",
  [Code.OutOfRange]: "out of range",
  [Code.Unimplemented]: "unimplemented",
  [Code.Internal]: "internal",
  [Code.Unavailable]: "unavailable",
  [Code.DataLoss]: "data loss",
  [Code.Unauthenticated]: "unauthenticated",
};

/** `code: message`, the status code always named (as `tl` prints it). */
export function describe(error: unknown): string {
  const e = statusOf(error);
  const name = CODE_NAMES[e.code] ?? `code ${e.code}`;
  return e.rawMessage ? `${name}: ${e.rawMessage}` : name;
}

export function codeOf(error: unknown): Code {
  return statusOf(error).code;
}

/** A sentence for the screen: what happened and what the user can do. */
export function explain(error: unknown): string {
  switch (codeOf(error)) {
    case Code.Unauthenticated:
      return `The server refused the token (${describe(error)}). Sign in with a valid device token.`;
    case Code.PermissionDenied:
      return `Not allowed (${describe(error)}).`;
    case Code.Unavailable:
    case Code.Unknown:
      return `The server cannot be reached (${describe(error)}). Retrying.`;
    default:
      return describe(error);
  }
}
