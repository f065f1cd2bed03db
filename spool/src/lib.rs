//! Durable, bounded, checksummed buffers for Isthmus sinks.
//!
//! When an edge node loses its link to the cloud, its sink keeps accepting records by
//! appending them to a buffer; a sender drains the buffer, in order, once the link is
//! back. Two implementations share one small interface ([`Buffer`]):
//!
//! * [`Spool`]: a directory of append-only segment files that survives restarts and
//!   `kill -9` (and, with the default fsync policy, power loss).
//! * [`MemoryBuffer`]: the same operations in memory, for `buffer = { type = "memory" }`.
//!
//! # Using it
//!
//! A writer thread calls [`Spool::append`] (or [`Spool::append_batch`]) and gets a
//! sequence number back. A sender thread loops: [`Spool::peek`] the oldest
//! unacknowledged frames, send them, and once the cloud confirms, [`Spool::ack`] the
//! highest confirmed sequence. `peek` does not consume; it always starts from the oldest
//! unacknowledged frame, so a sender that pipelines several batches remembers the highest
//! sequence it has in flight and ignores frames at or below it.
//! [`Spool::wait_for_frames`] lets the sender sleep until there is something to send.
//!
//! # Guarantees
//!
//! * **Nothing accepted is lost.** Once `append` returns `Ok`, the frame is in the
//!   kernel (always) and on stable storage (with [`FsyncPolicy::Always`], the default),
//!   and it is returned by `peek` until it is acknowledged, across restarts and
//!   `kill -9`. The only exceptions are explicit: [`WhenFull::DropOldest`] deletes the
//!   oldest unacknowledged segments to make room (counted in [`SpoolStats::dropped_frames`]
//!   and `dropped_bytes`), and data that is corrupt on disk is moved to
//!   `dir/quarantine/` (counted in `quarantined_segments`/`quarantined_bytes`).
//! * **At-least-once, in order.** Frames come back in sequence order. After a crash,
//!   frames that were sent but not yet acknowledged are replayed; the receiver
//!   deduplicates by `(node, seq)`.
//! * **Stable sequence numbers.** Sequence numbers start at 1, strictly increase and
//!   are never reused, even after every segment was acknowledged and deleted (the
//!   cursor file remembers the next one). A failed append burns its numbers.
//! * **Bounded.** `max_bytes` bounds the on-disk bytes (headers included) of
//!   unacknowledged frames. Only the oldest segment file can also hold acknowledged
//!   frames, so disk use stays below `max_bytes + max(segment_bytes, largest frame)`. A frame (or batch) larger than `max_bytes` is rejected with
//!   [`SpoolError::FrameTooLarge`] ([`SpoolError::BatchTooLarge`]), never waited for.
//! * **Exclusive.** A lock file (`dir/lock`, OS advisory lock, holds the owner's pid)
//!   stops a second `Spool` in any process from opening the same directory.
//!
//! # Fsync policy and its cost
//!
//! [`FsyncPolicy::Always`] (the default) calls `fdatasync` on the segment before every
//! `append`/`append_batch` returns, so "acknowledged ⇒ durable". One `fdatasync` costs
//! from ~0.1 ms (NVMe with power-loss protection) to ~10 ms (SD cards, cheap eMMC), which
//! caps single-frame appends at 100–10 000 per second; [`Spool::append_batch`] writes
//! the whole batch with one `write` per segment and one `fdatasync`, so the cost is per
//! batch. Rolling to a new segment also syncs the old segment and the directory.
//! `ack` replaces the cursor file (write `cursor.tmp`, rename); when the ack lets a
//! segment be deleted it first makes the cursor durable (`fdatasync` + rename + `fsync`
//! of the directory), so an ack costs two fsyncs once per segment, not per call. An ack
//! forgotten by a power loss only means replaying (duplicating) those frames. [`FsyncPolicy::EveryBytes`] and [`FsyncPolicy::Interval`]
//! trade a window of power-loss exposure for throughput; [`FsyncPolicy::Never`] survives
//! process crashes only. All policies survive `kill -9`: bytes are written to the kernel
//! before `append` returns, never buffered in user space.
//!
//! # On-disk format
//!
//! ```text
//! dir/
//!   lock                          advisory lock, contains the owner's pid
//!   cursor                        acknowledged position (28 bytes, see below)
//!   00000000000000000001.seg      segment: frames 1..N, named by its first sequence
//!   00000000000000004097.seg      (20 decimal digits, zero-padded)
//!   quarantine/                   corrupt data moved aside on recovery or read
//! ```
//!
//! A segment is a plain concatenation of frames. Each frame is a 32-byte header followed
//! by the payload compressed as one LZ4 block (`lz4_flex::block`). All integers are
//! little-endian:
//!
//! | bytes  | field                                              |
//! |--------|----------------------------------------------------|
//! | 0..4   | magic `ISPF`                                       |
//! | 4      | format version (1)                                 |
//! | 5      | flags (0 = LZ4 block)                              |
//! | 6..8   | reserved, zero                                     |
//! | 8..16  | sequence number (u64)                              |
//! | 16..20 | uncompressed payload length (u32)                  |
//! | 20..24 | compressed payload length (u32)                    |
//! | 24..28 | CRC-32 (IEEE) of the compressed payload            |
//! | 28..32 | CRC-32 of header bytes 0..28 (so it covers the payload CRC too) |
//!
//! Within a segment, sequences are consecutive starting at the number in the file name.
//! The cursor file is magic `ISPC`, version byte, 3 zero bytes, the acknowledged sequence
//! (u64; everything at or below it was acknowledged or dropped), the next sequence to
//! hand out (u64) and a CRC-32 of the preceding 24 bytes. It is replaced atomically
//! (write `cursor.tmp`, rename); segments are deleted only after the cursor that makes
//! them obsolete is durable (fsync of the file and the directory).
//!
//! # Recovery
//!
//! [`Spool::open`] scans every segment and checks each frame (header checksum, sequence,
//! length, payload checksum):
//!
//! * an incomplete frame at the end of the *last* segment (a write cut short by a crash,
//!   whose `append` therefore never returned) is truncated, with a warning;
//! * any other invalid frame: the segment from that frame on is moved to
//!   `dir/quarantine/` (whole file, or `<name>.from-<offset>` for the tail) with an error
//!   log, and the valid frames before it and all other segments stay readable;
//! * segments whose frames are all acknowledged are deleted;
//! * unknown files and non-files with segment names are left alone, with a warning;
//! * a missing, empty or damaged cursor means "nothing acknowledged": surviving frames
//!   are replayed (duplicates, never loss).
//!
//! Opening reads each segment once, never panics and never loops on garbage.

