//! Fuzzes the config file: TOML text through `config::check_text`, which is what
//! `snapring config check` runs (parse, then every job resolved and validated, its
//! schedule, time zone, `missed` and notifiers checked). A bad file must give messages,
//! never a panic.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _budget = common::Budget::new();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = snapring::config::check_text(std::path::Path::new("fuzz.toml"), text);
});
