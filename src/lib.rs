//! snapring: scheduled, incremental, rotating hard-link snapshots of file systems.
//! The library does all the work; `main.rs` only parses arguments and maps outcomes to
//! exit codes. See ARCHITECTURE.md for the code map and the invariants.

pub mod catalog;
pub mod commands;
pub mod compare;
pub mod concurrency;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod exclude;
pub mod failpoint;
pub mod fsx;
pub mod hooks;
pub mod job;
pub mod localpath;
pub mod manifest;
pub mod notify;
pub mod pool;
pub mod relpath;
pub mod repo;
pub mod report;
pub mod restic;
pub mod restore;
pub mod runlog;
pub mod same;
pub mod schedule;
pub mod serve;
pub mod shard;
pub mod sink;
pub mod snapshot;
pub mod store;
pub mod throttle;
pub mod traverse;
pub mod util;
