//! Behaviour of the disk spool on real files: order, acknowledgement, restarts, limits,
//! recovery from torn and corrupt data, garbage files and locking.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{frame_offsets, payload_for, quarantine_files, read_all, segment_files, seqs};
use isthmus_spool::{
    Buffer, FRAME_HEADER_BYTES, FsyncPolicy, MemoryBuffer, Spool, SpoolConfig, SpoolError, WhenFull,
};
use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};

fn small_segments(max_bytes: u64, segment_bytes: u64) -> SpoolConfig {
    SpoolConfig::new(max_bytes).with_segment_bytes(segment_bytes)
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill_bytes(&mut bytes);
    bytes
}

#[test]
fn frames_round_trip_in_order_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), small_segments(8 << 20, 16 * 1024)).unwrap();
    let mut expected = Vec::new();
    for i in 0..500u64 {
        let payload = payload_for(i + 1, (i as usize * 37) % 3000);
        assert_eq!(spool.append(&payload).unwrap(), i + 1);
        expected.push(payload);
    }
    // Empty payloads are frames too.
    assert_eq!(spool.append(b"").unwrap(), 501);
    expected.push(Vec::new());
    assert!(
        segment_files(dir.path()).len() > 3,
        "expected several segments"
    );

    let frames = read_all(&spool);
    assert_eq!(seqs(&frames), (1..=501).collect::<Vec<_>>());
    for (frame, payload) in frames.iter().zip(&expected) {
        assert_eq!(&frame.payload, payload, "payload of frame {}", frame.seq);
    }
    let stats = spool.stats();
    assert_eq!(
        (stats.frames, stats.next_seq, stats.acked_seq),
        (501, 502, 0)
    );
    let on_disk: u64 = segment_files(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(stats.bytes, on_disk);
}

#[test]
fn peek_respects_limits_and_ack_advances() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), small_segments(1 << 20, 4096)).unwrap();
    let range = spool
        .append_batch(&(1..=100).map(|s| payload_for(s, 100)).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(range, 1..101);
    assert_eq!(seqs(&spool.peek(5, u64::MAX).unwrap()), [1, 2, 3, 4, 5]);
    assert_eq!(seqs(&spool.peek(100, 250).unwrap()), [1, 2]);
    // A frame bigger than max_bytes is still returned alone, so a sender never stalls.
    assert_eq!(seqs(&spool.peek(100, 1).unwrap()), [1]);
    assert!(spool.peek(0, u64::MAX).unwrap().is_empty());

    // The sender pattern: peek a window, send it, ack its last sequence.
    let mut received = Vec::new();
    loop {
        let window = spool.peek(9, u64::MAX).unwrap();
        let Some(last) = window.last().map(|f| f.seq) else {
            break;
        };
        received.extend(window);
        spool.ack(last).unwrap();
    }
    assert_eq!(seqs(&received), (1..=100).collect::<Vec<_>>());
    for frame in &received {
        assert_eq!(frame.payload, payload_for(frame.seq, 100));
    }
    let stats = spool.stats();
    assert_eq!((stats.frames, stats.bytes, stats.acked_seq), (0, 0, 100));
    // Acknowledging again is harmless; acknowledging the future is an error.
    spool.ack(50).unwrap();
    assert!(matches!(
        spool.ack(101),
        Err(SpoolError::AckBeyondEnd {
            seq: 101,
            last: 100
        })
    ));
}

#[test]
fn ack_deletes_fully_acknowledged_segments_and_frees_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), small_segments(1 << 20, 4096)).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..200 {
        spool.append(&random_bytes(&mut rng, 300)).unwrap();
    }
    let before = segment_files(dir.path());
    assert!(before.len() >= 10, "got {} segments", before.len());
    let bytes_before = spool.stats().bytes;

    spool.ack(100).unwrap();
    let after = segment_files(dir.path());
    assert!(
        after.len() < before.len() / 2 + 2,
        "{} -> {}",
        before.len(),
        after.len()
    );
    assert!(
        !after.contains(&before[0]),
        "the first segment must be gone"
    );
    let stats = spool.stats();
    assert_eq!(stats.frames, 100);
    assert!(stats.bytes < bytes_before / 2 + 4096);
    assert_eq!(spool.peek(1, u64::MAX).unwrap()[0].seq, 101);

    spool.ack(200).unwrap();
    assert_eq!(spool.stats().bytes, 0);
    // Only the segment being written may remain.
    assert!(segment_files(dir.path()).len() <= 1);
}

