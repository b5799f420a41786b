//! JWTs: tokens an application's backend mints with its own JWT library.
//!
//! The server holds one kind of key, chosen at start:
//! - an HS256 shared secret (a file of at least 32 bytes; a trailing line
//!   break is not part of it);
//! - a public key (PEM: RSA for RS256/384/512 and PS256/384/512, EC P-256
//!   or P-384 for ES256/ES384, Ed25519 for EdDSA), so the server never holds
//!   the signing key;
//! - a JWKS file of public keys, one picked by the token's `kid`.
//!
//! Only the algorithms of the configured key are accepted: `alg: none`, and
//! a token that names another family (an HS256 token whose HMAC key is the
//! RSA public key, the classic confusion) are refused before any signature
//! is checked.
//!
//! Claims: `sub` (the user id, decimal) with `device` (the device id) for a
//! device, or `service` (the service name) for a service; `exp` required;
//! `nbf` checked when present; `iat` kept for revocation (a token without
//! it counts as issued at time 0); `aud` and `iss` checked when configured
//! (and then required); `jti` is accepted and not used.

use super::{Principal, Verified, now_unix_s, validate_principal};
use crate::error::{Result, SyncdError, quoted};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Clock difference tolerated on `exp`, `nbf` and `iat`.
pub const JWT_CLOCK_LEEWAY_S: u64 = 30;
/// Shortest HS256 secret (RFC 7518: a key as long as the hash output).
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// Largest key file read (a JWKS of many keys is a few KiB).
const MAX_KEY_FILE_BYTES: u64 = 1 << 20;

/// Where the server's JWT key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwtKeySource {
    Hs256SecretFile(PathBuf),
    PublicKeyFile(PathBuf),
    JwksFile(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtConfig {
    pub key: JwtKeySource,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
}

/// Why a JWT configuration cannot be used (a startup error).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct JwtKeyError {
    pub path: PathBuf,
    pub reason: String,
}

/// One key and the algorithms it may verify.
struct Key {
    decoding: DecodingKey,
    validation: Validation,
}

enum Keys {
    // Boxed: a key with its validation is several times a map's size.
    One(Box<Key>),
    ByKid(HashMap<String, Key>),
}

pub struct JwtVerifier {
    keys: Keys,
    config: JwtConfig,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: Option<String>,
    device: Option<String>,
    service: Option<String>,
    iat: Option<u64>,
}

fn read_key_file(path: &Path) -> std::result::Result<Vec<u8>, JwtKeyError> {
    let error = |reason: String| JwtKeyError {
        path: path.to_path_buf(),
        reason,
    };
    let metadata = std::fs::metadata(path).map_err(|e| error(e.to_string()))?;
    if metadata.len() > MAX_KEY_FILE_BYTES {
        return Err(error(format!(
            "{} bytes: a key file is at most {MAX_KEY_FILE_BYTES}",
            metadata.len()
        )));
    }
    std::fs::read(path).map_err(|e| error(e.to_string()))
}

/// The algorithms a public key of this kind can verify.
fn public_key(pem: &[u8]) -> Option<(DecodingKey, Vec<Algorithm>)> {
    use Algorithm::*;
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Some((key, vec![RS256, RS384, RS512, PS256, PS384, PS512]));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Some((key, vec![ES256, ES384]));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Some((key, vec![EdDSA]));
    }
    None
}

