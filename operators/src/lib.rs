//! Isthmus transforms.
//!
//! | type | what it does |
//! | --- | --- |
//! | `filter` | keeps rows matching a SQL predicate (DataFusion) |
//! | `map` | SQL projections: computes, renames and drops columns |
//! | `window` | keyed tumbling/sliding event-time windows with aggregates |
//! | `detect` | online per-key anomaly score (EWMA z-score) |
//! | `infer` | per-key anomaly score from a trained Burn model, calibrated per key |
//! | `fleet` | incremental count of anomalous devices per group (differential dataflow) |
//! | `policy` | rules over fleet results → changed policies only |

pub mod detect;
pub mod expr;
pub mod filter;
pub mod fleet;
pub mod infer;
pub mod map;
pub mod policy_rules;
pub mod window;
