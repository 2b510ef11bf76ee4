//! `restore --flat --mirror --path DIR` makes `--to` an exact copy of DIR, so it would
//! delete everything else in `--to` (the siblings of the folder the user meant to
//! restore). It is refused, exit 64, before anything is written, unless
//! `--to-is-dedicated` says `--to` holds nothing but this restore; a new `--to`, or one
//! holding only what DIR has, loses nothing and is not refused.

mod common;
use common::state::*;
use common::*;

use std::ffi::OsStr;
use std::path::Path;

fn restore(store: &Path, to: &Path, extra: &[&str]) -> (i32, String) {
    let mut args: Vec<&OsStr> = vec![
        "restore".as_ref(),
        "--dest".as_ref(),
        store.as_os_str(),
        "daily.0".as_ref(),
        "--path".as_ref(),
        "home/alice/docs".as_ref(),
        "--flat".as_ref(),
        "--mirror".as_ref(),
        "--to".as_ref(),
        to.as_os_str(),
        "--no-progress".as_ref(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let out = snapring(&args, &[]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn flat_mirror_of_a_subdirectory_is_refused_unless_the_target_is_dedicated() {
    let t = tempfile::tempdir().unwrap();
    let (src, store) = (t.path().join("src"), t.path().join("bk"));
    write(&src.join("home/alice/docs/d1"), b"from the snapshot");
    write(&src.join("home/alice/docs/sub/d2"), b"deeper");
    write(&src.join("home/alice/keep"), b"alice's other file");
    assert_eq!(backup(&src, &store, &[], &[]).0, 0);

    // Alice's live home: the folder to bring back (damaged) beside her other things.
    let home = t.path().join("alice");
    write(&home.join("docs/d1"), b"damaged");
    write(&home.join("notes.txt"), b"a sibling");
    write(&home.join("photos/p.jpg"), b"another sibling");
    let before = full_state(&home);
    for extra in [&[][..], &["--dry-run"][..]] {
        let (code, out) = restore(&store, &home, extra);
        assert_eq!(code, 64, "{extra:?}: {out}");
        for part in [
            "refused",
            "would delete the 3 entries",
            "docs, notes.txt, photos",
            "nothing was changed",
            "Restore without --flat",
            "--to-is-dedicated",
        ] {
            assert!(out.contains(part), "{extra:?}: names {part:?}: {out}");
        }
        assert_unchanged(&before, &full_state(&home), "a refused restore");
    }

    // Vouched for: --to becomes exactly the snapshot's directory.
    let (code, out) = restore(&store, &home, &["--to-is-dedicated"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(names(&home), ["d1", "sub"]);
    assert_eq!(
        std::fs::read(home.join("d1")).unwrap(),
        b"from the snapshot"
    );
    assert_eq!(std::fs::read(home.join("sub/d2")).unwrap(), b"deeper");

    // Nothing left to lose: the same restore again, and one into a new --to, need no flag.
    let (code, out) = restore(&store, &home, &[]);
    assert_eq!(code, 0, "{out}");
    let fresh = t.path().join("fresh");
    let (code, out) = restore(&store, &fresh, &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(names(&fresh), ["d1", "sub"]);
}
