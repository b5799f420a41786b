//! Input a well-behaved client never sends, through the real server and CLI:
//! bytes that do not decode, tokens that name nobody, and creations retried
//! with one client id. Each is refused as the caller's mistake (or, for a
//! retry, answered with the first result), never as the server's.

use prost::bytes::{Buf, BufMut};
use std::process::Command;
use tests::{Server, syncd_bin, tl};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};

/// Sends and receives message bodies as raw bytes, so a test can put on the
/// wire what no generated client would encode.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; buf.remaining()];
        buf.copy_to_slice(&mut out);
        Ok(Some(out))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[tokio::test]
async fn undecodable_requests_are_invalid_argument() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let token = server.device_token(1, "phone")?;
    let channel = tonic::transport::Endpoint::from_shared(server.url())?
        .connect()
        .await?;
    let cases: [(&str, Vec<u8>); 3] = [
        // SendRequest { text (field 2) = bytes FF FE }: not UTF-8.
        ("/timeline.v1.Timeline/Send", vec![0x12, 0x02, 0xff, 0xfe]),
        // A tag whose varint never ends.
        ("/timeline.v1.Timeline/Sync", vec![0xff; 11]),
        // A length-delimited field longer than the body.
        (
            "/timeline.v1.Timeline/CreateConversation",
            vec![0x1a, 0x7f, b'x'],
        ),
    ];
    for (path, body) in cases {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await?;
        let mut request = tonic::Request::new(body);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let status = grpc
            .unary(request, PathAndQuery::from_static(path), RawCodec)
            .await
            .expect_err("an undecodable request must fail");
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
    }
    Ok(())
}

#[test]
fn tokens_for_no_user_are_not_issued() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for who in [
        &["--user", "0", "--device", "phone"][..],
        &["--user", "1", "--device", ""][..],
    ] {
        let output = Command::new(syncd_bin())
            .args(["token", "--data-dir"])
            .arg(dir.path())
            .args(who)
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{who:?} issued a token");
        assert!(output.stdout.is_empty(), "{who:?} printed a token");
        assert!(stderr.starts_with("error: "), "{who:?}: {stderr}");
    }
    Ok(())
}

#[test]
fn a_creation_retried_with_its_client_id_creates_one_conversation() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let (url, alice) = (server.url(), server.device_token(1, "phone")?);
    let id = "0b0e4e8c-3c1a-4d7e-9a7e-5b9f6f4a2c11";
    let create = |members: &str| {
        tl(
            &url,
            &alice,
            &[
                "conversation",
                "create",
                "--members",
                members,
                "--client-id",
                id,
            ],
        )
    };
    let first = create("2,3");
    assert!(first.status.success(), "{first:?}");
    let again = create("3,2");
    assert!(again.status.success(), "{again:?}");
    assert_eq!(first.stdout, again.stdout, "the same conversation");
    let other = create("2");
    assert!(!other.status.success(), "another request under the same id");
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("client_request_id"),
        "{stderr}"
    );
    Ok(())
}
