//! The durable on-disk spool: segment files, cursor file, recovery and quarantine.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::format::{
    Cursor, FrameHeader, HEADER_LEN, PendingFrame, compress_frame, decompress_payload,
    parse_segment_file_name, seal_frame, segment_file_name,
};
use crate::{Frame, SpoolError, SpoolStats, WhenFull};

/// Name of the lock file inside the spool directory.
const LOCK_FILE: &str = "lock";
/// Name of the cursor file inside the spool directory.
const CURSOR_FILE: &str = "cursor";
/// Temporary name the cursor is written under before being renamed into place.
const CURSOR_TMP_FILE: &str = "cursor.tmp";
/// Name of the file holding the spool's incarnation (see [`Spool::incarnation`]).
const INCARNATION_FILE: &str = "incarnation";
/// Temporary name the incarnation is written under before being renamed into place.
const INCARNATION_TMP_FILE: &str = "incarnation.tmp";
/// Directory (inside the spool directory) that receives corrupt segment data.
pub const QUARANTINE_DIR: &str = "quarantine";
/// Read buffer used when scanning or replaying segments.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Smallest default segment size.
const MIN_DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024;
/// Largest default segment size.
const MAX_DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// When the spool calls `fsync` (`File::sync_data`) on the segment being written.
///
/// Whatever the policy, every append hands its bytes to the kernel (`write`) before it
/// returns, so accepted frames survive a crash or `kill -9` of the process. The policy
/// decides what survives a power loss or kernel crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fsync` before every `append`/`append_batch` returns: an acknowledged append is
    /// on stable storage. Costs one `fsync` per call (typically 0.1–10 ms depending on
    /// the device), so batch with [`Spool::append_batch`] to pay it once per batch.
    #[default]
    Always,
    /// `fsync` once at least this many bytes were written since the last one. A power
    /// loss can lose up to that many bytes of accepted frames.
    EveryBytes(u64),
    /// `fsync` on the first append at least this long after the previous one (there is
    /// no background timer; call [`Spool::sync`] to force it). A power loss can lose the
    /// frames accepted since the last `fsync`.
    Interval(Duration),
    /// Never `fsync` (the cursor and directory are not synced either); the kernel
    /// writes back when it likes. Survives process crashes only.
    Never,
}

/// Configuration of a [`Spool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Capacity: the on-disk bytes (headers included) of unacknowledged frames.
    pub max_bytes: u64,
    /// What `append` does when a frame does not fit.
    pub when_full: WhenFull,
    /// A segment file is closed and a new one started once it would grow past this.
    pub segment_bytes: u64,
    /// When to `fsync`.
    pub fsync: FsyncPolicy,
}

impl SpoolConfig {
    /// A config with `max_bytes` capacity, blocking writers when full, the default
    /// segment size and `fsync` on every append.
    pub fn new(max_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            max_bytes,
            when_full: WhenFull::Block,
            segment_bytes: SpoolConfig::default_segment_bytes(max_bytes),
            fsync: FsyncPolicy::Always,
        }
    }

    /// The default segment size: an eighth of the capacity, clamped to 64 KiB..=64 MiB
    /// and never more than the capacity itself.
    pub fn default_segment_bytes(max_bytes: u64) -> u64 {
        (max_bytes / 8)
            .clamp(MIN_DEFAULT_SEGMENT_BYTES, MAX_DEFAULT_SEGMENT_BYTES)
            .min(max_bytes)
            .max(1)
    }

    /// Returns the config with a different full-buffer behaviour.
    pub fn with_when_full(mut self, when_full: WhenFull) -> SpoolConfig {
        self.when_full = when_full;
        self
    }

    /// Returns the config with a different segment size.
    pub fn with_segment_bytes(mut self, segment_bytes: u64) -> SpoolConfig {
        self.segment_bytes = segment_bytes;
        self
    }

    /// Returns the config with a different fsync policy.
    pub fn with_fsync(mut self, fsync: FsyncPolicy) -> SpoolConfig {
        self.fsync = fsync;
        self
    }

    fn validate(&self) -> Result<(), SpoolError> {
        if self.max_bytes < HEADER_LEN as u64 + 1 {
            return Err(SpoolError::InvalidConfig(format!(
                "max_bytes = {} cannot hold even one frame (a frame header alone is {HEADER_LEN} bytes)",
                self.max_bytes
            )));
        }
        if self.segment_bytes == 0 {
            return Err(SpoolError::InvalidConfig(
                "segment_bytes must be greater than 0".to_string(),
            ));
        }
        if matches!(self.fsync, FsyncPolicy::EveryBytes(0)) {
            return Err(SpoolError::InvalidConfig(
                "fsync = EveryBytes(0) is meaningless; use FsyncPolicy::Always".to_string(),
            ));
        }
        Ok(())
    }
}

/// A bounded, durable, checksummed FIFO of byte frames in a directory.
///
/// One writer thread and one sender thread may share it (`Spool` is `Send + Sync`); all
/// operations take an internal lock. See the crate documentation for the on-disk format
/// and the guarantees.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    config: SpoolConfig,
    state: Mutex<DiskState>,
    /// Signalled when acknowledgements free space (wakes blocked writers).
    space_freed: Condvar,
    /// Signalled when frames are appended (wakes a waiting sender).
    frames_added: Condvar,
    /// Chosen when the directory was first used as a spool, kept across restarts.
    incarnation: u64,
    /// Held open for the lifetime of the spool: the OS lock on it excludes other users.
    _lock_file: File,
}

