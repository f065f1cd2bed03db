//! End-to-end delivery tracking: how far every sink of a node has *durably* delivered, so
//! that sources can acknowledge upstream (commit Kafka offsets, ack MQTT messages) only what
//! can no longer be lost.
//!
//! Timely time is event time and a stream's frontier is its watermark, so "delivered through
//! `t`" means: every row sent at a time `< t` has been delivered by this sink instance
//! (written, produced and acknowledged by a broker, or appended to a durable spool), or was
//! dropped on purpose upstream (a filter) or sent to a dead-letter output. A source holds each
//! record's emission time and commits the contiguous prefix of records emitted before
//! [`DeliveryTracker::frontier`], the minimum over every sink instance on every worker.

use std::sync::Mutex;

use crate::batch::Time;

/// Delivery progress of every sink instance of one node (shared by its workers).
#[derive(Debug)]
pub struct DeliveryTracker {
    expected: usize,
    slots: Mutex<Vec<Time>>,
}

impl DeliveryTracker {
    /// A tracker expecting `sink_instances` (sinks × workers) to register.
    pub fn new(sink_instances: usize) -> Self {
        DeliveryTracker {
            expected: sink_instances,
            slots: Mutex::new(Vec::with_capacity(sink_instances)),
        }
    }

    /// Registers one sink instance; it starts having delivered nothing.
    pub fn register(self: &std::sync::Arc<Self>) -> DeliveryReporter {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.push(0);
        DeliveryReporter {
            tracker: self.clone(),
            slot: slots.len() - 1,
            last: 0,
        }
    }

    /// Everything sent at a time before this has been delivered by every sink instance
    /// (0 until every instance has registered; `Time::MAX` once every sink has finished).
    pub fn frontier(&self) -> Time {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() < self.expected {
            return 0;
        }
        slots.iter().copied().min().unwrap_or(Time::MAX)
    }
}

/// A sink instance's handle for reporting how far it has delivered.
#[derive(Debug)]
pub struct DeliveryReporter {
    tracker: std::sync::Arc<DeliveryTracker>,
    slot: usize,
    last: Time,
}

impl DeliveryReporter {
    /// Everything sent before `time` has been delivered (never moves backwards).
    pub fn delivered_before(&mut self, time: Time) {
        if time <= self.last {
            return;
        }
        self.last = time;
        let mut slots = self.tracker.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots[self.slot] = time;
    }

    /// Reports the input frontier of a synchronous sink after it has written every row it
    /// was given: an empty frontier means everything was delivered.
    pub fn delivered_through_frontier(&mut self, frontier: &[Time]) {
        let time = frontier.iter().copied().min().unwrap_or(Time::MAX);
        self.delivered_before(time);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn frontier_is_the_minimum_once_every_sink_registered() {
        let t = Arc::new(DeliveryTracker::new(2));
        let mut a = t.register();
        a.delivered_before(10);
        assert_eq!(t.frontier(), 0, "second sink not registered yet");
        let mut b = t.register();
        assert_eq!(t.frontier(), 0);
        b.delivered_before(5);
        assert_eq!(t.frontier(), 5);
        b.delivered_through_frontier(&[]);
        assert_eq!(t.frontier(), 10);
        a.delivered_before(3); // never backwards
        assert_eq!(t.frontier(), 10);
        a.delivered_through_frontier(&[]);
        assert_eq!(t.frontier(), Time::MAX);
    }

    #[test]
    fn no_sinks_means_everything_is_delivered() {
        let t = Arc::new(DeliveryTracker::new(0));
        assert_eq!(t.frontier(), Time::MAX);
    }
}
