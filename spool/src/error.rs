//! Errors returned by the spool and the memory buffer.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong when opening, writing or reading a buffer.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// An operating-system I/O call failed; `context` says which call and on which path.
    #[error("spool I/O error while {context}: {source}")]
    Io {
        /// What the spool was doing (and on which path) when the call failed.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Another `Spool` (in this or another process) holds the directory lock.
    #[error("spool directory {} is already in use by another process{holder}", dir.display())]
    Locked {
        /// The spool directory.
        dir: PathBuf,
        /// A " (pid N)" hint read from the lock file, or empty.
        holder: String,
    },
    /// The configuration cannot work (for example `max_bytes == 0`).
    #[error("invalid spool configuration: {0}")]
    InvalidConfig(String),
    /// A single frame is larger (encoded, header included) than the whole buffer.
    #[error(
        "frame of {frame_bytes} bytes (encoded, header included) can never fit in a buffer of max_bytes = {max_bytes}"
    )]
    FrameTooLarge {
        /// Encoded size of the frame.
        frame_bytes: u64,
        /// The configured capacity.
        max_bytes: u64,
    },
    /// A batch is larger (encoded, headers included) than the whole buffer; split it.
    #[error(
        "batch of {batch_bytes} bytes (encoded, headers included) can never fit in a buffer of max_bytes = {max_bytes}; append it in smaller batches"
    )]
    BatchTooLarge {
        /// Encoded size of the batch.
        batch_bytes: u64,
        /// The configured capacity.
        max_bytes: u64,
    },
    /// The buffer stayed full for the whole timeout (`WhenFull::Block` only).
    #[error(
        "buffer full: {needed} more bytes did not fit in max_bytes = {max_bytes} within {waited:?} (is the sender acknowledging?)"
    )]
    Full {
        /// Encoded bytes the append needed.
        needed: u64,
        /// The configured capacity.
        max_bytes: u64,
        /// How long the append waited.
        waited: Duration,
    },
    /// `ack` was called with a sequence number that was never appended.
    #[error("cannot acknowledge sequence {seq}: the highest appended sequence is {last}")]
    AckBeyondEnd {
        /// The sequence passed to `ack`.
        seq: u64,
        /// The highest sequence appended so far (0 if none).
        last: u64,
    },
    /// The 64-bit sequence space is used up (only reachable with a tampered cursor).
    #[error("spool sequence numbers are exhausted")]
    SequenceExhausted,
    /// A path inside the spool directory has the wrong kind (e.g. `cursor` is a directory).
    #[error("spool layout problem at {}: {problem}", path.display())]
    Layout {
        /// The offending path.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
}

impl SpoolError {
    /// Wraps an I/O error with a description of what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        SpoolError::Io {
            context: context.into(),
            source,
        }
    }
}
