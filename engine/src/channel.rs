//! In-process channels: a `channel` sink in one pipeline feeds a `channel` source in another
//! pipeline of the same process. Batches travel with the sender's watermark, so the
//! receiving pipeline's frontier follows the sending pipeline's event time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::batch::{Batch, Time};

/// What travels on a channel.
#[derive(Debug)]
pub enum ChannelMessage {
    /// Rows.
    Batch(Batch),
    /// Sender `sender` will send no more rows with event time before `time`.
    Watermark {
        /// The sender's id.
        sender: usize,
        /// Its watermark.
        time: Time,
    },
    /// Sender `sender` has finished.
    Closed {
        /// The sender's id.
        sender: usize,
    },
}

struct Entry {
    tx: Sender<ChannelMessage>,
    rx: Receiver<ChannelMessage>,
    expected_senders: usize,
    next_sender: AtomicUsize,
}

/// All channels of a process, by name.
#[derive(Default)]
pub struct ChannelHub {
    channels: Mutex<HashMap<String, Entry>>,
}

impl ChannelHub {
    /// A hub with no channels.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares that `count` more senders (sink workers) will write to `name`.
    pub fn declare_senders(&self, name: &str, count: usize) {
        let mut channels = self.channels.lock().expect("channel hub poisoned");
        let entry = channels.entry(name.to_string()).or_insert_with(|| {
            let (tx, rx) = unbounded();
            Entry {
                tx,
                rx,
                expected_senders: 0,
                next_sender: AtomicUsize::new(0),
            }
        });
        entry.expected_senders += count;
    }

    /// A sending end of `name` with a fresh sender id.
    pub fn sender(&self, name: &str) -> Option<(usize, Sender<ChannelMessage>)> {
        let channels = self.channels.lock().expect("channel hub poisoned");
        channels
            .get(name)
            .map(|e| (e.next_sender.fetch_add(1, Ordering::Relaxed), e.tx.clone()))
    }

    /// The receiving end of `name` and how many senders will write to it.
    pub fn receiver(&self, name: &str) -> Option<(Receiver<ChannelMessage>, usize)> {
        let channels = self.channels.lock().expect("channel hub poisoned");
        channels
            .get(name)
            .map(|e| (e.rx.clone(), e.expected_senders))
    }
}
