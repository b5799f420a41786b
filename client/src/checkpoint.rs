//! A device's checkpoint persisted in a small JSON file, replaced atomically
//! (write a temporary file, fsync it, rename over the old one, fsync the
//! directory) so a crash leaves either the old or the new value.

use crate::{ClientError, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    checkpoint: u64,
}

pub struct CheckpointFile {
    path: PathBuf,
    seq: u64,
}

impl CheckpointFile {
    /// Loads the file, or starts at 0 when it does not exist yet.
    pub fn open(path: &Path) -> Result<Self> {
        let error = |error| ClientError::Checkpoint {
            path: path.display().to_string(),
            error,
        };
        let seq = match std::fs::read(path) {
            Ok(bytes) => {
                let state: State = serde_json::from_slice(&bytes)
                    .map_err(|e| error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
                state.checkpoint
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(error(e)),
        };
        Ok(Self {
            path: path.to_path_buf(),
            seq,
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
        self.write(seq).map_err(|error| ClientError::Checkpoint {
            path: self.path.display().to_string(),
            error,
        })?;
        self.seq = seq;
        Ok(())
    }

    fn write(&self, seq: u64) -> std::io::Result<()> {
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = self.path.with_extension("tmp");
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&serde_json::to_vec(&State { checkpoint: seq })?)?;
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
        std::fs::write(&path, "not json").unwrap();
        assert!(CheckpointFile::open(&path).is_err());
    }
}
