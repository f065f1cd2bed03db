//! Kafka source and sink (rdkafka / librdkafka).
//!
//! * [`source::KafkaSource`] consumes topics in a consumer group, one consumer per worker,
//!   and commits offsets only for the contiguous prefix of records that every sink of the
//!   node has delivered (see [`isthmus_engine::delivery`]). Optional deduplication by the
//!   producer headers `(node, sink, epoch, sequence)` makes a replayed spool count once.
//! * [`sink::KafkaSink`] produces rows through a bounded buffer (memory, or a durable disk
//!   spool) with an idempotent producer (`acks=all`); it reports rows as delivered only
//!   when the broker acknowledged them or the disk spool holds them.
//!
//! librdkafka properties given under `librdkafka` are passed through verbatim and override
//! ours.

pub mod codec;
pub mod sink;
pub mod source;

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex, Weak};

/// Header: id of the node that produced the message.
pub const HEADER_NODE: &str = "isthmus-node";
/// Header: name of the sink that produced it.
pub const HEADER_SINK: &str = "isthmus-sink";
/// Header: the producer's incarnation (a disk spool keeps it across restarts).
pub const HEADER_EPOCH: &str = "isthmus-epoch";
/// Header: sequence number of the message within (node, sink, epoch).
pub const HEADER_SEQ: &str = "isthmus-seq";
/// Header: fingerprint of the producer's schema.
pub const HEADER_SCHEMA: &str = "isthmus-schema";
/// Header: the wire format (`json`, `csv`, `arrow`).
pub const HEADER_FORMAT: &str = "isthmus-format";

/// Our librdkafka defaults for a client, overridden by the user's `librdkafka` table.
/// Reconnects use librdkafka's exponential backoff with jitter, between these bounds.
fn client_config(brokers: &str, user: &BTreeMap<String, String>) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "10000")
        .set("retry.backoff.ms", "100")
        .set("retry.backoff.max.ms", "5000")
        .set("log_level", "3");
    for (k, v) in user {
        config.set(k, v);
    }
    config
}

/// Whether a client error means the link to the brokers is down (a refused or lost
/// connection, an unresolvable address, or every broker unreachable).
fn is_link_failure(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(Code::AllBrokersDown | Code::BrokerTransportFailure | Code::Resolve)
    )
}

/// librdkafka's own log lines: connection failures repeat at every reconnect attempt and are
/// already reported once per transition as "link down", so they go to `debug`; anything
/// librdkafka calls critical or worse stays a warning.
fn log_librdkafka(
    client: &str,
    level: rdkafka::config::RDKafkaLogLevel,
    facility: &str,
    message: &str,
) {
    use rdkafka::config::RDKafkaLogLevel as Level;
    match level {
        Level::Emerg | Level::Alert | Level::Critical => {
            tracing::warn!("librdkafka {client} {facility}: {message}")
        }
        _ => tracing::debug!("librdkafka {client} {facility}: {message}"),
    }
}

type Registry = Mutex<HashMap<String, Weak<dyn Any + Send + Sync>>>;
static SHARED: LazyLock<Registry> = LazyLock::new(Default::default);

/// State shared by the workers of one component in this process (created by the first
/// worker that asks, dropped when the last one lets go).
fn shared<T: Any + Send + Sync>(key: &str, make: impl FnOnce() -> T) -> Arc<T> {
    let mut map = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = map.get(key).and_then(Weak::upgrade)
        && let Ok(typed) = existing.downcast::<T>()
    {
        return typed;
    }
    let made = Arc::new(make());
    let erased: Arc<dyn Any + Send + Sync> = made.clone();
    map.insert(key.to_string(), Arc::downgrade(&erased));
    made
}
