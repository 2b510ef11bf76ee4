//! The binary's side of snapring: the command line (`args`), one handler module per
//! command or small group of commands, and what they share (which catalog, exit codes,
//! printing helpers, logging). A handler turns its arguments into library calls, gets
//! values back, renders them with its `print_*` functions and returns an `ExitCode`;
//! errors travel as `anyhow::Error` up to `main`, which prints them.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub mod args;
pub mod backup;
pub mod catalog;
pub mod catalog_choice;
pub mod config;
pub mod daemon;
pub mod exit_code;
pub mod inspect;
pub mod list;
pub mod logging;
pub mod print;
pub mod restic;
pub mod restore;
pub mod serve;
pub mod shard;

/// A flag that SIGINT/SIGTERM/SIGHUP set, for the long-running commands to stop
/// cleanly (SIGHUP too: a closed terminal or a dropped ssh session stops a one-shot
/// command as SIGTERM does; the daemon's SIGHUP reloads instead and does not come here).
pub fn cancel_on_signal() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    snapring::engine::progress::install_signal_handlers(&cancel);
    // A stopping run's notifiers are not retried (`notify::stop_flag`).
    snapring::notify::stop_on_signals();
    snapring::notify::stop_on_hangup();
    cancel
}
