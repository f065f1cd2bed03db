//! Property-style tests: random operation sequences (appends, batches, peeks, acks,
//! restarts) on a real spool, checked step by step against a simple in-memory model.

mod common;

use std::collections::VecDeque;

use common::payload_for;
use isthmus_spool::{
    FRAME_HEADER_BYTES, Frame, FsyncPolicy, MemoryBuffer, Spool, SpoolConfig, SpoolError, WhenFull,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// The obvious implementation: a queue of frames and two counters.
#[derive(Default)]
struct Model {
    frames: VecDeque<Frame>,
    next_seq: u64,
    acked_seq: u64,
}

impl Model {
    fn new() -> Model {
        Model {
            next_seq: 1,
            ..Model::default()
        }
    }

    fn append(&mut self, payload: Vec<u8>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.frames.push_back(Frame { seq, payload });
        seq
    }

    fn peek(&self, max_frames: usize, max_bytes: u64) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for frame in self.frames.iter().take(max_frames) {
            let len = frame.payload.len() as u64;
            if !out.is_empty() && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            out.push(frame.clone());
        }
        out
    }

    fn ack(&mut self, seq: u64) {
        self.acked_seq = self.acked_seq.max(seq);
        while self.frames.front().is_some_and(|f| f.seq <= seq) {
            self.frames.pop_front();
        }
    }
}

/// A payload that is sometimes compressible, sometimes not, sometimes empty.
fn random_payload(rng: &mut StdRng, seq: u64) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => Vec::new(),
        1 => vec![b'x'; rng.random_range(1..5000)],
        _ => payload_for(seq, rng.random_range(1..3000)),
    }
}

#[test]
fn random_operations_match_the_model_across_restarts() {
    for seed in 0..24u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let segment_bytes = rng.random_range(512..16_384);
        let fsync = if seed % 4 == 0 {
            FsyncPolicy::Always
        } else {
            FsyncPolicy::Never
        };
        let config = SpoolConfig::new(64 << 20)
            .with_segment_bytes(segment_bytes)
            .with_fsync(fsync);
        let mut spool = Spool::open(dir.path(), config.clone()).unwrap();
        let mut model = Model::new();
        for step in 0..250 {
            let context = format!("seed {seed}, step {step}");
            match rng.random_range(0..100) {
                0..35 => {
                    let payload = random_payload(&mut rng, model.next_seq);
                    let seq = spool.append(&payload).unwrap();
                    assert_eq!(seq, model.append(payload), "{context}");
                }
                35..50 => {
                    let count = rng.random_range(0..12);
                    let payloads: Vec<Vec<u8>> = (0..count)
                        .map(|i| random_payload(&mut rng, model.next_seq + i))
                        .collect();
                    let range = spool.append_batch(&payloads).unwrap();
                    let start = model.next_seq;
                    for payload in payloads {
                        model.append(payload);
                    }
                    assert_eq!(range, start..model.next_seq, "{context}");
                }
                50..75 => {
                    let max_frames = rng.random_range(0..40);
                    let max_bytes = rng.random_range(0..20_000);
                    assert_eq!(
                        spool.peek(max_frames, max_bytes).unwrap(),
                        model.peek(max_frames, max_bytes),
                        "{context}"
                    );
                }
                75..93 => {
                    let low = model.acked_seq.saturating_sub(3);
                    let seq = rng.random_range(low..model.next_seq + 2);
                    match spool.ack(seq) {
                        Ok(()) => {
                            assert!(seq < model.next_seq, "{context}");
                            model.ack(seq);
                        }
                        Err(SpoolError::AckBeyondEnd { .. }) => {
                            assert!(seq >= model.next_seq, "{context}")
                        }
                        Err(e) => panic!("{context}: {e}"),
                    }
                }
                _ => {
                    drop(spool);
                    spool = Spool::open(dir.path(), config.clone()).unwrap();
                }
            }
            let stats = spool.stats();
            assert_eq!(stats.frames, model.frames.len() as u64, "{context}");
            assert_eq!(stats.next_seq, model.next_seq, "{context}");
            assert_eq!(stats.acked_seq, model.acked_seq, "{context}");
            assert_eq!(stats.frames == 0, stats.bytes == 0, "{context}");
            assert!(
                stats.bytes >= stats.frames * FRAME_HEADER_BYTES,
                "{context}"
            );
            assert_eq!(
                stats.quarantined_segments + stats.dropped_frames,
                0,
                "{context}"
            );
        }
        assert_eq!(
            spool.peek(usize::MAX, u64::MAX).unwrap(),
            model.peek(usize::MAX, u64::MAX),
            "seed {seed}: final contents"
        );
    }
}

