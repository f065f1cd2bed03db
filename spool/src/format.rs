//! Byte layout of frames, segment names and the cursor file (see the crate docs).

use crate::SpoolError;

/// Size of a frame header in bytes.
pub(crate) const HEADER_LEN: usize = 32;
/// First bytes of every frame header.
pub(crate) const FRAME_MAGIC: [u8; 4] = *b"ISPF";
/// Frame format version written by this crate.
pub(crate) const FRAME_VERSION: u8 = 1;
/// Flags value meaning "payload is one LZ4 block".
const FLAGS_LZ4_BLOCK: u8 = 0;

/// Size of the cursor file in bytes.
pub(crate) const CURSOR_LEN: usize = 28;
/// First bytes of the cursor file.
const CURSOR_MAGIC: [u8; 4] = *b"ISPC";
/// Cursor format version written by this crate.
const CURSOR_VERSION: u8 = 1;

/// Extension of segment files.
pub(crate) const SEGMENT_SUFFIX: &str = ".seg";
/// Number of decimal digits in a segment file name.
const SEGMENT_DIGITS: usize = 20;

/// The decoded fixed-size header in front of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// Sequence number of the frame.
    pub seq: u64,
    /// Length of the payload before compression.
    pub uncompressed_len: u32,
    /// Length of the compressed payload that follows the header.
    pub compressed_len: u32,
    /// CRC-32 of the compressed payload.
    pub payload_crc: u32,
}

/// Why a header could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderProblem {
    /// The magic bytes are wrong: this is not the start of a frame.
    BadMagic,
    /// The header was written by an unknown format version.
    UnknownVersion(u8),
    /// The flags or reserved bytes hold values this version does not know.
    UnknownFlags,
    /// The header checksum does not match.
    BadChecksum,
}

impl std::fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderProblem::BadMagic => write!(f, "bad frame magic"),
            HeaderProblem::UnknownVersion(v) => write!(f, "unknown frame format version {v}"),
            HeaderProblem::UnknownFlags => write!(f, "unknown frame flags"),
            HeaderProblem::BadChecksum => write!(f, "frame header checksum mismatch"),
        }
    }
}

impl FrameHeader {
    /// Total on-disk size of the frame (header plus compressed payload).
    pub fn frame_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.compressed_len)
    }

    /// Encodes the header; the last four bytes are a CRC-32 of the first 28.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&FRAME_MAGIC);
        out[4] = FRAME_VERSION;
        out[5] = FLAGS_LZ4_BLOCK;
        // out[6..8] reserved, zero.
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..20].copy_from_slice(&self.uncompressed_len.to_le_bytes());
        out[20..24].copy_from_slice(&self.compressed_len.to_le_bytes());
        out[24..28].copy_from_slice(&self.payload_crc.to_le_bytes());
        let header_crc = crc32fast::hash(&out[0..28]);
        out[28..32].copy_from_slice(&header_crc.to_le_bytes());
        out
    }

    /// Decodes and validates a header.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<FrameHeader, HeaderProblem> {
        if bytes[0..4] != FRAME_MAGIC {
            return Err(HeaderProblem::BadMagic);
        }
        let stored_crc = u32::from_le_bytes(bytes[28..32].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[0..28]) != stored_crc {
            return Err(HeaderProblem::BadChecksum);
        }
        if bytes[4] != FRAME_VERSION {
            return Err(HeaderProblem::UnknownVersion(bytes[4]));
        }
        if bytes[5] != FLAGS_LZ4_BLOCK || bytes[6] != 0 || bytes[7] != 0 {
            return Err(HeaderProblem::UnknownFlags);
        }
        Ok(FrameHeader {
            seq: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
            uncompressed_len: u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")),
            compressed_len: u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes")),
            payload_crc: u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes")),
        })
    }
}

/// One frame compressed ahead of time, waiting for its sequence number.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingFrame {
    /// Offset of the frame (its header) inside the batch buffer.
    pub start: usize,
    /// Uncompressed payload length.
    pub uncompressed_len: u32,
    /// Compressed payload length.
    pub compressed_len: u32,
    /// CRC-32 of the compressed payload.
    pub payload_crc: u32,
}

impl PendingFrame {
    /// On-disk size of the frame.
    pub fn frame_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.compressed_len)
    }
}

/// Compresses `payload` and appends a placeholder header plus the compressed bytes to
/// `buf`. The header is filled in by [`seal_frame`] once the sequence number is known, so
/// the expensive compression can run outside the spool lock.
pub(crate) fn compress_frame(
    payload: &[u8],
    buf: &mut Vec<u8>,
) -> Result<PendingFrame, SpoolError> {
    let uncompressed_len = u32::try_from(payload.len()).map_err(|_| SpoolError::FrameTooLarge {
        frame_bytes: payload.len() as u64,
        max_bytes: u64::from(u32::MAX),
    })?;
    let start = buf.len();
    let body = start + HEADER_LEN;
    buf.resize(
        body + lz4_flex::block::get_maximum_output_size(payload.len()),
        0,
    );
    let compressed_len = lz4_flex::block::compress_into(payload, &mut buf[body..])
        .map_err(|e| SpoolError::io("compressing a frame", std::io::Error::other(e.to_string())))?;
    buf.truncate(body + compressed_len);
    let compressed_len = u32::try_from(compressed_len).map_err(|_| SpoolError::FrameTooLarge {
        frame_bytes: compressed_len as u64,
        max_bytes: u64::from(u32::MAX),
    })?;
    Ok(PendingFrame {
        start,
        uncompressed_len,
        compressed_len,
        payload_crc: crc32fast::hash(&buf[body..]),
    })
}