/// Reads the spool's incarnation, or picks one (the current time in nanoseconds) and
/// durably records it if this is the spool's first use.
fn read_or_create_incarnation(dir: &Path) -> Result<u64, SpoolError> {
    let file = dir.join(INCARNATION_FILE);
    if let Ok(text) = fs::read_to_string(&file)
        && let Ok(incarnation) = text.trim().parse::<u64>()
    {
        return Ok(incarnation);
    }
    let incarnation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let tmp = dir.join(INCARNATION_TMP_FILE);
    fs::write(&tmp, incarnation.to_string())
        .and_then(|_| File::open(&tmp).and_then(|f| f.sync_all()))
        .and_then(|_| fs::rename(&tmp, &file))
        .map_err(|e| SpoolError::io(format!("writing {}", file.display()), e))?;
    Ok(incarnation)
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, recovering from any previous crash.
    ///
    /// Recovery truncates a torn final frame, moves corrupt data to `dir/quarantine/`,
    /// deletes fully acknowledged segments and leaves unknown files alone (with a
    /// warning). Fails with [`SpoolError::Locked`] if another `Spool` has the directory.
    pub fn open(dir: impl AsRef<Path>, config: SpoolConfig) -> Result<Spool, SpoolError> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| {
            SpoolError::io(format!("creating spool directory {}", dir.display()), e)
        })?;
        let lock_file = lock_directory(&dir)?;
        let incarnation = read_or_create_incarnation(&dir)?;
        let state = recover(&dir, &config)?;
        info!(
            dir = %dir.display(),
            frames = state.unacked_frames(),
            bytes = state.unacked_bytes(),
            next_seq = state.next_seq,
            acked_seq = state.acked_seq,
            "spool opened"
        );
        Ok(Spool {
            dir,
            config,
            state: Mutex::new(state),
            space_freed: Condvar::new(),
            frames_added: Condvar::new(),
            incarnation,
            _lock_file: lock_file,
        })
    }

    /// A number chosen when the directory was first used as a spool and kept across
    /// restarts: with the frame sequence numbers it names a frame uniquely, so a consumer
    /// can tell a replayed frame from a new one.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration the spool was opened with.
    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// Appends one frame and returns its sequence number. With [`WhenFull::Block`] this
    /// waits (without limit) for acknowledgements to free space.
    pub fn append(&self, payload: &[u8]) -> Result<u64, SpoolError> {
        self.append_frames(std::slice::from_ref(&payload), None)
            .map(|range| range.start)
    }

    /// Like [`Spool::append`] but gives up with [`SpoolError::Full`] after `timeout`.
    pub fn append_timeout(&self, payload: &[u8], timeout: Duration) -> Result<u64, SpoolError> {
        self.append_frames(std::slice::from_ref(&payload), Some(timeout))
            .map(|range| range.start)
    }

    /// Appends several frames with one write per segment and one `fsync`, returning
    /// their (consecutive) sequence numbers. The batch is all-or-nothing: on error no
    /// frame of it is readable. The whole batch must fit in `max_bytes`.
    pub fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Range<u64>, SpoolError> {
        self.append_frames(payloads, None)
    }

    /// Like [`Spool::append_batch`] but gives up with [`SpoolError::Full`] after `timeout`.
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
        let max_bytes = self.config.max_bytes;
        // Compress outside the lock; headers are sealed once sequences are assigned.
        let mut buf = Vec::new();
        let mut frames = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let frame = compress_frame(payload.as_ref(), &mut buf)?;
            if frame.frame_len() > max_bytes {
                return Err(SpoolError::FrameTooLarge {
                    frame_bytes: frame.frame_len(),
                    max_bytes,
                });
            }
            frames.push(frame);
        }
        let needed = buf.len() as u64;
        if needed > max_bytes {
            return Err(SpoolError::BatchTooLarge {
                batch_bytes: needed,
                max_bytes,
            });
        }
        let started = Instant::now();
        let mut state = self.lock_state();
        if frames.is_empty() {
            return Ok(state.next_seq..state.next_seq);
        }
        match self.config.when_full {
            WhenFull::Block => {
                while state.unacked_bytes() + needed > max_bytes {
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
                                    max_bytes,
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
            WhenFull::DropOldest => state.drop_oldest_until_fits(needed, max_bytes)?,
        }
        let range = state.write_batch(&mut buf, &frames)?;
        drop(state);
        self.frames_added.notify_all();
        Ok(range)
    }

    /// Returns up to `max_frames` of the oldest unacknowledged frames, in sequence order,
    /// stopping before the total payload would exceed `max_bytes` (but always returning
    /// at least one frame if any is available).
    ///
    /// Peeking does not consume: until [`Spool::ack`] is called, the next peek returns the
    /// same frames again. A sender therefore peeks, sends, and acks the last sequence it
    /// got confirmed; to pipeline, it remembers the highest sequence in flight and skips
    /// frames at or below it.
    ///
    /// Corrupt data found while reading (the disk changed under us) is moved to the
    /// quarantine directory and skipped.
    pub fn peek(&self, max_frames: usize, max_bytes: u64) -> Result<Vec<Frame>, SpoolError> {
        self.lock_state().peek(max_frames, max_bytes)
    }

    /// Acknowledges every frame with a sequence number `<= up_to_seq`: persists the
    /// cursor, deletes segments that hold only acknowledged frames and wakes blocked
    /// writers. Acknowledging an old sequence again is a no-op.
    pub fn ack(&self, up_to_seq: u64) -> Result<(), SpoolError> {
        let mut state = self.lock_state();
        state.ack(up_to_seq)?;
        drop(state);
        self.space_freed.notify_all();
        Ok(())
    }

    /// Waits until at least one unacknowledged frame is available or `timeout` passes;
    /// returns whether frames are available.
    pub fn wait_for_frames(&self, timeout: Duration) -> bool {
        let state = self.lock_state();
        let (state, _) = self
            .frames_added
            .wait_timeout_while(state, timeout, |state| state.unacked_frames() == 0)
            .unwrap_or_else(PoisonError::into_inner);
        state.unacked_frames() > 0
    }

    /// Current counters.
    pub fn stats(&self) -> SpoolStats {
        self.lock_state().stats()
    }

    /// Forces an `fsync` of the segment being written (useful with the lazier policies).
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.lock_state().sync_writer()
    }

    fn lock_state(&self) -> MutexGuard<'_, DiskState> {
        // A panic while holding the lock cannot leave the files inconsistent (every
        // mutation is ordered so a crash at any point is recoverable), so keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if state.fsync != FsyncPolicy::Never
            && let Err(e) = state.sync_writer()
        {
            error!(dir = %self.dir.display(), error = %e, "final spool fsync failed");
        }
    }
}

