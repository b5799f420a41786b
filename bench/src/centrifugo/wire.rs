//! The few Centrifugo messages the peer speaks, as prost structs with only
//! the fields it reads or writes. Tags are those of Centrifugo v6.9.1's
//! `internal/unigrpc/unistream/unistream.proto` (the unidirectional gRPC
//! client transport) and `internal/apiproto/api.proto` (the server API);
//! fields left out are skipped when decoding, as protobuf allows.

use std::collections::HashMap;

/// `/centrifugal.centrifugo.unistream.CentrifugoUniStream/Consume`: one
/// device's connection, a server stream of [`Push`]es.
pub const CONSUME_PATH: &str = "/centrifugal.centrifugo.unistream.CentrifugoUniStream/Consume";
/// `/centrifugal.centrifugo.api.CentrifugoApi/Broadcast`: one publication
/// to many channels.
pub const BROADCAST_PATH: &str = "/centrifugal.centrifugo.api.CentrifugoApi/Broadcast";

/// `unistream.ConnectRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectRequest {
    /// The connection JWT (HS256, `sub` the user).
    #[prost(string, tag = "1")]
    pub token: String,
    /// Server-side subscriptions to recover, by channel (a reconnect).
    #[prost(map = "string, message", tag = "3")]
    pub subs: HashMap<String, SubscribeRequest>,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "5")]
    pub version: String,
}

/// `unistream.SubscribeRequest`: where a reconnecting client stopped.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscribeRequest {
    #[prost(bool, tag = "3")]
    pub recover: bool,
    #[prost(string, tag = "6")]
    pub epoch: String,
    #[prost(uint64, tag = "7")]
    pub offset: u64,
}

/// `unistream.Push`: without a wrapper on unidirectional transports; the
/// first of a stream carries `connect`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Push {
    #[prost(string, tag = "2")]
    pub channel: String,
    #[prost(message, optional, tag = "4")]
    pub publication: Option<Publication>,
    #[prost(message, optional, tag = "7")]
    pub unsubscribe: Option<Unsubscribe>,
    #[prost(message, optional, tag = "10")]
    pub connect: Option<Connect>,
    #[prost(message, optional, tag = "11")]
    pub disconnect: Option<Disconnect>,
}

/// `unistream.Publication`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Publication {
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
    /// Position in the channel's history stream.
    #[prost(uint64, tag = "6")]
    pub offset: u64,
}

/// `unistream.Unsubscribe`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Unsubscribe {
    #[prost(uint32, tag = "2")]
    pub code: u32,
    #[prost(string, tag = "3")]
    pub reason: String,
}

/// `unistream.Connect`: the connection accepted, with its server-side
/// subscriptions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Connect {
    #[prost(string, tag = "1")]
    pub client: String,
    #[prost(map = "string, message", tag = "4")]
    pub subs: HashMap<String, SubscribeResult>,
}

/// `unistream.SubscribeResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscribeResult {
    /// History and recovery are on for the channel.
    #[prost(bool, tag = "3")]
    pub recoverable: bool,
    #[prost(string, tag = "6")]
    pub epoch: String,
    /// What a recovering subscription missed, from the history.
    #[prost(message, repeated, tag = "7")]
    pub publications: Vec<Publication>,
    /// Everything missed was still in the history.
    #[prost(bool, tag = "8")]
    pub recovered: bool,
    /// The channel's stream position.
    #[prost(uint64, tag = "9")]
    pub offset: u64,
}

/// `unistream.Disconnect`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Disconnect {
    #[prost(uint32, tag = "1")]
    pub code: u32,
    #[prost(string, tag = "2")]
    pub reason: String,
}

/// `api.BroadcastRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BroadcastRequest {
    #[prost(string, repeated, tag = "1")]
    pub channels: Vec<String>,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// `api.BroadcastResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BroadcastResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ApiError>,
    #[prost(message, optional, tag = "2")]
    pub result: Option<BroadcastResult>,
}

/// `api.BroadcastResult`: one response per channel, in request order.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BroadcastResult {
    #[prost(message, repeated, tag = "1")]
    pub responses: Vec<PublishResponse>,
}

/// `api.PublishResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishResponse {
    #[prost(message, optional, tag = "1")]
    pub error: Option<ApiError>,
    #[prost(message, optional, tag = "2")]
    pub result: Option<PublishResult>,
}

/// `api.PublishResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishResult {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    #[prost(string, tag = "2")]
    pub epoch: String,
}

/// `api.Error`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApiError {
    #[prost(uint32, tag = "1")]
    pub code: u32,
    #[prost(string, tag = "2")]
    pub message: String,
}

