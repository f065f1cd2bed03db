//! Counters and latency histograms per component, and the summary printed for a person.
//!
//! Every component gets a [`ComponentMetrics`], shared by all workers. The engine counts
//! rows and bytes on every edge of the graph and records end-to-end latency (source read →
//! sink) per row in an hdrhistogram, so "bandwidth saved" and "p99" are numbers.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

use crate::component::Kind;

/// Counters of one component.
#[derive(Debug)]
pub struct ComponentMetrics {
    /// The component's name.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Its `type`.
    pub type_name: String,
    /// Whether it sends rows off the node (a sink to the cloud).
    pub forwards: bool,
    /// Rows received (transforms, sinks).
    pub rows_in: AtomicU64,
    /// Bytes received (Arrow buffer bytes).
    pub bytes_in: AtomicU64,
    /// Rows emitted on the main output.
    pub rows_out: AtomicU64,
    /// Bytes emitted on the main output.
    pub bytes_out: AtomicU64,
    /// Records that could not be read or written, sent to the dead-letter output.
    pub dead_letters: AtomicU64,
    /// Rows behind the watermark by more than the allowed lateness.
    pub late: AtomicU64,
    /// Messages a sink accepted but could not deliver before the node stopped (a memory
    /// buffer the broker never acknowledged): lost.
    pub undelivered: AtomicU64,
    /// Per-row latency from source read to this sink, in microseconds.
    pub latency_us: Mutex<Histogram<u64>>,
}

impl ComponentMetrics {
    /// Fresh counters.
    pub fn new(name: &str, kind: Kind, type_name: &str, forwards: bool) -> Self {
        ComponentMetrics {
            name: name.to_string(),
            kind,
            type_name: type_name.to_string(),
            forwards,
            rows_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            late: AtomicU64::new(0),
            undelivered: AtomicU64::new(0),
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ),
        }
    }

    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records `rows` rows that took `latency_us` from source to here.
    pub fn record_latency(&self, latency_us: u64, rows: u64) {
        if rows == 0 {
            return;
        }
        let mut h = self.latency_us.lock().expect("histogram lock poisoned");
        let _ = h.record_n(latency_us.max(1), rows);
    }

    /// Latency quantile in microseconds (0 when nothing was recorded).
    pub fn latency_quantile_us(&self, q: f64) -> u64 {
        let h = self.latency_us.lock().expect("histogram lock poisoned");
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    }

    /// Largest latency recorded, in microseconds.
    pub fn latency_max_us(&self) -> u64 {
        self.latency_us
            .lock()
            .expect("histogram lock poisoned")
            .max()
    }
}

/// Totals of one node (pipeline), read from its components and policy store.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeSummary {
    /// The node's id.
    pub node: String,
    /// Rows produced by its sources.
    pub events_in: u64,
    /// Bytes produced by its sources.
    pub bytes_in: u64,
    /// Whether the node has a sink that sends rows off the node.
    pub forwarding: bool,
    /// Rows received by all sinks.
    pub events_to_sinks: u64,
    /// Rows received by sinks that leave the node.
    pub events_forwarded: u64,
    /// Bytes received by sinks that leave the node.
    pub bytes_forwarded: u64,
    /// Records dead-lettered anywhere in the node.
    pub dead_letters: u64,
    /// Late rows anywhere in the node.
    pub late: u64,
    /// Messages sinks accepted but could not deliver (lost).
    pub undelivered: u64,
    /// Policy changes applied to this node.
    pub policy_applied: u64,
    /// Policy changes refused by this node.
    pub policy_refused: u64,
    /// Latency p50 over all sinks, µs.
    pub latency_p50_us: u64,
    /// Latency p99 over all sinks, µs.
    pub latency_p99_us: u64,
    /// Latency max over all sinks, µs.
    pub latency_max_us: u64,
}

impl NodeSummary {
    /// Builds the summary of a node from its components' metrics.
    pub fn collect(
        node: &str,
        components: &[std::sync::Arc<ComponentMetrics>],
        policy_applied: u64,
        policy_refused: u64,
    ) -> Self {
        let mut s = NodeSummary {
            node: node.to_string(),
            policy_applied,
            policy_refused,
            ..Default::default()
        };
        let mut merged =
            Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        for c in components {
            let g = ComponentMetrics::get;
            match c.kind {
                Kind::Source => {
                    s.events_in += g(&c.rows_out);
                    s.bytes_in += g(&c.bytes_out);
                }
                Kind::Sink => {
                    s.events_to_sinks += g(&c.rows_in);
                    if c.forwards {
                        s.forwarding = true;
                        s.events_forwarded += g(&c.rows_in);
                        s.bytes_forwarded += g(&c.bytes_in);
                    }
                    let _ = merged.add(&*c.latency_us.lock().expect("histogram lock poisoned"));
                }
                Kind::Transform => {}
            }
            s.dead_letters += g(&c.dead_letters);
            s.late += g(&c.late);
            s.undelivered += g(&c.undelivered);
        }
        if !merged.is_empty() {
            s.latency_p50_us = merged.value_at_quantile(0.5);
            s.latency_p99_us = merged.value_at_quantile(0.99);
            s.latency_max_us = merged.max();
        }
        s
    }

    /// The share of input bytes that did not have to leave the node, in percent.
    pub fn bandwidth_saved_pct(&self) -> f64 {
        if self.bytes_in == 0 {
            0.0
        } else {
            100.0 * (1.0 - self.bytes_forwarded as f64 / self.bytes_in as f64)
        }
    }

    /// One line for the progress display.
    pub fn progress_line(&self) -> String {
        let (label, out) = if self.forwarding {
            ("forwarded", self.events_forwarded)
        } else {
            ("to sinks", self.events_to_sinks)
        };
        format!(
            "[{}] in {} | {label} {out} | dead-lettered {} | late {} | policy applied {} | p99 {}",
            self.node,
            self.events_in,
            self.dead_letters,
            self.late,
            self.policy_applied,
            fmt_us(self.latency_p99_us)
        )
    }

    /// The end-of-run report for a person.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "node {}", self.node);
        let _ = writeln!(out, "  events in            {:>12}", self.events_in);
        if self.forwarding {
            let _ = writeln!(out, "  events forwarded     {:>12}", self.events_forwarded);
            let _ = writeln!(
                out,
                "  bytes in / forwarded {:>12} / {} ({:.1}% bandwidth saved)",
                fmt_bytes(self.bytes_in),
                fmt_bytes(self.bytes_forwarded),
                self.bandwidth_saved_pct()
            );
        } else {
            let _ = writeln!(out, "  events to sinks      {:>12}", self.events_to_sinks);
            let _ = writeln!(
                out,
                "  bytes in             {:>12}",
                fmt_bytes(self.bytes_in)
            );
        }
        let _ = writeln!(out, "  dead-lettered        {:>12}", self.dead_letters);
        let _ = writeln!(out, "  late                 {:>12}", self.late);
        if self.undelivered > 0 {
            let _ = writeln!(
                out,
                "  UNDELIVERED (lost)   {:>12} messages",
                self.undelivered
            );
        }
        let _ = writeln!(
            out,
            "  policy changes       {:>12} applied, {} refused",
            self.policy_applied, self.policy_refused
        );
        let _ = write!(
            out,
            "  latency source→sink  p50 {}  p99 {}  max {}",
            fmt_us(self.latency_p50_us),
            fmt_us(self.latency_p99_us),
            fmt_us(self.latency_max_us)
        );
        out
    }
}

/// Formats microseconds for a person.
pub fn fmt_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{us}µs")
    }
}

/// Formats bytes for a person.
pub fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}