fn jwk_algorithms(jwk: &jsonwebtoken::jwk::Jwk) -> std::result::Result<Vec<Algorithm>, String> {
    use Algorithm::*;
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            ref other => return Err(format!("curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "a symmetric (oct) key: a JWKS holds public keys; use --jwt-hs256-secret-file for a shared secret"
                    .into(),
            );
        }
        _ => return Err("unsupported key type".into()),
    };
    // A key that names its algorithm verifies that one alone.
    match jwk.common.key_algorithm {
        None => Ok(family),
        Some(named) => {
            let named = key_algorithm(named).filter(|alg| family.contains(alg));
            named
                .map(|alg| vec![alg])
                .ok_or_else(|| "its alg does not fit its key type".into())
        }
    }
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match alg {
        KeyAlgorithm::RS256 => RS256,
        KeyAlgorithm::RS384 => RS384,
        KeyAlgorithm::RS512 => RS512,
        KeyAlgorithm::PS256 => PS256,
        KeyAlgorithm::PS384 => PS384,
        KeyAlgorithm::PS512 => PS512,
        KeyAlgorithm::ES256 => ES256,
        KeyAlgorithm::ES384 => ES384,
        KeyAlgorithm::EdDSA => EdDSA,
        _ => return None,
    })
}

fn bad(why: impl std::fmt::Display) -> SyncdError {
    SyncdError::Unauthenticated(format!("invalid token: {why}"))
}

