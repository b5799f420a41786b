//! The codec every generated client and server uses: prost's, except that a
//! message that does not decode (garbage bytes, invalid UTF-8 in a string
//! field) is `INVALID_ARGUMENT`.
//!
//! prost's codec answers such input `INTERNAL`, which tells a client the
//! server is broken and hides a client bug; the server cannot have caused
//! it, and nothing was done. A client decoding a malformed reply gets the
//! same code.
//!
//! Encode buffers start at [`ENCODE_BUFFER_BYTES`] instead of tonic's 8 KiB:
//! a reply stream holds its buffer for as long as it is open, and a node
//! holds up to 100,000 push streams whose notices are a few hundred bytes.
//! A larger reply grows its buffer as it is encoded.

use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, EncodeBuf};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Bytes an encode buffer starts with (one push notice with an entry fits).
pub const ENCODE_BUFFER_BYTES: usize = 1024;
/// Bytes of encoded messages a reply stream gathers before it hands them to
/// the connection (tonic's default).
pub const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

#[derive(Debug, Clone)]
pub struct Codec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = Encoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        Encoder(ProstEncoder::new(BufferSettings::new(
            ENCODE_BUFFER_BYTES,
            YIELD_THRESHOLD_BYTES,
        )))
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(tonic::codec::Codec::decoder(&mut self.0))
    }
}

#[derive(Debug, Clone)]
pub struct Encoder<T>(ProstEncoder<T>);

impl<T: prost::Message> tonic::codec::Encoder for Encoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        self.0.encode(item, buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[derive(Debug, Clone)]
pub struct Decoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // prost's decoder fails only when the bytes do not decode.
        self.0
            .decode(buf)
            .map_err(|status| Status::invalid_argument(status.message().to_owned()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