/// One segment file: frames `first_seq..end_seq`, `len` valid bytes.
#[derive(Debug)]
struct Segment {
    first_seq: u64,
    end_seq: u64,
    len: u64,
    path: PathBuf,
}

/// The open segment being appended to (always the last one in `DiskState::segments`).
#[derive(Debug)]
struct SegmentWriter {
    file: File,
    unsynced_bytes: u64,
    last_sync: Instant,
}

/// Where the last peek stopped, so `ack` of that sequence needs no re-reading.
#[derive(Debug, Clone, Copy)]
struct ReadPosition {
    segment_first_seq: u64,
    seq: u64,
    offset: u64,
}

/// Everything behind the spool lock.
#[derive(Debug)]
struct DiskState {
    dir: PathBuf,
    fsync: FsyncPolicy,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    /// Sequence of the frame at `head_offset` in the first segment (its `end_seq` if the
    /// first segment is fully acknowledged).
    head_seq: u64,
    /// Byte offset in the first segment of the oldest unacknowledged frame.
    head_offset: u64,
    acked_seq: u64,
    next_seq: u64,
    writer: Option<SegmentWriter>,
    read_hint: Option<ReadPosition>,
    dropped_frames: u64,
    dropped_bytes: u64,
    quarantined_segments: u64,
    quarantined_bytes: u64,
}

/// Why reading a segment stopped early.
enum ReadFailure {
    /// The bytes at `offset` (where frame `seq` should start) are not a valid frame.
    Corrupt {
        offset: u64,
        seq: u64,
        reason: String,
    },
    /// The operating system failed.
    Io(SpoolError),
}

