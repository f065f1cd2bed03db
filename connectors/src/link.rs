//! Links that fail: jittered exponential backoff for every reconnect path, and a link state
//! that logs down/up once per transition (not once per failed attempt).

use std::time::Duration;

use rand::Rng;

/// Jittered exponential backoff ("full jitter"): the n-th wait is uniform in
/// `[base·2ⁿ / 2, base·2ⁿ]`, capped at `max`. Reset after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Backoff from `base` doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The wait before the next attempt (and counts the attempt).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let jitter = rand::rng().random_range(0..=half.as_micros().max(1) as u64);
        half + Duration::from_micros(jitter)
    }

    /// Forgets past failures.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

impl Default for Backoff {
    /// 200 ms doubling up to 10 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
    }
}

/// Whether a link is up, logging each transition once.
#[derive(Debug)]
pub struct LinkState {
    component: String,
    what: String,
    up: Option<bool>,
    transitions: u64,
}

impl LinkState {
    /// The state of `what` (e.g. "Kafka 127.0.0.1:9092") used by `component`; unknown at
    /// first.
    pub fn new(component: &str, what: impl Into<String>) -> Self {
        LinkState {
            component: component.to_string(),
            what: what.into(),
            up: None,
            transitions: 0,
        }
    }

    /// The link works; logs "up" if it was down.
    pub fn up(&mut self) {
        if self.up != Some(true) {
            if self.up == Some(false) {
                tracing::info!(component = %self.component, "link up: {}", self.what);
            }
            self.up = Some(true);
            self.transitions += 1;
        }
    }

    /// The link failed; logs "down" with the reason if it was up (or unknown).
    pub fn down(&mut self, reason: &str) {
        if self.up != Some(false) {
            tracing::warn!(component = %self.component, "link down: {}: {reason}", self.what);
            self.up = Some(false);
            self.transitions += 1;
        }
    }

    /// Whether the link is known to be up.
    pub fn is_up(&self) -> bool {
        self.up == Some(true)
    }

    /// How many times the state changed.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[2] >= Duration::from_millis(200) && delays[2] <= Duration::from_millis(400));
        for d in &delays[4..] {
            assert!(
                *d >= Duration::from_millis(500) && *d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
        // Jitter: not all equal at the cap.
        let capped: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(capped.iter().any(|d| *d != capped[0]));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn link_state_counts_transitions_once() {
        let mut l = LinkState::new("c", "broker");
        l.down("refused");
        l.down("refused");
        l.down("timeout");
        assert!(!l.is_up());
        l.up();
        l.up();
        assert!(l.is_up());
        assert_eq!(l.transitions(), 2);
    }
}
