//! Fuzzes the manifest index (`<id>.idx`: the root line's place, then 24-byte records
//! of directory key, offset and length) with arbitrary bytes beside a real manifest
//! from a backup (`fuzz/fixtures/index.mf`). Opens it with `manifest::Reader` and looks
//! up the root line and every directory. A damaged index must give an error, never a
//! panic nor an allocation of a length it names.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use snapring::manifest::{self, Reader};
use snapring::relpath::RelPath;

static MANIFEST: &[u8] = include_bytes!("../fixtures/index.mf");

/// Writes the real manifest once; returns its directories (and one it does not have).
fn setup() -> &'static [RelPath] {
    static DIRS: OnceLock<Vec<RelPath>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let (mf, _) = manifest::paths(common::scratch("index"), "m");
        common::put(&mf, MANIFEST);
        let text = std::str::from_utf8(MANIFEST).expect("the fixture is text");
        let mut dirs: Vec<RelPath> = text
            .lines()
            .filter_map(|l| l.strip_prefix("D "))
            .map(|d| RelPath::from_escaped(d).expect("the fixture's directories parse"))
            .collect();
        dirs.push(RelPath::new(b"not/in/the/manifest").expect("valid"));
        dirs
    })
}

fuzz_target!(|data: &[u8]| {
    let _budget = common::Budget::new();
    let dirs = setup();
    let dir = common::scratch("index");
    common::put(&manifest::paths(dir, "m").1, data);
    let Ok(r) = Reader::open(dir, "m") else {
        return;
    };
    let _ = r.root();
    for d in dirs {
        let _ = r.lookup(d);
    }
});
