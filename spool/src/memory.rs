//! The in-memory buffer (`buffer = { type = "memory" }`): same operations as the spool,
//! nothing survives a restart.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::format::HEADER_LEN;
use crate::{Frame, SpoolError, SpoolStats, WhenFull};

/// Bytes charged per frame on top of its payload, so memory and disk capacities are
/// comparable (the same as a disk frame header).
pub const MEMORY_FRAME_OVERHEAD: u64 = HEADER_LEN as u64;

/// A bounded in-memory FIFO of frames with the same interface as [`crate::Spool`].
///
/// Capacity counts payload bytes plus [`MEMORY_FRAME_OVERHEAD`] per frame (payloads are
/// not compressed). Sequence numbers start at 1 and restart at 1 with every new buffer.
#[derive(Debug)]
pub struct MemoryBuffer {
    max_bytes: u64,
    when_full: WhenFull,
    state: Mutex<MemoryState>,
    space_freed: Condvar,
    frames_added: Condvar,
}

#[derive(Debug)]
struct MemoryState {
    frames: VecDeque<Frame>,
    bytes: u64,
    next_seq: u64,
    acked_seq: u64,
    dropped_frames: u64,
    dropped_bytes: u64,
}

fn frame_cost(payload: &[u8]) -> u64 {
    payload.len() as u64 + MEMORY_FRAME_OVERHEAD
}

impl MemoryBuffer {
    /// An empty buffer holding at most `max_bytes`.
    pub fn new(max_bytes: u64, when_full: WhenFull) -> Result<MemoryBuffer, SpoolError> {
        if max_bytes <= MEMORY_FRAME_OVERHEAD {
            return Err(SpoolError::InvalidConfig(format!(
                "max_bytes = {max_bytes} cannot hold even one frame (each frame costs {MEMORY_FRAME_OVERHEAD} bytes plus its payload)"
            )));
        }
        Ok(MemoryBuffer {
            max_bytes,
            when_full,
            state: Mutex::new(MemoryState {
                frames: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                acked_seq: 0,
                dropped_frames: 0,
                dropped_bytes: 0,
            }),
            space_freed: Condvar::new(),
            frames_added: Condvar::new(),
        })
    }

    /// The capacity in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Appends one frame and returns its sequence number (blocking while full with
    /// [`WhenFull::Block`]).
    pub fn append(&self, payload: &[u8]) -> Result<u64, SpoolError> {
        self.append_frames(std::slice::from_ref(&payload), None)
            .map(|range| range.start)
    }

    /// Like [`MemoryBuffer::append`] but fails with [`SpoolError::Full`] after `timeout`.
    pub fn append_timeout(&self, payload: &[u8], timeout: Duration) -> Result<u64, SpoolError> {
        self.append_frames(std::slice::from_ref(&payload), Some(timeout))
            .map(|range| range.start)
    }

    /// Appends several frames atomically and returns their sequence numbers.
    pub fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Range<u64>, SpoolError> {
        self.append_frames(payloads, None)
    }

    /// Like [`MemoryBuffer::append_batch`] but fails with [`SpoolError::Full`] after `timeout`.
    pub fn append_batch_timeout<P: AsRef<[u8]>>(
        &self,
        payloads: &[P],
        timeout: Duration,
    ) -> Result<Range<u64>, SpoolError> {
        self.append_frames(payloads, Some(timeout))
    }

    fn append_frames<P: AsRef<[u8]>>(
        &self,
        payloads: &[P],
        timeout: Option<Duration>,
    ) -> Result<Range<u64>, SpoolError> {
        let mut needed = 0;
        for payload in payloads {
            let cost = frame_cost(payload.as_ref());
            if cost > self.max_bytes {
                return Err(SpoolError::FrameTooLarge {
                    frame_bytes: cost,
                    max_bytes: self.max_bytes,
                });
            }
            needed += cost;
        }
        if needed > self.max_bytes {
            return Err(SpoolError::BatchTooLarge {
                batch_bytes: needed,
                max_bytes: self.max_bytes,
            });
        }
        let started = Instant::now();
        let mut state = self.lock_state();
        match self.when_full {
            WhenFull::Block => {
                while state.bytes + needed > self.max_bytes {
                    state = match timeout {
                        None => self
                            .space_freed
                            .wait(state)
                            .unwrap_or_else(PoisonError::into_inner),
                        Some(timeout) => {
                            let waited = started.elapsed();
                            if waited >= timeout {
                                return Err(SpoolError::Full {
                                    needed,
                                    max_bytes: self.max_bytes,
                                    waited,
                                });
                            }
                            self.space_freed
                                .wait_timeout(state, timeout - waited)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0
                        }
                    };
                }
            }
            WhenFull::DropOldest => {
                let (mut frames, mut bytes) = (0, 0);
                while state.bytes + needed > self.max_bytes {
                    let oldest = state.frames.pop_front().expect("bytes > 0 implies frames");
                    let cost = frame_cost(&oldest.payload);
                    state.bytes -= cost;
                    state.acked_seq = state.acked_seq.max(oldest.seq);
                    frames += 1;
                    bytes += cost;
                }
                if frames > 0 {
                    state.dropped_frames += frames;
                    state.dropped_bytes += bytes;
                    warn!(
                        frames,
                        bytes, "memory buffer full: dropped the oldest frames"
                    );
                }
            }
        }
        let first = state.next_seq;
        for payload in payloads {
            let seq = state.next_seq;
            state.next_seq += 1;
            state.frames.push_back(Frame {
                seq,
                payload: payload.as_ref().to_vec(),
            });
        }
        state.bytes += needed;
        let range = first..state.next_seq;
        drop(state);
        self.frames_added.notify_all();
        Ok(range)
    }

