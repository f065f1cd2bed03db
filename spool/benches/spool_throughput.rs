//! Spool throughput next to plain file I/O, in the same run.
//!
//! Appends 1 KiB JSON-like records in batches of 256 with one fsync per batch
//! (`FsyncPolicy::Always` + `append_batch`), then replays them with `peek(256)` + `ack`.
//! The baselines do the same with a plain file: one `write_all` of the batch's raw bytes
//! plus `sync_data` per batch; and a sequential read of 256 records plus an overwritten
//! (not fsynced) 8-byte position per batch. The spool's `ack` replaces its cursor file by
//! rename (and, once per deleted segment, fsyncs it and the directory). Set `SPOOL_BENCH_DIR` to measure another
//! file system, `SPOOL_BENCH_MIB` to change the volume (default 32 MiB) and
//! `SPOOL_BENCH_REPLAY_FRAMES` to change the frames per peek+ack (default 256).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use isthmus_spool::{FsyncPolicy, Spool, SpoolConfig};
use rand::{Rng, SeedableRng, rngs::StdRng};

const FRAME_BYTES: usize = 1024;
const BATCH_FRAMES: usize = 256;

/// A 1 KiB sensor-like JSON record (compressible the way real telemetry is).
fn record(rng: &mut StdRng, seq: usize) -> Vec<u8> {
    let mut out = format!("{{\"seq\":{seq},\"readings\":[");
    while out.len() < FRAME_BYTES - 80 {
        out.push_str(&format!(
            "{{\"sensor\":\"s-{:04}\",\"t\":{},\"v\":{:.3}}},",
            rng.random_range(0..2000),
            1_700_000_000_000u64 + rng.random_range(0..1_000_000u64),
            rng.random_range(-50.0..150.0f64)
        ));
    }
    out.push_str("{}]}");
    let mut bytes = out.into_bytes();
    bytes.resize(FRAME_BYTES, b' ');
    bytes
}

fn mb_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

fn plain_write(path: &Path, batches: &[Vec<Vec<u8>>]) -> Duration {
    let started = Instant::now();
    let mut file = File::create(path).unwrap();
    let mut buf = Vec::with_capacity(BATCH_FRAMES * FRAME_BYTES);
    for batch in batches {
        buf.clear();
        for frame in batch {
            buf.extend_from_slice(frame);
        }
        file.write_all(&buf).unwrap();
        file.sync_data().unwrap();
    }
    started.elapsed()
}

fn plain_replay(path: &Path, position_path: &Path, batches: usize) -> Duration {
    let started = Instant::now();
    let mut reader = BufReader::with_capacity(256 * 1024, File::open(path).unwrap());
    let mut frame = vec![0u8; FRAME_BYTES];
    let mut checksum = 0u64;
    let mut position = File::create(position_path).unwrap();
    for batch in 0..batches {
        for _ in 0..BATCH_FRAMES {
            reader.read_exact(&mut frame).unwrap();
            checksum = checksum.wrapping_add(u64::from(frame[FRAME_BYTES / 2]));
        }
        position.seek(SeekFrom::Start(0)).unwrap();
        position.write_all(&(batch as u64).to_le_bytes()).unwrap();
    }
    std::hint::black_box(checksum);
    started.elapsed()
}

fn spool_write(spool: &Spool, batches: &[Vec<Vec<u8>>]) -> Duration {
    let started = Instant::now();
    for batch in batches {
        spool.append_batch(batch).unwrap();
    }
    started.elapsed()
}

fn spool_replay(spool: &Spool, window_frames: usize) -> (Duration, usize) {
    let started = Instant::now();
    let mut frames = 0;
    loop {
        let window = spool.peek(window_frames, u64::MAX).unwrap();
        let Some(last) = window.last() else { break };
        frames += window.len();
        spool.ack(last.seq).unwrap();
    }
    (started.elapsed(), frames)
}

fn main() {
    let mib: usize = std::env::var("SPOOL_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let base = std::env::var("SPOOL_BENCH_DIR")
        .unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    let dir = tempfile::tempdir_in(&base).unwrap();
    let frame_count = mib * 1024 * 1024 / FRAME_BYTES;
    let mut rng = StdRng::seed_from_u64(7);
    let batches: Vec<Vec<Vec<u8>>> = (0..frame_count / BATCH_FRAMES)
        .map(|b| {
            (0..BATCH_FRAMES)
                .map(|i| record(&mut rng, b * BATCH_FRAMES + i))
                .collect()
        })
        .collect();
    let total_bytes = batches.len() * BATCH_FRAMES * FRAME_BYTES;
    println!(
        "spool_throughput: {} frames of {FRAME_BYTES} B ({} MiB) in batches of {BATCH_FRAMES}, fsync per batch, dir {base}",
        batches.len() * BATCH_FRAMES,
        total_bytes / (1024 * 1024)
    );

    let plain_path = dir.path().join("plain.bin");
    let plain_write_time = plain_write(&plain_path, &batches);
    let plain_replay_time = plain_replay(&plain_path, &dir.path().join("position"), batches.len());

    let config = SpoolConfig::new(4 * total_bytes as u64).with_fsync(FsyncPolicy::Always);
    let spool = Spool::open(dir.path().join("spool"), config).unwrap();
    let spool_write_time = spool_write(&spool, &batches);
    let on_disk = spool.stats().bytes;
    // SPOOL_BENCH_REPLAY_FRAMES changes how many frames each peek+ack covers.
    let window_frames = std::env::var("SPOOL_BENCH_REPLAY_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BATCH_FRAMES);
    let (spool_replay_time, replayed) = spool_replay(&spool, window_frames);
    assert_eq!(replayed, batches.len() * BATCH_FRAMES);

    let row = |name: &str, spool_time: Duration, plain_time: Duration| {
        let spool_rate = mb_per_s(total_bytes, spool_time);
        let plain_rate = mb_per_s(total_bytes, plain_time);
        println!(
            "{name:<8} spool {spool_rate:8.1} MB/s   plain file {plain_rate:8.1} MB/s   spool/plain = {:.2}",
            spool_rate / plain_rate
        );
    };
    row("append", spool_write_time, plain_write_time);
    row("replay", spool_replay_time, plain_replay_time);
    println!(
        "spool on-disk bytes {} ({:.2}x smaller than the payload, LZ4); MB = MiB of uncompressed payload",
        on_disk,
        total_bytes as f64 / on_disk as f64
    );
}
