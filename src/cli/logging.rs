//! Log set-up: tracing lines on stderr at the level `-v` asks for, and INFO and up into
//! each run's log file in the store (`snapring::runlog`), as text or JSON. Colours only
//! when stderr is a terminal (not in a pipe, a file or the journal).

use std::io::IsTerminal;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The logging flags as given, to hand on to a child `snapring` (the daemon's runs).
#[derive(Clone, Debug, Default)]
pub struct LogFlags {
    pub verbose: u8,
    pub json: bool,
}

impl LogFlags {
    /// `--log-format json` and `-v`s, as arguments.
    pub fn args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.json {
            v.extend(["--log-format".to_string(), "json".to_string()]);
        }
        if self.verbose > 0 {
            v.push(format!("-{}", "v".repeat(self.verbose as usize)));
        }
        v
    }
}

/// Installs the global subscriber: `verbose` 0 warn, 1 info, 2+ debug on stderr.
pub fn init(verbose: u8, json: bool) {
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    };
    let layers = if json {
        json_layers(level)
    } else {
        text_layers(level)
    };
    tracing_subscriber::registry().with(layers).init();
}

/// Colours on stderr: only to a terminal, and not with `NO_COLOR` set to anything but
/// the empty string (<https://no-color.org>).
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn text_layers(level: LevelFilter) -> Vec<Boxed> {
    let fmt = tracing_subscriber::fmt::layer;
    vec![
        fmt()
            .with_writer(std::io::stderr)
            .with_ansi(colours())
            .with_target(false)
            .with_filter(level)
            .boxed(),
        // The run's log file: INFO and up, no colours.
        fmt()
            .with_writer(snapring::runlog::RunLog)
            .with_ansi(false)
            .with_target(false)
            .with_filter(LevelFilter::INFO)
            .boxed(),
    ]
}

fn json_layers(level: LevelFilter) -> Vec<Boxed> {
    let fmt = tracing_subscriber::fmt::layer;
    vec![
        fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_target(false)
            .json()
            .with_filter(level)
            .boxed(),
        fmt()
            .with_writer(snapring::runlog::RunLog)
            .with_ansi(false)
            .with_target(false)
            .json()
            .with_filter(LevelFilter::INFO)
            .boxed(),
    ]
}
