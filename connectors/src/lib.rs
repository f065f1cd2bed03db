//! Isthmus sources and sinks.
//!
//! | type | kind | what it does |
//! | --- | --- | --- |
//! | `simulator` | source | a deterministic fleet of devices with injected faults |
//! | `csv` | source | replays a CSV file (schema given or inferred) |
//! | `jsonl` | source | replays a JSON-lines file |
//! | `channel` | source, sink | in-process link between pipelines of one process |
//! | `stdout` | sink | prints rows |
//! | `jsonl`, `csv` | sink | writes files |
//! | `null` | sink | discards rows (benchmarks) |
//! | `reconfigure` | sink | applies a (signed) policy stream to this node's `[policy]` |
//! | `policy_acks` | source | this node's acknowledgements of remote policy changes |
//! | `kafka` | source, sink | Kafka topics (json, csv, arrow+lz4), end-to-end acknowledgements, disk spool |
//! | `mqtt` | source | MQTT topic filters, QoS 0/1, JSON payloads |

pub mod channel;
pub mod csv_source;
pub mod file_sink;
pub mod jsonl_source;
pub mod kafka;
pub mod link;
pub mod mqtt;
pub mod null;
pub mod policy_acks;
pub mod reconfigure;
pub mod replay;
pub mod simulator;
pub mod stdout;
