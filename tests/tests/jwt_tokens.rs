//! JWTs minted by an independent library (jose, under Node) are accepted
//! with every algorithm the configured key allows, and refused, with
//! UNAUTHENTICATED and a message naming the reason, when expired, not yet
//! valid, for another audience or issuer, signed by another key, unsigned
//! (`alg: none`) or signed with another algorithm family (an HS256 token
//! whose HMAC key is the server's RSA public key).

use client::{Client, ClientError};
use serde_json::{Value, json};
use tests::Server;
use tests::jwt::{Minter, device_claims, now_s};
use tonic::Code;

/// The user id a device token authenticates as (from a Sync reply), or
/// the refusal.
async fn device_call(url: &str, token: &str) -> Result<u64, tonic::Status> {
    let client = Client::connect(url, token).await.expect("connect");
    match client.sync_page(None, 1).await {
        Ok(reply) => Ok(reply.user_id),
        Err(ClientError::Rpc(status)) => Err(status),
        Err(other) => panic!("not a call failure: {other}"),
    }
}

async fn accepted(url: &str, token: &str, user: u64) {
    match device_call(url, token).await {
        Ok(id) => assert_eq!(id, user),
        Err(status) => panic!("refused: {status:?}"),
    }
}

/// Asserts the token is refused with UNAUTHENTICATED naming `why`.
async fn refused(url: &str, token: &str, why: &str) {
    match device_call(url, token).await {
        Ok(user) => panic!("accepted as user {user}, expected a refusal: {why}"),
        Err(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert!(
                status.message().contains(why),
                "{:?} does not say {why:?}",
                status.message()
            );
        }
    }
}

fn path_arg(path: std::path::PathBuf) -> String {
    path.to_string_lossy().into_owned()
}

fn with(claims: Value, changes: Value) -> Value {
    let mut claims = claims;
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value.clone();
        }
    }
    claims
}

