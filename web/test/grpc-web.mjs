// gRPC-Web on the wire, written out by hand (no client library): frames of
// a flag byte and a 4-byte big-endian length, data frames (flag 0) holding
// protobuf messages and a trailer frame (flag 0x80) holding the status as
// HTTP header lines. A status may also come in the response headers when
// there is no body at all (the trailers-only path).

import { fromBinary, toBinary } from "@bufbuild/protobuf";

export function frame(bytes, flag = 0) {
  const out = new Uint8Array(5 + bytes.length);
  out[0] = flag;
  new DataView(out.buffer).setUint32(1, bytes.length);
  out.set(bytes, 5);
  return out;
}

export function parseFrames(body) {
  const frames = [];
  let at = 0;
  while (at < body.length) {
    if (body.length - at < 5) throw new Error(`truncated frame header at ${at}`);
    const flag = body[at];
    const length = new DataView(body.buffer, body.byteOffset + at + 1, 4).getUint32(0);
    if (body.length - at - 5 < length) throw new Error(`truncated frame at ${at}`);
    frames.push({ flag, bytes: body.subarray(at + 5, at + 5 + length) });
    at += 5 + length;
  }
  return frames;
}

function parseTrailer(bytes) {
  const trailer = {};
  for (const line of new TextDecoder().decode(bytes).split("\r\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) trailer[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return trailer;
}

/**
 * One call: POST `path` with `message` encoded by `schema`; returns the
 * HTTP response, the decoded messages and the gRPC status with where it
 * came from ("headers" for trailers-only, "trailer" for a trailer frame).
 */
export async function call(baseUrl, path, schema, message, { token, origin, replySchema, body } = {}) {
  const headers = { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" };
  if (token) headers.authorization = `Bearer ${token}`;
  if (origin) headers.origin = origin;
  const response = await fetch(`${baseUrl}${path}`, {
    method: "POST",
    headers,
    body: body ?? frame(toBinary(schema, message)),
  });
  const bytes = new Uint8Array(await response.arrayBuffer());
  const frames = parseFrames(bytes);
  const messages = frames.filter((f) => f.flag === 0).map((f) => (replySchema ? fromBinary(replySchema, f.bytes) : f.bytes));
  const trailerFrame = frames.find((f) => f.flag & 0x80);
  let status;
  if (trailerFrame) {
    const trailer = parseTrailer(trailerFrame.bytes);
    status = { code: Number(trailer["grpc-status"]), message: decodeURIComponent(trailer["grpc-message"] ?? ""), from: "trailer" };
  } else if (response.headers.has("grpc-status")) {
    status = {
      code: Number(response.headers.get("grpc-status")),
      message: decodeURIComponent(response.headers.get("grpc-message") ?? ""),
      from: "headers",
    };
  }
  return { response, messages, status, bytes };
}