#[test]
fn restart_continues_the_sequence_and_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(1 << 20, 4096);
    {
        let spool = Spool::open(dir.path(), config.clone()).unwrap();
        for seq in 1..=50 {
            spool.append(&payload_for(seq, 200)).unwrap();
        }
        spool.ack(20).unwrap();
    }
    {
        let spool = Spool::open(dir.path(), config.clone()).unwrap();
        let stats = spool.stats();
        assert_eq!(
            (stats.frames, stats.next_seq, stats.acked_seq),
            (30, 51, 20)
        );
        let frames = read_all(&spool);
        assert_eq!(seqs(&frames), (21..=50).collect::<Vec<_>>());
        assert!(frames.iter().all(|f| f.payload == payload_for(f.seq, 200)));
        assert_eq!(spool.append(b"after restart").unwrap(), 51);
        spool.ack(51).unwrap();
    }
    {
        // All acknowledged: recovery deletes every segment; the cursor keeps the sequence.
        let spool = Spool::open(dir.path(), config.clone()).unwrap();
        assert!(segment_files(dir.path()).is_empty());
        assert_eq!(spool.stats().next_seq, 52);
        assert!(spool.peek(10, u64::MAX).unwrap().is_empty());
    }
    let spool = Spool::open(dir.path(), config).unwrap();
    assert_eq!(spool.append(b"next").unwrap(), 52);
}

#[test]
fn block_waits_until_an_ack_frees_space() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let payload = random_bytes(&mut rng, 1000); // incompressible: ~1 KiB on disk
    let max_bytes = 64 * 1024;
    let spool = Arc::new(Spool::open(dir.path(), small_segments(max_bytes, 8 * 1024)).unwrap());
    let mut appended = 0;
    while spool.append_timeout(&payload, Duration::ZERO).is_ok() {
        appended += 1;
    }
    assert!(appended > 50, "appended {appended}");
    assert!(spool.stats().bytes <= max_bytes);
    let started = Instant::now();
    let err = spool
        .append_timeout(&payload, Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(err, SpoolError::Full { .. }), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(100));

    let (done_tx, done_rx) = mpsc::channel();
    let writer = {
        let spool = Arc::clone(&spool);
        let payload = payload.clone();
        thread::spawn(move || {
            let seq = spool.append(&payload).unwrap();
            done_tx.send(seq).unwrap();
        })
    };
    assert!(
        done_rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "append must block while the spool is full"
    );
    spool.ack(5).unwrap();
    let seq = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("ack must wake the writer");
    assert_eq!(seq, appended + 1);
    writer.join().unwrap();
}