impl BroadcastResponse {
    /// The first error of the reply or of one of its channels, as text.
    pub fn first_error(&self) -> Option<String> {
        let describe = |e: &ApiError| format!("code {}: {}", e.code, e.message);
        if let Some(error) = &self.error {
            return Some(describe(error));
        }
        self.result
            .iter()
            .flat_map(|r| &r.responses)
            .find_map(|r| r.error.as_ref().map(describe))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn connect_request_encodes_with_the_unistream_tags() {
        let request = ConnectRequest {
            token: "t.k".into(),
            name: "bench".into(),
            ..Default::default()
        };
        // token = 1 (0x0a), name = 4 (0x22); an empty version is left out.
        assert_eq!(
            request.encode_to_vec(),
            [
                0x0a, 3, b't', b'.', b'k', 0x22, 5, b'b', b'e', b'n', b'c', b'h'
            ]
        );
        let recovering = ConnectRequest {
            subs: HashMap::from([(
                "p".to_owned(),
                SubscribeRequest {
                    recover: true,
                    epoch: "e".into(),
                    offset: 5,
                },
            )]),
            ..Default::default()
        };
        // subs = 3 (0x1a) { key = 1 "p", value = 2 { recover = 3 (0x18),
        // epoch = 6 (0x32), offset = 7 (0x38) } }
        assert_eq!(
            recovering.encode_to_vec(),
            [
                0x1a, 12, 0x0a, 1, b'p', 0x12, 7, 0x18, 1, 0x32, 1, b'e', 0x38, 5
            ]
        );
    }

    #[test]
    fn publication_push_decodes_with_the_unistream_tags() {
        // channel = 2, pub = 4 { data = 4, offset = 6 }, and an unknown
        // field 5 (join) that must be skipped.
        let bytes = [
            0x12, 4, b'p', b':', b'#', b'7', // channel "p:#7"
            0x2a, 0, // join (tag 5), empty
            0x22, 6, 0x22, 2, b'k', b'1', 0x30, 9, // pub { data "k1", offset 9 }
        ];
        let push = Push::decode(&bytes[..]).unwrap();
        assert_eq!(push.channel, "p:#7");
        let publication = push.publication.unwrap();
        assert_eq!(publication.data, b"k1");
        assert_eq!(publication.offset, 9);
        assert!(push.connect.is_none() && push.disconnect.is_none());
    }

    #[test]
    fn connect_push_decodes_its_subscriptions() {
        // connect = 10 { client = 1 "c", subs = 4 { key "p", value {
        // recoverable = 3 true, epoch = 6 "e", publications = 7 [ { data
        // "k", offset 5 } ], recovered = 8 true, offset = 9 5 } } }
        let result = [
            0x18, 1, 0x32, 1, b'e', 0x3a, 5, 0x22, 1, b'k', 0x30, 5, 0x40, 1, 0x48, 5,
        ];
        let mut entry = vec![0x0a, 1, b'p', 0x12, result.len() as u8];
        entry.extend_from_slice(&result);
        let mut connect = vec![0x0a, 1, b'c', 0x22, entry.len() as u8];
        connect.extend_from_slice(&entry);
        let mut bytes = vec![0x52, connect.len() as u8];
        bytes.extend_from_slice(&connect);
        let push = Push::decode(&bytes[..]).unwrap();
        let connect = push.connect.unwrap();
        assert_eq!(connect.client, "c");
        assert_eq!(
            connect.subs["p"],
            SubscribeResult {
                recoverable: true,
                epoch: "e".into(),
                publications: vec![Publication {
                    data: b"k".to_vec(),
                    offset: 5
                }],
                recovered: true,
                offset: 5
            }
        );
    }

    #[test]
    fn broadcast_encodes_and_reports_the_first_error() {
        let request = BroadcastRequest {
            channels: vec!["a".into(), "b".into()],
            data: b"x".to_vec(),
        };
        assert_eq!(
            request.encode_to_vec(),
            [0x0a, 1, b'a', 0x0a, 1, b'b', 0x12, 1, b'x']
        );
        // result = 2 { responses = 1 [ { result = 2 { offset 1 } },
        // { error = 1 { code 102, message "x" } } ] }
        let ok = [0x12, 2, 0x08, 1];
        let failed = [0x0a, 5, 0x08, 102, 0x12, 1, b'x'];
        let mut result = vec![0x0a, ok.len() as u8];
        result.extend_from_slice(&ok);
        result.extend_from_slice(&[0x0a, failed.len() as u8]);
        result.extend_from_slice(&failed);
        let mut bytes = vec![0x12, result.len() as u8];
        bytes.extend_from_slice(&result);
        let reply = BroadcastResponse::decode(&bytes[..]).unwrap();
        assert_eq!(reply.first_error().as_deref(), Some("code 102: x"));
        let fine = BroadcastResponse::decode(&[0x12, 6, 0x0a, 4, 0x12, 2, 0x08, 1][..]).unwrap();
        assert_eq!(fine.first_error(), None);
    }
}