impl DiskState {
    fn unacked_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum::<u64>() - self.head_offset
    }

    fn unacked_frames(&self) -> u64 {
        let Some(front) = self.segments.front() else {
            return 0;
        };
        let total: u64 = self.segments.iter().map(|s| s.end_seq - s.first_seq).sum();
        total - (self.head_seq - front.first_seq)
    }

    fn stats(&self) -> SpoolStats {
        SpoolStats {
            frames: self.unacked_frames(),
            bytes: self.unacked_bytes(),
            next_seq: self.next_seq,
            acked_seq: self.acked_seq,
            dropped_frames: self.dropped_frames,
            dropped_bytes: self.dropped_bytes,
            quarantined_segments: self.quarantined_segments,
            quarantined_bytes: self.quarantined_bytes,
        }
    }

    fn syncing(&self) -> bool {
        self.fsync != FsyncPolicy::Never
    }

    /// Points the head at the start of the first segment (or at the end if none).
    fn reset_head(&mut self) {
        match self.segments.front() {
            Some(front) => {
                self.head_seq = front.first_seq;
                self.head_offset = 0;
            }
            None => {
                self.head_seq = self.next_seq;
                self.head_offset = 0;
            }
        }
    }

    /// Replaces the cursor file atomically. With `durable` (and a syncing policy) the
    /// new cursor is on stable storage before this returns.
    fn write_cursor(&self, cursor: Cursor, durable: bool) -> Result<(), SpoolError> {
        let durable = durable && self.syncing();
        let tmp = self.dir.join(CURSOR_TMP_FILE);
        let path = self.dir.join(CURSOR_FILE);
        let context = || format!("writing cursor {}", tmp.display());
        let mut file = File::create(&tmp).map_err(|e| SpoolError::io(context(), e))?;
        file.write_all(&cursor.encode())
            .map_err(|e| SpoolError::io(context(), e))?;
        if durable {
            file.sync_data().map_err(|e| SpoolError::io(context(), e))?;
        }
        fs::rename(&tmp, &path).map_err(|e| {
            SpoolError::io(
                format!("renaming {} to {}", tmp.display(), path.display()),
                e,
            )
        })?;
        if durable {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn ack(&mut self, up_to_seq: u64) -> Result<(), SpoolError> {
        if up_to_seq <= self.acked_seq {
            return Ok(());
        }
        if up_to_seq >= self.next_seq {
            return Err(SpoolError::AckBeyondEnd {
                seq: up_to_seq,
                last: self.next_seq - 1,
            });
        }
        // Persist first: if we crash after deleting segments, the cursor still knows
        // both the acknowledged position and the next sequence number. It only has to be
        // durable when this ack deletes a segment: forgetting an ack that deleted nothing
        // (power loss) only replays frames, so those acks skip the two fsyncs.
        let deletes_a_segment = self.segments.front().is_some_and(|front| {
            front.end_seq <= up_to_seq + 1 && !(self.writer.is_some() && self.segments.len() == 1)
        });
        self.write_cursor(
            Cursor {
                acked_seq: up_to_seq,
                next_seq: self.next_seq,
            },
            deletes_a_segment,
        )?;
        self.acked_seq = up_to_seq;
        self.release_acked()
    }

    /// Deletes fully acknowledged segments (except the one being written) and moves the
    /// head past acknowledged frames in the first remaining segment.
    fn release_acked(&mut self) -> Result<(), SpoolError> {
        loop {
            let Some(front) = self.segments.front() else {
                self.reset_head();
                return Ok(());
            };
            let fully_acked = front.end_seq <= self.acked_seq + 1;
            let being_written = self.writer.is_some() && self.segments.len() == 1;
            if fully_acked && !being_written {
                let segment = self.segments.pop_front().expect("front exists");
                remove_segment_file(&segment.path);
                self.reset_head();
                continue;
            }
            if self.advance_head()? {
                return Ok(());
            }
            // The first segment was quarantined from some point; look at it again.
        }
    }

    /// Moves the head of the first segment to the first unacknowledged frame. Returns
    /// `false` if corruption was found (and quarantined) on the way.
    fn advance_head(&mut self) -> Result<bool, SpoolError> {
        let front = self.segments.front().expect("caller checked");
        let target = (self.acked_seq + 1).clamp(front.first_seq, front.end_seq);
        if self.head_seq >= target {
            return Ok(true);
        }
        if let Some(hint) = self.read_hint
            && hint.segment_first_seq == front.first_seq
            && hint.seq > self.head_seq
            && hint.seq <= target
            && hint.offset <= front.len
        {
            self.head_seq = hint.seq;
            self.head_offset = hint.offset;
        }
        if self.head_seq == target {
            return Ok(true);
        }
        if target == front.end_seq {
            self.head_seq = front.end_seq;
            self.head_offset = front.len;
            return Ok(true);
        }
        match skip_frames(front, self.head_offset, self.head_seq, target) {
            Ok(offset) => {
                self.head_seq = target;
                self.head_offset = offset;
                Ok(true)
            }
            Err(ReadFailure::Io(e)) => Err(e),
            Err(ReadFailure::Corrupt {
                offset,
                seq,
                reason,
            }) => {
                self.quarantine_segment_from(0, offset, seq, &reason)?;
                Ok(false)
            }
        }
    }

    /// With `WhenFull::DropOldest`: deletes the oldest segments until `needed` more bytes
    /// fit, counting what was lost.
    fn drop_oldest_until_fits(&mut self, needed: u64, max_bytes: u64) -> Result<(), SpoolError> {
        let unacked = self.unacked_bytes();
        if unacked + needed <= max_bytes {
            return Ok(());
        }
        let excess = unacked + needed - max_bytes;
        let mut freed = 0;
        let mut count = 0;
        for (index, segment) in self.segments.iter().enumerate() {
            freed += if index == 0 {
                segment.len - self.head_offset
            } else {
                segment.len
            };
            count += 1;
            if freed >= excess {
                break;
            }
        }
        let dropped_through = self.segments[count - 1].end_seq.saturating_sub(1);
        let new_acked = self.acked_seq.max(dropped_through);
        // Dropped frames are treated as acknowledged so they are not replayed after a
        // restart even if deleting a file fails; the cursor also keeps `next_seq`.
        self.write_cursor(
            Cursor {
                acked_seq: new_acked,
                next_seq: self.next_seq,
            },
            true,
        )?;
        let mut frames = 0;
        let mut bytes = 0;
        for _ in 0..count {
            let segment = self.segments.pop_front().expect("counted above");
            frames += segment.end_seq - self.head_seq;
            bytes += segment.len - self.head_offset;
            if self.segments.is_empty() {
                self.writer = None;
            }
            remove_segment_file(&segment.path);
            self.reset_head();
        }
        self.acked_seq = new_acked;
        self.read_hint = None;
        self.dropped_frames += frames;
        self.dropped_bytes += bytes;
        warn!(
            dir = %self.dir.display(),
            frames,
            bytes,
            dropped_through,
            "spool full: dropped the oldest unacknowledged frames"
        );
        self.release_acked()
    }

    /// Assigns sequence numbers to compressed frames and writes them, rolling segments as
    /// needed, then fsyncs per policy. On failure the batch is rolled back.
    fn write_batch(
        &mut self,
        buf: &mut [u8],
        frames: &[PendingFrame],
    ) -> Result<Range<u64>, SpoolError> {
        let first = self.next_seq;
        let count = frames.len() as u64;
        let end = first
            .checked_add(count)
            .filter(|end| *end < u64::MAX)
            .ok_or(SpoolError::SequenceExhausted)?;
        for (i, frame) in frames.iter().enumerate() {
            seal_frame(buf, frame, first + i as u64);
        }
        let segments_before = self.segments.len();
        let back_before = self
            .segments
            .back()
            .map(|s| (s.len, s.end_seq))
            .filter(|_| self.writer.is_some());
        match self.write_sealed(buf, frames, first) {
            Ok(()) => {
                self.next_seq = end;
                Ok(first..end)
            }
            Err(e) => {
                self.roll_back_batch(segments_before, back_before);
                // Never reuse these sequence numbers: if the rollback did not fully
                // succeed, some of these frames may still be on disk.
                self.next_seq = end;
                Err(e)
            }
        }
    }

    fn write_sealed(
        &mut self,
        buf: &[u8],
        frames: &[PendingFrame],
        first: u64,
    ) -> Result<(), SpoolError> {
        let mut i = 0;
        while i < frames.len() {
            let needs_new_segment = match (&self.writer, self.segments.back()) {
                (Some(_), Some(segment)) => {
                    segment.len > 0 && segment.len + frames[i].frame_len() > self.segment_bytes
                }
                _ => true,
            };
            if needs_new_segment {
                self.start_segment(first + i as u64)?;
            }
            let segment = self.segments.back_mut().expect("a segment is open");
            let writer = self.writer.as_mut().expect("a segment is open");
            // Take every following frame that still fits in this segment (at least one).
            let mut j = i;
            let mut chunk_len = 0;
            while j < frames.len()
                && (j == i || segment.len + chunk_len + frames[j].frame_len() <= self.segment_bytes)
            {
                chunk_len += frames[j].frame_len();
                j += 1;
            }
            let start = frames[i].start;
            let stop = start + chunk_len as usize;
            writer
                .file
                .write_all(&buf[start..stop])
                .map_err(|e| SpoolError::io(format!("writing {}", segment.path.display()), e))?;
            segment.len += chunk_len;
            segment.end_seq = first + j as u64;
            writer.unsynced_bytes += chunk_len;
            i = j;
        }
        let writer = self.writer.as_ref().expect("a segment is open");
        let sync_now = match self.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::EveryBytes(bytes) => writer.unsynced_bytes >= bytes,
            FsyncPolicy::Interval(interval) => writer.last_sync.elapsed() >= interval,
            FsyncPolicy::Never => false,
        };
        if sync_now {
            self.sync_writer()?;
        }
        Ok(())
    }

    /// Closes the current segment (after syncing it) and creates `<first_seq>.seg`.
    fn start_segment(&mut self, first_seq: u64) -> Result<(), SpoolError> {
        if self.writer.is_some() && self.syncing() {
            self.sync_writer()?;
        }
        self.writer = None;
        let path = self.dir.join(segment_file_name(first_seq));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| SpoolError::io(format!("creating segment {}", path.display()), e))?;
        if self.syncing() {
            sync_dir(&self.dir)?;
        }
        self.segments.push_back(Segment {
            first_seq,
            end_seq: first_seq,
            len: 0,
            path,
        });
        if self.segments.len() == 1 {
            self.reset_head();
        }
        self.writer = Some(SegmentWriter {
            file,
            unsynced_bytes: 0,
            last_sync: Instant::now(),
        });
        Ok(())
    }

    /// Undoes a failed batch as far as possible and stops writing to the segment.
    fn roll_back_batch(&mut self, segments_before: usize, back_before: Option<(u64, u64)>) {
        self.writer = None;
        self.read_hint = None;
        while self.segments.len() > segments_before {
            let segment = self.segments.pop_back().expect("len checked");
            remove_segment_file(&segment.path);
        }
        if let (Some((len, end_seq)), Some(segment)) = (back_before, self.segments.back_mut()) {
            if segment.len != len {
                let truncated = OpenOptions::new()
                    .write(true)
                    .open(&segment.path)
                    .and_then(|file| file.set_len(len));
                if let Err(e) = truncated {
                    error!(
                        path = %segment.path.display(),
                        error = %e,
                        "could not remove a failed batch from the segment; it will be quarantined or replayed on the next open"
                    );
                }
            }
            segment.len = len;
            segment.end_seq = end_seq;
        }
        if self.segments.is_empty() {
            self.reset_head();
        }
    }

    fn sync_writer(&mut self) -> Result<(), SpoolError> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        if writer.unsynced_bytes == 0 {
            return Ok(());
        }
        let path = &self.segments.back().expect("writer has a segment").path;
        writer
            .file
            .sync_data()
            .map_err(|e| SpoolError::io(format!("fsync of {}", path.display()), e))?;
        writer.unsynced_bytes = 0;
        writer.last_sync = Instant::now();
        Ok(())
    }

    fn peek(&mut self, max_frames: usize, max_bytes: u64) -> Result<Vec<Frame>, SpoolError> {
        let mut out = Vec::new();
        let mut payload_bytes = 0;
        let mut index = 0;
        while index < self.segments.len() && out.len() < max_frames {
            let segment = &self.segments[index];
            let (seq, offset) = if index == 0 {
                (self.head_seq, self.head_offset)
            } else {
                (segment.first_seq, 0)
            };
            match read_frames(
                segment,
                offset,
                seq,
                max_frames,
                max_bytes,
                &mut out,
                &mut payload_bytes,
            ) {
                Ok((seq, offset, limit_reached)) => {
                    self.read_hint = Some(ReadPosition {
                        segment_first_seq: segment.first_seq,
                        seq,
                        offset,
                    });
                    if limit_reached {
                        break;
                    }
                    index += 1;
                }
                Err(ReadFailure::Io(e)) => return Err(e),
                Err(ReadFailure::Corrupt {
                    offset,
                    seq,
                    reason,
                }) => {
                    if !self.quarantine_segment_from(index, offset, seq, &reason)? {
                        index += 1;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Moves segment `index` from `offset` (where frame `seq` should start) to the
    /// quarantine directory. Returns whether the segment was removed entirely.
    fn quarantine_segment_from(
        &mut self,
        index: usize,
        offset: u64,
        seq: u64,
        reason: &str,
    ) -> Result<bool, SpoolError> {
        let path = self.segments[index].path.clone();
        error!(
            path = %path.display(),
            offset,
            reason,
            "corrupt frame in spool segment; moving the rest of the segment to quarantine"
        );
        if index + 1 == self.segments.len() {
            // Never append behind quarantined bytes.
            self.writer = None;
        }
        self.read_hint = None;
        let moved = quarantine_tail(&self.dir, &path, offset)?;
        self.quarantined_segments += 1;
        self.quarantined_bytes += moved;
        let segment = &mut self.segments[index];
        segment.len = offset;
        segment.end_seq = seq;
        if segment.first_seq == segment.end_seq {
            let segment = self.segments.remove(index).expect("index valid");
            remove_segment_file(&segment.path);
            if index == 0 {
                self.reset_head();
            }
            return Ok(true);
        }
        Ok(false)
    }
}

/// Reads frames from `segment` starting at `offset` (frame `seq`) into `out` until the
/// segment ends or a limit is reached. Returns the position after the last frame read
/// and whether a limit stopped the read.
fn read_frames(
    segment: &Segment,
    mut offset: u64,
    mut seq: u64,
    max_frames: usize,
    max_bytes: u64,
    out: &mut Vec<Frame>,
    payload_bytes: &mut u64,
) -> Result<(u64, u64, bool), ReadFailure> {
    if offset >= segment.len {
        return Ok((seq, offset, false));
    }
    let mut reader = open_segment_at(segment, offset)?;
    let mut compressed = Vec::new();
    while offset < segment.len {
        if out.len() >= max_frames {
            return Ok((seq, offset, true));
        }
        let header = read_header(&mut reader, segment, offset, seq)?;
        if !out.is_empty() && *payload_bytes + u64::from(header.uncompressed_len) > max_bytes {
            return Ok((seq, offset, true));
        }
        compressed.resize(header.compressed_len as usize, 0);
        read_or_corrupt(&mut reader, &mut compressed, segment, offset, seq)?;
        let corrupt = |reason: String| ReadFailure::Corrupt {
            offset,
            seq,
            reason,
        };
        if crc32fast::hash(&compressed) != header.payload_crc {
            return Err(corrupt("payload checksum mismatch".to_string()));
        }
        let payload = decompress_payload(&header, &compressed).map_err(corrupt)?;
        *payload_bytes += payload.len() as u64;
        out.push(Frame { seq, payload });
        offset += header.frame_len();
        seq += 1;
    }
    Ok((seq, offset, false))
}

/// Walks frame headers from `offset` (frame `seq`) to frame `target`; returns its offset.
fn skip_frames(
    segment: &Segment,
    mut offset: u64,
    mut seq: u64,
    target: u64,
) -> Result<u64, ReadFailure> {
    let mut reader = open_segment_at(segment, offset)?;
    while seq < target {
        let header = read_header(&mut reader, segment, offset, seq)?;
        reader
            .seek_relative(i64::from(header.compressed_len))
            .map_err(|e| {
                ReadFailure::Io(SpoolError::io(
                    format!("seeking in {}", segment.path.display()),
                    e,
                ))
            })?;
        offset += header.frame_len();
        seq += 1;
    }
    Ok(offset)
}

fn open_segment_at(segment: &Segment, offset: u64) -> Result<BufReader<File>, ReadFailure> {
    let io_failure = |e| {
        ReadFailure::Io(SpoolError::io(
            format!("reading segment {}", segment.path.display()),
            e,
        ))
    };
    let mut file = File::open(&segment.path).map_err(io_failure)?;
    file.seek(SeekFrom::Start(offset)).map_err(io_failure)?;
    Ok(BufReader::with_capacity(READ_BUFFER_BYTES, file))
}

/// Reads and checks the header of frame `seq` at `offset`.
fn read_header(
    reader: &mut BufReader<File>,
    segment: &Segment,
    offset: u64,
    seq: u64,
) -> Result<FrameHeader, ReadFailure> {
    let corrupt = |reason: String| ReadFailure::Corrupt {
        offset,
        seq,
        reason,
    };
    if segment.len - offset < HEADER_LEN as u64 {
        return Err(corrupt("truncated frame header".to_string()));
    }
    let mut bytes = [0u8; HEADER_LEN];
    read_or_corrupt(reader, &mut bytes, segment, offset, seq)?;
    let header = FrameHeader::decode(&bytes).map_err(|problem| corrupt(problem.to_string()))?;
    if header.seq != seq {
        return Err(corrupt(format!(
            "expected frame sequence {seq}, found {}",
            header.seq
        )));
    }
    if offset + header.frame_len() > segment.len {
        return Err(corrupt(
            "frame runs past the end of the segment".to_string(),
        ));
    }
    Ok(header)
}

fn read_or_corrupt(
    reader: &mut BufReader<File>,
    buf: &mut [u8],
    segment: &Segment,
    offset: u64,
    seq: u64,
) -> Result<(), ReadFailure> {
    reader.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ReadFailure::Corrupt {
                offset,
                seq,
                reason: "segment file is shorter than expected".to_string(),
            }
        } else {
            ReadFailure::Io(SpoolError::io(
                format!("reading segment {}", segment.path.display()),
                e,
            ))
        }
    })
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io(format!("fsync of directory {}", dir.display()), e))
}