/// Writes the final header of a compressed frame now that its sequence number is known.
pub(crate) fn seal_frame(buf: &mut [u8], frame: &PendingFrame, seq: u64) {
    let header = FrameHeader {
        seq,
        uncompressed_len: frame.uncompressed_len,
        compressed_len: frame.compressed_len,
        payload_crc: frame.payload_crc,
    };
    buf[frame.start..frame.start + HEADER_LEN].copy_from_slice(&header.encode());
}

/// Decompresses a payload whose checksum was already verified.
pub(crate) fn decompress_payload(
    header: &FrameHeader,
    compressed: &[u8],
) -> Result<Vec<u8>, String> {
    // An LZ4 block expands at most ~255x; refuse absurd lengths before allocating.
    let max_expansion = u64::from(header.compressed_len) * 255 + 64;
    if u64::from(header.uncompressed_len) > max_expansion {
        return Err(format!(
            "header claims {} uncompressed bytes from {} compressed bytes",
            header.uncompressed_len, header.compressed_len
        ));
    }
    let mut out = vec![0u8; header.uncompressed_len as usize];
    let written = lz4_flex::block::decompress_into(compressed, &mut out)
        .map_err(|e| format!("LZ4 decompression failed: {e}"))?;
    if written != out.len() {
        return Err(format!(
            "LZ4 payload decompressed to {written} bytes, header says {}",
            out.len()
        ));
    }
    Ok(out)
}

/// File name of the segment whose first frame has sequence `first_seq`.
pub(crate) fn segment_file_name(first_seq: u64) -> String {
    format!(
        "{first_seq:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_DIGITS
    )
}

/// Parses a segment file name back into its first sequence number.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The persisted acknowledgement position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Cursor {
    /// Every frame with a sequence number up to and including this one is acknowledged
    /// (or was dropped to make room). 0 means nothing.
    pub acked_seq: u64,
    /// The next sequence number to hand out, so sequences never repeat even after every
    /// segment has been deleted.
    pub next_seq: u64,
}

impl Cursor {
    /// Encodes the cursor file contents.
    pub fn encode(&self) -> [u8; CURSOR_LEN] {
        let mut out = [0u8; CURSOR_LEN];
        out[0..4].copy_from_slice(&CURSOR_MAGIC);
        out[4] = CURSOR_VERSION;
        out[8..16].copy_from_slice(&self.acked_seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.next_seq.to_le_bytes());
        let crc = crc32fast::hash(&out[0..24]);
        out[24..28].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes the cursor file contents, explaining what is wrong if it is not valid.
    pub fn decode(bytes: &[u8]) -> Result<Cursor, String> {
        if bytes.len() != CURSOR_LEN {
            return Err(format!(
                "cursor file is {} bytes, expected {CURSOR_LEN}",
                bytes.len()
            ));
        }
        if bytes[0..4] != CURSOR_MAGIC {
            return Err("cursor file has a bad magic".to_string());
        }
        let stored_crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[0..24]) != stored_crc {
            return Err("cursor file checksum mismatch".to_string());
        }
        if bytes[4] != CURSOR_VERSION {
            return Err(format!("unknown cursor format version {}", bytes[4]));
        }
        Ok(Cursor {
            acked_seq: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
            next_seq: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_flipped_bits() {
        let header = FrameHeader {
            seq: 42,
            uncompressed_len: 1000,
            compressed_len: 300,
            payload_crc: 0xdead_beef,
        };
        let bytes = header.encode();
        assert_eq!(FrameHeader::decode(&bytes), Ok(header));
        for i in 0..HEADER_LEN {
            let mut broken = bytes;
            broken[i] ^= 0x10;
            assert!(
                FrameHeader::decode(&broken).is_err(),
                "flip at byte {i} not detected"
            );
        }
    }

    #[test]
    fn frames_compress_and_decompress() {
        let payload = b"temperature=21.5 temperature=21.5 temperature=21.5".repeat(10);
        let mut buf = Vec::new();
        let pending = compress_frame(&payload, &mut buf).unwrap();
        seal_frame(&mut buf, &pending, 7);
        let header = FrameHeader::decode(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(header.seq, 7);
        assert!(header.compressed_len < header.uncompressed_len);
        assert_eq!(crc32fast::hash(&buf[HEADER_LEN..]), header.payload_crc);
        assert_eq!(
            decompress_payload(&header, &buf[HEADER_LEN..]).unwrap(),
            payload
        );
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_file_name(17), "00000000000000000017.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000000017.seg"),
            Some(17)
        );
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("99999999999999999999.seg"), None);
        assert_eq!(parse_segment_file_name("17.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000001x.seg"), None);
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = Cursor {
            acked_seq: 10,
            next_seq: 25,
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
        assert!(Cursor::decode(&[]).is_err());
        let mut broken = cursor.encode();
        broken[9] ^= 1;
        assert!(Cursor::decode(&broken).is_err());
    }
}
