//! Paths given as arguments that are not UTF-8 (a Latin-1 directory of an old NFS
//! export, `caf\xe9`): backed up from, stored into, restored into, recorded exactly
//! (the text field as before plus `<field>_raw` bytes; docs/format.md) and printed with
//! only control characters and invalid bytes escaped; a UTF-8 path with a literal `%E9`
//! is read back as those characters, never as a byte.

mod common;

use common::*;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// `dir/name`, `name` any bytes.
fn named(dir: &Path, name: &[u8]) -> PathBuf {
    dir.join(OsString::from_vec(name.to_vec()))
}

/// snapring with `args` (any bytes) and `env`: (exit code, stdout, stderr).
fn run(args: &[&OsStr], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = snapring(args, env);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn o(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap()
}

/// The bytes of a `<field>_raw` JSON array.
fn raw_of(v: &serde_json::Value) -> Option<Vec<u8>> {
    v.as_array().map(|a| {
        a.iter()
            .map(|b| b.as_u64().expect("a byte") as u8)
            .collect()
    })
}

/// `backup --source SRC --dest DEST --json` (and `extra`) with the catalog `catalog`:
/// the run's report.
fn backup_json(
    src: &Path,
    dest: &Path,
    catalog: &Path,
    extra: &[&OsStr],
) -> (i32, serde_json::Value, String) {
    let mut a = vec![
        o("--catalog"),
        catalog.as_os_str(),
        o("backup"),
        o("--source"),
        src.as_os_str(),
        o("--dest"),
        dest.as_os_str(),
        o("--json"),
    ];
    a.extend(extra);
    let (code, out, err) = run(&a, &[]);
    let v = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    (code, v, err)
}

/// A Latin-1 source backed up twice in a row into a Latin-1 store (with the catalog in
/// a Latin-1 directory too), then restored into a Latin-1 directory. The second run
/// continues the first's snapshots (the record's source reads back as the same bytes;
/// refused as "another source" otherwise); the record keeps the text field, lossy, and
/// `source_raw`/`store_raw` with the bytes; the hook gets the bytes; the restore's
/// record has `to_raw`. Before: clap refused every one of these paths ("invalid UTF-8
/// was detected", exit 64).
#[test]
fn a_latin1_source_is_backed_up_twice_into_a_latin1_store_and_restored() {
    let t = tempfile::tempdir().unwrap();
    let (src, store, to) = (
        named(t.path(), b"caf\xe9"),
        named(t.path(), b"st\xf6re"),
        named(t.path(), b"r\xfcck"),
    );
    let catalog = named(t.path(), b"st\xe4te").join("catalog.db");
    write(&src.join("a"), b"alpha");
    write(&named(&src, b"d\xe9/b"), b"beta");
    let hook_out = t.path().join("hook-source");
    let hook = format!(
        "sh -c 'printf %s \"$SNAPRING_SOURCE\" > {}'",
        hook_out.display()
    );
    let (code, r1, err) = backup_json(&src, &store, &catalog, &[o("--pre-command"), o(&hook)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r1["status"], "complete", "{r1}");
    // The text field for a human (U+FFFD for the byte), the bytes beside it.
    let lossy = |p: &Path| p.to_string_lossy().into_owned();
    assert_eq!(r1["source"], lossy(&canon(&src)), "{r1}");
    assert_eq!(
        raw_of(&r1["source_raw"]).as_deref(),
        Some(canon(&src).as_os_str().as_bytes()),
        "{r1}"
    );
    assert_eq!(
        raw_of(&r1["store_raw"]).as_deref(),
        Some(canon(&store).as_os_str().as_bytes()),
        "{r1}"
    );
    assert_eq!(
        std::fs::read(&hook_out).unwrap(),
        canon(&src).as_os_str().as_bytes(),
        "SNAPRING_SOURCE must be the source's bytes"
    );
    // The record in the store says the same.
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            store
                .join(".snapring/runs")
                .join(format!("{}.json", r1["id"].as_str().unwrap())),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(rec["source_raw"], r1["source_raw"], "{rec}");

    write(&src.join("c"), b"gamma");
    let (code, r2, err) = backup_json(&src, &store, &catalog, &[]);
    assert_eq!(code, 0, "the second run was refused: {err}");
    assert_eq!(r2["files_linked"], 2, "{r2}");
    assert_eq!(r2["source_raw"], r1["source_raw"], "{r2}");

    let (code, out, err) = run(
        &[
            o("--catalog"),
            catalog.as_os_str(),
            o("restore"),
            o("--dest"),
            store.as_os_str(),
            o("latest"),
            o("--to"),
            to.as_os_str(),
            o("--json"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_same_tree(&describe(&src), &describe(&to), "restored");
    let rr: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        raw_of(&rr["to_raw"]).as_deref(),
        Some(to.as_os_str().as_bytes()),
        "{rr}"
    );

    // The catalog: `history --dest` finds the store's runs by its bytes, and `show`
    // reads the record back.
    let (code, out, err) = run(
        &[
            o("--catalog"),
            catalog.as_os_str(),
            o("history"),
            o("--dest"),
            store.as_os_str(),
            o("--json"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let h: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        h.as_array().map(Vec::len),
        Some(3),
        "two backups, a restore: {h}"
    );
    let (code, out, err) = run(
        &[
            o("--catalog"),
            catalog.as_os_str(),
            o("show"),
            o(r1["id"].as_str().unwrap()),
            o("--json"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["report"]["source_raw"], r1["source_raw"], "{s}");
}

/// Two Latin-1 stores whose names differ in one byte (`st\xf6re`, `st\xf5re`: the same
/// text with U+FFFD) keep their runs apart in the catalog: `history --dest` of each
/// lists its own, and rebuilding one from its records leaves the other's rows.
#[test]
fn the_catalog_keeps_two_stores_differing_in_one_byte_apart() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("a"), b"alpha");
    let catalog = t.path().join("catalog.db");
    let (a, b) = (named(t.path(), b"st\xf6re"), named(t.path(), b"st\xf5re"));
    for (store, n) in [(&a, 1), (&b, 2)] {
        for _ in 0..n {
            let (code, _, err) = backup_json(&src, store, &catalog, &[]);
            assert_eq!(code, 0, "{err}");
        }
    }
    let history = |store: &Path| {
        let (code, out, err) = run(
            &[
                o("--catalog"),
                catalog.as_os_str(),
                o("history"),
                o("--dest"),
                store.as_os_str(),
                o("--json"),
            ],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        let h: serde_json::Value = serde_json::from_str(&out).unwrap();
        h.as_array().map_or(0, Vec::len)
    };
    assert_eq!((history(&a), history(&b)), (1, 2));
    let (code, _, err) = run(
        &[
            o("--catalog"),
            catalog.as_os_str(),
            o("catalog"),
            o("rebuild"),
            o("--dest"),
            a.as_os_str(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!((history(&a), history(&b)), (1, 2), "after a rebuild of one");
}

/// A UTF-8 source whose name holds a literal `%E9` (a wget mirror's directory), and a
/// Latin-1 directory below one: each backed up three times in a row. The record's
/// `source` is the path as typed, never decoded (the reverted attempt read `%E9` back
/// as the byte 0xE9, so every second run was refused as another source), and a UTF-8
/// path gets no `_raw` field: its record is what older versions wrote.
#[test]
fn a_source_named_with_a_literal_percent_escape_is_backed_up_three_times() {
    let t = tempfile::tempdir().unwrap();
    let catalog = t.path().join("catalog.db");
    let mirror = t.path().join("src%E9");
    let latin1 = named(&t.path().join("mirror%E9"), b"caf\xe9");
    for (src, store) in [
        (&mirror, t.path().join("st1")),
        (&latin1, t.path().join("st2")),
    ] {
        write(&src.join("a"), b"alpha");
        for i in 0..3 {
            write(&src.join(format!("f{i}")), b"more");
            let (code, r, err) = backup_json(src, &store, &catalog, &[]);
            assert_eq!(code, 0, "run {i} of {}: {err}", src.display());
            assert_eq!(r["status"], "complete", "{r}");
            if src == &mirror {
                assert_eq!(r["source"], canon(src).to_str().unwrap(), "{r}");
                assert!(r.get("source_raw").is_none(), "{r}");
                assert!(r.get("store_raw").is_none(), "{r}");
            } else {
                assert!(
                    r["source"]
                        .as_str()
                        .unwrap()
                        .contains("/mirror%E9/caf\u{fffd}"),
                    "{r}"
                );
            }
        }
        assert_eq!(snapshot_names(&store), ["daily.0", "daily.1", "daily.2"]);
    }
}

/// A record as older versions wrote it (no `_raw` field; a `source` with a literal
/// `%E9`) is read as it was: the next run continues it. With SNAPRING_OLD_BINARY set
/// (a snapring built before this change, e.g. the last release), that binary writes
/// the first record; else this one does, and the record must be what an older version
/// writes for a UTF-8 path (no `_raw` field), then it is also rewritten by hand as one.
#[test]
fn an_old_record_is_read_as_before() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src%E9");
    let store = t.path().join("store");
    write(&src.join("a"), b"alpha");
    let old = std::env::var_os("SNAPRING_OLD_BINARY");
    let first = match &old {
        Some(b) => std::process::Command::new(b)
            .arg("backup")
            .arg("--source")
            .arg(&src)
            .arg("--dest")
            .arg(&store)
            .env("SNAPRING_CATALOG", "off")
            .output()
            .unwrap(),
        None => snapring(
            &[
                o("backup"),
                o("--source"),
                src.as_os_str(),
                o("--dest"),
                store.as_os_str(),
            ],
            &[],
        ),
    };
    assert!(first.status.success(), "{first:?}");
    let runs = store.join(".snapring/runs");
    let rec_path = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let text = std::fs::read_to_string(&rec_path).unwrap();
    assert!(!text.contains("_raw"), "{text}");
    if old.is_none() {
        // As an older version wrote it: the same fields, none of them `_raw`.
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["source"] = canon(&src).to_str().unwrap().into();
        std::fs::write(&rec_path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
    write(&src.join("b"), b"beta");
    let (code, r, err) = backup_json(&src, &store, &t.path().join("catalog.db"), &[]);
    assert_eq!(code, 0, "the run after an old record was refused: {err}");
    assert_eq!(r["files_linked"], 1, "{r}");
    assert_eq!(snapshot_names(&store), ["daily.0", "daily.1"]);
}

/// Into a restic repository a snapshot's path is a JSON string: two Latin-1 sources
/// differing in one byte would be one retention group (`--retain 1` forgot the
/// other's snapshot). Such a source is refused, saying why and what to do, single-node
/// and as a shard run; nothing is written to the repository.
#[test]
fn a_latin1_source_is_refused_for_a_repository() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    let url = format!("file://{}", repo.display());
    let pw = [("SNAPRING_PASSWORD", "pw")];
    let (code, _, err) = run(&[o("init"), o("--dest"), o(&url)], &pw);
    assert_eq!(code, 0, "{err}");
    let snapshots = || std::fs::read_dir(repo.join("snapshots")).unwrap().count();
    for name in [&b"caf\xe9"[..], b"caf\xe8"] {
        let src = named(t.path(), name);
        write(&src.join("a"), b"alpha");
        let (code, _, err) = run(
            &[
                o("backup"),
                o("--source"),
                src.as_os_str(),
                o("--dest"),
                o(&url),
                o("--retain"),
                o("1"),
            ],
            &pw,
        );
        assert_eq!(code, 1, "{err}");
        let shown = format!("{}/caf\\x{:02X}", canon(t.path()).display(), name[3]);
        assert!(
            err.contains(&format!(
                "the source {shown} cannot be backed up into a restic repository"
            )) && err.contains("Back up a parent directory")
                && err.contains("into a store"),
            "{err}"
        );
        let (code, _, err) = run(
            &[
                o("backup"),
                o("--source"),
                src.as_os_str(),
                o("--dest"),
                o(&url),
                o("--shard"),
                o("0/1"),
                o("--run-id"),
                o("r1"),
            ],
            &pw,
        );
        assert_eq!(code, 64, "{err}");
        assert!(
            err.contains("cannot be backed up into a restic repository"),
            "{err}"
        );
    }
    assert_eq!(snapshots(), 0);
}

/// A shard run (`--shard 0/1`) of a Latin-1 source into a store: its plan and record
/// keep the source's bytes (`source_raw`; serde refused a `PathBuf` that is not UTF-8),
/// and the next shard run continues its snapshots.
#[test]
fn a_shard_run_of_a_latin1_source_into_a_store() {
    let t = tempfile::tempdir().unwrap();
    let src = named(t.path(), b"caf\xe9");
    let store = named(t.path(), b"st\xf6re");
    write(&src.join("a"), b"alpha");
    write(&src.join("d/b"), b"beta");
    for (i, run_id) in ["r1", "r2"].iter().enumerate() {
        write(&src.join(format!("n{i}")), b"new");
        let (code, out, err) = run(
            &[
                o("backup"),
                o("--source"),
                src.as_os_str(),
                o("--dest"),
                store.as_os_str(),
                o("--shard"),
                o("0/1"),
                o("--run-id"),
                o(run_id),
            ],
            &[],
        );
        assert_eq!(code, 0, "{run_id}: {out}\n{err}");
    }
    assert_eq!(snapshot_names(&store), ["daily.0", "daily.1"]);
    let records: Vec<serde_json::Value> = std::fs::read_dir(store.join(".snapring/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(
            raw_of(&r["source_raw"]).as_deref(),
            Some(canon(&src).as_os_str().as_bytes()),
            "{r}"
        );
        assert_eq!(r["status"], "complete", "{r}");
    }
}

/// A pattern file whose path is not UTF-8 (`--exclude-from`): read, and recorded with
/// its bytes (`exclude_from_raw`) beside the text list.
#[test]
fn an_exclude_file_whose_path_is_not_utf8_is_read_and_recorded() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("keep"), b"k");
    write(&src.join("skip.tmp"), b"s");
    let ex = named(t.path(), b"ex\xe9");
    write(&ex, b"*.tmp\n");
    let (code, r, err) = backup_json(
        &src,
        &t.path().join("store"),
        &t.path().join("catalog.db"),
        &[o("--exclude-from"), ex.as_os_str()],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["files_total"], 1, "{r}");
    let raws: Vec<Vec<u8>> = r["exclude_from_raw"]
        .as_array()
        .expect("exclude_from_raw")
        .iter()
        .map(|v| raw_of(v).unwrap())
        .collect();
    assert_eq!(raws, [ex.as_os_str().as_bytes()], "{r}");
}

/// In a message a path's byte that is not UTF-8 is `\xE9`, a control character `\x1B`
/// or `\x0A`; `%`, a space and `é` are printed as typed.
#[test]
fn a_message_shows_invalid_bytes_escaped_and_the_rest_as_typed() {
    let t = tempfile::tempdir().unwrap();
    let missing = named(t.path(), b"nope%E9 caf\xc3\xa9\xe9");
    let evil = t.path().join("e\x1b]0;PWNED\x07\n fake line");
    for (src, shown) in [
        (
            &missing,
            format!("{}/nope%E9 café\\xE9", t.path().display()),
        ),
        (
            &evil,
            format!("{}/e\\x1B]0;PWNED\\x07\\x0A fake line", t.path().display()),
        ),
    ] {
        let (code, _, err) = run(
            &[
                o("backup"),
                o("--source"),
                src.as_os_str(),
                o("--dest"),
                t.path().join("store").as_os_str(),
            ],
            &[],
        );
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("source {shown} does not exist")),
            "{shown}: {err}"
        );
        assert!(
            !err.contains('\x1b') && !err.contains("\n fake line"),
            "{err}"
        );
    }
}
