//! Tokens: who is calling.
//!
//! Two formats are accepted, told apart by their first characters:
//! - **`tl1.<payload>.<mac>`**, this server's own, both parts base64url
//!   without padding. The payload is
//!   `d|<user_id>|<device_id>|<expires_unix_s>|<issued_unix_s>` for a device
//!   or `s|<service>|<expires_unix_s>|<issued_unix_s>` for a backend service
//!   (tokens minted before issue times were kept lack the last field); the
//!   MAC is HMAC-SHA256 over the payload with a 32-byte key kept in the data
//!   directory (`auth.key`, created on first use, mode 0600). Anyone with
//!   the key can mint tokens, so it never leaves the machine.
//! - **JWTs** ([`jwt`]), minted by the application's backend with any JWT
//!   library, when the server is given a key to check them with.
//!
//! A verified token names a [`Principal`] and, when it says so, when it
//! was issued; [`revocation`] refuses device tokens issued before a cutoff.
//! [`Authenticator`] is the one entry point: format, signature, claims,
//! revocation.

pub mod jwt;
pub mod revocation;

use crate::error::{Result, SyncdError, quoted};
use crate::limits::MAX_NAME_BYTES;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Write;
use std::path::Path;

const TOKEN_PREFIX: &str = "tl1";
const KEY_FILE: &str = "auth.key";
const KEY_BYTES: usize = 32;

/// The authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Device { user_id: u64, device_id: String },
    Service { name: String },
}

impl Principal {
    /// The namespace for this caller's idempotency keys.
    pub fn idempotency_principal(&self) -> String {
        match self {
            Principal::Device { user_id, .. } => format!("u:{user_id}"),
            Principal::Service { name } => format!("s:{name}"),
        }
    }
}

/// Device ids and service names: 1 to 64 of `[A-Za-z0-9._-]`, so they fit
/// the `|`-separated payload and storage keys unambiguously.
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SyncdError::InvalidArgument(format!(
            "{kind} must be 1 to {MAX_NAME_BYTES} characters of A-Z a-z 0-9 . _ -, got {}",
            quoted(name)
        )))
    }
}

/// Who may hold a token: a user (id 0 is the system, never a caller) on a
/// named device, or a named service.
fn validate_principal(principal: &Principal) -> Result<()> {
    match principal {
        Principal::Device { user_id, device_id } => {
            if *user_id == 0 {
                return Err(SyncdError::InvalidArgument(
                    "user id 0 is not a user: user ids start at 1".into(),
                ));
            }
            crate::access::check_user_id("user", *user_id)?;
            validate_name("device id", device_id)
        }
        Principal::Service { name } => validate_name("service name", name),
    }
}

/// What a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub principal: Principal,
    /// When the token was issued (unix seconds), if it says.
    pub issued_at_s: Option<u64>,
}

/// Checks every call's token: the format, its signature and claims, then
/// (for devices) the revocations.
pub struct Authenticator {
    tl1: TokenAuthority,
    jwt: Option<jwt::JwtVerifier>,
    revocations: std::sync::Arc<revocation::RevocationGuard>,
}

impl Authenticator {
    pub fn new(
        tl1: TokenAuthority,
        jwt: Option<jwt::JwtVerifier>,
        revocations: std::sync::Arc<revocation::RevocationGuard>,
    ) -> Self {
        Self {
            tl1,
            jwt,
            revocations,
        }
    }

    pub fn revocations(&self) -> &std::sync::Arc<revocation::RevocationGuard> {
        &self.revocations
    }

    /// The token's principal, if its signature, claims and revocations
    /// allow it; UNAUTHENTICATED with the reason otherwise.
    pub async fn authenticate(&self, token: &str) -> Result<Verified> {
        let verified = if token.starts_with("tl1.") {
            self.tl1.verify_token(token)?
        } else {
            match &self.jwt {
                Some(jwt) => jwt.verify(token)?,
                // Neither format: the tl1 parser names what is wrong.
                None if token.split('.').count() != 3 => self.tl1.verify_token(token)?,
                None => {
                    return Err(SyncdError::Unauthenticated(
                        "invalid token: this server accepts no JWTs (it was started without \
                         --jwt-hs256-secret-file, --jwt-public-key-file or --jwt-jwks-file)"
                            .into(),
                    ));
                }
            }
        };
        self.revocations.check(&verified).await?;
        Ok(verified)
    }
}

