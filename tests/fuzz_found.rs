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
