//! Crash test with real processes: a child appends frames (and a sender thread in it
//! acknowledges some) while reporting each completed call on stdout; the parent kills it
//! with SIGKILL mid-stream, reopens the spool and checks that every append the child saw
//! return is still there exactly once, in order, with its exact bytes.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{payload_for, read_all};
use isthmus_spool::{Spool, SpoolConfig};

/// When set, the `kill9_child_process` test runs the child's workload in this directory.
const CHILD_DIR_ENV: &str = "ISTHMUS_SPOOL_KILL9_CHILD_DIR";

/// Prefix of the child's report lines.
const REPORT_MARKER: &str = "@spool@ ";

fn config() -> SpoolConfig {
    SpoolConfig::new(4 << 20).with_segment_bytes(64 * 1024)
}

/// Payload length of a sequence number, so lengths vary but are reproducible.
fn payload_len(seq: u64) -> usize {
    50 + (seq as usize * 7919) % 3000
}

fn report(line: &str) {
    // Direct writes to stdout are not captured by the test harness.
    let mut out = std::io::stdout().lock();
    // The marker finds the report even when libtest's "test ... " prefix shares the line.
    let _ = writeln!(out, "{REPORT_MARKER}{line}");
    let _ = out.flush();
}

/// The child's workload: appends (single frames and small batches) until killed, while a
/// sender thread peeks and acknowledges. Gives up after 60 s in case the parent vanished.
#[test]
fn kill9_child_process() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return; // Only meaningful when started by the parent test below.
    };
    let spool = Arc::new(Spool::open(&dir, config()).expect("child opens the spool"));
    let started = Instant::now();
    {
        let spool = Arc::clone(&spool);
        thread::spawn(move || {
            while started.elapsed() < Duration::from_secs(60) {
                let frames = spool.peek(32, u64::MAX).expect("child peeks");
                if let Some(last) = frames.last() {
                    spool.ack(last.seq).expect("child acks");
                    report(&format!("K {}", last.seq));
                }
                thread::sleep(Duration::from_millis(3));
            }
        });
    }
    let mut next = spool.stats().next_seq;
    report(&format!("S {next}"));
    while started.elapsed() < Duration::from_secs(60) {
        let batch_len = 1 + next % 5;
        if batch_len == 1 {
            let seq = spool
                .append(&payload_for(next, payload_len(next)))
                .expect("append");
            assert_eq!(seq, next);
            report(&format!("A {seq}"));
        } else {
            let payloads: Vec<Vec<u8>> = (next..next + batch_len)
                .map(|seq| payload_for(seq, payload_len(seq)))
                .collect();
            let range = spool.append_batch(&payloads).expect("append_batch");
            assert_eq!(range, next..next + batch_len);
            for seq in range {
                report(&format!("A {seq}"));
            }
        }
        next += batch_len;
    }
}

#[test]
fn kill9_mid_stream_loses_no_acknowledged_append() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut appended_all: Vec<u64> = Vec::new();
    for round in 0..4 {
        let mut child = Command::new(&exe)
            .args([
                "kill9_child_process",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child test process");
        let stdout = child.stdout.take().unwrap();
        let (line_tx, line_rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });

        let mut appended = Vec::new();
        let mut acked_reported = 0;
        let mut start_seq = None;
        let mut handle = |line: String| {
            let Some(at) = line.find(REPORT_MARKER) else {
                return;
            };
            let report = &line[at + REPORT_MARKER.len()..];
            let (kind, value) = report.split_once(' ').unwrap_or(("", ""));
            let Ok(value) = value.parse::<u64>() else {
                return;
            };
            match kind {
                "A" => appended.push(value),
                "K" => acked_reported = acked_reported.max(value),
                "S" => start_seq = Some(value),
                _ => {}
            }
        };
        // Let it run until it has appended a few hundred frames (a different number each
        // round), then kill it without warning.
        let kill_after = 300 + round * 250;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < kill_after {
            let line = line_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("child produced output in time");
            if line.contains(&format!("{REPORT_MARKER}A ")) {
                seen += 1;
            }
            handle(line);
        }
        child.kill().expect("SIGKILL the child");
        child.wait().unwrap();
        reader.join().unwrap();
        for line in line_rx.try_iter() {
            handle(line);
        }

        // The sequence continued after everything earlier rounds saw.
        let start_seq = start_seq.expect("child reported its start");
        assert!(
            appended.windows(2).all(|w| w[0] + 1 == w[1]),
            "round {round}"
        );
        assert_eq!(appended.first().copied(), Some(start_seq));
        if let Some(previous) = appended_all.last() {
            assert!(
                start_seq > *previous,
                "round {round}: sequence went backwards"
            );
        }
        appended_all.extend(&appended);

        let spool = Spool::open(dir.path(), config()).expect("reopen after kill -9");
        let stats = spool.stats();
        assert!(
            stats.acked_seq >= acked_reported,
            "round {round}: acknowledged {acked_reported} but cursor says {}",
            stats.acked_seq
        );
        let frames = read_all(&spool);
        assert!(
            frames.windows(2).all(|w| w[0].seq < w[1].seq),
            "round {round}: order"
        );
        for frame in &frames {
            assert!(frame.seq > stats.acked_seq);
            assert_eq!(
                frame.payload,
                payload_for(frame.seq, payload_len(frame.seq))
            );
        }
        let present: HashSet<u64> = frames.iter().map(|f| f.seq).collect();
        assert_eq!(present.len(), frames.len(), "round {round}: duplicates");
        let missing: Vec<u64> = appended_all
            .iter()
            .copied()
            .filter(|seq| *seq > stats.acked_seq && !present.contains(seq))
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: lost appended frames {missing:?}"
        );
        assert_eq!(stats.quarantined_segments, 0);
        eprintln!(
            "round {round}: child appended {} frames, acked {acked_reported}; after reopen {} unacked frames from {:?}",
            appended.len(),
            frames.len(),
            frames.first().map(|f| f.seq)
        );
    }
}
