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
//! | `reconfigure` | sink | applies a policy stream to this node's `[policy]` |

pub mod channel;
pub mod csv_source;
pub mod file_sink;
pub mod jsonl_source;
pub mod null;
pub mod reconfigure;
pub mod replay;
pub mod simulator;
pub mod stdout;
