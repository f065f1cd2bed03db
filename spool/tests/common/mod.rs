//! Helpers shared by the spool integration tests.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use isthmus_spool::{FRAME_HEADER_BYTES, Frame, Spool};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// A payload whose content identifies its sequence number, of a given length: a text tag
/// followed by pseudo-random (incompressible) bytes seeded by the sequence number.
pub fn payload_for(seq: u64, len: usize) -> Vec<u8> {
    let mut payload = format!("frame-{seq}|").into_bytes();
    let mut rng = StdRng::seed_from_u64(seq);
    while payload.len() < len {
        payload.push(rng.random());
    }
    payload
}

/// Every unacknowledged frame, oldest first (peek does not consume).
pub fn read_all(spool: &Spool) -> Vec<Frame> {
    spool.peek(usize::MAX, u64::MAX).unwrap()
}

/// The sequence numbers of `frames`.
pub fn seqs(frames: &[Frame]) -> Vec<u64> {
    frames.iter().map(|f| f.seq).collect()
}

/// Segment files in `dir`, sorted.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Byte offsets of every frame in a segment file (walking the headers).
pub fn frame_offsets(path: &Path) -> Vec<u64> {
    let bytes = fs::read(path).unwrap();
    let mut offsets = Vec::new();
    let mut offset = 0usize;
    while offset + FRAME_HEADER_BYTES as usize <= bytes.len() {
        offsets.push(offset as u64);
        let compressed = u32::from_le_bytes(bytes[offset + 20..offset + 24].try_into().unwrap());
        offset += FRAME_HEADER_BYTES as usize + compressed as usize;
    }
    offsets
}

/// Files in the quarantine directory.
pub fn quarantine_files(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir.join(isthmus_spool::QUARANTINE_DIR)) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}