/// Deletes a segment file; failure only costs disk space (its frames are acknowledged or
/// dropped according to the cursor), so it is logged rather than returned.
fn remove_segment_file(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %e, "could not delete spool segment");
    }
}

/// Takes the directory lock, failing with [`SpoolError::Locked`] if it is held.
fn lock_directory(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let context = || format!("locking {}", path.display());
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| SpoolError::io(context(), e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!(" (pid {pid})"),
                Err(_) => String::new(),
            };
            return Err(SpoolError::Locked {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(SpoolError::io(context(), e)),
    }
    file.set_len(0)
        .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()))
        .map_err(|e| SpoolError::io(context(), e))?;
    Ok(file)
}

/// Moves the bytes of `path` from `offset` on into the quarantine directory (the whole
/// file if `offset == 0`) and truncates the original. Returns the bytes moved.
fn quarantine_tail(dir: &Path, path: &Path, offset: u64) -> Result<u64, SpoolError> {
    let quarantine = dir.join(QUARANTINE_DIR);
    fs::create_dir_all(&quarantine)
        .map_err(|e| SpoolError::io(format!("creating {}", quarantine.display()), e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "segment".to_string());
    let base = if offset == 0 {
        name
    } else {
        format!("{name}.from-{offset}")
    };
    let dest = unique_path(&quarantine, &base)?;
    let file_len = fs::metadata(path)
        .map_err(|e| SpoolError::io(format!("inspecting {}", path.display()), e))?
        .len();
    if offset == 0 {
        fs::rename(path, &dest).map_err(|e| {
            SpoolError::io(
                format!("moving {} to {}", path.display(), dest.display()),
                e,
            )
        })?;
    } else {
        let copy_context = || format!("copying {} to {}", path.display(), dest.display());
        let mut source = File::open(path).map_err(|e| SpoolError::io(copy_context(), e))?;
        source
            .seek(SeekFrom::Start(offset))
            .map_err(|e| SpoolError::io(copy_context(), e))?;
        let mut target = File::create(&dest).map_err(|e| SpoolError::io(copy_context(), e))?;
        io::copy(&mut source, &mut target).map_err(|e| SpoolError::io(copy_context(), e))?;
        target
            .sync_all()
            .map_err(|e| SpoolError::io(copy_context(), e))?;
        let original = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| SpoolError::io(format!("truncating {}", path.display()), e))?;
        original
            .set_len(offset)
            .and_then(|()| original.sync_all())
            .map_err(|e| SpoolError::io(format!("truncating {}", path.display()), e))?;
    }
    sync_dir(&quarantine)?;
    sync_dir(dir)?;
    Ok(file_len.saturating_sub(offset))
}

