//! Inputs the fuzz targets (`fuzz/`, docs/testing.md "Fuzzing") found to crash the
//! product, each kept as a test that failed before its fix. The crashing files are in
//! `tests/fixtures/fuzz/`, beside the real manifest they were found with
//! (`fuzz/fixtures/index.mf`, from a backup).

use std::io::ErrorKind;
use std::path::Path;

use snapring::manifest::{self, Reader};
use snapring::relpath::RelPath;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fuzz");
const REAL_MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/fixtures/index.mf");

/// Puts the real manifest and the index `idx` in `dir` as the manifest of run `m`.
fn manifest_with_index(dir: &Path, idx: &[u8]) {
    let (mf_path, idx_path) = manifest::paths(dir, "m");
    std::fs::copy(REAL_MANIFEST, mf_path).unwrap();
    std::fs::write(idx_path, idx).unwrap();
}

/// The index record of `dir a/sub` names a block of 0x5f00_0000_0000_0000 bytes:
/// `lookup` allocated that much (and aborted the process) before reading it.
#[test]
fn index_naming_a_block_past_the_manifest_is_an_error_not_an_allocation() {
    let t = tempfile::tempdir().unwrap();
    let idx = std::fs::read(Path::new(FIXTURES).join("index-block-past-end.idx")).unwrap();
    manifest_with_index(t.path(), &idx);
    let r = Reader::open(t.path(), "m").unwrap();
    let mut refused = 0;
    for d in ["", "dir a", "dir a/sub", "new", "b"] {
        if let Err(e) = r.lookup(&RelPath::new(d.as_bytes()).unwrap()) {
            assert_eq!(e.kind(), ErrorKind::InvalidData, "{d}: {e}");
            assert!(
                e.to_string().contains("past the end of the manifest"),
                "{e}"
            );
            assert!(e.to_string().contains("m.mf"), "names the file: {e}");
            refused += 1;
        }
    }
    assert_eq!(refused, 1, "only the damaged record is refused");
}

/// The same for the root line, whose place is in the index's header.
#[test]
fn index_naming_a_root_line_past_the_manifest_is_an_error_not_an_allocation() {
    let t = tempfile::tempdir().unwrap();
    let mut idx = std::fs::read(Path::new(FIXTURES).join("index-block-past-end.idx")).unwrap();
    idx[16..24].copy_from_slice(&(1u64 << 62).to_le_bytes());
    manifest_with_index(t.path(), &idx);
    let e = Reader::open(t.path(), "m").unwrap().root().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    assert!(
        e.to_string().contains("past the end of the manifest"),
        "{e}"
    );
}

/// `window = "213503982334602d6h"`: the seconds overflowed `u64` while the duration was
/// added up, a panic in `config check` (and a window wrapped to a few hours in a
/// release build).
#[test]
fn config_check_refuses_a_window_too_long_instead_of_panicking() {
    let path = Path::new(FIXTURES).join("config-window-overflow.toml");
    let problems = snapring::config::check(&path);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("window") && p.contains("longer than 100 years")),
        "{problems:?}"
    );
}

/// `schedule = "0 , * * *"`: croner skips the empty items of a list, so the hour field
/// selected nothing and the check that the schedule fires walked every day to the year
/// 5000, twice: a timeout of the unoptimized fuzz build (14 s). An empty item is now
/// refused by name before croner is asked.
#[test]
fn config_check_names_an_empty_list_item_instead_of_searching_to_the_year_5000() {
    let path = Path::new(FIXTURES).join("config-empty-hour-list.toml");
    let problems = snapring::config::check(&path);
    assert!(
        problems.iter().any(|p| p.contains("job.w.schedule")
            && p.contains("the hour field \",\" has an empty item")),
        "{problems:?}"
    );
    assert!(
        !problems.iter().any(|p| p.contains("never fires")),
        "{problems:?}"
    );
}

/// Durations below `u64` overflow but past the clock's range failed later, where they
/// are added to the time: a notifier's `timeout` (`Instant::now() + timeout`) and
/// `--since` (`now - since`), both panics. They are refused where they are parsed.
#[test]
fn durations_past_a_hundred_years_are_refused_where_they_are_parsed() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("c.toml");
    let text = "[job.a]\nsource = \"/srv\"\ndest = \"/backup\"\nnotify = [\"hook\"]\n\
                [notify.hook]\ntype = \"command\"\ncommand = [\"true\"]\ntimeout = \"213503982334601d\"\n";
    std::fs::write(&cfg, text).unwrap();
    let problems = snapring::config::check(&cfg);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("timeout") && p.contains("longer than 100 years")),
        "{problems:?}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snapring"))
        .args(["history", "--since", "99999999999d", "--catalog"])
        .arg(t.path().join("catalog.db"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("--since"), "{err}");
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}
