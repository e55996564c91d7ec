//! Exchanges and how they route: exchange types and bindings (`exchange`),
//! the topic trie (`topic`), headers matching (`headers`).
//!
//! Owns: which queues a message goes to. May use: `queue`, `message`,
//! `protocol`, `ops`.

pub mod exchange;
pub mod headers;
pub mod topic;
