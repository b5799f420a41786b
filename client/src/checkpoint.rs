//! A device's checkpoint persisted in a small JSON file, replaced atomically
//! (write a temporary file, fsync it, rename over the old one, fsync the
//! directory) so a crash leaves either the old or the new value.

use crate::{ClientError, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    checkpoint: u64,
    /// conv_seq read so far per conversation (large groups, read by
    /// conversation timeline instead of inbox).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    conversations: BTreeMap<u64, u64>,
}

pub struct CheckpointFile {
    path: PathBuf,
    seq: u64,
    conversations: BTreeMap<u64, u64>,
}

impl CheckpointFile {
    /// Loads the file, or starts at 0 when it does not exist yet.
    pub fn open(path: &Path) -> Result<Self> {
        let error = |error| ClientError::Checkpoint {
            path: path.display().to_string(),
            error,
        };
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                checkpoint: 0,
                conversations: BTreeMap::new(),
            },
            Err(e) => return Err(error(e)),
        };
        Ok(Self {
            path: path.to_path_buf(),
            seq: state.checkpoint,
            conversations: state.conversations,
        })
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Durably records `seq` (never lowers the checkpoint).
    pub fn save(&mut self, seq: u64) -> Result<()> {
        if seq <= self.seq {
            return Ok(());
        }
        self.seq = seq;
        self.persist()
    }

    /// The conv_seq read so far in a conversation, if any.
    pub fn conversation(&self, conversation_id: u64) -> Option<u64> {
        self.conversations.get(&conversation_id).copied()
    }

    /// Durably records a conversation's conv_seq (never lowers it).
    pub fn save_conversation(&mut self, conversation_id: u64, conv_seq: u64) -> Result<()> {
        if self
            .conversation(conversation_id)
            .is_some_and(|known| known >= conv_seq)
        {
            return Ok(());
        }
        self.conversations.insert(conversation_id, conv_seq);
        self.persist()
    }

    fn persist(&self) -> Result<()> {
        self.write().map_err(|error| ClientError::Checkpoint {
            path: self.path.display().to_string(),
            error,
        })
    }

    fn write(&self) -> std::io::Result<()> {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = self.path.with_extension("tmp");
        {
            let mut file = std::fs::File::create(&tmp)?;
            let state = State {
                checkpoint: self.seq,
                conversations: self.conversations.clone(),
            };
            file.write_all(&serde_json::to_vec(&state)?)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_persist_and_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("phone.json");
        let mut file = CheckpointFile::open(&path).unwrap();
        assert_eq!(file.seq(), 0);
        file.save(7).unwrap();
        file.save(3).unwrap();
        assert_eq!(CheckpointFile::open(&path).unwrap().seq(), 7);
        file.save_conversation(9, 40).unwrap();
        file.save_conversation(9, 12).unwrap();
        let reopened = CheckpointFile::open(&path).unwrap();
        assert_eq!(
            (
                reopened.seq(),
                reopened.conversation(9),
                reopened.conversation(8)
            ),
            (7, Some(40), None)
        );
        std::fs::write(&path, "not json").unwrap();
        assert!(CheckpointFile::open(&path).is_err());
    }
}
