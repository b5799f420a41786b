//! Timeline's wire API, generated from the `.proto` files under `proto/`.
//!
//! - [`timeline::v1`]: the public API (devices and backend services).
//! - [`seqsvc::v1`]: the internal sequence-allocation API.
//! - [`codec`]: the codec of every generated client and server (a request
//!   that does not decode is `INVALID_ARGUMENT`).
//!
//! Packages are versioned: a breaking change gets a new package (`v2`), never
//! an edit in place. [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.

pub mod codec;

pub mod timeline {
    pub mod v1 {
        tonic::include_proto!("timeline.v1");
    }
}

pub mod seqsvc {
    pub mod v1 {
        tonic::include_proto!("seqsvc.v1");
    }
}

/// Encoded descriptors of every package, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");