fn algorithm_names(algorithms: &[Algorithm]) -> String {
    algorithms
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl JwtVerifier {
    /// Reads the key (blocking file reads: call at startup).
    pub fn load(config: JwtConfig) -> std::result::Result<Self, JwtKeyError> {
        let error = |path: &Path, reason: String| JwtKeyError {
            path: path.to_path_buf(),
            reason,
        };
        let keys = match &config.key {
            JwtKeySource::Hs256SecretFile(path) => {
                let mut secret = read_key_file(path)?;
                while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    secret.pop();
                }
                if secret.len() < MIN_HS256_SECRET_BYTES {
                    return Err(error(
                        path,
                        format!(
                            "an HS256 secret of {} bytes: at least {MIN_HS256_SECRET_BYTES} are needed",
                            secret.len()
                        ),
                    ));
                }
                let decoding =
                    DecodingKey::from_secret(&secret).map_err(|e| error(path, e.to_string()))?;
                Keys::One(Box::new(Key {
                    decoding,
                    validation: validation(&config, vec![Algorithm::HS256]),
                }))
            }
            JwtKeySource::PublicKeyFile(path) => {
                let pem = read_key_file(path)?;
                let (decoding, algorithms) = public_key(&pem).ok_or_else(|| {
                    error(
                        path,
                        "not a PEM public key (RSA, EC P-256/P-384 or Ed25519)".into(),
                    )
                })?;
                Keys::One(Box::new(Key {
                    decoding,
                    validation: validation(&config, algorithms),
                }))
            }
            JwtKeySource::JwksFile(path) => {
                let text = read_key_file(path)?;
                let set: JwkSet = serde_json::from_slice(&text)
                    .map_err(|e| error(path, format!("not a JWKS: {e}")))?;
                let mut keys = HashMap::new();
                for (i, jwk) in set.keys.iter().enumerate() {
                    let kid = jwk
                        .common
                        .key_id
                        .clone()
                        .ok_or_else(|| error(path, format!("key {i} has no kid")))?;
                    let algorithms = jwk_algorithms(jwk)
                        .map_err(|e| error(path, format!("key {kid:?}: {e}")))?;
                    let decoding = DecodingKey::from_jwk(jwk)
                        .map_err(|e| error(path, format!("key {kid:?}: {e}")))?;
                    let key = Key {
                        decoding,
                        validation: validation(&config, algorithms),
                    };
                    if keys.insert(kid.clone(), key).is_some() {
                        return Err(error(path, format!("kid {kid:?} appears twice")));
                    }
                }
                if keys.is_empty() {
                    return Err(error(path, "the JWKS holds no keys".into()));
                }
                Keys::ByKid(keys)
            }
        };
        Ok(Self { keys, config })
    }

    /// Verifies signature and claims; UNAUTHENTICATED with the reason.
    pub fn verify(&self, token: &str) -> Result<Verified> {
        let header = Header::read(token)?;
        let key = match &self.keys {
            Keys::One(key) => key,
            Keys::ByKid(keys) => {
                let kid = header.kid.as_deref().ok_or_else(|| {
                    bad("the token has no kid (this server's keys are a JWKS: name the key)")
                })?;
                keys.get(kid)
                    .ok_or_else(|| bad(format!("unknown key id (kid) {}", quoted(kid))))?
            }
        };
        let allowed = &key.validation.algorithms;
        if !allowed.iter().any(|a| format!("{a:?}") == header.alg) {
            return Err(bad(format!(
                "algorithm {} is not allowed with this server's key (allowed: {})",
                quoted(&header.alg),
                algorithm_names(allowed)
            )));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &key.validation)
            .map_err(|e| self.explain(e))?;
        let claims = data.claims;
        let principal = match (claims.sub, claims.device, claims.service) {
            (Some(_), _, Some(_)) => {
                return Err(bad("the token names both a user (sub) and a service"));
            }
            (Some(sub), Some(device_id), None) => Principal::Device {
                user_id: sub
                    .parse()
                    .ok()
                    .filter(|&id| id <= crate::limits::MAX_USER_ID)
                    .ok_or_else(|| {
                        bad(format!(
                            "sub {} is not a user id (1 to 2^63-1)",
                            quoted(&sub)
                        ))
                    })?,
                device_id,
            },
            (Some(_), None, None) => {
                return Err(bad(
                    "the token lacks the claim device (a device token names sub and device)",
                ));
            }
            (None, _, Some(name)) => Principal::Service { name },
            (None, _, None) => {
                return Err(bad(
                    "the token lacks the claim sub (a user id, with device) or service",
                ));
            }
        };
        validate_principal(&principal).map_err(bad)?;
        if let Some(iat) = claims.iat
            && iat > now_unix_s().saturating_add(JWT_CLOCK_LEEWAY_S)
        {
            return Err(bad("the token was issued in the future (iat)"));
        }
        Ok(Verified {
            principal,
            issued_at_s: claims.iat,
        })
    }

    fn explain(&self, error: jsonwebtoken::errors::Error) -> SyncdError {
        match error.kind() {
            ErrorKind::ExpiredSignature => SyncdError::Unauthenticated("token expired".into()),
            ErrorKind::ImmatureSignature => bad("the token is not valid yet (nbf)"),
            ErrorKind::InvalidSignature => {
                bad("the signature does not verify with this server's key")
            }
            ErrorKind::InvalidAudience => match &self.config.audience {
                Some(aud) => bad(format!("the audience (aud) is not {}", quoted(aud))),
                None => bad("the token names an audience (aud) but this server expects none"),
            },
            ErrorKind::InvalidIssuer => bad(format!(
                "the issuer (iss) is not {}",
                quoted(self.config.issuer.as_deref().unwrap_or(""))
            )),
            ErrorKind::MissingRequiredClaim(claim) => {
                bad(format!("the token lacks the claim {claim}"))
            }
            ErrorKind::InvalidClaimFormat(claim) => {
                bad(format!("the claim {claim} has the wrong type"))
            }
            ErrorKind::InvalidAlgorithm => bad("the algorithm does not fit this server's key"),
            ErrorKind::Json(e) => bad(format!("the claims are not what a token carries: {e}")),
            _ => bad(format!("malformed JWT: {error}")),
        }
    }
}