#[derive(Clone)]
pub struct TokenAuthority {
    key: [u8; KEY_BYTES],
}

pub(crate) fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenAuthority {
    pub fn from_key(key: [u8; KEY_BYTES]) -> Self {
        Self { key }
    }

    /// Loads the data directory's key, creating it on first use. Two
    /// processes racing to create it agree on one (the first link wins).
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(KEY_FILE);
        if !path.exists() {
            let mut key = [0u8; KEY_BYTES];
            getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
            let tmp = data_dir.join(format!("{KEY_FILE}.{}.tmp", std::process::id()));
            {
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(&tmp)?;
                file.write_all(&key)?;
                file.sync_all()?;
            }
            let linked = std::fs::hard_link(&tmp, &path);
            std::fs::remove_file(&tmp)?;
            match linked {
                Ok(()) => std::fs::File::open(data_dir)?.sync_all()?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let bytes = std::fs::read(&path)?;
        let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
            std::io::Error::other(format!("{} is not a {KEY_BYTES}-byte key", path.display()))
        })?;
        Ok(Self { key })
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts any key length")
    }

    pub fn issue(&self, principal: &Principal, ttl: std::time::Duration) -> Result<String> {
        let issued = now_unix_s();
        let expires = issued.saturating_add(ttl.as_secs());
        validate_principal(principal)?;
        let payload = match principal {
            Principal::Device { user_id, device_id } => {
                format!("d|{user_id}|{device_id}|{expires}|{issued}")
            }
            Principal::Service { name } => format!("s|{name}|{expires}|{issued}"),
        };
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let tag = mac.finalize().into_bytes();
        Ok(format!(
            "{TOKEN_PREFIX}.{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag)
        ))
    }

    pub fn verify(&self, token: &str) -> Result<Principal> {
        Ok(self.verify_token(token)?.principal)
    }

    /// [`Self::verify`], with the issue time when the token carries one.
    pub fn verify_token(&self, token: &str) -> Result<Verified> {
        let bad = |why: &str| SyncdError::Unauthenticated(format!("invalid token: {why}"));
        let mut parts = token.split('.');
        let (Some(prefix), Some(payload), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected tl1.<payload>.<signature>"));
        };
        if prefix != TOKEN_PREFIX {
            return Err(bad("unknown token version"));
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| bad("payload is not base64url"))?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| bad("signature is not base64url"))?;
        let mut mac = self.mac();
        mac.update(&payload);
        mac.verify_slice(&tag)
            .map_err(|_| bad("signature does not match this server's key"))?;
        let payload = String::from_utf8(payload).map_err(|_| bad("payload is not UTF-8"))?;
        let mut fields: Vec<&str> = payload.split('|').collect();
        let issued = match fields.as_slice() {
            ["d", _, _, _, issued] | ["s", _, _, issued] => {
                let issued = issued.parse().map_err(|_| bad("issue time"))?;
                fields.pop();
                Some(issued)
            }
            _ => None,
        };
        let (principal, expires) = match fields.as_slice() {
            ["d", user, device, expires] => (
                Principal::Device {
                    user_id: user
                        .parse()
                        .ok()
                        .filter(|&id| id <= crate::limits::MAX_USER_ID)
                        .ok_or_else(|| bad("user id"))?,
                    device_id: (*device).to_owned(),
                },
                expires,
            ),
            ["s", name, expires] => (
                Principal::Service {
                    name: (*name).to_owned(),
                },
                expires,
            ),
            _ => return Err(bad("malformed payload")),
        };
        // The same rules as at issuing: a token signed by hand or by an
        // older build must not make user 0 (the system) or a nameless
        // device a caller.
        validate_principal(&principal).map_err(|e| bad(&e.to_string()))?;
        let expires: u64 = expires.parse().map_err(|_| bad("expiry"))?;
        if expires <= now_unix_s() {
            return Err(SyncdError::Unauthenticated("token expired".into()));
        }
        Ok(Verified {
            principal,
            issued_at_s: issued,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn device(user_id: u64) -> Principal {
        Principal::Device {
            user_id,
            device_id: "phone".into(),
        }
    }

    #[test]
    fn issued_tokens_verify_and_tampering_fails() {
        let auth = TokenAuthority::from_key([7; 32]);
        let token = auth.issue(&device(42), Duration::from_secs(60)).unwrap();
        assert_eq!(auth.verify(&token).unwrap(), device(42));
        let service = Principal::Service { name: "ops".into() };
        let token2 = auth.issue(&service, Duration::from_secs(60)).unwrap();
        assert_eq!(auth.verify(&token2).unwrap(), service);

        // Swap in another user's payload with the original signature.
        let forged_payload = URL_SAFE_NO_PAD.encode("d|1|phone|99999999999");
        let sig = token.rsplit('.').next().unwrap();
        assert!(auth.verify(&format!("tl1.{forged_payload}.{sig}")).is_err());
        // Another server's key.
        assert!(TokenAuthority::from_key([8; 32]).verify(&token).is_err());
        for junk in ["", "tl1", "tl1..", "tl2.a.b", "tl1.!!.??", "a.b.c.d"] {
            assert!(
                matches!(auth.verify(junk), Err(SyncdError::Unauthenticated(_))),
                "{junk}"
            );
        }
    }

    #[test]
    fn expired_tokens_are_refused() {
        let auth = TokenAuthority::from_key([7; 32]);
        let token = auth.issue(&device(1), Duration::ZERO).unwrap();
        assert!(
            matches!(auth.verify(&token), Err(SyncdError::Unauthenticated(m)) if m.contains("expired"))
        );
    }

    #[test]
    fn bad_names_are_rejected() {
        let auth = TokenAuthority::from_key([7; 32]);
        let bad = Principal::Device {
            user_id: 1,
            device_id: "a|b".into(),
        };
        assert!(auth.issue(&bad, Duration::from_secs(1)).is_err());
        assert!(auth.issue(&device(0), Duration::from_secs(1)).is_err());
    }

    /// Signs `payload` with the authority's key, as a token issued by an
    /// older build (or by hand) would be.
    fn signed(auth: &TokenAuthority, payload: &str) -> String {
        let mut mac = auth.mac();
        mac.update(payload.as_bytes());
        let tag = mac.finalize().into_bytes();
        format!(
            "tl1.{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    #[test]
    fn signed_tokens_for_no_user_or_no_device_are_refused() {
        let auth = TokenAuthority::from_key([7; 32]);
        let cases = [
            ("d|0|phone|99999999999", "user id 0"),
            ("d|5||99999999999", "device id"),
            ("s||99999999999", "service name"),
        ];
        for (payload, why) in cases {
            let refused = auth.verify(&signed(&auth, payload));
            assert!(
                matches!(&refused, Err(SyncdError::Unauthenticated(m)) if m.contains(why)),
                "{payload}: {refused:?}"
            );
        }
        assert_eq!(
            auth.verify(&signed(&auth, "d|5|phone|99999999999"))
                .unwrap(),
            device(5)
        );
        let empty_device = Principal::Device {
            user_id: 5,
            device_id: String::new(),
        };
        assert!(auth.issue(&empty_device, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn tokens_carry_their_issue_time_and_older_ones_verify_without() {
        let auth = TokenAuthority::from_key([7; 32]);
        let token = auth.issue(&device(3), Duration::from_secs(60)).unwrap();
        let verified = auth.verify_token(&token).unwrap();
        let issued = verified.issued_at_s.unwrap();
        assert!(issued.abs_diff(now_unix_s()) <= 1, "{issued}");
        let older = auth
            .verify_token(&signed(&auth, "d|5|phone|99999999999"))
            .unwrap();
        assert_eq!(older.issued_at_s, None);
        let service = auth
            .verify_token(&signed(&auth, "s|ops|99999999999|17"))
            .unwrap();
        assert_eq!(service.issued_at_s, Some(17));
        assert!(
            auth.verify(&signed(&auth, "d|5|phone|99999999999|x"))
                .is_err()
        );
    }

    #[test]
    fn key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = TokenAuthority::load_or_create(dir.path()).unwrap();
        let token = first.issue(&device(5), Duration::from_secs(60)).unwrap();
        let second = TokenAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(second.verify(&token).unwrap(), device(5));
    }
}