#[test]
fn oversized_frames_and_batches_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), SpoolConfig::new(4096)).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let big = random_bytes(&mut rng, 8192);
    let started = Instant::now();
    assert!(matches!(
        spool.append(&big),
        Err(SpoolError::FrameTooLarge {
            max_bytes: 4096,
            ..
        })
    ));
    let batch: Vec<Vec<u8>> = (0..10).map(|_| random_bytes(&mut rng, 1000)).collect();
    assert!(matches!(
        spool.append_batch(&batch),
        Err(SpoolError::BatchTooLarge { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(1));
    // Nothing was written and no sequence was consumed.
    assert_eq!(spool.stats().next_seq, 1);
    assert_eq!(spool.append(b"small").unwrap(), 1);
    assert!(matches!(
        Spool::open(tempfile::tempdir().unwrap().path(), SpoolConfig::new(10)),
        Err(SpoolError::InvalidConfig(_))
    ));
}

#[test]
fn drop_oldest_drops_whole_segments_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let max_bytes = 64 * 1024;
    let config = small_segments(max_bytes, 8 * 1024).with_when_full(WhenFull::DropOldest);
    let mut rng = StdRng::seed_from_u64(4);
    let total = 1000u64;
    let mut payloads = Vec::new();
    {
        let spool = Spool::open(dir.path(), config.clone()).unwrap();
        for seq in 1..=total {
            let payload = random_bytes(&mut rng, 1000);
            assert_eq!(spool.append(&payload).unwrap(), seq);
            payloads.push(payload);
            assert!(spool.stats().bytes <= max_bytes);
        }
        let stats = spool.stats();
        assert!(stats.dropped_frames > 800, "{stats:?}");
        assert_eq!(stats.frames + stats.dropped_frames, total);
        assert!(stats.dropped_bytes >= stats.dropped_frames * 1000);
        let frames = read_all(&spool);
        // What is left is the newest frames, contiguous, intact.
        let first = total - frames.len() as u64 + 1;
        assert_eq!(seqs(&frames), (first..=total).collect::<Vec<_>>());
        for frame in &frames {
            assert_eq!(frame.payload, payloads[frame.seq as usize - 1]);
        }
        assert_eq!(stats.acked_seq, first - 1);
    }
    // Dropped frames stay dropped after a restart.
    let spool = Spool::open(dir.path(), config).unwrap();
    let frames = read_all(&spool);
    assert_eq!(frames.last().unwrap().seq, total);
    assert_eq!(spool.stats().frames, frames.len() as u64);
    assert_eq!(spool.append(b"x").unwrap(), total + 1);
}

#[test]
fn torn_tail_is_truncated_and_the_spool_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(1 << 20, 1 << 20);
    {
        let spool = Spool::open(dir.path(), config.clone()).unwrap();
        for seq in 1..=10 {
            spool.append(&payload_for(seq, 500)).unwrap();
        }
    }
    let segment = segment_files(dir.path()).pop().unwrap();
    let len = fs::metadata(&segment).unwrap().len();
    let last_frame = *frame_offsets(&segment).last().unwrap();
    // Cut the last frame in the middle of its payload, as a crash mid-write would.
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(last_frame + FRAME_HEADER_BYTES + 3)
        .unwrap();
    {
        let spool = Spool::open(dir.path(), config.clone()).unwrap();
        assert_eq!(seqs(&read_all(&spool)), (1..=9).collect::<Vec<_>>());
        assert_eq!(fs::metadata(&segment).unwrap().len(), last_frame);
        assert!(
            quarantine_files(dir.path()).is_empty(),
            "a torn tail is not quarantined"
        );
        assert_eq!(spool.append(&payload_for(10, 500)).unwrap(), 10);
        assert_eq!(fs::metadata(&segment).unwrap().len(), len);
    }
    // A partial header, and a zero-filled tail (what a power loss can leave), too.
    for tail in [vec![b'I', b'S', b'P'], vec![0u8; 700]] {
        let good_len = fs::metadata(&segment).unwrap().len();
        OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap()
            .write_all(&tail)
            .unwrap();
        let spool = Spool::open(dir.path(), config.clone()).unwrap();
        assert_eq!(seqs(&read_all(&spool)), (1..=10).collect::<Vec<_>>());
        assert_eq!(fs::metadata(&segment).unwrap().len(), good_len);
        assert_eq!(spool.stats().quarantined_segments, 0);
    }
}