    /// Returns up to `max_frames` of the oldest unacknowledged frames (at least one if
    /// any, then stopping before the payload total would exceed `max_bytes`).
    pub fn peek(&self, max_frames: usize, max_bytes: u64) -> Result<Vec<Frame>, SpoolError> {
        let state = self.lock_state();
        let mut out = Vec::new();
        let mut payload_bytes = 0;
        for frame in state.frames.iter().take(max_frames) {
            let len = frame.payload.len() as u64;
            if !out.is_empty() && payload_bytes + len > max_bytes {
                break;
            }
            payload_bytes += len;
            out.push(frame.clone());
        }
        Ok(out)
    }

    /// Acknowledges (and frees) every frame with a sequence number `<= up_to_seq`.
    pub fn ack(&self, up_to_seq: u64) -> Result<(), SpoolError> {
        let mut state = self.lock_state();
        if up_to_seq <= state.acked_seq {
            return Ok(());
        }
        if up_to_seq >= state.next_seq {
            return Err(SpoolError::AckBeyondEnd {
                seq: up_to_seq,
                last: state.next_seq - 1,
            });
        }
        while state.frames.front().is_some_and(|f| f.seq <= up_to_seq) {
            let frame = state.frames.pop_front().expect("checked");
            state.bytes -= frame_cost(&frame.payload);
        }
        state.acked_seq = up_to_seq;
        drop(state);
        self.space_freed.notify_all();
        Ok(())
    }

    /// Waits until a frame is available or `timeout` passes; returns whether one is.
    pub fn wait_for_frames(&self, timeout: Duration) -> bool {
        let state = self.lock_state();
        let (state, _) = self
            .frames_added
            .wait_timeout_while(state, timeout, |state| state.frames.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        !state.frames.is_empty()
    }

    /// Current counters (the quarantine counters are always 0).
    pub fn stats(&self) -> SpoolStats {
        let state = self.lock_state();
        SpoolStats {
            frames: state.frames.len() as u64,
            bytes: state.bytes,
            next_seq: state.next_seq,
            acked_seq: state.acked_seq,
            dropped_frames: state.dropped_frames,
            dropped_bytes: state.dropped_bytes,
            quarantined_segments: 0,
            quarantined_bytes: 0,
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_peeks_and_acks_in_order() {
        let buffer = MemoryBuffer::new(10_000, WhenFull::Block).unwrap();
        assert_eq!(buffer.append(b"a").unwrap(), 1);
        assert_eq!(buffer.append_batch(&[b"b", b"c"]).unwrap(), 2..4);
        let frames = buffer.peek(10, u64::MAX).unwrap();
        let payloads: Vec<_> = frames.iter().map(|f| f.payload.as_slice()).collect();
        assert_eq!(payloads, [b"a", b"b", b"c"]);
        buffer.ack(2).unwrap();
        assert_eq!(buffer.peek(10, u64::MAX).unwrap()[0].seq, 3);
        let stats = buffer.stats();
        assert_eq!(
            (stats.frames, stats.bytes, stats.acked_seq),
            (1, 1 + MEMORY_FRAME_OVERHEAD, 2)
        );
        assert!(matches!(
            buffer.ack(9),
            Err(SpoolError::AckBeyondEnd { seq: 9, last: 3 })
        ));
    }

    #[test]
    fn block_times_out_and_drop_oldest_counts() {
        let cost = 100 + MEMORY_FRAME_OVERHEAD;
        let blocking = MemoryBuffer::new(cost * 2, WhenFull::Block).unwrap();
        blocking.append(&[0; 100]).unwrap();
        blocking.append(&[1; 100]).unwrap();
        let err = blocking
            .append_timeout(&[2; 100], Duration::from_millis(20))
            .unwrap_err();
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
        assert!(matches!(
            blocking.append(&[0; 1000]),
            Err(SpoolError::FrameTooLarge { .. })
        ));

        let dropping = MemoryBuffer::new(cost * 2, WhenFull::DropOldest).unwrap();
        for i in 0..5u8 {
            dropping.append(&[i; 100]).unwrap();
        }
        let stats = dropping.stats();
        assert_eq!(
            (stats.frames, stats.dropped_frames, stats.dropped_bytes),
            (2, 3, 3 * cost)
        );
        let seqs: Vec<_> = dropping
            .peek(10, u64::MAX)
            .unwrap()
            .iter()
            .map(|f| f.seq)
            .collect();
        assert_eq!(seqs, [4, 5]);
    }
}
