//! Running the broker: configuration (`config`), resource alarms
//! (`alarms`), counters and rates (`stats`), the monotonic clock (`clock`).
//!
//! Owns: process-wide settings and measurements. May use: `protocol` only.

pub mod alarms;
pub mod clock;
pub mod config;
pub mod pem;
pub mod stats;
