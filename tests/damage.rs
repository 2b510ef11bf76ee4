//! Damage: a store whose bookkeeping files are corrupt or missing still backs up
//! correctly (falling back to comparison by stat), and a rotation that fails with an
//! error is finished by the next command and its run recorded as published.

mod common;
use common::*;

use std::path::{Path, PathBuf};

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    for i in 0..30 {
        write(
            &src.join(format!("d{}/f{i}", i % 3)),
            format!("content {i}").as_bytes(),
        );
    }
    std::fs::create_dir(&dest).unwrap();
    (t, src, dest)
}

fn manifest_files(store: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(store.join(".snapring/manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect()
}

#[test]
fn corrupt_bookkeeping_degrades_to_stat_comparison() {
    for damage in ["state", "manifest", "index", "no-index"] {
        let (_t, src, dest) = setup();
        assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
        match damage {
            "state" => {
                std::fs::write(dest.join(".snapring/snapshots.json"), b"{ not json").unwrap()
            }
            "manifest" => std::fs::write(
                &manifest_files(&dest, "mf")[0],
                b"snapring-manifest 1\nS 1.000000000\nD .\ngarbage line\n",
            )
            .unwrap(),
            "index" => std::fs::write(&manifest_files(&dest, "idx")[0], b"SRIDX01\nshort").unwrap(),
            _ => std::fs::remove_file(&manifest_files(&dest, "idx")[0]).unwrap(),
        }
        write(&src.join("d0/f0"), b"changed after the damage");
        let (code, rep, err) = backup(&src, &dest, &[], &[]);
        assert_eq!(code, 0, "{damage}: {err}");
        assert_eq!(rep["status"], "complete", "{damage}");
        assert_eq!(
            rep["files_transferred"], 1,
            "{damage}: only the changed file is copied: {rep}"
        );
        assert_same_tree(&describe(&src), &describe(&dest.join("daily.0")), damage);
        // And the store is healthy again: the next run links everything by manifest.
        let (code, rep, _) = backup(&src, &dest, &[], &[]);
        assert_eq!(code, 0);
        assert_eq!(rep["files_linked"], 30, "{damage}: {rep}");
    }
}

/// A rotation step that fails with an error (not a crash) fails the run; the journal
/// stays, the next command finishes the rotation and the run's record says published.
#[test]
fn failed_rotation_is_finished_by_the_next_command() {
    let (_t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    write(&src.join("d1/f1"), b"second version");
    let (code, rep, _) = backup(
        &src,
        &dest,
        &[],
        &[("SNAPRING_FAILPOINTS", "rotate.step=error@2")],
    );
    assert_eq!(code, 1, "{rep}");
    assert!(
        rep["message"]
            .as_str()
            .unwrap()
            .contains("failpoint rotate.step fired"),
        "{rep}"
    );
    assert!(dest.join(".snapring/journal").exists());
    let out = snapring(&["list".as_ref(), "--dest".as_ref(), dest.as_os_str()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dest.join(".snapring/journal").exists());
    assert_eq!(snapshot_names(&dest), ["daily.0", "daily.1"]);
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "published by repair",
    );
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dest.join(format!(
            ".snapring/runs/{}.json",
            rep["id"].as_str().unwrap()
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(rec["status"], "complete", "{rec}");
    assert!(
        rec["message"]
            .as_str()
            .unwrap()
            .starts_with("published by a later repair"),
        "{rec}"
    );
}

fn manifest_ids(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = manifest_files(store, "mf")
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The run id `snapshots.json` records for snapshot `name`.
fn id_of(dest: &Path, name: &str) -> String {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join(".snapring/snapshots.json")).unwrap())
            .unwrap();
    state["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn verify_all(dest: &Path) -> (i32, String) {
    let out = snapring(
        &[
            "verify".as_ref(),
            "--all".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
        ],
        &[],
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Three backups, then garbage in `snapshots.json` (a `cp -a` of the store on top):
/// the next backup keeps every manifest whose snapshot is still there, recovers the
/// records by matching trees to manifests, deletes only the expired snapshot's
/// manifest, keeps the damaged file aside, and `verify --all` checks every snapshot.
#[test]
fn a_damaged_snapshot_state_loses_no_manifest_and_verify_checks_every_snapshot() {
    for copied in [false, true] {
        let (t, src, dest0) = setup();
        for i in 0..3 {
            write(&src.join("d0/f0"), format!("version {i}").as_bytes());
            assert_eq!(backup(&src, &dest0, &["--retain", "3"], &[]).0, 0);
        }
        let dest = if copied {
            let d = t.path().join("copy");
            let st = std::process::Command::new("cp")
                .args(["-a".as_ref(), dest0.as_os_str(), d.as_os_str()])
                .status()
                .unwrap();
            assert!(st.success());
            d
        } else {
            dest0.clone()
        };
        let before = manifest_ids(&dest);
        assert_eq!(before.len(), 3);
        let oldest = id_of(&dest, "daily.2");
        std::fs::write(
            dest.join(".snapring/snapshots.json"),
            b"{\"format\": 1, \"snap",
        )
        .unwrap();
        write(&src.join("d0/f0"), b"version 3");
        let (code, rep, err) = backup(&src, &dest, &["--retain", "3"], &[]);
        assert_eq!(code, 0, "copied {copied}: {err}");
        assert_eq!(rep["expired"], serde_json::json!(["daily.2"]), "{rep}");
        assert_eq!(
            rep["files_linked"], 29,
            "records recovered: linked by manifest: {rep}"
        );
        // The expired snapshot (the oldest run) took its manifest; the others kept theirs.
        let after = manifest_ids(&dest);
        let new_id = rep["id"].as_str().unwrap().to_string();
        let mut expect: Vec<String> = before.into_iter().filter(|i| *i != oldest).collect();
        expect.push(new_id);
        expect.sort();
        assert_eq!(after, expect, "copied {copied}");
        let aside: Vec<_> = std::fs::read_dir(dest.join(".snapring"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("snapshots.json.damaged-")
            })
            .collect();
        assert_eq!(aside.len(), 1, "the damaged state is kept aside");
        let (code, out) = verify_all(&dest);
        assert_eq!(code, 0, "{out}");
        assert_eq!(out.matches(": clean against manifest").count(), 3, "{out}");
    }
}

/// `snapring restore --json --dest DEST SNAP --to TO`: (exit code, report).
fn restore_json(dest: &Path, snap: &str, to: &Path) -> (i32, serde_json::Value, String) {
    let out = snapring(
        &[
            "restore".as_ref(),
            "--json".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            snap.as_ref(),
            "--to".as_ref(),
            to.as_os_str(),
        ],
        &[],
    );
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A damaged `snapshots.json` and a snapshot changed in the store (bit rot kept at
/// the same size and mtime, a `chmod`): its tree matches no manifest, but its run is
/// found by its record (the directory was made while the run ran), so readers read it
/// against that manifest: a restore reports the rot and the mode as damage and ends
/// `partial` (exit 2), `list` shows `DIFFERS*`, and a backup does not trust it (it
/// compares by stat, and completes). A snapshot for which no run with a manifest is
/// left is restored `partial` too, saying its content is unchecked. (Both were read as
/// trees without a manifest: the restore returned the rot as `complete`, exit 0.)
#[test]
fn a_damaged_state_and_a_changed_tree_still_restore_against_the_manifest() {
    let (t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    let snap = dest.join("daily.0");
    rot(&snap.join("d0/f0"));
    std::fs::set_permissions(
        snap.join("d1/f1"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let state = dest.join(".snapring/snapshots.json");
    let mut bytes = std::fs::read(&state).unwrap();
    bytes[50] ^= 0x55;
    std::fs::write(&state, &bytes).unwrap();
    let (code, rep, err) = restore_json(&dest, "latest", &t.path().join("r1"));
    assert_eq!(code, 2, "{err}\n{rep}");
    assert_eq!(rep["status"], "partial", "{rep}");
    let mut damaged: Vec<(String, String)> = rep["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_string(),
                p["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    damaged.sort();
    assert_eq!(
        damaged,
        [
            ("d0/f0", "check content against the manifest"),
            ("d1/f1", "check metadata against the manifest"),
        ]
        .map(|(p, a)| (p.to_string(), a.to_string())),
        "{rep}"
    );
    assert!(
        err.contains("paired with run"),
        "the pairing is warned about: {err}"
    );
    let out = snapring(&["list".as_ref(), "--dest".as_ref(), dest.as_os_str()], &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("DIFFERS*"), "{text}");
    // A backup does not trust the record, and completes.
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["status"], "complete", "{rep}");
    // No run left to pair a tree with (its manifest is gone too): unchecked, `partial`.
    let (_t2, src2, dest2) = setup();
    assert_eq!(backup(&src2, &dest2, &[], &[]).0, 0);
    for m in manifest_files(&dest2, "mf") {
        std::fs::remove_file(m).unwrap();
    }
    std::fs::write(dest2.join(".snapring/snapshots.json"), b"{ not json").unwrap();
    let (code, rep, err) = restore_json(&dest2, "daily.0", &t.path().join("r2"));
    assert_eq!(code, 2, "{err}\n{rep}");
    assert_eq!(
        rep["problems"][0]["action"], "read the snapshot's record",
        "{rep}"
    );
    assert_eq!(rep["problems"][0]["path"], ".", "{rep}");
}

/// After a damaged `snapshots.json`, a snapshot with a bit flipped (same size and
/// mtime) and a `chmod` is paired with its run's manifest as a tree that differs from
/// it, and the next backup compares the source with that tree by stat. The rotten
/// file, unchanged by stat, is not linked into the new snapshot: it does not hash as
/// its record says, so it is copied from the source, and the new snapshot holds the
/// source's content and verifies clean; the files that are as recorded are still
/// linked. Before, the rotten file was linked and the hash read from it recorded: the
/// new snapshot held the rot and `verify` called it clean.
#[test]
fn a_rotten_file_in_a_tree_paired_after_a_damaged_state_is_copied_from_the_source() {
    let (_t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    let old = dest.join("daily.0");
    rot(&old.join("d0/f0"));
    std::fs::set_permissions(
        old.join("d1/f1"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let state = dest.join(".snapring/snapshots.json");
    let mut bytes = std::fs::read(&state).unwrap();
    bytes[50] ^= 0x55;
    std::fs::write(&state, &bytes).unwrap();

    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["status"], "complete", "{rep}");
    let new = dest.join("daily.0");
    assert_eq!(
        std::fs::read(new.join("d0/f0")).unwrap(),
        b"content 0",
        "the new snapshot holds the source's content, not the rot"
    );
    assert_ne!(
        ino(&new.join("d0/f0")),
        ino(&dest.join("daily.1/d0/f0")),
        "the rotten file is copied from the source, not linked"
    );
    assert_eq!(
        ino(&new.join("d2/f2")),
        ino(&dest.join("daily.1/d2/f2")),
        "a file as its record says is still linked"
    );
    // The rotten file and the chmod-ed one; the 28 others linked.
    assert_eq!(rep["files_transferred"], 2, "{rep}");
    assert_eq!(rep["files_linked"], 28, "{rep}");
    assert_same_tree(&describe(&src), &describe(&new), "the new snapshot");
    let (code, v) = verify_json(&dest, "daily.0");
    assert_eq!(code, 0, "the new snapshot verifies clean: {v}");
}

/// A snapshot whose manifest is gone does not stop `verify --all`: it says what it
/// could not check, checks the others, and exits `partial` (2).
#[test]
fn verify_all_goes_on_past_a_snapshot_without_a_manifest() {
    let (_t, src, dest) = setup();
    for i in 0..3 {
        write(&src.join("d0/f0"), format!("version {i}").as_bytes());
        assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    }
    // The middle snapshot's manifest is lost.
    let mid = id_of(&dest, "daily.1");
    std::fs::remove_file(dest.join(format!(".snapring/manifests/{mid}.mf"))).unwrap();
    let (code, out) = verify_all(&dest);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("daily.1: NOT CHECKED: daily.1 has no usable manifest"),
        "{out}"
    );
    assert!(out.contains("daily.0: clean against manifest"), "{out}");
    assert!(out.contains("daily.2: clean against manifest"), "{out}");
}

/// `snapring list --dest DEST`, which must exit 0: what it prints.
fn list_text(dest: &Path) -> String {
    let out = snapring(&["list".as_ref(), "--dest".as_ref(), dest.as_os_str()], &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    text
}

/// The columns of the row of snapshot `name` in `list`'s `text`.
fn list_row(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} row: {text}"))
        .split_whitespace()
        .map(str::to_string)
        .collect::<Vec<_>>()
}

/// A run record cut short (a full disk, a copy stopped midway) showed as `-` in
/// `list`'s STATUS, FILES and SIZE, as for a tree taken over, with no word why. The
/// row stays; its status reads `unknown*` and a note names the record and why it
/// cannot be read (`--json`: `record_unreadable`). A healthy row says nothing of it.
#[test]
fn list_says_a_run_record_cut_short_cannot_be_read() {
    let (_t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    write(&src.join("d0/f0"), b"second run");
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    let id = id_of(&dest, "daily.1");
    let rec = dest.join(format!(".snapring/runs/{id}.json"));
    let whole = std::fs::read(&rec).unwrap();
    std::fs::write(&rec, &whole[..whole.len() / 2]).unwrap();
    let text = list_text(&dest);
    let row = |name: &str| list_row(&text, name);
    assert_eq!(row("daily.1")[2], id, "{text}");
    assert_eq!(row("daily.1")[4], "unknown*", "{text}");
    assert_eq!(row("daily.0")[4], "complete", "{text}");
    assert!(
        text.contains(&format!(
            "(*daily.1: its run record cannot be read, so its status, files and size are unknown: {}: not a run record ({} bytes: ",
            rec.display(),
            whole.len() / 2
        )),
        "{text}"
    );
    assert_eq!(text.matches("(*").count(), 1, "{text}");
    let out = list_json(&dest);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[1]["name"], "daily.1", "{v}");
    assert!(
        v[1]["record_unreadable"]
            .as_str()
            .is_some_and(|w| w.starts_with(&format!("{}: not a run record", rec.display()))),
        "{v}"
    );
    assert!(v[0].get("record_unreadable").is_none(), "{v}");
}

/// A snapshot `verify` found damaged and recorded shows so in `list`: STATUS
/// `DAMAGED*` with a note saying how many entries and when (`--json`: `damaged`,
/// with `entries` and `verified_at`); a healthy row says nothing of it, and once a
/// verify finds the snapshot clean again the row is `complete` again. (It read
/// `complete`, exit 0, with nothing said, right after `verify --all` printed
/// `daily.0: 3 damaged entries recorded`.)
#[test]
fn list_shows_the_damage_verify_recorded() {
    let (_t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    // Two files of the newest snapshot only (not linked from the older one).
    write(&src.join("d0/f0"), b"second run");
    write(&src.join("d1/f1"), b"second run too");
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    let snap = dest.join("daily.0");
    rot(&snap.join("d0/f0"));
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap()
    };
    let was = std::fs::metadata(snap.join("d1/f1")).unwrap().permissions();
    mode(&snap.join("d1/f1"), 0o600);
    let (code, out) = verify_all(&dest);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("daily.0: 2 damaged entries recorded"), "{out}");
    let list = || list_text(&dest);
    let text = list();
    let row = list_row;
    assert_eq!(row(&text, "daily.0")[4], "DAMAGED*", "{text}");
    assert_eq!(row(&text, "daily.1")[4], "complete", "{text}");
    assert!(
        text.contains("(*daily.0: verify found 2 damaged entries on "),
        "{text}"
    );
    assert_eq!(text.matches("(*").count(), 1, "{text}");
    let out = list_json(&dest);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "daily.0", "{v}");
    assert_eq!(
        v[0]["status"], "complete",
        "the run's own status stays: {v}"
    );
    assert_eq!(v[0]["damaged"]["entries"], 2, "{v}");
    assert!(v[0]["damaged"]["verified_at"].is_string(), "{v}");
    assert!(v[1].get("damaged").is_none(), "{v}");
    // Put back as recorded: a clean verify removes the record, and the row with it.
    rot(&snap.join("d0/f0"));
    std::fs::set_permissions(snap.join("d1/f1"), was).unwrap();
    let (code, out) = verify_all(&dest);
    assert_eq!(code, 0, "{out}");
    let text = list();
    assert_eq!(row(&text, "daily.0")[4], "complete", "{text}");
    assert!(!text.contains("(*"), "{text}");
}

/// A `snapshots.json` of a newer format is refused by writers and readers, and left
/// byte for byte as it was.
#[test]
fn a_newer_snapshot_state_format_is_refused_not_rewritten() {
    let (_t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    let p = dest.join(".snapring/snapshots.json");
    let newer = br#"{"format": 2, "snapshots": [], "generations": {"daily": 7}}"#;
    std::fs::write(&p, newer).unwrap();
    let (code, _, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("snapshot state format 2 is newer"), "{err}");
    let out = snapring(&["list".as_ref(), "--dest".as_ref(), dest.as_os_str()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("format 2 is newer"));
    assert_eq!(std::fs::read(&p).unwrap(), newer);
    assert_eq!(snapshot_names(&dest), ["daily.0"]);
}

/// Names read from the store's own files never become paths outside it: a
/// `snapshots.json` whose record names run `../../outside` (in a copied store, where
/// the record would be kept and marked) is read as damaged, and a journal whose step
/// leads out of the store is refused, not followed.
#[test]
fn names_in_the_stores_own_files_never_lead_outside_it() {
    let (t, src, dest0) = setup();
    assert_eq!(backup(&src, &dest0, &[], &[]).0, 0);
    let id = id_of(&dest0, "daily.0");
    let copy = t.path().join("copy");
    assert!(
        std::process::Command::new("cp")
            .args(["-a".as_ref(), dest0.as_os_str(), copy.as_os_str()])
            .status()
            .unwrap()
            .success()
    );
    // The record's run is moved "outside": its manifest and run record copied there.
    let out = t.path().join("outside");
    std::fs::create_dir(&out).unwrap();
    for (from, to) in [
        (format!("manifests/{id}.mf"), "outside.mf"),
        (format!("manifests/{id}.idx"), "outside.idx"),
    ] {
        std::fs::copy(copy.join(".snapring").join(from), out.join(to)).unwrap();
    }
    let state = std::fs::read_to_string(copy.join(".snapring/snapshots.json")).unwrap();
    std::fs::write(
        copy.join(".snapring/snapshots.json"),
        state.replace(&id, "../../outside"),
    )
    .unwrap();
    let (code, _, err) = backup(&src, &copy, &[], &[]);
    assert_eq!(code, 0, "{err}");
    let leaked: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leaked.len(),
        2,
        "nothing written outside the store: {leaked:?}"
    );
    assert!(!t.path().join("outside.copied").exists());

    // A journal with a step out of the store.
    let victim = t.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(
        dest0.join(".snapring/journal"),
        serde_json::json!({
            "format": 1, "run": "x", "status": "complete",
            "steps": [{"from": "../victim", "to": "daily.5"}],
            "state_after": {"format": 1, "snapshots": []}
        })
        .to_string(),
    )
    .unwrap();
    let out = snapring(
        &["list".as_ref(), "--dest".as_ref(), dest0.as_os_str()],
        &[],
    );
    assert!(
        victim.is_dir(),
        "the journal was not followed out of the store"
    );
    assert!(!dest0.join("daily.5").exists());
    let (code, _, err) = backup(&src, &dest0, &[], &[]);
    assert_eq!(code, 1, "a backup refuses the journal: {err}");
    assert!(err.contains("leads outside"), "{err}");
    assert!(victim.is_dir());
    let _ = out;
}

/// A directory named with the largest slot number (`daily.4294967295`, made by hand or
/// by another tool) made every later backup panic shifting it one slot up (exit 101,
/// nothing published; in a release build the shift wraps to `daily.0`). It is not a
/// snapshot name, like `daily.4294967296`: left alone, and the backups go on.
#[test]
fn a_slot_number_that_cannot_shift_is_not_a_snapshot() {
    let (_t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    let stray = dest.join("daily.4294967295");
    write(&stray.join("kept"), b"not ours");
    for retain in ["3", "4294967295"] {
        let (code, rep, err) = backup(&src, &dest, &["--retain", retain], &[]);
        assert_eq!(code, 0, "--retain {retain}: {err}\n{rep}");
        assert_eq!(rep["status"], "complete");
    }
    assert_eq!(std::fs::read(stray.join("kept")).unwrap(), b"not ours");
    let out = list_json(&dest);
    assert_eq!(out.status.code(), Some(0));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["daily.0", "daily.1", "daily.2"]);
}

/// Something named like a snapshot that is not one (a symlink, a file) where a rotation
/// renames to: the rename onto it counted as done, as when rolling an interrupted
/// rotation forward. The run said `complete: daily.0`, published nothing (its tree
/// stayed in staging), and recorded the old snapshot under the new run's id; every run
/// after it the same. Now the run fails naming the entry, the snapshots are as they
/// were, and once it is moved away the next run publishes.
#[test]
fn an_entry_named_like_a_slot_fails_the_run_instead_of_a_silent_non_publish() {
    let (t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    let elsewhere = t.path().join("elsewhere");
    write(&elsewhere.join("keep"), b"not a snapshot");
    std::os::unix::fs::symlink(&elsewhere, dest.join("daily.1")).unwrap();
    let old = ino(&dest.join("daily.0"));
    write(&src.join("d0/f0"), b"changed");
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 1, "{err}\n{rep}");
    assert_eq!(rep["status"], "failed", "{rep}");
    let msg = rep["message"].as_str().unwrap();
    assert!(
        msg.contains("daily.1") && msg.contains("symlink named like a snapshot"),
        "{msg}"
    );
    assert_eq!(
        ino(&dest.join("daily.0")),
        old,
        "daily.0 is the old snapshot"
    );
    assert_eq!(
        std::fs::read(elsewhere.join("keep")).unwrap(),
        b"not a snapshot"
    );

    std::fs::remove_file(dest.join("daily.1")).unwrap();
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_same_tree(
        &describe(&src),
        &describe(&dest.join("daily.0")),
        "published",
    );
    assert_eq!(ino(&dest.join("daily.1")), old);

    // A plain file at the next slot up, the same.
    std::fs::write(dest.join("daily.2"), b"x").unwrap();
    let (code, rep, _) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 1, "{rep}");
    assert!(
        rep["message"]
            .as_str()
            .unwrap()
            .contains("a file named like")
    );
}

fn verify_json(dest: &Path, which: &str) -> (i32, serde_json::Value) {
    let out = snapring(
        &[
            "verify".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            which.as_ref(),
            "--json".as_ref(),
        ],
        &[],
    );
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

/// Damage `verify` finds in the newest snapshot (a flipped byte, a mode changed by
/// hand, one inode of a source hard-link pair rotten) is not carried into the next
/// snapshot: the backup copies those entries from the source instead of linking the
/// damaged inodes, so the new snapshot equals the source and verifies clean, while the
/// untouched files are still linked. Before, every later snapshot linked the damaged
/// inodes again: the damage was in all history from then on, and no backup healed it.
#[test]
fn damage_verify_found_is_copied_afresh_by_the_next_backup_not_linked() {
    let (_t, src, dest) = setup();
    write(&src.join("pair/a"), b"one inode, two names");
    std::fs::hard_link(src.join("pair/a"), src.join("pair/b")).unwrap();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    let old = dest.join("daily.0");
    rot(&old.join("d0/f0"));
    rot(&old.join("pair/a"));
    std::fs::set_permissions(
        old.join("d1/f1"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let (code, v) = verify_json(&dest, "daily.0");
    assert_eq!(code, 2, "{v}");
    let found = v;

    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["status"], "complete", "{rep}");
    let new = dest.join("daily.0");
    assert_same_tree(
        &describe(&src),
        &describe(&new),
        "the snapshot after the damage",
    );
    for p in ["d0/f0", "d1/f1", "pair/a", "pair/b"] {
        assert_ne!(
            ino(&new.join(p)),
            ino(&dest.join("daily.1").join(p)),
            "{p}: copied afresh, not linked"
        );
    }
    assert_eq!(ino(&new.join("pair/a")), ino(&new.join("pair/b")));
    // verify said so: both names of the pair, the rotten file and the changed mode.
    assert_eq!(found[0]["next_backup_copies"], 4, "{found}");
    assert_eq!(
        ino(&new.join("d2/f2")),
        ino(&dest.join("daily.1/d2/f2")),
        "an undamaged file is still linked"
    );
    // Copied: the two damaged files and the pair's first name; its second name is
    // linked to that copy (counted as linked), the 28 undamaged files from daily.1.
    assert_eq!(rep["files_transferred"], 3, "{rep}");
    assert_eq!(rep["files_linked"], 29, "{rep}");
    let (code, v) = verify_json(&dest, "daily.0");
    assert_eq!(code, 0, "the new snapshot verifies clean: {v}");
    // The damaged snapshot stays as it is (history is not rewritten), and its list
    // goes when it expires.
    let (code, _) = verify_json(&dest, "daily.1");
    assert_eq!(code, 2);
    let damaged = manifest_files(&dest, "damaged");
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert_eq!(backup(&src, &dest, &["--retain", "1"], &[]).0, 0);
    assert!(manifest_files(&dest, "damaged").is_empty());
}

/// Damage found by verifying an older snapshot, in a file every snapshot shares (one
/// inode, linked on by each backup): the newest snapshot's list gets it too, and the
/// next backup copies it afresh. Before, only the verified snapshot's list had it and
/// the backup, which links from the newest, linked the rotten inode on.
#[test]
fn damage_verify_found_in_an_older_snapshot_is_not_linked_on_from_the_newest() {
    let (_t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    let f = "d0/f0";
    assert_eq!(
        ino(&dest.join("daily.0").join(f)),
        ino(&dest.join("daily.1").join(f))
    );
    rot(&dest.join("daily.1").join(f));
    let (code, v) = verify_json(&dest, "daily.1");
    assert_eq!(code, 2, "{v}");
    let (code, rep, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["files_transferred"], 1, "{rep}");
    assert_same_tree(&describe(&src), &describe(&dest.join("daily.0")), "healed");
    let (code, v) = verify_json(&dest, "daily.0");
    assert_eq!(code, 0, "{v}");
}

/// A snapshot's manifest cut short (half of it lost): `diff` and `verify` say the
/// manifest is damaged, naming its file, and the directories whose blocks are lost are
/// not compared. Before, the lost directories' entries were all `removed` (diff) or
/// `unexpected` (verify), with the real trouble only in stderr lines.
#[test]
fn a_manifest_cut_short_is_reported_as_damaged_not_as_removed_or_unexpected_entries() {
    let t = tempfile::tempdir().unwrap();
    let (src, dest) = (t.path().join("src"), t.path().join("backup"));
    for d in 0..40 {
        for f in 0..5 {
            write(
                &src.join(format!("d{d:02}/s/f{f}")),
                format!("content of {d} {f}").as_bytes(),
            );
        }
    }
    std::fs::create_dir(&dest).unwrap();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    let id = id_of(&dest, "daily.1");
    let mf = dest.join(format!(".snapring/manifests/{id}.mf"));
    // Cut at the first block that starts past half the file and past the root's block
    // (the root's block is most often first, but a walk's threads may write others
    // before it), with a top-level directory's block after it: the root is compared,
    // directories past the cut are lost, one of them opened from the root's listing
    // (its index entry names bytes past the end) and one listed (`dNN/s`, or one past
    // the end of a block cut short).
    let bytes = std::fs::read(&mf).unwrap();
    let starts: Vec<usize> = (0..bytes.len())
        .filter(|&i| bytes[i..].starts_with(b"D ") && (i == 0 || bytes[i - 1] == b'\n'))
        .collect();
    let root = starts
        .iter()
        .position(|&i| bytes[i..].starts_with(b"D .\n"))
        .expect("the root's block");
    let top_level = |i: usize| {
        let line = bytes[i..].split(|&c| c == b'\n').next().unwrap();
        !line.contains(&b'/') && line != b"D ."
    };
    let cut = *starts[root + 1..]
        .iter()
        .find(|&&i| i >= bytes.len() / 2 && starts.iter().any(|&j| j >= i && top_level(j)))
        .expect("a block past half the manifest and the root's, with a top-level one after");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&mf)
        .unwrap()
        .set_len(cut as u64)
        .unwrap();

    let out = snapring(
        &[
            "diff".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            "daily.0".as_ref(),
            "daily.1".as_ref(),
            "--json".as_ref(),
        ],
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(2), "{v}");
    assert_eq!(v["added"], 0, "{v}");
    assert_eq!(v["removed"], 0, "{v}");
    let damaged = v["damaged_manifests"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{v}");
    assert!(
        damaged[0].as_str().unwrap().ends_with(&format!("{id}.mf")),
        "{v}"
    );
    let lost = v["not_compared"][0][0].as_str().unwrap().to_string();
    // The lines say it in the summary.
    let out = snapring(
        &[
            "diff".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            "daily.0".as_ref(),
            "daily.1".as_ref(),
        ],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("MANIFEST DAMAGED") && text.contains(&format!("{id}.mf")),
        "{text}"
    );

    // A file rotten under a lost directory is not passed as checked.
    let rotten = if lost.ends_with("/s") {
        format!("{lost}/f0")
    } else {
        format!("{lost}/s/f0")
    };
    rot(&dest.join("daily.1").join(&rotten));
    let (code, v) = verify_json(&dest, "daily.1");
    assert_eq!(code, 2, "{v}");
    let v = &v[0];
    assert_eq!(v["clean"], false, "{v}");
    assert_eq!(v["unexpected"], 0, "{v}");
    assert_eq!(v["missing"], 0, "{v}");
    assert!(
        v["damaged_manifests"][0]
            .as_str()
            .unwrap()
            .ends_with(&format!("{id}.mf")),
        "{v}"
    );
    let not_checked: Vec<&str> = v["not_checked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_str().unwrap())
        .collect();
    assert!(not_checked.contains(&lost.as_str()), "{not_checked:?}");
    // Not damage found: nothing is recorded for the next backup to copy.
    assert_eq!(v["next_backup_copies"], 0, "{v}");
}

/// `snapring ARGS…` (no catalog) paused on the `nth` hit of failpoint `point`, sent
/// `sig`, let go: (exit, stdout, stderr).
fn signalled(
    args: &[&std::ffi::OsStr],
    at: (&str, u32),
    pause: &Path,
    sig: rustix::process::Signal,
) -> (i32, String, String) {
    // SIGHUP's default disposition in snapring, whatever the test runner's (under
    // `nohup` it is ignored, and snapring then keeps ignoring it, as it should).
    let mut cmd = std::process::Command::new("env");
    cmd.arg("--default-signal=HUP")
        .arg(bin())
        .args(args)
        .env("SNAPRING_CATALOG", "off");
    let o = signalled_at(cmd, at, pause, sig)
        .wait_with_output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `verify` and `diff` stopped by a signal in the middle of their compare (held at
/// `compare.dir` as the first subdirectory opens: the root's entries are checked, the
/// rest not): exit 3, `INTERRUPTED`, never clean nor "0 changed"; `--json` says
/// `interrupted`; the damage found before the signal is reported and recorded for the
/// next backup (added to the list, which keeps what it had). Before, the exit code and
/// the output never looked at the signal: the verify said what it had found as if it
/// were all (exit 2 here; "clean", exit 0, when nothing was found yet) and recorded
/// nothing, the diff "0 added, 0 removed…", exit 0.
#[test]
fn a_verify_or_diff_stopped_by_a_signal_says_interrupted_never_clean() {
    use rustix::process::Signal;
    use std::ffi::OsStr;
    let (t, src, dest) = setup();
    write(&src.join("top"), b"a file at the root");
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    let snap = dest.join("daily.0");
    rot(&snap.join("top"));
    rot(&snap.join("d2/f2"));
    let pause = t.path().join("paused");
    let verify: Vec<&OsStr> = ["verify", "--jobs", "1", "--dest"]
        .iter()
        .map(OsStr::new)
        .chain([dest.as_os_str(), OsStr::new("daily.0")])
        .collect();
    let (code, out, err) = signalled(&verify, ("compare.dir", 2), &pause, Signal::TERM);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("daily.0: INTERRUPTED (checked in part) against manifest")
            && out.contains("1 corrupt")
            && !out.contains("clean"),
        "{out}"
    );
    assert!(
        err.contains("snapring: interrupted; 0 of 1 snapshots checked in full, 1 in part"),
        "{err}"
    );
    // What it found is recorded: the next backup copies `top` afresh; `d2/f2` was not
    // reached (a whole verify finds it).
    let list = manifest_files(&dest, "damaged");
    assert_eq!(list.len(), 1, "{list:?}");
    let recorded = std::fs::read_to_string(&list[0]).unwrap();
    assert!(
        recorded.contains("\"top\"") && !recorded.contains("d2/f2"),
        "{recorded}"
    );
    // --json (and SIGINT): marked interrupted, not clean; the list keeps `top`.
    let mut json = verify.clone();
    json.push(OsStr::new("--json"));
    let (code, out, err) = signalled(&json, ("compare.dir", 2), &pause, Signal::INT);
    assert_eq!(code, 3, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&v[0]["interrupted"], &v[0]["clean"], &v[0]["corrupt"]),
        (
            &serde_json::json!(true),
            &serde_json::json!(false),
            &serde_json::json!(1)
        ),
        "{v}"
    );
    assert_eq!(v[0]["next_backup_copies"], 1, "{v}");
    // A whole verify finds both and records both.
    let (code, v) = verify_json(&dest, "daily.0");
    assert_eq!(code, 2, "{v}");
    assert_eq!(
        (v[0]["corrupt"].as_u64(), v[0]["interrupted"].as_bool()),
        (Some(2), Some(false))
    );
    // diff --against the source (by stat: no difference so far), text and --json.
    let diff: Vec<&OsStr> = ["diff", "--jobs", "1", "--dest"]
        .iter()
        .map(OsStr::new)
        .chain([
            dest.as_os_str(),
            OsStr::new("daily.0"),
            OsStr::new("--against"),
        ])
        .chain([src.as_os_str()])
        .collect();
    let (code, out, err) = signalled(&diff, ("compare.dir", 2), &pause, Signal::TERM);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains(": INTERRUPTED: "), "{out}");
    assert!(
        err.contains("snapring: interrupted; the diff is incomplete"),
        "{err}"
    );
    // --json, and SIGHUP (a closed terminal) stops it the same way.
    let mut json = diff.clone();
    json.push(OsStr::new("--json"));
    let (code, out, err) = signalled(&json, ("compare.dir", 2), &pause, Signal::HUP);
    assert_eq!(code, 3, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["interrupted"], true, "{v}");
}

/// `verify --all` stopped by a signal between two snapshots (held at `verify.snapshot`
/// before the second): the first is reported as checked, the second `NOT CHECKED:
/// interrupted`, exit 3. Before, the loop went on with the flag set: the second
/// snapshot was "clean against manifest: 0 files hashed", exit 0.
#[test]
fn verify_all_stopped_between_snapshots_says_the_rest_was_not_checked() {
    use rustix::process::Signal;
    use std::ffi::OsStr;
    let (t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    let pause = t.path().join("paused");
    let args: Vec<&OsStr> = vec![
        "verify".as_ref(),
        "--all".as_ref(),
        "--dest".as_ref(),
        dest.as_os_str(),
    ];
    let (code, out, err) = signalled(&args, ("verify.snapshot", 2), &pause, Signal::TERM);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("daily.0: clean against manifest: 30 files hashed"),
        "{out}"
    );
    assert!(
        out.contains("daily.1: NOT CHECKED: interrupted before its turn")
            && !out.contains("daily.1: clean"),
        "{out}"
    );
    assert!(
        err.contains("snapring: interrupted; 1 of 2 snapshots checked in full;"),
        "{err}"
    );
    let mut json = args.clone();
    json.push(OsStr::new("--json"));
    let (code, out, err) = signalled(&json, ("verify.snapshot", 2), &pause, Signal::TERM);
    assert_eq!(code, 3, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(
        (&v[0]["clean"], &v[0]["interrupted"]),
        (&serde_json::json!(true), &serde_json::json!(false)),
        "{v}"
    );
    assert_eq!(
        (&v[1]["clean"], &v[1]["interrupted"]),
        (&serde_json::json!(false), &serde_json::json!(true)),
        "{v}"
    );
}

/// `verify --all` of a store without snapshots says so and exits 1, as `verify` of
/// the newest does; `--json` prints `[]` (valid: nothing verified) and the reason on
/// stderr. Before: nothing at all, exit 0 (`[]`, exit 0).
#[test]
fn verify_all_of_a_store_without_snapshots_is_an_error() {
    // A store no backup has published to yet.
    let (_t, _src, dest) = setup();
    std::fs::create_dir(dest.join(".snapring")).unwrap();
    for json in [false, true] {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "verify".as_ref(),
            "--all".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
        ];
        if json {
            args.push("--json".as_ref());
        }
        let out = snapring(&args, &[("SNAPRING_CATALOG", "off")]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        assert!(
            stderr.contains("the store has no snapshots yet; nothing was verified"),
            "{stderr}"
        );
        if json {
            let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            assert_eq!(v, serde_json::json!([]));
        } else {
            assert_eq!(stdout, "");
        }
    }
}

/// `diff` of a snapshot whose manifest does not open at all (cut to 10 bytes): the
/// compare falls back to stat, which cannot see a change of content that kept size and
/// time, so the report says so: a problem naming the snapshot and the manifest, exit
/// 2. It said `"problems": []` and exited 0, a warning on stderr alone, while a
/// manifest damaged in part gave `MANIFEST DAMAGED`, exit 2.
#[test]
fn a_diff_with_an_unusable_manifest_reports_it() {
    let (_t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    write(&src.join("d1/new"), b"new");
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    let id = id_of(&dest, "daily.1");
    let mf = dest.join(format!(".snapring/manifests/{id}.mf"));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&mf)
        .unwrap()
        .set_len(10)
        .unwrap();
    let live = src.clone();
    for second in [&["daily.0"][..], &["--against", live.to_str().unwrap()][..]] {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "diff".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            "daily.1".as_ref(),
        ];
        args.extend(second.iter().map(std::ffi::OsStr::new));
        args.push("--json".as_ref());
        let out = snapring(&args, &[]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(2), "{second:?}: {v}");
        let problems = v["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 1, "{second:?}: {v}");
        assert_eq!(problems[0][0], "daily.1", "{v}");
        let why = problems[0][1].as_str().unwrap();
        assert!(
            why.contains(&id) && why.contains("compared by stat alone"),
            "{why}"
        );
    }
}

/// An empty `.snapring/store.json` (0 bytes: what a machine's crash can leave of a file
/// just renamed into place) refused every command, `list` and `restore` included, with
/// "EOF while parsing a value" and no remedy. It only records the format and when the
/// store was made: readers go on with a warning, a backup writes it anew. One that is
/// not JSON is refused to a writer with the remedy, and read past by readers.
#[test]
fn an_empty_store_info_is_read_past_and_written_anew() {
    let (t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    let info = dest.join(".snapring/store.json");
    let to = t.path().join("to");
    let run = |args: &[&str]| {
        let mut a: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        a.insert(1, "--dest".as_ref());
        a.insert(2, dest.as_os_str());
        let out = snapring(&a, &[]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let readers = |what: &str, want: &str| {
        for (i, args) in [
            vec!["list"],
            vec!["verify", "daily.0"],
            vec!["diff", "daily.0", "--against", src.to_str().unwrap()],
        ]
        .into_iter()
        .enumerate()
        {
            let (code, err) = run(&args);
            assert_eq!(code, Some(0), "{what}: {args:?} ({i}): {err}");
            assert!(
                err.contains("store.json") && err.contains(want),
                "{what}: {args:?}: {err}"
            );
        }
        let r = to.join(what);
        let (code, err) = run(&["restore", "daily.0", "--to", r.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{what}: restore: {err}");
        assert_same_tree(&describe(&src), &describe(&r), what);
    };
    std::fs::write(&info, b"").unwrap();
    readers("empty", "empty");
    let (code, _, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&info).unwrap()).unwrap();
    assert_eq!(v["format"], 1, "{v}");

    std::fs::write(&info, b"{ \"form").unwrap();
    readers("garbled", "unreadable store info");
    let (code, _, err) = backup(&src, &dest, &[], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("unreadable store info") && err.contains("remove the file"),
        "{err}"
    );
    assert_eq!(std::fs::read(&info).unwrap(), b"{ \"form");
}

/// `prune` and `forget` are for restic repositories: a hard-link store's path is a
/// usage error (exit 64, as docs/format.md has `--host` with a store), saying how a
/// store's snapshots expire; it was exit 1, "expected file:///ABSOLUTE/PATH".
#[test]
fn prune_and_forget_of_a_store_are_usage_errors() {
    let (_t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    for args in [
        &["prune", "--dest"][..],
        &["forget", "--label", "daily", "--retain", "1", "--dest"][..],
    ] {
        let mut a: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        a.push(dest.as_os_str());
        let out = snapring(&a, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(
            err.contains("is a hard-link store") && err.contains("--retain"),
            "{err}"
        );
    }
    assert_eq!(snapshot_names(&dest), ["daily.0"]);
}

/// A damaged `snapshots.json`, a run whose snapshot was deleted by hand (its run
/// record and manifest left over), and a tree of the same label made by hand after it
/// (another tool's, taken over): the tree's birth time lies in no run's window, so it
/// is paired with no run. It was paired with the leftover run (the first of its
/// label), and a restore applied that run's manifest to it: its own file `other`,
/// which that manifest lacks, was not restored, and the rest called damaged.
#[test]
fn a_tree_made_while_no_run_ran_is_not_paired_with_a_leftover_run() {
    let (t, src, dest) = setup();
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    std::fs::remove_dir_all(dest.join("daily.0")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2200));
    write(&dest.join("daily.0/other"), b"another tool's file");
    std::fs::write(dest.join(".snapring/snapshots.json"), b"{ not json").unwrap();
    let to = t.path().join("r");
    let (code, rep, err) = restore_json(&dest, "daily.0", &to);
    assert_eq!(code, 2, "{err}\n{rep}");
    let damaged: Vec<_> = rep["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "damaged")
        .collect();
    assert!(damaged.is_empty(), "{rep}");
    assert_eq!(
        std::fs::read(to.join("other")).unwrap(),
        b"another tool's file",
        "{rep}"
    );
    let p = &rep["problems"][0];
    assert_eq!(p["action"], "read the snapshot's record", "{rep}");
}

/// A tree taken over from another tool (made before the store's `.snapring`), then a
/// damaged `snapshots.json`: no run is left to pair it with, and none ever made it, so
/// its restore is `complete` (docs/restore.md), as with an intact state. It was marked
/// unrecorded: `partial`, saying it "may have had a manifest".
#[test]
fn a_taken_over_tree_restores_complete_after_the_state_is_damaged() {
    let (t, src, dest) = setup();
    write(&dest.join("daily.0/old"), b"rsnapshot's file");
    assert_eq!(backup(&src, &dest, &[], &[]).0, 0);
    assert_eq!(
        std::fs::read(dest.join("daily.1/old")).unwrap(),
        b"rsnapshot's file"
    );
    std::fs::write(dest.join(".snapring/snapshots.json"), b"{ not json").unwrap();
    let to = t.path().join("r");
    let (code, rep, err) = restore_json(&dest, "daily.1", &to);
    assert_eq!(code, 0, "{err}\n{rep}");
    assert_eq!(rep["status"], "complete", "{rep}");
    assert_eq!(std::fs::read(to.join("old")).unwrap(), b"rsnapshot's file");
}
