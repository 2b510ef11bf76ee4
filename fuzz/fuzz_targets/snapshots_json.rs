//! Fuzzes `.snapring/snapshots.json` (the records of the published snapshots) with
//! arbitrary bytes, read the way `snapring list` reads it: `commands::list::list` on a
//! store with snapshot directories `daily.0`, `daily.1` and `hourly.0`, which opens the
//! store, matches records to directories by inode and name, and reads the run record
//! each record names. A damaged file must never panic.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use snapring::store::Store;

/// A store with three empty snapshot directories, made once.
fn store() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = common::scratch("snapshots_json").join("store");
        std::fs::create_dir(&root).expect("create the store");
        Store::open(&root, true).expect("make the store");
        for name in ["daily.0", "daily.1", "hourly.0"] {
            std::fs::create_dir(root.join(name)).expect("create a snapshot directory");
        }
        root
    })
}

fuzz_target!(|data: &[u8]| {
    let _budget = common::Budget::new();
    let root = store();
    common::put(&root.join(".snapring/snapshots.json"), data);
    let _ = snapring::commands::list::list(root, false, 1);
});