#[test]
fn corrupt_middle_frame_is_quarantined_and_other_segments_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(1 << 20, 4096);
    {
        let spool = Spool::open(dir.path(), config.clone()).unwrap();
        for seq in 1..=60 {
            spool.append(&payload_for(seq, 400)).unwrap();
        }
    }
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 3);
    let victim = &segments[1];
    let offsets = frame_offsets(victim);
    assert!(offsets.len() >= 4);
    let first_in_victim: u64 = victim
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let frames_in_victim = offsets.len() as u64;
    // Flip one payload byte of the third frame of the second segment.
    let mut bytes = fs::read(victim).unwrap();
    bytes[(offsets[2] + FRAME_HEADER_BYTES + 1) as usize] ^= 0xff;
    fs::write(victim, &bytes).unwrap();

    let spool = Spool::open(dir.path(), config).unwrap();
    let lost: Vec<u64> = (first_in_victim + 2..first_in_victim + frames_in_victim).collect();
    let expected: Vec<u64> = (1..=60).filter(|s| !lost.contains(s)).collect();
    let frames = read_all(&spool);
    assert_eq!(seqs(&frames), expected);
    assert!(frames.iter().all(|f| f.payload == payload_for(f.seq, 400)));
    let stats = spool.stats();
    assert_eq!(stats.quarantined_segments, 1);
    assert_eq!(stats.quarantined_bytes, bytes.len() as u64 - offsets[2]);
    let quarantined = quarantine_files(dir.path());
    assert_eq!(quarantined.len(), 1);
    assert_eq!(
        fs::read(&quarantined[0]).unwrap(),
        bytes[offsets[2] as usize..]
    );
    assert_eq!(fs::metadata(victim).unwrap().len(), offsets[2]);
    assert_eq!(spool.append(b"more").unwrap(), 61);
}

#[test]
fn corruption_found_while_running_is_quarantined_on_peek() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), small_segments(1 << 20, 4096)).unwrap();
    for seq in 1..=30 {
        spool.append(&payload_for(seq, 400)).unwrap();
    }
    let first = &segment_files(dir.path())[0];
    let mut bytes = fs::read(first).unwrap();
    bytes[0] ^= 0xff; // break the very first header
    fs::write(first, &bytes).unwrap();
    let frames = read_all(&spool);
    assert!(!frames.is_empty());
    assert!(frames[0].seq > 1);
    assert_eq!(seqs(&frames), (frames[0].seq..=30).collect::<Vec<_>>());
    assert_eq!(spool.stats().quarantined_segments, 1);
    assert_eq!(spool.stats().frames, frames.len() as u64);
    spool.ack(30).unwrap();
    assert_eq!(spool.stats().bytes, 0);
}

#[test]
fn garbage_in_the_directory_never_stops_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let mut rng = StdRng::seed_from_u64(5);
    fs::write(
        path.join("00000000000000000001.seg"),
        random_bytes(&mut rng, 5000),
    )
    .unwrap();
    fs::write(path.join("00000000000000000100.seg"), b"").unwrap();
    fs::create_dir(path.join("00000000000000900000.seg")).unwrap();
    fs::write(path.join("cursor"), b"").unwrap();
    fs::write(path.join("notes.txt"), b"operator notes").unwrap();
    fs::write(path.join("12.seg"), b"short name").unwrap();
    fs::write(path.join("cursor.tmp"), b"half-written").unwrap();

    let spool = Spool::open(path, SpoolConfig::new(1 << 20)).unwrap();
    assert!(read_all(&spool).is_empty());
    assert_eq!(spool.stats().quarantined_segments, 1);
    assert!(path.join("notes.txt").exists() && path.join("12.seg").exists());
    assert!(path.join("00000000000000900000.seg").is_dir());
    assert!(
        !path.join("00000000000000000100.seg").exists(),
        "empty segment removed"
    );
    assert_eq!(spool.append(b"hello").unwrap(), 1);
    spool.ack(1).unwrap();
    drop(spool);

    // Random files of random sizes, with random names in the segment pattern, many times.
    for round in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..rng.random_range(0..5) {
            let name = format!("{:020}.seg", rng.random_range(0..1000u64));
            let len = rng.random_range(0..20_000);
            fs::write(dir.path().join(name), random_bytes(&mut rng, len)).unwrap();
        }
        let cursor_len = rng.random_range(0..64);
        fs::write(
            dir.path().join("cursor"),
            random_bytes(&mut rng, cursor_len),
        )
        .unwrap();
        let spool = Spool::open(dir.path(), SpoolConfig::new(1 << 20))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let seq = spool.append(b"works").unwrap();
        assert_eq!(read_all(&spool).last().unwrap().seq, seq);
    }
}

