//! Running the broker: configuration (`config`), resource alarms
//! (`alarms`), counters and rates (`stats`), the coarse clock and timer
//! wheel (`timers`).
//!
//! Owns: process-wide settings and measurements. May use: `protocol` only.

pub mod alarms;
pub mod config;
pub mod stats;
pub mod timers;