mod disk;
mod error;
mod format;
mod memory;

use std::ops::Range;
use std::time::Duration;

pub use disk::{FsyncPolicy, QUARANTINE_DIR, Spool, SpoolConfig};
pub use error::SpoolError;
pub use memory::{MEMORY_FRAME_OVERHEAD, MemoryBuffer};

/// Size in bytes of the header in front of every frame on disk.
pub const FRAME_HEADER_BYTES: u64 = format::HEADER_LEN as u64;

/// What `append` does when the frame does not fit in `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Wait until acknowledgements free enough space (or the timeout of the `_timeout`
    /// variants passes, giving [`SpoolError::Full`]).
    #[default]
    Block,
    /// Delete the oldest unacknowledged data to make room, counting what was dropped.
    /// The disk spool drops whole segments; the memory buffer drops single frames.
    DropOldest,
}

/// One buffered record: its sequence number and its (uncompressed) bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Sequence number, unique and increasing within one buffer.
    pub seq: u64,
    /// The bytes that were appended.
    pub payload: Vec<u8>,
}

/// Counters describing a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Unacknowledged frames held.
    pub frames: u64,
    /// Bytes those frames take (on disk with headers; in memory with the per-frame overhead).
    pub bytes: u64,
    /// Sequence number the next append will get.
    pub next_seq: u64,
    /// Every frame at or below this sequence was acknowledged (or dropped); 0 = none.
    pub acked_seq: u64,
    /// Frames deleted unacknowledged by [`WhenFull::DropOldest`] since the buffer was opened.
    pub dropped_frames: u64,
    /// Bytes of those frames.
    pub dropped_bytes: u64,
    /// Files in the quarantine directory (disk spool only).
    pub quarantined_segments: u64,
    /// Bytes in the quarantine directory (disk spool only).
    pub quarantined_bytes: u64,
}