#[test]
fn drop_oldest_keeps_a_contiguous_newest_suffix_and_counts_every_loss() {
    for seed in 0..12u64 {
        let mut rng = StdRng::seed_from_u64(100 + seed);
        let dir = tempfile::tempdir().unwrap();
        let max_bytes = rng.random_range(16_384..65_536);
        let config = SpoolConfig::new(max_bytes)
            .with_segment_bytes(rng.random_range(1024..8192))
            .with_when_full(WhenFull::DropOldest)
            .with_fsync(FsyncPolicy::Never);
        let memory = MemoryBuffer::new(max_bytes, WhenFull::DropOldest).unwrap();
        let mut spool = Spool::open(dir.path(), config.clone()).unwrap();
        let mut payloads = vec![Vec::new()]; // index = seq
        for step in 0..400 {
            let context = format!("seed {seed}, step {step}");
            let before = spool.stats();
            let old_start = spool
                .peek(1, 0)
                .unwrap()
                .first()
                .map_or(before.next_seq, |f| f.seq);
            let mut acked = None;
            let mut reopened = false;
            match rng.random_range(0..10) {
                0..7 => {
                    let payload = payload_for(before.next_seq, rng.random_range(1..2000));
                    assert_eq!(
                        spool.append(&payload).unwrap(),
                        before.next_seq,
                        "{context}"
                    );
                    assert_eq!(
                        memory.append(&payload).unwrap(),
                        before.next_seq,
                        "{context}"
                    );
                    payloads.push(payload);
                }
                7..9 => {
                    let seq = rng.random_range(0..before.next_seq);
                    spool.ack(seq).unwrap();
                    memory.ack(seq).unwrap();
                    acked = Some(seq);
                }
                _ => {
                    drop(spool);
                    spool = Spool::open(dir.path(), config.clone()).unwrap();
                    reopened = true;
                }
            }
            let stats = spool.stats();
            assert!(stats.bytes <= max_bytes, "{context}");
            let frames = spool.peek(usize::MAX, u64::MAX).unwrap();
            let start = frames.first().map_or(stats.next_seq, |f| f.seq);
            let expected: Vec<u64> = (start..stats.next_seq).collect();
            let got: Vec<u64> = frames.iter().map(|f| f.seq).collect();
            assert_eq!(got, expected, "{context}: not a contiguous suffix");
            assert!(
                frames.iter().all(|f| f.payload == payloads[f.seq as usize]),
                "{context}"
            );
            assert_eq!(stats.frames, frames.len() as u64, "{context}");
            // Frames vanish only by acknowledgement or by being counted as dropped.
            let acked_away = acked.map_or(old_start, |seq| old_start.max(seq + 1));
            // (The drop counters count since open.)
            let dropped_before = if reopened { 0 } else { before.dropped_frames };
            let newly_dropped = stats.dropped_frames - dropped_before;
            assert_eq!(
                start.max(acked_away) - acked_away,
                newly_dropped,
                "{context}"
            );
            // The memory buffer obeys the same rules (dropping single frames).
            let memory_stats = memory.stats();
            assert!(memory_stats.bytes <= max_bytes, "{context}");
            assert_eq!(memory_stats.next_seq, stats.next_seq, "{context}");
        }
    }
}
