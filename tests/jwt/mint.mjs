// Mints keys and JWTs for the multi-process tests with jose, a JWT library
// independent of the server's, so a test token is what another backend's
// library would send.
//
//   node mint.mjs keys DIR        writes hs256.secret, {rsa,ec,ed}.pub.pem,
//                                 {rsa,ec,ed}.key.pem and jwks.json (kids
//                                 rsa-1, ec-1, ed-1; public keys only)
//   node mint.mjs sign DIR SPEC   prints one token; SPEC is JSON:
//     {"key": "hs256"|"rsa"|"ec"|"ed"|"none", "alg": "HS256"|...,
//      "kid": "...", "claims": {...},
//      "hmac_key_file": "..."}   (HMAC with this file's bytes as the key)
import { SignJWT, UnsecuredJWT, exportJWK, exportPKCS8, exportSPKI, generateKeyPair, importPKCS8 } from 'jose';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const ALGS = { rsa: 'RS256', ec: 'ES256', ed: 'EdDSA' };

async function keys(dir) {
  writeFileSync(join(dir, 'hs256.secret'), randomBytes(32).toString('base64url') + '\n');
  const jwks = { keys: [] };
  for (const [name, alg] of Object.entries(ALGS)) {
    const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
    writeFileSync(join(dir, `${name}.pub.pem`), await exportSPKI(publicKey));
    writeFileSync(join(dir, `${name}.key.pem`), await exportPKCS8(privateKey));
    const jwk = await exportJWK(publicKey);
    jwks.keys.push({ ...jwk, kid: `${name}-1`, use: 'sig' });
  }
  writeFileSync(join(dir, 'jwks.json'), JSON.stringify(jwks, null, 2));
}

async function sign(dir, spec) {
  if (spec.key === 'none') {
    return new UnsecuredJWT(spec.claims).encode();
  }
  const header = { alg: spec.alg, typ: 'JWT' };
  if (spec.kid) header.kid = spec.kid;
  let key;
  if (spec.hmac_key_file) {
    key = new Uint8Array(readFileSync(spec.hmac_key_file));
  } else if (spec.key === 'hs256') {
    key = new TextEncoder().encode(readFileSync(join(dir, 'hs256.secret'), 'utf8').trimEnd());
  } else {
    key = await importPKCS8(readFileSync(join(dir, `${spec.key}.key.pem`), 'utf8'), spec.alg);
  }
  return new SignJWT(spec.claims).setProtectedHeader(header).sign(key);
}

const [command, dir, spec] = process.argv.slice(2);
if (command === 'keys') {
  await keys(dir);
} else if (command === 'sign') {
  process.stdout.write(await sign(dir, JSON.parse(spec)) + '\n');
} else {
  console.error('usage: mint.mjs keys DIR | sign DIR SPEC');
  process.exit(2);
}