#[tokio::test]
async fn hs256_tokens_with_audience_and_issuer_checks() -> anyhow::Result<()> {
    let keys = Minter::new()?;
    let other_keys = Minter::new()?;
    let dir = tempfile::tempdir()?;
    let secret = path_arg(keys.file("hs256.secret"));
    let server = Server::start_with(
        dir.path(),
        &[
            "--jwt-hs256-secret-file",
            &secret,
            "--jwt-audience",
            "timeline",
            "--jwt-issuer",
            "https://auth.example",
        ],
    )?;
    let url = server.url();
    let now = now_s();
    let good = with(
        device_claims(41, "phone"),
        json!({"aud": "timeline", "iss": "https://auth.example", "jti": "a1", "nbf": now - 10}),
    );
    let hs = |claims: &Value| keys.sign(json!({"key": "hs256", "alg": "HS256", "claims": claims}));
    accepted(&url, &hs(&good)?, 41).await;
    // A service token: authenticated, then told the conversation does not exist.
    let service = hs(
        &json!({"service": "ops", "exp": now + 600, "aud": "timeline", "iss": "https://auth.example"}),
    )?;
    let ops = Client::connect(&url, &service).await?;
    match ops.conversation(987_654).await {
        Err(ClientError::Rpc(status)) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    // The server's own tokens still work beside JWTs.
    accepted(&url, &server.device_token(42, "laptop")?, 42).await;

    let cases = [
        (json!({"exp": now - 3600}), "expired"),
        (json!({"exp": null}), "lacks the claim exp"),
        (json!({"nbf": now + 3600}), "not valid yet"),
        (json!({"aud": "another-app"}), "audience"),
        (json!({"aud": null}), "lacks the claim aud"),
        (json!({"iss": "https://evil.example"}), "issuer"),
        (json!({"device": null}), "lacks the claim device"),
        (json!({"sub": "zero"}), "not a user id"),
        (json!({"service": "ops"}), "both a user"),
        (json!({"iat": now + 3600}), "issued in the future"),
    ];
    for (change, why) in cases {
        refused(&url, &hs(&with(good.clone(), change))?, why).await;
    }
    // Another server's secret.
    let foreign = other_keys.sign(json!({"key": "hs256", "alg": "HS256", "claims": good}))?;
    refused(&url, &foreign, "signature does not verify").await;
    let unsigned = keys.sign(json!({"key": "none", "claims": good}))?;
    refused(&url, &unsigned, "algorithm \"none\" is not allowed").await;
    let rsa = keys.sign(json!({"key": "rsa", "alg": "RS256", "claims": good}))?;
    refused(&url, &rsa, "algorithm \"RS256\" is not allowed").await;
    refused(&url, "abc.def", "three parts").await;
    Ok(())
}

#[tokio::test]
async fn public_key_tokens_for_each_algorithm() -> anyhow::Result<()> {
    let keys = Minter::new()?;
    let other_keys = Minter::new()?;
    for (key, alg) in [("rsa", "RS256"), ("ec", "ES256"), ("ed", "EdDSA")] {
        let dir = tempfile::tempdir()?;
        let public = keys.file(&format!("{key}.pub.pem"));
        let server = Server::start_with(
            dir.path(),
            &["--jwt-public-key-file", &path_arg(public.clone())],
        )?;
        let url = server.url();
        let claims = device_claims(7, "phone");
        accepted(&url, &keys.device(key, alg, 7, "phone")?, 7).await;
        let expired = with(claims.clone(), json!({"exp": now_s() - 3600}));
        let expired = keys.sign(json!({"key": key, "alg": alg, "claims": expired}))?;
        refused(&url, &expired, "expired").await;
        let not_yet = with(claims.clone(), json!({"nbf": now_s() + 3600}));
        let not_yet = keys.sign(json!({"key": key, "alg": alg, "claims": not_yet}))?;
        refused(&url, &not_yet, "not valid yet").await;
        // Without --jwt-audience, a token for some audience is not for us.
        let audience = with(claims.clone(), json!({"aud": "another-app"}));
        let audience = keys.sign(json!({"key": key, "alg": alg, "claims": audience}))?;
        refused(&url, &audience, "audience").await;
        refused(
            &url,
            &other_keys.device(key, alg, 7, "phone")?,
            "signature does not verify",
        )
        .await;
        let unsigned = keys.sign(json!({"key": "none", "claims": claims}))?;
        refused(&url, &unsigned, "\"none\" is not allowed").await;
        // Algorithm confusion: HMAC keyed with the public key file's bytes.
        let confused = keys.sign(json!({
            "key": key,
            "alg": "HS256",
            "hmac_key_file": path_arg(public),
            "claims": claims,
        }))?;
        refused(&url, &confused, "algorithm \"HS256\" is not allowed").await;
    }
    Ok(())
}

#[tokio::test]
async fn jwks_tokens_are_checked_with_the_key_their_kid_names() -> anyhow::Result<()> {
    let keys = Minter::new()?;
    let dir = tempfile::tempdir()?;
    let jwks = path_arg(keys.file("jwks.json"));
    let server = Server::start_with(dir.path(), &["--jwt-jwks-file", &jwks])?;
    let url = server.url();
    let claims = device_claims(9, "tablet");
    for (key, alg) in [("rsa", "RS256"), ("ec", "ES256"), ("ed", "EdDSA")] {
        let kid = format!("{key}-1");
        let token = keys.sign(json!({"key": key, "alg": alg, "kid": kid, "claims": claims}))?;
        accepted(&url, &token, 9).await;
    }
    let unknown =
        keys.sign(json!({"key": "ec", "alg": "ES256", "kid": "ec-2", "claims": claims}))?;
    refused(&url, &unknown, "unknown key id (kid) \"ec-2\"").await;
    let no_kid = keys.sign(json!({"key": "ec", "alg": "ES256", "claims": claims}))?;
    refused(&url, &no_kid, "no kid").await;
    // Signed by the EC key, naming the RSA key: that key does not do ES256.
    let wrong_kid =
        keys.sign(json!({"key": "ec", "alg": "ES256", "kid": "rsa-1", "claims": claims}))?;
    refused(&url, &wrong_kid, "algorithm \"ES256\" is not allowed").await;
    let confused = keys.sign(json!({
        "key": "rsa",
        "alg": "HS256",
        "kid": "rsa-1",
        "hmac_key_file": path_arg(keys.file("rsa.pub.pem")),
        "claims": claims,
    }))?;
    refused(&url, &confused, "algorithm \"HS256\" is not allowed").await;
    Ok(())
}

/// A key that cannot serve stops the start with a message naming the file.
#[test]
fn a_bad_key_file_stops_the_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let short = dir.path().join("short.secret");
    std::fs::write(&short, "too short\n")?;
    let output = std::process::Command::new(tests::syncd_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--jwt-hs256-secret-file",
        ])
        .arg(&short)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("short.secret") && stderr.contains("at least 32"),
        "{stderr}"
    );
    Ok(())
}