/// `dir/base`, or `dir/base.N` for the first free N.
fn unique_path(dir: &Path, base: &str) -> Result<PathBuf, SpoolError> {
    let candidate = dir.join(base);
    if !candidate.exists() {
        return Ok(candidate);
    }
    for n in 1..10_000 {
        let candidate = dir.join(format!("{base}.{n}"));
        if !candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(SpoolError::Layout {
        path: dir.to_path_buf(),
        problem: format!("too many quarantined copies of {base}"),
    })
}

/// Outcome of scanning one segment file during recovery.
struct SegmentScan {
    /// Bytes of valid frames from the start of the file.
    valid_len: u64,
    /// One past the sequence of the last valid frame.
    end_seq: u64,
    /// What follows the valid frames, if anything.
    problem: Option<ScanProblem>,
}

enum ScanProblem {
    /// An incomplete final frame (a write cut short by a crash).
    TornTail(String),
    /// Bytes that are not a valid frame.
    Corrupt(String),
}

/// Checks every frame of a segment file (headers, order and checksums).
fn scan_segment(path: &Path, first_seq: u64, file_len: u64) -> Result<SegmentScan, SpoolError> {
    let io_context = || format!("scanning segment {}", path.display());
    let file = File::open(path).map_err(|e| SpoolError::io(io_context(), e))?;
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    let mut offset = 0u64;
    let mut seq = first_seq;
    let mut compressed = Vec::new();
    let scan = |valid_len, end_seq, problem| {
        Ok(SegmentScan {
            valid_len,
            end_seq,
            problem,
        })
    };
    loop {
        let remaining = file_len - offset;
        if remaining == 0 {
            return scan(offset, seq, None);
        }
        if remaining < HEADER_LEN as u64 {
            return scan(
                offset,
                seq,
                Some(ScanProblem::TornTail(format!(
                    "{remaining} bytes of a frame header"
                ))),
            );
        }
        let mut bytes = [0u8; HEADER_LEN];
        if !read_fully(&mut reader, &mut bytes).map_err(|e| SpoolError::io(io_context(), e))? {
            return scan(
                offset,
                seq,
                Some(ScanProblem::TornTail(
                    "file shrank while scanning".to_string(),
                )),
            );
        }
        let header = match FrameHeader::decode(&bytes) {
            Ok(header) => header,
            Err(problem) => {
                let zero_tail = bytes.iter().all(|b| *b == 0)
                    && rest_is_zero(&mut reader).map_err(|e| SpoolError::io(io_context(), e))?;
                let problem = if zero_tail {
                    ScanProblem::TornTail(format!("{remaining} zero bytes"))
                } else {
                    ScanProblem::Corrupt(problem.to_string())
                };
                return scan(offset, seq, Some(problem));
            }
        };
        if header.seq != seq || seq == u64::MAX - 1 {
            return scan(
                offset,
                seq,
                Some(ScanProblem::Corrupt(format!(
                    "expected frame sequence {seq}, found {}",
                    header.seq
                ))),
            );
        }
        if header.frame_len() > remaining {
            return scan(
                offset,
                seq,
                Some(ScanProblem::TornTail(format!(
                    "frame of {} bytes but only {remaining} bytes left",
                    header.frame_len()
                ))),
            );
        }
        compressed.resize(header.compressed_len as usize, 0);
        if !read_fully(&mut reader, &mut compressed).map_err(|e| SpoolError::io(io_context(), e))? {
            return scan(
                offset,
                seq,
                Some(ScanProblem::TornTail(
                    "file shrank while scanning".to_string(),
                )),
            );
        }
        if crc32fast::hash(&compressed) != header.payload_crc {
            return scan(
                offset,
                seq,
                Some(ScanProblem::Corrupt(
                    "payload checksum mismatch".to_string(),
                )),
            );
        }
        offset += header.frame_len();
        seq += 1;
    }
}

/// `read_exact` that reports a short file as `Ok(false)`.
fn read_fully(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether everything left in `reader` is zero bytes (a tail the file system allocated
/// but the crashed write never filled).
fn rest_is_zero(reader: &mut impl Read) -> io::Result<bool> {
    let mut chunk = [0u8; 8192];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            return Ok(true);
        }
        if chunk[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

/// Reads the cursor file; a missing or damaged cursor means "nothing acknowledged"
/// (which at worst replays frames; never loses them).
fn read_cursor(dir: &Path) -> Result<Option<Cursor>, SpoolError> {
    let path = dir.join(CURSOR_FILE);
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SpoolError::io(format!("inspecting {}", path.display()), e)),
    };
    if !meta.is_file() {
        return Err(SpoolError::Layout {
            path,
            problem: "the cursor must be a regular file; move whatever is there away".to_string(),
        });
    }
    let bytes =
        fs::read(&path).map_err(|e| SpoolError::io(format!("reading {}", path.display()), e))?;
    match Cursor::decode(&bytes) {
        Ok(cursor) => Ok(Some(cursor)),
        Err(problem) => {
            warn!(
                path = %path.display(),
                problem,
                "ignoring damaged spool cursor: unacknowledged-looking frames will be replayed"
            );
            Ok(None)
        }
    }
}

/// Rebuilds the in-memory state from the directory, repairing what a crash left behind.
fn recover(dir: &Path, config: &SpoolConfig) -> Result<DiskState, SpoolError> {
    let cursor = read_cursor(dir)?;
    if cursor.is_some() && config.fsync != FsyncPolicy::Never {
        // The last cursor may have been written without fsync (acks that delete nothing
        // skip it) and only survived in the page cache; make it durable before it is used
        // to delete segments below.
        let path = dir.join(CURSOR_FILE);
        File::open(&path)
            .and_then(|file| file.sync_all())
            .map_err(|e| SpoolError::io(format!("fsync of {}", path.display()), e))?;
        sync_dir(dir)?;
    }
    let cursor = cursor.unwrap_or_default();
    let cursor_tmp = dir.join(CURSOR_TMP_FILE);
    if cursor_tmp.is_file() {
        remove_segment_file(&cursor_tmp);
    }

    let mut candidates = Vec::new();
    let entries =
        fs::read_dir(dir).map_err(|e| SpoolError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::io(format!("listing {}", dir.display()), e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if [
            LOCK_FILE,
            CURSOR_FILE,
            CURSOR_TMP_FILE,
            INCARNATION_FILE,
            INCARNATION_TMP_FILE,
            QUARANTINE_DIR,
        ]
        .contains(&name.as_ref())
        {
            continue;
        }
        let Some(first_seq) = parse_segment_file_name(&name) else {
            warn!(path = %path.display(), "unknown file in spool directory; leaving it alone");
            continue;
        };
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => candidates.push((first_seq, path, meta.len())),
            Ok(_) => warn!(
                path = %path.display(),
                "spool segment name on something that is not a regular file; leaving it alone"
            ),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot inspect spool file; leaving it alone")
            }
        }
    }
    candidates.sort();

    let mut state = DiskState {
        dir: dir.to_path_buf(),
        fsync: config.fsync,
        segment_bytes: config.segment_bytes,
        segments: VecDeque::new(),
        head_seq: 0,
        head_offset: 0,
        acked_seq: cursor.acked_seq,
        next_seq: 1,
        writer: None,
        read_hint: None,
        dropped_frames: 0,
        dropped_bytes: 0,
        quarantined_segments: 0,
        quarantined_bytes: 0,
    };
    let last_index = candidates.len().checked_sub(1);
    for (index, (first_seq, path, file_len)) in candidates.into_iter().enumerate() {
        let overlaps = state
            .segments
            .back()
            .is_some_and(|previous| first_seq < previous.end_seq);
        let scan = if overlaps || first_seq == u64::MAX {
            SegmentScan {
                valid_len: 0,
                end_seq: first_seq,
                problem: Some(ScanProblem::Corrupt(
                    "segment overlaps the sequence range of the previous one".to_string(),
                )),
            }
        } else {
            scan_segment(&path, first_seq, file_len)?
        };
        match scan.problem {
            None => {}
            Some(ScanProblem::TornTail(what)) if Some(index) == last_index => {
                warn!(
                    path = %path.display(),
                    valid_bytes = scan.valid_len,
                    torn = what,
                    "truncating a torn final frame (its append never returned)"
                );
                let truncated = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|file| file.set_len(scan.valid_len).and_then(|()| file.sync_all()));
                truncated
                    .map_err(|e| SpoolError::io(format!("truncating {}", path.display()), e))?;
            }
            Some(ScanProblem::TornTail(reason) | ScanProblem::Corrupt(reason)) => {
                error!(
                    path = %path.display(),
                    offset = scan.valid_len,
                    reason,
                    "corrupt spool segment; moving it (from the bad frame on) to quarantine"
                );
                quarantine_tail(dir, &path, scan.valid_len)?;
            }
        }
        if scan.end_seq == first_seq {
            // No valid frames: nothing to keep.
            remove_segment_file(&path);
            continue;
        }
        state.segments.push_back(Segment {
            first_seq,
            end_seq: scan.end_seq,
            len: scan.valid_len,
            path,
        });
    }

    let highest_end = state.segments.back().map_or(1, |s| s.end_seq);
    state.next_seq = [
        cursor.next_seq,
        cursor.acked_seq.saturating_add(1),
        highest_end,
        1,
    ]
    .into_iter()
    .max()
    .expect("non-empty");
    state.reset_head();
    state.release_acked()?;

    if let Some(last) = state.segments.back()
        && last.end_seq == state.next_seq
        && last.len < config.segment_bytes
    {
        let mut file = OpenOptions::new()
            .write(true)
            .open(&last.path)
            .map_err(|e| SpoolError::io(format!("opening {}", last.path.display()), e))?;
        file.seek(SeekFrom::Start(last.len))
            .map_err(|e| SpoolError::io(format!("seeking in {}", last.path.display()), e))?;
        state.writer = Some(SegmentWriter {
            file,
            unsynced_bytes: 0,
            last_sync: Instant::now(),
        });
    }

    let (count, bytes) = quarantine_contents(dir);
    state.quarantined_segments = count;
    state.quarantined_bytes = bytes;
    sync_dir(dir)?;
    Ok(state)
}

/// Number and total size of the files in the quarantine directory.
fn quarantine_contents(dir: &Path) -> (u64, u64) {
    let Ok(entries) = fs::read_dir(dir.join(QUARANTINE_DIR)) else {
        return (0, 0);
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .filter(|meta| meta.is_file())
        .fold((0, 0), |(count, bytes), meta| {
            (count + 1, bytes + meta.len())
        })
}
