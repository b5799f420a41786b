// What a device token says about itself. A token is
// `tl1.<payload>.<mac>` with a base64url payload `d|<user>|<device>|<expires>`
// (or `s|<service>|<expires>` for a service). The browser cannot check the
// MAC and does not try: the server decides; this only names the local
// storage and the signed-in user before the first reply.

export interface TokenInfo {
  userId: bigint;
  deviceId: string;
  /** Unix seconds. */
  expiresAt: number;
}

export class TokenError extends Error {}

export function parseToken(token: string): TokenInfo {
  const parts = token.trim().split(".");
  if (parts.length !== 3 || parts[0] !== "tl1") {
    throw new TokenError("not a Timeline token (expected tl1.<payload>.<mac>)");
  }
  let payload: string;
  try {
    payload = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/"));
  } catch {
    throw new TokenError("the token's payload is not base64url");
  }
  const fields = payload.split("|");
  if (fields[0] === "s") {
    throw new TokenError("this is a service token: sign in with a device token (syncd token --user N --device NAME)");
  }
  if (fields[0] !== "d" || fields.length !== 4 || !/^\d+$/.test(fields[1]) || !/^\d+$/.test(fields[3])) {
    throw new TokenError("the token's payload is not a device token");
  }
  return { userId: BigInt(fields[1]), deviceId: fields[2], expiresAt: Number(fields[3]) };
}