fn validation(config: &JwtConfig, algorithms: Vec<Algorithm>) -> Validation {
    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms;
    validation.leeway = JWT_CLOCK_LEEWAY_S;
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    // Without a configured audience, a token that names one is for some
    // other service and refused (RFC 7519, 4.1.3).
    if let Some(aud) = &config.audience {
        validation.set_audience(&[aud]);
        required.push("aud");
    }
    if let Some(iss) = &config.issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// The header fields read before any key is chosen. Read by hand so that
/// an algorithm the library does not know (`none`) gets a clear refusal.
struct Header {
    alg: String,
    kid: Option<String>,
}

impl Header {
    fn read(token: &str) -> Result<Self> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("a JWT has three parts separated by dots"));
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| bad("the JWT header is not base64url"))?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| bad("the JWT header is not JSON"))?;
        let alg = value
            .get("alg")
            .and_then(|a| a.as_str())
            .ok_or_else(|| bad("the JWT header names no alg"))?
            .to_owned();
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        Ok(Self { alg, kid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(key: JwtKeySource) -> std::result::Result<JwtVerifier, JwtKeyError> {
        JwtVerifier::load(JwtConfig {
            key,
            audience: None,
            issuer: None,
        })
    }

    fn jwks_error(dir: &Path, jwks: serde_json::Value) -> String {
        let path = dir.join("jwks.json");
        std::fs::write(&path, jwks.to_string()).unwrap();
        match load(JwtKeySource::JwksFile(path)) {
            Ok(_) => panic!("accepted {jwks}"),
            Err(error) => error.to_string(),
        }
    }

    /// Keys that cannot serve are refused at start, naming why.
    #[test]
    fn unusable_keys_are_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, format!("{}\n", "s".repeat(31))).unwrap();
        let short = load(JwtKeySource::Hs256SecretFile(secret.clone()))
            .err()
            .unwrap();
        assert!(short.to_string().contains("31 bytes"), "{short}");
        std::fs::write(&secret, format!("{}\r\n", "s".repeat(32))).unwrap();
        load(JwtKeySource::Hs256SecretFile(secret.clone())).unwrap();
        let not_pem = load(JwtKeySource::PublicKeyFile(secret)).err().unwrap();
        assert!(
            not_pem.to_string().contains("not a PEM public key"),
            "{not_pem}"
        );
        let missing = load(JwtKeySource::PublicKeyFile(dir.path().join("nope")))
            .err()
            .unwrap();
        assert!(missing.to_string().contains("nope"), "{missing}");

        let oct =
            serde_json::json!({"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0c2VjcmV0"}]});
        assert!(jwks_error(dir.path(), oct).contains("symmetric"));
        let ed = |kid: Option<&str>| {
            let mut key = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
            if let Some(kid) = kid {
                key["kid"] = kid.into();
            }
            key
        };
        let no_kid = serde_json::json!({"keys": [ed(None)]});
        assert!(jwks_error(dir.path(), no_kid).contains("no kid"));
        let twice = serde_json::json!({"keys": [ed(Some("a")), ed(Some("a"))]});
        assert!(jwks_error(dir.path(), twice).contains("twice"));
        let empty = serde_json::json!({"keys": []});
        assert!(jwks_error(dir.path(), empty).contains("no keys"));
        let mut mismatched = ed(Some("b"));
        mismatched["alg"] = "RS256".into();
        let mismatched = serde_json::json!({"keys": [mismatched]});
        assert!(jwks_error(dir.path(), mismatched).contains("does not fit"));
    }

    #[test]
    fn malformed_headers_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s".repeat(32)).unwrap();
        let verifier = load(JwtKeySource::Hs256SecretFile(secret)).unwrap();
        let header = |json: &str| URL_SAFE_NO_PAD.encode(json);
        let cases = [
            ("a.b".to_owned(), "three parts"),
            ("!!.e30.x".to_owned(), "not base64url"),
            (format!("{}.e30.x", header("nope")), "not JSON"),
            (format!("{}.e30.x", header("{}")), "no alg"),
            (
                format!("{}.e30.", header(r#"{"alg":"none"}"#)),
                "\"none\" is not allowed",
            ),
        ];
        for (token, why) in cases {
            let error = verifier.verify(&token).unwrap_err();
            assert!(
                matches!(&error, SyncdError::Unauthenticated(m) if m.contains(why)),
                "{token}: {error}"
            );
        }
    }
}