/// A sink's buffer: in memory or on disk, with one interface.
#[derive(Debug)]
pub enum Buffer {
    /// `buffer = { type = "memory" }`.
    Memory(MemoryBuffer),
    /// `buffer = { type = "disk" }`.
    Disk(Spool),
}

impl Buffer {
    /// Appends one frame; see [`Spool::append`].
    pub fn append(&self, payload: &[u8]) -> Result<u64, SpoolError> {
        match self {
            Buffer::Memory(buffer) => buffer.append(payload),
            Buffer::Disk(spool) => spool.append(payload),
        }
    }

    /// Appends one frame, giving up after `timeout`; see [`Spool::append_timeout`].
    pub fn append_timeout(&self, payload: &[u8], timeout: Duration) -> Result<u64, SpoolError> {
        match self {
            Buffer::Memory(buffer) => buffer.append_timeout(payload, timeout),
            Buffer::Disk(spool) => spool.append_timeout(payload, timeout),
        }
    }

    /// Appends a batch; see [`Spool::append_batch`].
    pub fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Range<u64>, SpoolError> {
        match self {
            Buffer::Memory(buffer) => buffer.append_batch(payloads),
            Buffer::Disk(spool) => spool.append_batch(payloads),
        }
    }

    /// Appends a batch, giving up after `timeout`; see [`Spool::append_batch_timeout`].
    pub fn append_batch_timeout<P: AsRef<[u8]>>(
        &self,
        payloads: &[P],
        timeout: Duration,
    ) -> Result<Range<u64>, SpoolError> {
        match self {
            Buffer::Memory(buffer) => buffer.append_batch_timeout(payloads, timeout),
            Buffer::Disk(spool) => spool.append_batch_timeout(payloads, timeout),
        }
    }

    /// The oldest unacknowledged frames; see [`Spool::peek`].
    pub fn peek(&self, max_frames: usize, max_bytes: u64) -> Result<Vec<Frame>, SpoolError> {
        match self {
            Buffer::Memory(buffer) => buffer.peek(max_frames, max_bytes),
            Buffer::Disk(spool) => spool.peek(max_frames, max_bytes),
        }
    }

    /// Acknowledges everything up to `up_to_seq`; see [`Spool::ack`].
    pub fn ack(&self, up_to_seq: u64) -> Result<(), SpoolError> {
        match self {
            Buffer::Memory(buffer) => buffer.ack(up_to_seq),
            Buffer::Disk(spool) => spool.ack(up_to_seq),
        }
    }

    /// Waits for frames; see [`Spool::wait_for_frames`].
    pub fn wait_for_frames(&self, timeout: Duration) -> bool {
        match self {
            Buffer::Memory(buffer) => buffer.wait_for_frames(timeout),
            Buffer::Disk(spool) => spool.wait_for_frames(timeout),
        }
    }

    /// Current counters.
    pub fn stats(&self) -> SpoolStats {
        match self {
            Buffer::Memory(buffer) => buffer.stats(),
            Buffer::Disk(spool) => spool.stats(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Spool>();
        check::<MemoryBuffer>();
        check::<Buffer>();
    }
}