#[test]
fn valid_frames_followed_by_garbage_keep_the_valid_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(1 << 20, 1 << 20);
    {
        let spool = Spool::open(dir.path(), config.clone()).unwrap();
        for seq in 1..=5 {
            spool.append(&payload_for(seq, 100)).unwrap();
        }
    }
    let segment = segment_files(dir.path()).pop().unwrap();
    let mut rng = StdRng::seed_from_u64(6);
    OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(&random_bytes(&mut rng, 3000))
        .unwrap();
    let spool = Spool::open(dir.path(), config).unwrap();
    assert_eq!(seqs(&read_all(&spool)), [1, 2, 3, 4, 5]);
    assert_eq!(spool.stats().quarantined_bytes, 3000);
    assert_eq!(spool.append(b"6").unwrap(), 6);
}

#[test]
fn a_directory_can_be_opened_by_only_one_spool() {
    let dir = tempfile::tempdir().unwrap();
    let first = Spool::open(dir.path(), SpoolConfig::new(1 << 20)).unwrap();
    let err = Spool::open(dir.path(), SpoolConfig::new(1 << 20)).unwrap_err();
    assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("already in use")
            && message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    drop(first);
    Spool::open(dir.path(), SpoolConfig::new(1 << 20)).unwrap();
}

#[test]
fn a_writer_and_a_sender_thread_share_a_small_spool() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_segments(32 * 1024, 4096).with_fsync(FsyncPolicy::Never);
    let spool = Arc::new(Spool::open(dir.path(), config).unwrap());
    let total = 5000u64;
    let writer = {
        let spool = Arc::clone(&spool);
        thread::spawn(move || {
            for seq in 1..=total {
                assert_eq!(spool.append(&payload_for(seq, 200)).unwrap(), seq);
            }
        })
    };
    let mut received = 0u64;
    while received < total {
        if !spool.wait_for_frames(Duration::from_secs(10)) {
            panic!("sender starved at {received}");
        }
        let frames = spool.peek(64, 64 * 1024).unwrap();
        for frame in &frames {
            received += 1;
            assert_eq!(frame.seq, received);
            assert_eq!(frame.payload, payload_for(frame.seq, 200));
        }
        spool.ack(frames.last().unwrap().seq).unwrap();
    }
    writer.join().unwrap();
    assert_eq!(spool.stats().frames, 0);
}

#[test]
fn fsync_policies_all_round_trip() {
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::EveryBytes(10_000),
        FsyncPolicy::Interval(Duration::from_millis(5)),
        FsyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = small_segments(1 << 20, 8192).with_fsync(policy);
        {
            let spool = Spool::open(dir.path(), config.clone()).unwrap();
            for seq in 1..=100 {
                spool.append(&payload_for(seq, 300)).unwrap();
            }
            spool.sync().unwrap();
        }
        let spool = Spool::open(dir.path(), config).unwrap();
        assert_eq!(
            seqs(&read_all(&spool)),
            (1..=100).collect::<Vec<_>>(),
            "{policy:?}"
        );
    }
}

#[test]
fn memory_and_disk_buffers_behave_alike_behind_one_interface() {
    let dir = tempfile::tempdir().unwrap();
    let buffers = [
        Buffer::Memory(MemoryBuffer::new(1 << 20, WhenFull::Block).unwrap()),
        Buffer::Disk(Spool::open(dir.path(), SpoolConfig::new(1 << 20)).unwrap()),
    ];
    for buffer in &buffers {
        assert_eq!(buffer.append(b"one").unwrap(), 1);
        assert_eq!(buffer.append_batch(&[&b"two"[..], b"three"]).unwrap(), 2..4);
        assert_eq!(
            buffer
                .append_timeout(b"four", Duration::from_millis(1))
                .unwrap(),
            4
        );
        assert!(buffer.wait_for_frames(Duration::ZERO));
        let frames = buffer.peek(3, u64::MAX).unwrap();
        assert_eq!(seqs(&frames), [1, 2, 3]);
        assert_eq!(frames[2].payload, b"three");
        buffer.ack(3).unwrap();
        assert_eq!(seqs(&buffer.peek(10, u64::MAX).unwrap()), [4]);
        let stats = buffer.stats();
        assert_eq!((stats.frames, stats.next_seq, stats.acked_seq), (1, 5, 3));
        buffer.ack(4).unwrap();
        assert!(!buffer.wait_for_frames(Duration::from_millis(1)));
    }
}
