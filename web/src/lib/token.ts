// What a device token says about itself. A token is either
// `tl1.<payload>.<mac>` with a base64url payload
// `d|<user>|<device>|<expires>[|<issued>]` (or `s|<service>|...` for a
// service), or a JWT whose claims carry `sub` (the user), `device` and
// `exp`. The browser cannot check the signature and does not try: the
// server decides; this only names the local storage and the signed-in user
// before the first reply.

export interface TokenInfo {
  userId: bigint;
  deviceId: string;
  /** Unix seconds. */
  expiresAt: number;
}

export class TokenError extends Error {}

function base64url(text: string): string {
  return atob(text.replace(/-/g, "+").replace(/_/g, "/"));
}

/** A JWT device token: `sub` is the user id, `device` the device id. */
function parseJwt(parts: string[]): TokenInfo {
  let claims: { sub?: unknown; device?: unknown; service?: unknown; exp?: unknown };
  try {
    claims = JSON.parse(base64url(parts[1]));
  } catch {
    throw new TokenError("the token's claims are not base64url JSON");
  }
  if (claims.service !== undefined) {
    throw new TokenError("this is a service token: sign in with a device token");
  }
  const sub = typeof claims.sub === "string" ? claims.sub : "";
  if (!/^\d+$/.test(sub) || typeof claims.device !== "string" || typeof claims.exp !== "number") {
    throw new TokenError("the token's claims are not a device token (sub, device, exp)");
  }
  return { userId: BigInt(sub), deviceId: claims.device, expiresAt: claims.exp };
}

export function parseToken(token: string): TokenInfo {
  const parts = token.trim().split(".");
  if (parts.length === 3 && parts[0] !== "tl1" && parts[0].startsWith("eyJ")) {
    return parseJwt(parts);
  }
  if (parts.length !== 3 || parts[0] !== "tl1") {
    throw new TokenError("not a Timeline token (expected tl1.<payload>.<mac> or a JWT)");
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
  // A fifth field (the issue time) is in tokens minted since revocation.
  const sized = fields.length === 4 || (fields.length === 5 && /^\d+$/.test(fields[4]));
  if (fields[0] !== "d" || !sized || !/^\d+$/.test(fields[1]) || !/^\d+$/.test(fields[3])) {
    throw new TokenError("the token's payload is not a device token");
  }
  return { userId: BigInt(fields[1]), deviceId: fields[2], expiresAt: Number(fields[3]) };
}
