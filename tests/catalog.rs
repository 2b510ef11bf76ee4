//! The run catalog against real runs: history/show/stats, a killed run repaired to
//! `incomplete`, rebuild from the store equal to the live catalog, migration of a frozen
//! schema-1 file, a corrupt or locked catalog that never fails a backup, and a damaged
//! one named by the read commands and moved aside by `catalog rebuild`.

mod common;
use common::*;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Env {
    _t: tempfile::TempDir,
    src: PathBuf,
    store: PathBuf,
    catalog: PathBuf,
}

fn setup() -> Env {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for i in 0..5 {
        write(
            &src.join(format!("d{i}/f{i}")),
            format!("content {i}").as_bytes(),
        );
    }
    Env {
        src,
        store: t.path().join("store"),
        catalog: t.path().join("state/catalog.db"),
        _t: t,
    }
}

impl Env {
    /// Runs `snapring --catalog CATALOG ARGS…`; returns (exit, stdout JSON, stderr).
    fn cli(&self, args: &[&str]) -> (i32, serde_json::Value, String) {
        let mut a: Vec<&OsStr> = vec!["--catalog".as_ref(), self.catalog.as_os_str()];
        a.extend(args.iter().map(OsStr::new));
        let out = snapring(&a, &[]);
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn backup(&self, extra: &[&str]) -> (i32, serde_json::Value, String) {
        let c = self.catalog.to_string_lossy().into_owned();
        backup(&self.src, &self.store, extra, &[("SNAPRING_CATALOG", &c)])
    }

    /// A backup that cannot read `d1/f1` (DAC capabilities dropped): `partial`.
    fn partial_backup(&self) -> serde_json::Value {
        chmod(&self.src.join("d1/f1"), 0o000);
        // The catalog set after `snapring_without_dac`'s "off": the later one counts.
        let out = snapring_without_dac()
            .env("SNAPRING_CATALOG", &self.catalog)
            .args(["backup", "--json", "--source"])
            .arg(&self.src)
            .arg("--dest")
            .arg(&self.store)
            .output()
            .unwrap();
        chmod(&self.src.join("d1/f1"), 0o644);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `history --json` plus `show --json` of every run: everything the catalog says.
    fn dump(&self) -> (serde_json::Value, Vec<serde_json::Value>) {
        let (code, h, err) = self.cli(&["history", "--json"]);
        assert_eq!(code, 0, "{err}");
        let shows = h
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let (code, s, err) = self.cli(&["show", "--json", r["id"].as_str().unwrap()]);
                assert_eq!(code, 0, "{err}");
                s
            })
            .collect();
        (h, shows)
    }
}

#[test]
fn complete_and_partial_runs_show_their_counts_statuses_times_and_errors() {
    let e = setup();
    let (code, r1, err) = e.backup(&[]);
    assert_eq!(code, 0, "{err}");
    let r2 = e.partial_backup();

    let (h, shows) = e.dump();
    let runs = h.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{h}");
    assert_eq!(
        (runs[0]["id"].clone(), runs[0]["status"].clone()),
        (r1["id"].clone(), "complete".into())
    );
    assert_eq!(
        (runs[1]["id"].clone(), runs[1]["status"].clone()),
        (r2["id"].clone(), "partial".into())
    );
    assert_eq!(
        (
            runs[0]["files_total"].as_u64(),
            runs[0]["files_transferred"].as_u64()
        ),
        (Some(5), Some(5))
    );
    assert_eq!(
        (runs[1]["files_total"].as_u64(), runs[1]["errors"].as_u64()),
        (Some(5), Some(1))
    );
    assert_eq!(runs[1]["files_transferred"], 0, "{h}");
    for (run, rep) in runs.iter().zip([&r1, &r2]) {
        assert_eq!(run["started_at"], rep["started_at"]);
        assert_eq!(run["finished_at"], rep["finished_at"]);
        assert!(run["started_at"].as_str() <= run["finished_at"].as_str());
    }

    // show: the whole run record, its errors and its log.
    let s2 = &shows[1];
    assert_eq!(
        s2["report"], r2,
        "show must give the run record as the backup reported it"
    );
    assert_eq!(s2["problems"].as_array().unwrap().len(), 1);
    assert_eq!(s2["problems"][0]["path"], "d1/f1");
    assert_eq!(s2["problems"][0]["kind"], "unreadable");
    assert_eq!(s2["log_exists"], true);
    let log = std::fs::read_to_string(s2["log_path"].as_str().unwrap()).unwrap();
    assert!(
        log.contains("backup started") && log.contains("d1/f1") && log.contains("backup finished"),
        "{log}"
    );
    assert!(
        Path::new(s2["log_path"].as_str().unwrap())
            .starts_with(std::fs::canonicalize(&e.store).unwrap())
    );

    // Filters and stats.
    let (_, h, _) = e.cli(&[
        "history",
        "--json",
        "--since",
        "1h",
        "--dest",
        e.store.to_str().unwrap(),
    ]);
    assert_eq!(h.as_array().unwrap().len(), 2);
    let (_, h, _) = e.cli(&["history", "--json", "--job", "nope"]);
    assert_eq!(h.as_array().unwrap().len(), 0);
    let (code, st, err) = e.cli(&["stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (
            st[0]["runs"].as_u64(),
            st[0]["complete"].as_u64(),
            st[0]["partial"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(st[0]["success_rate"], 0.5);
    // A unique prefix of an id is enough; an unknown id is a clear error.
    let id2 = r2["id"].as_str().unwrap();
    let (code, s, _) = e.cli(&["show", "--json", &id2[..id2.len() - 2]]);
    assert_eq!((code, s["report"]["id"].as_str()), (0, Some(id2)));
    let (code, _, err) = e.cli(&["show", "20000101T000000Z-000000"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("snapring history") && err.contains("catalog rebuild"),
        "{err}"
    );
}

#[test]
fn a_killed_run_is_repaired_to_incomplete_by_the_next_command() {
    let e = setup();
    assert_eq!(e.backup(&[]).0, 0);
    let pause = e.store.with_extension("paused");
    let mut child = Command::new(bin())
        .args(["backup", "--json", "--jobs", "1", "--source"])
        .arg(&e.src)
        .arg("--dest")
        .arg(&e.store)
        .env("SNAPRING_CATALOG", &e.catalog)
        .env(
            "SNAPRING_FAILPOINTS",
            format!("walk.dir=pause:{}@2", pause.display()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&pause);
    let (_, h, _) = e.cli(&["history", "--json"]);
    assert_eq!(
        h[1]["status"], "running",
        "a live run shows as running: {h}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The next command (here: history) repairs the store and the catalog.
    let (code, h, err) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(h.as_array().unwrap().len(), 2);
    assert_eq!(h[1]["status"], "incomplete", "{h}");
    let id = h[1]["id"].as_str().unwrap();
    let file: serde_json::Value = serde_json::from_slice(
        &std::fs::read(e.store.join(format!(".snapring/runs/{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(file["status"], "incomplete");
    // And a backup after it records both properly.
    assert_eq!(e.backup(&[]).0, 0);
    let (_, h, _) = e.cli(&["history", "--json"]);
    let statuses: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["complete", "incomplete", "complete"]);
}

/// A run killed before its first row was committed, with its store repaired by `list`
/// (so no later repair names it): the next backup of the store brings it to the catalog.
#[test]
fn a_run_killed_before_it_reached_the_catalog_reaches_it_with_the_next_backup() {
    let e = setup();
    assert_eq!(e.backup(&[]).0, 0);
    let c = e.catalog.to_string_lossy().into_owned();
    let (code, _, _) = backup(
        &e.src,
        &e.store,
        &[],
        &[
            ("SNAPRING_CATALOG", &c),
            ("SNAPRING_FAILPOINTS", "catalog.before_commit=kill"),
        ],
    );
    assert_eq!(code, -1, "the failpoint fired");
    let out = snapring(
        &["list".as_ref(), "--dest".as_ref(), e.store.as_os_str()],
        &[],
    );
    assert!(out.status.success());
    let (_, h, _) = e.cli(&["history", "--json"]);
    assert_eq!(
        h.as_array().unwrap().len(),
        1,
        "not in the catalog yet: {h}"
    );
    assert_eq!(e.backup(&[]).0, 0);
    let (_, h, _) = e.cli(&["history", "--json"]);
    let statuses: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["complete", "incomplete", "complete"], "{h}");
}

#[test]
fn rebuild_from_the_store_gives_the_same_rows() {
    let e = setup();
    assert_eq!(e.backup(&[]).0, 0);
    e.partial_backup();
    write(&e.src.join("d0/new"), b"new");
    assert_eq!(e.backup(&["--retain", "2"]).0, 0);
    let (code, _, _) = e.backup(&["--require-mount"]);
    assert_eq!(code, 1);
    let live = e.dump();
    assert_eq!(live.0.as_array().unwrap().len(), 4);

    // The machine is lost: a new catalog, rebuilt from the store.
    std::fs::remove_file(&e.catalog).unwrap();
    let (code, _, err) = e.cli(&["catalog", "rebuild", "--dest", e.store.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(e.dump(), live);
    // Rebuilding again changes nothing, and drops rows whose record is gone.
    let (code, _, _) = e.cli(&["catalog", "rebuild", "--dest", e.store.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(e.dump(), live);
    let gone = live.0[0]["id"].as_str().unwrap();
    std::fs::remove_file(e.store.join(format!(".snapring/runs/{gone}.json"))).unwrap();
    e.cli(&["catalog", "rebuild", "--dest", e.store.to_str().unwrap()]);
    assert_eq!(e.dump().0.as_array().unwrap().len(), 3);
}

#[test]
fn a_schema_1_catalog_opens_and_migrates() {
    let e = setup();
    std::fs::create_dir_all(e.catalog.parent().unwrap()).unwrap();
    std::fs::copy("tests/fixtures/catalog-v1.db", &e.catalog).unwrap();
    let (code, h, err) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(h[0]["id"], "20251101T020000Z-0a1b2c");
    assert_eq!(h[0]["status"], "partial");
    assert_eq!(h[0]["files_total"], 120000);
    // Schema 4: every run from before restores were runs is a backup.
    assert_eq!(h[0]["kind"], "backup");
    let (_, only, _) = e.cli(&["history", "--json", "--kind", "restore"]);
    assert_eq!(only.as_array().map(Vec::len), Some(0));
    let (code, s, err) = e.cli(&["show", "--json", "20251101T020000Z-0a1b2c"]);
    assert_eq!(code, 0, "{err}");
    // Schema 2's problems table was backfilled from the stored run record.
    assert_eq!(s["problems"][0]["path"], "home/bob/secret");
    let c = snapring::catalog::Catalog::open(&e.catalog, false).unwrap();
    assert_eq!(c.version().unwrap(), snapring::catalog::SCHEMA_VERSION);
    let conn = rusqlite::Connection::open(&e.catalog).unwrap();
    let link_fallbacks: i64 = conn
        .query_row("SELECT link_fallbacks FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(link_fallbacks, 0);
    // New runs go in beside the old one.
    assert_eq!(e.backup(&[]).0, 0);
    let (_, h, _) = e.cli(&["history", "--json"]);
    assert_eq!(h.as_array().unwrap().len(), 2);
    // A catalog from a newer snapring is refused, not damaged.
    conn.pragma_update(None, "user_version", 99).unwrap();
    let (code, _, err) = e.cli(&["history"]);
    assert_eq!(code, 1);
    assert!(err.contains("newer than this snapring"), "{err}");
}

#[test]
fn a_corrupt_or_locked_catalog_never_fails_a_backup() {
    let e = setup();
    std::fs::create_dir_all(e.catalog.parent().unwrap()).unwrap();
    std::fs::write(
        &e.catalog,
        b"this is not a database, it is a shopping list\n".repeat(100),
    )
    .unwrap();
    let (code, rep, err) = e.backup(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["status"], "complete");
    let w = rep["warnings"].as_array().unwrap();
    assert!(
        !w.is_empty() && w[0].as_str().unwrap().contains("catalog"),
        "{rep}"
    );
    assert!(err.contains("catalog"), "the error is reported: {err}");
    let id = rep["id"].as_str().unwrap();
    let file: serde_json::Value = serde_json::from_slice(
        &std::fs::read(e.store.join(format!(".snapring/runs/{id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(file["status"], "complete");
    assert!(e.store.join("daily.0/d0/f0").exists());

    // Locked: another process holds a write transaction for the whole backup.
    std::fs::remove_file(&e.catalog).unwrap();
    assert_eq!(e.backup(&[]).0, 0);
    let conn = rusqlite::Connection::open(&e.catalog).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (code, rep, err) = e.backup(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["status"], "complete");
    assert!(
        rep["warnings"][0].as_str().unwrap().contains("locked"),
        "{rep}"
    );
    // A command that needs the catalog says it is locked and by whom to ask; it said
    // "read schema version (is it a SQLite file?): database is locked".
    let (code, _, err) = e.cli(&["history"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("database is locked") && err.contains("another process has held it"),
        "{err}"
    );
    assert!(!err.contains("SQLite file?"), "{err}");
    conn.execute_batch("ROLLBACK").unwrap();
    // Rebuild brings the catalog level with the store again.
    let (code, _, _) = e.cli(&["catalog", "rebuild", "--dest", e.store.to_str().unwrap()]);
    assert_eq!(code, 0);
    let (_, h, _) = e.cli(&["history", "--json"]);
    assert_eq!(h.as_array().unwrap().len(), 3);
}

/// A catalog file overwritten with garbage: `history`, `show` and `stats` say it is
/// damaged, name it and say what to do (they said "read schema version (is it a SQLite
/// file?): file is not a database"); `catalog rebuild`, which opened it the same way
/// and failed, moves it aside and recreates the store's runs.
#[test]
fn a_damaged_catalog_is_named_and_catalog_rebuild_recovers_it() {
    let e = setup();
    assert_eq!(e.backup(&[]).0, 0);
    assert_eq!(e.backup(&[]).0, 0);
    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&e.catalog, &garbage).unwrap();
    let shown = e.catalog.display().to_string();
    for args in [&["history"][..], &["show", "x"], &["stats"]] {
        let (code, _, err) = e.cli(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains(&format!("catalog {shown} is damaged"))
                && err.contains("snapring catalog rebuild --dest STORE"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert_eq!(
        std::fs::read(&e.catalog).unwrap(),
        garbage,
        "left as it was"
    );

    let (code, _, err) = e.cli(&["catalog", "rebuild", "--dest", e.store.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let aside = PathBuf::from(format!("{shown}.damaged"));
    assert!(
        err.contains(&format!("moved it to {}", aside.display())),
        "{err}"
    );
    // What happened, not the advice to do what is being done.
    assert!(!err.contains("catalog rebuild"), "{err}");
    assert_eq!(std::fs::read(&aside).unwrap(), garbage, "kept aside");
    let (code, h, err) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(h.as_array().unwrap().len(), 2, "{h}");
}

/// The job layer records runs, not the engine: `engine::backup` leaves the catalog
/// alone; `job::run_backup` records the run `running` once it has started (seen from
/// inside the run through the same observer hook) and its outcome at the end; a catalog
/// that cannot be written becomes a warning kept in the store's run record too.
#[test]
fn the_job_layer_records_runs_and_the_engine_does_not() {
    use snapring::catalog::{Catalog, Filter};
    use snapring::engine::{BackupOptions, Observer};
    use snapring::job::{CatalogRecorder, CatalogTarget};
    use snapring::report::RunReport;
    use snapring::store::Store;
    use std::sync::atomic::AtomicBool;

    let e = setup();
    let opts = BackupOptions::new(&e.src, &e.store);
    let cancel = AtomicBool::new(false);
    let rep = snapring::engine::backup(&opts, &cancel).unwrap();
    assert_eq!(rep.status, snapring::report::Status::Complete);
    assert!(!e.catalog.exists(), "the engine wrote a catalog");

    let target = CatalogTarget {
        path: e.catalog.clone(),
        on_nfs: false,
    };
    let first = rep.id;
    let rep = snapring::job::run_backup(&opts, Some(&target), &cancel).unwrap();
    let rows = Catalog::open(&e.catalog, false)
        .unwrap()
        .runs(&Filter::default())
        .unwrap();
    // The engine's own run reaches the catalog too, from its record in the store, when
    // the next run that records starts.
    let rows: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.id.as_str(), r.status.as_str()))
        .collect();
    assert_eq!(
        rows,
        [(first.as_str(), "complete"), (rep.id.as_str(), "complete")]
    );

    // While the run goes on, its row says `running`.
    struct Probe<'a> {
        inner: CatalogRecorder<'a>,
        seen: std::sync::Mutex<Option<String>>,
    }
    impl Observer for Probe<'_> {
        fn started(&self, store: &Store, rep: &mut RunReport) {
            self.inner.started(store, rep);
            let c = Catalog::open(&self.inner.0.path, false).unwrap();
            *self.seen.lock().unwrap() = c
                .show(&rep.id)
                .unwrap()
                .map(|s| format!("{:?}", s.report.status()));
        }
        fn finished(&self, rep: &mut RunReport) {
            self.inner.finished(rep);
        }
    }
    let probe = Probe {
        inner: CatalogRecorder::new(&target),
        seen: Default::default(),
    };
    let rep = snapring::engine::backup_observed(&opts, &cancel, &probe).unwrap();
    assert_eq!(probe.seen.lock().unwrap().as_deref(), Some("Running"));
    let c = Catalog::open(&e.catalog, false).unwrap();
    assert_eq!(
        c.show(&rep.id).unwrap().unwrap().report.status(),
        snapring::report::Status::Complete
    );

    // A catalog that cannot be opened: a warning, in the report and in the store.
    let bad = CatalogTarget {
        path: e.src.join("d0"),
        on_nfs: false,
    };
    let rep = snapring::job::run_backup(&BackupOptions::new(&e.src, &e.store), Some(&bad), &cancel)
        .unwrap();
    assert_eq!(rep.status, snapring::report::Status::Complete);
    assert_eq!(rep.warnings.len(), 2, "{:?}", rep.warnings);
    let stored = Store::open(&e.store, false)
        .unwrap()
        .read_run(&rep.id)
        .unwrap()
        .unwrap();
    assert_eq!(stored.warnings, rep.warnings);
}

/// Every file and folder of `.snapring/` (not inside staging or trash trees, which
/// carry the source's modes) with its mode.
fn bookkeeping_modes(dir: &Path, out: &mut Vec<(PathBuf, u32)>) {
    use std::os::unix::fs::MetadataExt;
    out.push((dir.to_path_buf(), std::fs::metadata(dir).unwrap().mode()));
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            let inside_tree = ["staging", "trash"]
                .iter()
                .any(|t| dir.file_name() == Some(OsStr::new(t)));
            if inside_tree {
                out.push((e.path(), m.mode()));
            } else {
                bookkeeping_modes(&e.path(), out);
            }
        } else {
            out.push((e.path(), m.mode()));
        }
    }
}

/// Runs `cat PATH` as user and group 65534 (nobody); whether it could read it.
fn nobody_can_read(p: &Path) -> bool {
    Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "cat",
        ])
        .arg(p)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// The store's bookkeeping (manifests: names, sizes, owners and hashes of files in the
/// source's private directories; run records, logs, journal, state, lock) and the
/// catalog are private to their owner: `.snapring/` and what snapring makes in it are
/// 0700/0600, the catalog and its folder too, and another local user reads none of it.
/// An existing store whose `.snapring/` is open to others is closed by the next backup.
#[test]
fn store_bookkeeping_and_the_catalog_are_private_to_their_owner() {
    let e = setup();
    // The temp dir is 0700: open the way, so only snapring's own modes protect the store.
    chmod(e._t.path(), 0o755);
    chmod(&e.src.join("d1"), 0o700);
    assert_eq!(e.backup(&[]).0, 0);
    write(&e.src.join("d1/f1"), b"changed");
    let (code, rep, err) = e.backup(&[]);
    assert_eq!(code, 0, "{err}");
    let meta = e.store.join(".snapring");
    let mut modes = Vec::new();
    bookkeeping_modes(&meta, &mut modes);
    assert!(modes.len() > 10, "{modes:?}");
    let open: Vec<_> = modes.iter().filter(|(_, m)| m & 0o077 != 0).collect();
    assert!(open.is_empty(), "readable by others: {open:?}");
    let mut cat = vec![(
        e.catalog.parent().unwrap().to_path_buf(),
        std::fs::metadata(e.catalog.parent().unwrap()).unwrap(),
    )];
    for f in std::fs::read_dir(e.catalog.parent().unwrap()).unwrap() {
        let f = f.unwrap();
        cat.push((f.path(), f.metadata().unwrap()));
    }
    use std::os::unix::fs::MetadataExt;
    let cat: Vec<(PathBuf, u32)> = cat
        .into_iter()
        .map(|(p, m)| (p, m.mode() & 0o777))
        .collect();
    assert_eq!(cat[0].1, 0o700, "{cat:?}");
    assert!(cat.iter().any(|(p, _)| p == &e.catalog), "{cat:?}");
    assert!(cat[1..].iter().all(|(_, m)| *m == 0o600), "{cat:?}");

    // Another user: reads the snapshot as the source allows, and nothing of the store's
    // bookkeeping or the catalog.
    assert!(
        nobody_can_read(&e.store.join("daily.0/d0/f0")),
        "the test's other user can reach the store"
    );
    let id = rep["id"].as_str().unwrap();
    for p in [
        meta.join(format!("manifests/{id}.mf")),
        meta.join(format!("runs/{id}.json")),
        meta.join(format!("logs/{id}.log")),
        meta.join("snapshots.json"),
        e.catalog.clone(),
    ] {
        assert!(p.exists(), "{}", p.display());
        assert!(
            !nobody_can_read(&p),
            "{} is readable by others",
            p.display()
        );
    }

    // A store made before: its `.snapring/` open to others, closed by the next backup.
    let mf = meta.join(format!("manifests/{id}.mf"));
    chmod(&meta, 0o755);
    chmod(&meta.join("manifests"), 0o755);
    chmod(&mf, 0o644);
    assert!(nobody_can_read(&mf), "the old store leaks");
    assert_eq!(e.backup(&[]).0, 0);
    assert_eq!(std::fs::metadata(&meta).unwrap().mode() & 0o777, 0o700);
    assert!(!nobody_can_read(&mf), "the old store still leaks");
}

/// A rotation that fails after its journal was written fails the run (exit 1), says
/// that the next command publishes it; the next command that takes the lock publishes
/// it, and then the run record and the catalog say the same: the journal's status and
/// the snapshot's name. Whether that command is a backup (which syncs the catalog when
/// it starts), `list` (then `history` re-reads the record) or `history` itself.
#[test]
fn a_failed_rotation_published_later_reads_the_same_in_the_record_and_the_catalog() {
    use snapring::catalog::{Catalog, Filter};
    for next in ["backup", "list", "history"] {
        let e = setup();
        assert_eq!(e.backup(&[]).0, 0);
        write(&e.src.join("d0/f0"), b"second version");
        let c = e.catalog.to_string_lossy().into_owned();
        let (code, rep, err) = backup(
            &e.src,
            &e.store,
            &[],
            &[
                ("SNAPRING_CATALOG", &c),
                ("SNAPRING_FAILPOINTS", "rotate.step=error@2"),
            ],
        );
        assert_eq!(code, 1, "{next}: {err}");
        assert_eq!(rep["status"], "failed", "{next}: {rep}");
        assert_eq!(rep["snapshot"], serde_json::Value::Null, "{next}: {rep}");
        let msg = rep["message"].as_str().unwrap();
        assert!(
            msg.contains("failpoint rotate.step fired")
                && msg.contains("its rotation journal was written")
                && msg.contains("publishes daily.0"),
            "{next}: {msg}"
        );
        let id = rep["id"].as_str().unwrap().to_string();
        let row = |id: &str| {
            Catalog::open(&e.catalog, false)
                .unwrap()
                .runs(&Filter::default())
                .unwrap()
                .into_iter()
                .find(|r| r.id == id)
                .map(|r| (r.status, r.snapshot))
                .unwrap()
        };
        assert_eq!(row(&id), ("failed".to_string(), None), "{next}");

        match next {
            "backup" => {
                let (code, _, err) = e.backup(&[]);
                assert_eq!(code, 0, "{err}");
                // Synced by the backup itself, not by a catalog command.
                assert_eq!(
                    row(&id),
                    ("complete".to_string(), Some("daily.0".to_string()))
                );
            }
            "list" => {
                let out = snapring(
                    &["list".as_ref(), "--dest".as_ref(), e.store.as_os_str()],
                    &[],
                );
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            _ => {}
        }
        let (code, h, err) = e.cli(&["history", "--json"]);
        assert_eq!(code, 0, "{next}: {err}");
        assert!(!e.store.join(".snapring/journal").exists(), "{next}");
        let (code, s, err) = e.cli(&["show", "--json", id.as_str()]);
        assert_eq!(code, 0, "{next}: {err}");
        let rec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(e.store.join(format!(".snapring/runs/{id}.json"))).unwrap(),
        )
        .unwrap();
        let h = h
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap()
            .clone();
        let want = (
            serde_json::Value::from("complete"),
            serde_json::Value::from("daily.0"),
        );
        assert_eq!(
            (rec["status"].clone(), rec["snapshot"].clone()),
            want,
            "{next}: record {rec}"
        );
        assert_eq!(
            (h["status"].clone(), h["snapshot"].clone()),
            want,
            "{next}: history {h}"
        );
        assert_eq!(
            (
                s["report"]["status"].clone(),
                s["report"]["snapshot"].clone()
            ),
            want,
            "{next}: show {s}"
        );
        assert_eq!(
            row(&id),
            ("complete".to_string(), Some("daily.0".to_string())),
            "{next}"
        );
        // Still counted as a run that failed (`snapring_runs_failed_total` must not go
        // down when it is published): kept through the rewrite, and by a rebuild.
        let failed_once = |cat: &Path| -> i64 {
            rusqlite::Connection::open(cat)
                .unwrap()
                .query_row("SELECT failed_once FROM runs WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .unwrap()
        };
        assert_eq!(failed_once(&e.catalog), 1, "{next}");
        let rebuilt = e.catalog.with_file_name("rebuilt.db");
        let out = snapring(
            &[
                "--catalog".as_ref(),
                rebuilt.as_os_str(),
                "catalog".as_ref(),
                "rebuild".as_ref(),
                "--dest".as_ref(),
                e.store.as_os_str(),
            ],
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(failed_once(&rebuilt), 1, "{next}: rebuilt");
        // A schema-7 catalog (before the column, and before schema 9's raw paths) is
        // backfilled from status and message.
        let conn = rusqlite::Connection::open(&rebuilt).unwrap();
        conn.execute_batch(
            "DROP INDEX runs_job_kind_status;
             ALTER TABLE runs DROP COLUMN failed_once;
             ALTER TABLE runs DROP COLUMN store_raw;
             ALTER TABLE runs DROP COLUMN source_raw;
             ALTER TABLE runs DROP COLUMN target_raw;
             ALTER TABLE runs DROP COLUMN log_path_raw;
             CREATE INDEX runs_job_kind_status ON runs(job, kind, status);
             PRAGMA user_version = 7;",
        )
        .unwrap();
        drop(conn);
        Catalog::open(&rebuilt, false).unwrap();
        assert_eq!(failed_once(&rebuilt), 1, "{next}: migrated");
    }
}

/// Several first runs at once on a new (or an old) catalog: each read the schema
/// version, then migrated from it, and all but the first failed ("migrate to schema 2:
/// duplicate column name: retain") and went unrecorded. Each migrates under the write
/// lock now, from the version it reads under it.
#[test]
fn catalogs_opened_at_once_migrate_once() {
    let t = tempfile::tempdir().unwrap();
    for round in 0..12 {
        let path = t.path().join(format!("c{round}.db"));
        if round % 2 == 1 {
            std::fs::copy("tests/fixtures/catalog-v1.db", &path).unwrap();
        }
        let go = std::sync::Arc::new(std::sync::Barrier::new(6));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (path, go) = (path.clone(), go.clone());
                std::thread::spawn(move || {
                    go.wait();
                    snapring::catalog::Catalog::open(&path, false).map(|c| c.version().unwrap())
                })
            })
            .collect();
        for th in threads {
            match th.join().unwrap() {
                Ok(v) => assert_eq!(v, snapring::catalog::SCHEMA_VERSION),
                Err(e) => panic!("round {round}: {e}"),
            }
        }
    }
}

/// An empty `SNAPRING_CATALOG` stopped every command ("a value is required for
/// '--catalog <FILE>'", exit 64); it is unset now: the default catalog. `--catalog OFF`
/// created a catalog file named `OFF`; any case of `off` turns it off.
#[test]
fn an_empty_snapring_catalog_is_unset_and_off_is_any_case() {
    let e = setup();
    let state = e._t.path().join("xdg-state");
    let st = state.to_string_lossy().into_owned();
    let (code, _, err) = e.backup(&[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = backup(
        &e.src,
        &e.store,
        &[],
        &[("SNAPRING_CATALOG", ""), ("XDG_STATE_HOME", &st)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(state.join("snapring/catalog.db").exists(), "{err}");
    let out = Command::new(bin())
        .current_dir(e._t.path())
        .args(["--catalog", "OFF", "backup", "--source"])
        .arg(&e.src)
        .arg("--dest")
        .arg(&e.store)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        !e._t.path().join("OFF").exists(),
        "a catalog file named OFF"
    );
}

/// `history --catalog /typo.db` created an empty catalog there and answered "no runs in
/// /typo.db". A catalog named by `--catalog` (or `SNAPRING_CATALOG`) that does not exist
/// is refused by the commands that read it, and none is created; the default catalog
/// (no flag) still starts empty.
#[test]
fn a_catalog_named_that_does_not_exist_is_refused_not_created_by_the_reading_commands() {
    let e = setup();
    for args in [
        &["history"][..],
        &["history", "--json"],
        &["stats"],
        &["show", "some-run"],
    ] {
        let (code, _, err) = e.cli(args);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(
            err.contains(&format!("no catalog at {}", e.catalog.display())),
            "{args:?}: {err}"
        );
        assert!(
            !e.catalog.exists(),
            "{args:?} created {}",
            e.catalog.display()
        );
    }
    // Once a backup has recorded a run there, it reads.
    let (code, _, err) = e.backup(&[]);
    assert_eq!(code, 0, "{err}");
    let (code, h, err) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(h.as_array().map(Vec::len), Some(1), "{h}");
    // The default catalog, named by nobody: `history` on a fresh machine says no runs.
    let state = e._t.path().join("xdg-state");
    let out = Command::new(bin())
        .env_remove("SNAPRING_CATALOG")
        .env("XDG_STATE_HOME", &state)
        .arg("history")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// `catalog rebuild --dest s3://…|file://…` said "no such store (check the path …)": a
/// repository keeps no run records; it says so, as a usage error.
#[test]
fn catalog_rebuild_of_a_repository_says_it_has_no_run_records() {
    let e = setup();
    for dest in ["file:///nonexistent/repo", "s3://bucket/prefix"] {
        let (code, _, err) = e.cli(&["catalog", "rebuild", "--dest", dest]);
        assert_eq!(code, 64, "{err}");
        assert!(
            err.contains("a restic repository has no run records to rebuild from"),
            "{err}"
        );
    }
}

/// A job name with a newline (allowed: notify and serve escape it) and a store whose
/// directory name holds one printed as two rows of `history`'s table and two lines
/// of `show` and `stats`, the second a fake. They are quoted and escaped now.
#[test]
fn a_newline_in_a_job_name_or_store_path_is_escaped_in_the_tables() {
    let e = setup();
    let store = e._t.path().join("st\nFAKE-STORE");
    let cfg = e._t.path().join("snapring.toml");
    std::fs::write(
        &cfg,
        format!(
            "[job.\"nightly\\nFAKE-ROW complete\"]\nsource = {:?}\ndest = {:?}\nlabel = \"daily\"\nretain = 2\n",
            e.src, store
        ),
    )
    .unwrap();
    let c = e.catalog.to_string_lossy().into_owned();
    let out = snapring(
        &[OsStr::new("backup"), "--config".as_ref(), cfg.as_os_str()],
        &[("SNAPRING_CATALOG", &c)],
    );
    assert!(out.status.success(), "{out:?}");
    let (code, runs, err) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    let id = runs[0]["id"].as_str().expect("a run id").to_string();
    for cmd in [&["history"][..], &["stats"], &["show", &id]] {
        let out = snapring(
            &std::iter::once("--catalog")
                .chain(std::iter::once(c.as_str()))
                .chain(cmd.iter().copied())
                .map(OsStr::new)
                .collect::<Vec<_>>(),
            &[],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd:?}: {out:?}");
        for line in text.lines() {
            assert!(
                !line.starts_with("FAKE"),
                "{cmd:?}: a line starts with the name's second line:\n{text}"
            );
        }
        assert!(
            text.contains(r#""nightly\nFAKE-ROW complete""#),
            "{cmd:?}: the job name is not shown escaped:\n{text}"
        );
        if cmd[0] != "stats" {
            assert!(text.contains(r#"st\nFAKE-STORE""#), "{cmd:?}:\n{text}");
        }
    }
}

/// Writes 0xdeadbeef over the catalog's page 3 (offset 8192, 4 KiB): after a few
/// backups, the index of `runs`' primary key, which the reads of `history` and `stats`
/// never touch and every backup's write does ("database disk image is malformed").
fn damage_page_3(catalog: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(catalog)
        .unwrap();
    f.seek(SeekFrom::Start(8192)).unwrap();
    f.write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(1024)).unwrap();
}

/// A catalog damaged in the middle of the file (a page of an index): `history` and
/// `stats` answered from the intact pages, exit 0 and no word of it, while every
/// backup logged "damaged"; `catalog rebuild`, the advice of that message, trusted the
/// file, failed the same way and moved nothing aside, so the advice looped. Now the
/// read commands check the file whole and fail, and rebuild moves it aside.
#[test]
fn a_catalog_damaged_in_the_middle_fails_the_read_commands_and_rebuild_recovers_it() {
    let e = setup();
    for _ in 0..3 {
        assert_eq!(e.backup(&[]).0, 0);
    }
    damage_page_3(&e.catalog);
    let (code, _, err) = e.backup(&[]);
    assert_eq!(code, 0, "a catalog problem never fails a backup: {err}");
    assert!(err.contains("is damaged"), "{err}");
    let shown = e.catalog.display().to_string();
    for args in [&["history"][..], &["stats"], &["show", "x"]] {
        let (code, _, err) = e.cli(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains(&format!("catalog {shown} is damaged"))
                && err.contains("snapring catalog rebuild --dest STORE"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let damaged = std::fs::read(&e.catalog).unwrap();
    let (code, out, err) = {
        let out = snapring(
            &[
                "--catalog".as_ref(),
                e.catalog.as_os_str(),
                "catalog".as_ref(),
                "rebuild".as_ref(),
                "--dest".as_ref(),
                e.store.as_os_str(),
            ],
            &[],
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "{err}");
    let aside = PathBuf::from(format!("{shown}.damaged"));
    assert!(
        err.contains(&format!("moved it to {}", aside.display())),
        "{err}"
    );
    assert!(out.contains("4 runs"), "{out}");
    assert_eq!(std::fs::read(&aside).unwrap(), damaged, "kept aside");
    let (code, h, err) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(h.as_array().unwrap().len(), 4, "{h}");
    let (code, _, err) = e.cli(&["stats"]);
    assert_eq!(code, 0, "{err}");
}

/// A user of a restic repository alone with a damaged catalog was told to run
/// `catalog rebuild --dest STORE`, which with the repository's URL is a usage error
/// (no run records): the advice led nowhere. With a damaged catalog, `catalog rebuild
/// --dest REPO` now moves it aside and starts an empty one (the repository's runs were
/// in the catalog alone), and the warning says so; an intact catalog is still refused.
#[test]
fn catalog_rebuild_with_a_repository_moves_a_damaged_catalog_aside() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let catalog = t.path().join("cat2.db");
    write(&src.join("f"), b"into a repository");
    let url = format!("file://{}", repo.display());
    let url = url.as_str();
    let run = |args: &[&str]| {
        let mut a: Vec<&OsStr> = vec!["--catalog".as_ref(), catalog.as_os_str()];
        a.extend(args.iter().map(OsStr::new));
        let out = snapring(&a, &[("SNAPRING_PASSWORD", "catalog-test-password")]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(run(&["init", "--dest", url]).0, 0);
    let backup = ["backup", "--source", src.to_str().unwrap(), "--dest", url];
    assert_eq!(run(&backup).0, 0);
    // Intact: still a usage error, and the file is left alone.
    let (code, _, err) = run(&["catalog", "rebuild", "--dest", url]);
    assert_eq!(code, 64, "{err}");
    std::fs::write(&catalog, b"x\n").unwrap();
    let (code, _, err) = run(&backup);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("is damaged") && err.contains("restic repository"),
        "the advice names the repository case: {err}"
    );
    assert!(
        err.contains(&format!(
            "`snapring catalog rebuild --dest {url}` moves the damaged file aside"
        )),
        "{err}"
    );
    let (code, out, err) = run(&["catalog", "rebuild", "--dest", url]);
    assert_eq!(code, 0, "{err}");
    let aside = t.path().join("cat2.db.damaged");
    assert!(
        err.contains(&format!("moved it to {}", aside.display())),
        "{err}"
    );
    assert!(out.contains("new and empty"), "{out}");
    assert_eq!(std::fs::read(&aside).unwrap(), b"x\n");
    let (code, _, err) = run(&["history"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(run(&backup).0, 0);
}

/// With the catalog in `SNAPRING_CATALOG`, a usage error's usage line listed
/// `--catalog <FILE>` among the arguments, as if it were required: clap counted the
/// environment's value as given on the command line.
#[test]
fn the_usage_line_does_not_list_a_catalog_from_the_environment() {
    let t = tempfile::tempdir().unwrap();
    let url = format!("file://{}", t.path().join("R").display());
    let url = url.as_str();
    let cat = t.path().join("x.db");
    let out = snapring(
        &["forget", "--dest", url, "--retain", "1"].map(OsStr::new),
        &[("SNAPRING_CATALOG", cat.to_str().unwrap())],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("--label <LABEL>"), "{err}");
    assert!(!err.contains("--catalog"), "{err}");
    // The environment still chooses the catalog, and an empty one counts as unset.
    let e = setup();
    assert_eq!(e.backup(&[]).0, 0);
    let c = e.catalog.to_str().unwrap();
    let out = snapring(
        &["history", "--json"].map(OsStr::new),
        &[("SNAPRING_CATALOG", c)],
    );
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(h.as_array().map(Vec::len), Some(1), "{h}");
    let out = snapring(
        &["--catalog", "off", "history"].map(OsStr::new),
        &[("SNAPRING_CATALOG_ON_NFS", "1")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the catalog is turned off"),
        "SNAPRING_CATALOG_ON_NFS=1 as documented: {err}"
    );
}

#[test]
fn stats_says_why_there_is_no_trend_when_the_older_half_copied_nothing() {
    let e = setup();
    // Two runs of empty files copy 0 bytes; two after the files got content copy some.
    for i in 0..5 {
        write(&e.src.join(format!("d{i}/f{i}")), b"");
    }
    for _ in 0..2 {
        assert_eq!(e.backup(&[]).0, 0);
    }
    for i in 0..5 {
        write(&e.src.join(format!("d{i}/f{i}")), b"content now");
    }
    for _ in 0..2 {
        assert_eq!(e.backup(&[]).0, 0);
    }
    let (code, st, err) = e.cli(&["stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(st[0]["runs"], 4, "{st}");
    assert_eq!(st[0]["timed_runs"], 4, "{st}");
    assert!(st[0]["bytes_transferred_trend_percent"].is_null(), "{st}");
    let mut a: Vec<&OsStr> = vec!["--catalog".as_ref(), e.catalog.as_os_str()];
    a.push("stats".as_ref());
    let out = snapring(&a, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let copied = text
        .lines()
        .find(|l| l.contains("copied per run"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        copied.contains("no trend: the older half's mean is 0"),
        "4 runs are enough for a trend; it is the older half's 0 that gives none: {text}"
    );
    assert!(!text.contains("trend needs 4 runs"), "{text}");
}

/// A run id of time `t` (as `new_run_id` makes them) with `salt` as its suffix.
fn old_id(t: chrono::DateTime<chrono::Utc>, salt: usize) -> String {
    format!("{}-{salt:06x}", t.format("%Y%m%dT%H%M%SZ"))
}

/// Writes run records (and 8 KiB logs) into the store whose `.snapring` is `meta`,
/// copies of its first run's record with another id and status.
fn record_writer(meta: &Path) -> impl Fn(&str, &str, bool) + use<> {
    let first = std::fs::read_dir(meta.join("runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&first).unwrap()).unwrap();
    let meta = meta.to_path_buf();
    move |id: &str, status: &str, log: bool| {
        let mut r = rec.clone();
        r["id"] = id.into();
        r["status"] = status.into();
        r["snapshot"] = serde_json::Value::Null;
        r["expired"] = serde_json::json!([]);
        std::fs::write(
            meta.join("runs").join(format!("{id}.json")),
            serde_json::to_vec(&r).unwrap(),
        )
        .unwrap();
        if log {
            std::fs::write(meta.join("logs").join(format!("{id}.log")), [b'x'; 8192]).unwrap();
        }
    }
}

/// `n` complete runs a minute apart from `t0` on, written with `put` (with logs).
fn old_complete_runs(
    put: &impl Fn(&str, &str, bool),
    t0: chrono::DateTime<chrono::Utc>,
    n: usize,
) -> Vec<String> {
    let ids: Vec<String> = (0..n)
        .map(|i| old_id(t0 + chrono::Duration::minutes(i as i64), i))
        .collect();
    for id in &ids {
        put(id, "complete", true);
    }
    ids
}

/// Shard runs never pruned the store's run records (only a single-node run did): a
/// store backed up only by `--shard` workers kept every record and log. The worker
/// that finalizes now records the run with the store's other runs in the catalog and
/// prunes as a single-node run does; the catalog keeps the pruned runs' history.
#[test]
fn a_shard_run_prunes_old_run_records_once_the_catalog_holds_them() {
    use chrono::{Duration, Utc};
    let e = setup();
    assert_eq!(e.backup(&[]).0, 0);
    let meta = e.store.join(".snapring");
    let put = record_writer(&meta);
    // 150 complete runs of 35 days ago, unknown to the catalog: with the first run, the
    // oldest 51 are beyond the newest 100. The shard run's own id (`r1`) tells no time:
    // it is kept and takes none of the newest places (sorted by name it took one, and
    // one more record went).
    let complete = old_complete_runs(&put, Utc::now() - Duration::days(35), 150);
    let (code, out, err) = e.backup(&["--shard", "0/1", "--run-id", "r1"]);
    assert_eq!(code, 0, "{out} {err}");
    let record = |id: &str| meta.join("runs").join(format!("{id}.json")).exists();
    let log = |id: &str| meta.join("logs").join(format!("{id}.log")).exists();
    for id in &complete[..51] {
        assert!(!record(id) && !log(id), "{id}: kept");
    }
    for id in complete[51..].iter().map(String::as_str).chain(["r1"]) {
        assert!(record(id), "{id}: its record was removed");
    }
    assert_eq!(std::fs::read_dir(meta.join("runs")).unwrap().count(), 101);
    let (code, h, err) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        h.as_array().unwrap().len(),
        152,
        "every run is in the catalog"
    );

    // With the catalog off, the records are the only history: none is removed.
    let more = old_complete_runs(&put, Utc::now() - Duration::days(34), 60);
    let out = snapring(
        &[
            "--catalog".as_ref(),
            "off".as_ref(),
            "backup".as_ref(),
            "--source".as_ref(),
            e.src.as_os_str(),
            "--dest".as_ref(),
            e.store.as_os_str(),
            "--shard".as_ref(),
            "0/1".as_ref(),
            "--run-id".as_ref(),
            "r2".as_ref(),
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        more.iter().all(|id| record(id)),
        "a record went with no catalog"
    );
    assert_eq!(std::fs::read_dir(meta.join("runs")).unwrap().count(), 162);
}

/// The logs beside the catalog (restores', repository runs', backups that could not
/// start) were never removed: a restore every minute left half a million a year. A run
/// that logs there now prunes them by the default policy first: beyond the newest 100
/// and older than 30 days, a failed run's after 90 days, never one whose run still
/// holds its marker or has no row in the catalog.
#[test]
fn a_restore_prunes_old_logs_beside_the_catalog() {
    use chrono::{Duration, Utc};
    let e = setup();
    assert_eq!(e.backup(&[]).0, 0);
    let meta = e.store.join(".snapring");
    let put = record_writer(&meta);
    // 150 complete runs of 35 days ago and a failed one of 40: the next backup imports
    // them into the catalog (rows with their statuses).
    let complete = old_complete_runs(&put, Utc::now() - Duration::days(35), 150);
    let failed = old_id(Utc::now() - Duration::days(40), 9000);
    put(&failed, "failed", false);
    assert_eq!(e.backup(&[]).0, 0);
    // Their logs beside the catalog, as if they had been restores; two without a row
    // (40 and 100 days old) and one whose run still holds its marker.
    let logs = e.catalog.parent().unwrap().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let unknown_recent = old_id(Utc::now() - Duration::days(40), 9001);
    let unknown_old = old_id(Utc::now() - Duration::days(100), 9002);
    let marked = complete[0].replace("-000000", "-00abcd");
    let ids: Vec<&String> = complete
        .iter()
        .chain([&failed, &unknown_recent, &unknown_old, &marked])
        .collect();
    for id in &ids {
        std::fs::write(logs.join(format!("{id}.log")), b"x").unwrap();
    }
    std::fs::write(logs.join(format!("{marked}.running")), b"").unwrap();
    let to = e._t.path().join("to");
    let (code, _, err) = e.cli(&[
        "restore",
        "--dest",
        e.store.to_str().unwrap(),
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let has = |id: &str| logs.join(format!("{id}.log")).exists();
    // 154 logs before the restore's own: the newest 100 kept, the 54 oldest looked at.
    let gone: Vec<&&String> = ids.iter().filter(|id| !has(id)).collect();
    // A log without a row is all there is of its run: kept, however old.
    for id in [&failed, &unknown_recent, &unknown_old, &marked] {
        assert!(has(id), "{id}: removed");
    }
    assert_eq!(gone.len(), 50, "{gone:?}");
    assert!(complete[..50].iter().all(|id| !has(id)));
    assert!(complete[50..].iter().all(|id| has(id)));
    let (_, h, _) = e.cli(&["history", "--json", "--kind", "restore"]);
    let own = h[0]["id"].as_str().unwrap();
    assert!(has(own), "the restore's own log");
    let said = std::fs::read_to_string(logs.join(format!("{own}.log"))).unwrap();
    assert!(
        said.contains("removed the logs beside the catalog"),
        "{said}"
    );
    let (code, all, _) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        all.as_array().unwrap().len(),
        154,
        "the catalog keeps every row"
    );
}

/// Run records and logs were never removed: a job every minute left half a million of
/// each in `.snapring/runs` and `logs` a year, listed by every backup. A run now removes
/// those older than 30 days beyond the newest 100, except a failed run's younger than
/// 90 days, a run whose snapshot is in the store (its manifest), a run still `running`;
/// the catalog keeps their rows, also through `catalog rebuild`.
#[test]
fn old_run_records_and_logs_are_pruned_and_the_catalog_keeps_their_history() {
    use chrono::{Duration, Utc};
    let e = setup();
    assert_eq!(e.backup(&[]).0, 0);
    let meta = e.store.join(".snapring");
    let put = record_writer(&meta);
    let t0 = Utc::now() - Duration::days(35);
    // 150 complete runs of 35 days ago: the newest 98 of them are among the newest 100
    // records.
    let complete = old_complete_runs(&put, t0, 150);
    // Failed runs of 235 days ago (beyond 90 days), and one of 40 days ago (within 90,
    // and older than the newest 100).
    let failed_old: Vec<String> = (0..5)
        .map(|i| {
            old_id(
                t0 - Duration::days(200) + Duration::minutes(i),
                1000 + i as usize,
            )
        })
        .collect();
    for id in &failed_old {
        put(id, "failed", true);
    }
    let failed_recent = old_id(Utc::now() - Duration::days(40), 2000);
    put(&failed_recent, "failed", true);
    // A run whose snapshot is still in the store (its manifest is there), and one
    // still `running`: both older than everything else.
    let with_snapshot = old_id(t0 - Duration::days(365), 3000);
    put(&with_snapshot, "complete", true);
    std::fs::write(
        meta.join("manifests").join(format!("{with_snapshot}.mf")),
        b"",
    )
    .unwrap();
    let running = old_id(t0 - Duration::days(365) + Duration::minutes(1), 3001);
    put(&running, "running", false);
    let (code, second, err) = e.backup(&[]);
    assert_eq!(code, 0, "{err}");
    let second = second["id"].as_str().unwrap().to_string();
    let (code, h, err) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        h.as_array().unwrap().len(),
        160,
        "every run is in the catalog"
    );

    let record = |id: &str| meta.join("runs").join(format!("{id}.json")).exists();
    let log = |id: &str| meta.join("logs").join(format!("{id}.log")).exists();
    let pruned: Vec<&String> = complete[..52].iter().chain(&failed_old).collect();
    for id in &pruned {
        assert!(!record(id) && !log(id), "{id}: kept");
    }
    for id in complete[52..]
        .iter()
        .chain([&failed_recent, &with_snapshot, &running, &second])
    {
        assert!(record(id), "{id}: its record was removed");
    }
    for id in complete[52..]
        .iter()
        .chain([&failed_recent, &with_snapshot])
    {
        assert!(log(id), "{id}: its log was removed");
    }
    assert_eq!(std::fs::read_dir(meta.join("runs")).unwrap().count(), 103);
    let said = std::fs::read_to_string(meta.join("logs").join(format!("{second}.log"))).unwrap();
    assert!(said.contains("removed the run records and logs"), "{said}");
    assert!(meta.join("runs-pruned").exists());

    // The catalog keeps the history of the pruned runs, also through a rebuild.
    let out = snapring(
        &[
            "--catalog".as_ref(),
            e.catalog.as_os_str(),
            "catalog".as_ref(),
            "rebuild".as_ref(),
            "--dest".as_ref(),
            e.store.as_os_str(),
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let (code, h, err) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    let ids: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 160, "{ids:?}");
    for id in &pruned {
        assert!(
            ids.contains(&id.as_str()),
            "{id}: its row went with the rebuild"
        );
    }
    let (code, _, err) = e.cli(&["show", pruned[0]]);
    assert_eq!(code, 0, "{err}");
    // An intact catalog passes `catalog check`.
    let out = snapring(
        &[
            "--catalog".as_ref(),
            e.catalog.as_os_str(),
            "catalog".as_ref(),
            "check".as_ref(),
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("intact"),
        "{out:?}"
    );
    // `history` settled the `running` one (nobody held the store's lock): it is an
    // `incomplete` run of over 90 days ago now. The next backup removes it, and pushes
    // one more out of the newest 100.
    let settled: serde_json::Value = serde_json::from_slice(
        &std::fs::read(meta.join("runs").join(format!("{running}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(settled["status"], "incomplete");
    assert_eq!(e.backup(&[]).0, 0);
    assert_eq!(std::fs::read_dir(meta.join("runs")).unwrap().count(), 102);
    assert!(!record(&complete[52]) && record(&complete[53]) && !record(&running));
    assert!(record(&failed_recent) && record(&with_snapshot));
}

/// Writes the stamp of a passed check of `catalog`, `age` ago, with the file's identity.
fn stamp_check(catalog: &Path, age: chrono::Duration) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(catalog).unwrap();
    let at = (chrono::Utc::now() - age).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    std::fs::write(
        PathBuf::from(format!("{}.checked", catalog.display())),
        serde_json::json!({"checked_at": at, "dev": m.dev(), "ino": m.ino()}).to_string(),
    )
    .unwrap();
}

/// `history`, `show` and `stats` ran `PRAGMA quick_check` on every open (16 s, 1.8 s,
/// 4.6 s on a catalog of 250,000 runs). Now once a day: a second read within the day
/// answers without it (damage only the check sees goes unnoticed then), while a
/// damaged-file error met by any command (here a backup's write), `catalog check`
/// (always) and the end of the day bring the check back.
#[test]
fn the_whole_file_check_runs_once_a_day_and_again_after_damage_is_met() {
    let e = setup();
    for _ in 0..3 {
        assert_eq!(e.backup(&[]).0, 0);
    }
    let stamp = PathBuf::from(format!("{}.checked", e.catalog.display()));
    assert!(!stamp.exists(), "a backup does not check the file");
    let (code, _, err) = e.cli(&["history"]);
    assert_eq!(code, 0, "{err}");
    damage_page_3(&e.catalog);
    // Within the day: not checked again, so the damage in a page these reads never
    // touch is not seen (the trade-off).
    for args in [&["history"][..], &["stats"]] {
        let (code, _, err) = e.cli(args);
        assert_eq!(
            code, 0,
            "{args:?}: checked again within the interval: {err}"
        );
    }
    assert!(stamp.exists(), "the passed check is remembered");
    // `catalog check` always checks.
    let (code, _, err) = e.cli(&["catalog", "check"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is damaged"), "{err}");
    assert!(!stamp.exists(), "a failed check leaves no stamp");
    // A damaged-file error met by a backup's write takes the stamp away.
    stamp_check(&e.catalog, chrono::Duration::minutes(5));
    let (code, _, err) = e.cli(&["history"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = e.backup(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("is damaged"), "{err}");
    assert!(!stamp.exists(), "the damage a write met is forgotten");
    let (code, _, err) = e.cli(&["history"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is damaged"), "{err}");
    // A stamp older than a day: checked again.
    stamp_check(&e.catalog, chrono::Duration::hours(25));
    for args in [&["history"][..], &["stats"], &["show", "x"]] {
        let (code, _, err) = e.cli(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("is damaged"), "{args:?}: {err}");
    }
}

#[test]
fn one_backup_prunes_at_most_2000_runs_the_oldest_first() {
    use chrono::{Duration, Utc};
    let e = setup();
    assert_eq!(e.backup(&[]).0, 0);
    let runs = e.store.join(".snapring/runs");
    let first = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&first).unwrap()).unwrap();
    let t0 = Utc::now() - Duration::days(60);
    let old: Vec<String> = (0..2150)
        .map(|i| old_id(t0 + Duration::minutes(i as i64), i))
        .collect();
    for id in &old {
        let mut r = rec.clone();
        r["id"] = id.as_str().into();
        r["snapshot"] = serde_json::Value::Null;
        r["expired"] = serde_json::json!([]);
        std::fs::write(
            runs.join(format!("{id}.json")),
            serde_json::to_vec(&r).unwrap(),
        )
        .unwrap();
    }
    let left = |ids: &[String]| {
        ids.iter()
            .filter(|id| runs.join(format!("{id}.json")).exists())
            .count()
    };
    assert_eq!(e.backup(&[]).0, 0);
    // 2,152 records, the newest 100 kept: 2,052 due, 2,000 of them removed, the oldest.
    assert_eq!(left(&old[..2000]), 0, "the oldest 2,000 go first");
    assert_eq!(left(&old[2000..]), 150, "the rest wait for the next backup");
    assert_eq!(e.backup(&[]).0, 0);
    // 153 records: the newest 100 stay (the three real runs and 97 old ones).
    assert_eq!(left(&old[2000..]), 97);
    let (code, h, err) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        h.as_array().unwrap().len(),
        2153,
        "the catalog keeps every run"
    );
}

/// A store's run that could not start (its store a file, not a directory), with the
/// catalog damaged: the warning said "this run into a repository is not in the catalog".
#[test]
fn a_run_that_could_not_start_is_not_called_a_repository_run_when_the_catalog_fails() {
    let e = setup();
    std::fs::create_dir_all(e.catalog.parent().unwrap()).unwrap();
    std::fs::write(&e.catalog, vec![0x5a; 64 * 1024]).unwrap();
    std::fs::write(&e.store, b"not a directory").unwrap();
    let (code, _, err) = e.backup(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is damaged"), "{err}");
    assert!(
        !err.contains("this run into a repository"),
        "a store's run: {err}"
    );
    assert!(
        err.contains("could not start") && err.contains("no run record in its store"),
        "{err}"
    );
}

/// With no catalog to hold them (off, or damaged), the store's run records are the only
/// history, and what `catalog rebuild` recreates a catalog from: none is pruned (they
/// were, the log saying "the catalog keeps their history").
#[test]
fn run_records_are_not_pruned_when_no_catalog_holds_them() {
    use chrono::{Duration, Utc};
    let e = setup();
    assert_eq!(e.backup(&[]).0, 0);
    let runs = e.store.join(".snapring/runs");
    let first = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&first).unwrap()).unwrap();
    let t0 = Utc::now() - Duration::days(60);
    for i in 0..120 {
        let id = old_id(t0 + Duration::minutes(i as i64), i);
        let mut r = rec.clone();
        r["id"] = id.as_str().into();
        r["snapshot"] = serde_json::Value::Null;
        r["expired"] = serde_json::json!([]);
        std::fs::write(
            runs.join(format!("{id}.json")),
            serde_json::to_vec(&r).unwrap(),
        )
        .unwrap();
    }
    let count = || std::fs::read_dir(&runs).unwrap().count();
    assert_eq!(count(), 121);
    let off = backup(&e.src, &e.store, &[], &[("SNAPRING_CATALOG", "off")]);
    assert_eq!(off.0, 0, "{}", off.2);
    assert_eq!(count(), 122, "catalog off: every record kept");
    // A damaged catalog could not import them either.
    std::fs::create_dir_all(e.catalog.parent().unwrap()).unwrap();
    std::fs::write(&e.catalog, vec![0x5a; 64 * 1024]).unwrap();
    assert_eq!(e.backup(&[]).0, 0);
    assert_eq!(count(), 123, "catalog damaged: every record kept");
    // A catalog that holds them: pruned down to the newest 100.
    std::fs::remove_file(&e.catalog).unwrap();
    assert_eq!(e.backup(&[]).0, 0);
    assert_eq!(count(), 100);
    let (code, h, err) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        h.as_array().unwrap().len(),
        124,
        "the catalog has every run"
    );
}

/// A catalog path that exists and is not a regular file is refused before SQLite opens
/// it, by every command that opens the catalog, saying what it is: a loop device
/// holding data got SQLite's header and 48 KiB written over it (`history --catalog
/// /dev/loop0`, then "damaged"), `catalog rebuild` renamed the device node to
/// `.damaged` and made a regular file in its place, a character device got a `-journal`
/// beside it, a fifo said "open: disk I/O error".
#[test]
fn a_catalog_that_is_not_a_regular_file_is_refused_and_left_as_it_is() {
    let e = setup();
    assert_eq!(e.backup(&[]).0, 0);
    let dir = e.catalog.parent().unwrap().to_path_buf();
    let store = e.store.to_str().unwrap().to_string();
    let refused = |cat: &Path, what: &str| {
        let c = cat.to_string_lossy().into_owned();
        for args in [
            &["history"][..],
            &["stats"],
            &["show", "x"],
            &["catalog", "check"],
            &["catalog", "rebuild", "--dest", &store],
        ] {
            let mut a: Vec<&OsStr> = vec!["--catalog".as_ref(), cat.as_os_str()];
            a.extend(args.iter().map(OsStr::new));
            let out = snapring(&a, &[]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_ne!(out.status.code(), Some(0), "{args:?} {c}: {err}");
            assert!(
                err.contains(&format!("{c}: is {what}, not a regular file"))
                    && err.contains("nothing was opened or written"),
                "{args:?} {c}: {err}"
            );
        }
        // A backup goes on (the catalog is never fatal to one) and says why its row
        // is missing.
        let (code, rep, err) = backup(&e.src, &e.store, &[], &[("SNAPRING_CATALOG", &c)]);
        assert_eq!(code, 0, "{err}");
        assert!(
            rep["warnings"].to_string().contains("not a regular file"),
            "{rep}"
        );
        for extra in ["-journal", "-wal", ".damaged", ".checked"] {
            let mut s = cat.as_os_str().to_owned();
            s.push(extra);
            assert!(
                !Path::new(&s).exists(),
                "{} was made",
                Path::new(&s).display()
            );
        }
    };
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.db");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    refused(&fifo, "a fifo (named pipe)");
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // /dev/zero's numbers, under another name.
    let zero = dir.join("zero.db");
    assert!(
        Command::new("mknod")
            .arg(&zero)
            .args(["c", "1", "5"])
            .status()
            .unwrap()
            .success()
    );
    refused(&zero, "a character device");
    let d = dir.join("dir.db");
    std::fs::create_dir(&d).unwrap();
    refused(&d, "a directory");
    assert_eq!(
        std::fs::read_dir(&d).unwrap().count(),
        0,
        "nothing made in it"
    );
    // A loop device over an image of known bytes, when one can be set up here.
    let img = dir.join("image");
    let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    std::fs::write(&img, &data).unwrap();
    let lo = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output()
        .unwrap();
    if !lo.status.success() {
        eprintln!(
            "no loop device ({}): the block device case is not run",
            String::from_utf8_lossy(&lo.stderr).trim()
        );
        return;
    }
    let dev = PathBuf::from(String::from_utf8_lossy(&lo.stdout).trim().to_string());
    let detach = || {
        let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    };
    let r = std::panic::catch_unwind(|| {
        refused(&dev, "a block device");
        assert!(
            std::fs::symlink_metadata(&dev)
                .unwrap()
                .file_type()
                .is_block_device(),
            "the device node is still there"
        );
    });
    let _ = Command::new("sync").status();
    detach();
    assert!(
        std::fs::read(&img).unwrap() == data,
        "the loop device's data was written over"
    );
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// `catalog rebuild` imports only run records that are what the store writes: a run id
/// (letters, digits, `.`, `_`, `-`) that is the record's file name. Forged ones (`id`
/// `../../../../tmp/h2evil`, one with `<x>` in it, one whose file is named for another
/// id) were imported, and such a row `running` was never settled (settling reads the
/// record by its id); now each is skipped with a warning naming its file.
#[test]
fn catalog_rebuild_skips_forged_run_records_naming_each() {
    let e = setup();
    let (code, rep, err) = e.backup(&[]);
    assert_eq!(code, 0, "{err}");
    let id = rep["id"].as_str().unwrap();
    let runs = e.store.join(".snapring/runs");
    let real = std::fs::read(runs.join(format!("{id}.json"))).unwrap();
    let forge = |file: &str, forged_id: &str| {
        let mut r: serde_json::Value = serde_json::from_slice(&real).unwrap();
        r["id"] = forged_id.into();
        r["status"] = "running".into();
        r["finished_at"] = serde_json::Value::Null;
        std::fs::write(runs.join(file), serde_json::to_vec(&r).unwrap()).unwrap();
    };
    forge("h2evil.json", "../../../../tmp/h2evil");
    forge(
        "20261207T999999Z-zzzzzz<x>.json",
        "20261207T999999Z-zzzzzz<x>",
    );
    forge("20261207T000001Z-bbbbbb.json", "20261207T000002Z-cccccc");
    std::fs::remove_file(&e.catalog).unwrap();
    let (code, _, err) = e.cli(&["catalog", "rebuild", "--dest", e.store.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for f in [
        "h2evil.json",
        "20261207T999999Z-zzzzzz<x>.json",
        "20261207T000001Z-bbbbbb.json",
    ] {
        assert!(
            err.contains(&format!("runs/{f}: a run record whose id")) && err.contains("skipped"),
            "{f}: {err}"
        );
    }
    let (code, h, err) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    let ids: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id], "{h}");
}

/// `stats --job` of a job without runs names the job and the jobs that have runs (it
/// said "(no runs in cat.db)", as of an empty catalog); exit 0 all the same, as
/// `history` of it: a job that has not run yet is no error, and `--json` gives `[]`.
#[test]
fn stats_of_a_job_without_runs_names_it_and_the_jobs_with_runs() {
    let e = setup();
    let c = e.catalog.to_string_lossy().into_owned();
    let cfg = e.catalog.with_file_name("snapring.toml");
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    std::fs::write(
        &cfg,
        format!("[job.home]\nsource = {:?}\ndest = {:?}\n", e.src, e.store),
    )
    .unwrap();
    let out = snapring(
        &[
            "run".as_ref(),
            "home".as_ref(),
            "--config".as_ref(),
            cfg.as_os_str(),
        ],
        &[("SNAPRING_CATALOG", &c)],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mut a: Vec<&OsStr> = vec!["--catalog".as_ref(), e.catalog.as_os_str()];
    a.extend(["stats", "--job", "nosuchjob"].map(OsStr::new));
    let out = snapring(&a, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text.contains("no backup runs of job \"nosuchjob\"")
            && text.contains("jobs with runs: home"),
        "{text}"
    );
    let (code, j, err) = e.cli(&["stats", "--job", "nosuchjob", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(j, serde_json::json!([]));
    // `history --job` alike (it printed a bare empty table).
    let mut a: Vec<&OsStr> = vec!["--catalog".as_ref(), e.catalog.as_os_str()];
    a.extend(["history", "--job", "nosuchjob"].map(OsStr::new));
    let out = snapring(&a, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text.starts_with("(no runs of job \"nosuchjob\" in ")
            && text.trim_end().ends_with("; jobs with runs: home)"),
        "{text}"
    );
    let (code, j, err) = e.cli(&["history", "--job", "nosuchjob", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(j, serde_json::json!([]));
    // A job with runs is listed as before.
    let (code, j, err) = e.cli(&["history", "--job", "home", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        j.as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|r| r["job"] == "home")),
        "{j}"
    );
}

/// A symbolic link to nothing as the catalog: opening it created the link's target
/// (wherever it pointed). Refused now, naming the link and its target, and nothing is
/// created; a backup goes on and says why its row is missing.
#[test]
fn a_catalog_that_is_a_symlink_to_nothing_is_refused_and_nothing_is_created() {
    let e = setup();
    assert_eq!(e.backup(&[]).0, 0);
    let dir = e.catalog.parent().unwrap().to_path_buf();
    let target = dir.join("elsewhere/catalog.db");
    let link = dir.join("link.db");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let c = link.to_string_lossy().into_owned();
    let store = e.store.to_str().unwrap().to_string();
    for args in [
        &["history"][..],
        &["stats"],
        &["catalog", "check"],
        &["catalog", "rebuild", "--dest", &store],
    ] {
        let mut a: Vec<&OsStr> = vec!["--catalog".as_ref(), link.as_os_str()];
        a.extend(args.iter().map(OsStr::new));
        let out = snapring(&a, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "{c}: is a symbolic link to {}, which does not exist",
                target.display()
            )) && err.contains("nothing was opened or created"),
            "{args:?}: {err}"
        );
    }
    let (code, rep, err) = backup(&e.src, &e.store, &[], &[("SNAPRING_CATALOG", &c)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        rep["warnings"]
            .to_string()
            .contains("is a symbolic link to"),
        "{rep}"
    );
    assert!(!target.exists(), "the link's target was created");
    assert!(
        !target.parent().unwrap().exists(),
        "its directory was created"
    );
    // Pointed at a catalog, the link is followed as before.
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(&e.catalog, &target).unwrap();
    let out = snapring(
        &["--catalog".as_ref(), link.as_os_str(), "history".as_ref()],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// Values edited by hand into the catalog were shown as they were read: a `-3` in a
/// count as 18446744073709551613, a time without its offset as if in UTC. `history`
/// shows `invalid` there and warns naming the run and the columns; `--json` lists them
/// (`invalid`); `stats` counts the run by its status only and says so.
#[test]
fn values_edited_into_the_catalog_by_hand_are_shown_invalid() {
    let e = setup();
    assert_eq!(e.backup(&[]).0, 0);
    assert_eq!(e.backup(&[]).0, 0);
    let conn = rusqlite::Connection::open(&e.catalog).unwrap();
    let id: String = conn
        .query_row("SELECT id FROM runs ORDER BY started_at LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    conn.execute(
        "UPDATE runs SET files_total = -3, bytes_transferred = -1, \
         started_at = substr(started_at, 1, 19) WHERE id = ?1",
        [&id],
    )
    .unwrap();
    drop(conn);
    let c = e.catalog.as_os_str();
    let out = snapring(&["--catalog".as_ref(), c, "history".as_ref()], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!text.contains("18446744073709551613"), "{text}");
    let line = text.lines().find(|l| l.starts_with(&id)).unwrap();
    assert_eq!(line.matches("invalid").count(), 3, "{line}");
    let other = text.lines().nth(2).unwrap();
    assert!(!other.contains("invalid"), "{text}");
    assert!(
        err.contains(&format!(
            "snapring: warning: run {id} in the catalog holds values no run writes"
        )) && err.contains("files_total -3")
            && err.contains("bytes_transferred -1")
            && err.contains("started_at \""),
        "{err}"
    );
    let (code, j, err) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    let row = j
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap();
    assert_eq!(row["files_total"], 0, "{row}");
    assert_eq!(row["invalid"][0]["column"], "files_total", "{row}");
    assert_eq!(row["invalid"][0]["value"], "-3", "{row}");
    assert_eq!(row["invalid"].as_array().unwrap().len(), 3, "{row}");
    let out = snapring(&["--catalog".as_ref(), c, "stats".as_ref()], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text.contains("invalid: 1 run of it holds values no run writes")
            && text.contains(&format!("{id} (files_total -3")),
        "{text}"
    );
    let (code, j, err) = e.cli(&["stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(j[0]["runs"], 2, "{j}");
    assert_eq!(j[0]["timed_runs"], 1, "{j}");
    assert_eq!(
        j[0]["invalid_runs"].as_array().map(Vec::len),
        Some(1),
        "{j}"
    );
}

/// A duration edited into the catalog as text: the run's `duration_seconds` is shown
/// invalid, as a count would be. It failed the whole query (`history` showed nothing).
#[test]
fn a_text_duration_edited_into_the_catalog_is_shown_invalid() {
    let e = setup();
    assert_eq!(e.backup(&[]).0, 0);
    let conn = rusqlite::Connection::open(&e.catalog).unwrap();
    conn.execute("UPDATE runs SET duration_seconds = 'abc'", [])
        .unwrap();
    drop(conn);
    let (code, j, err) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    let row = &j.as_array().unwrap()[0];
    assert_eq!(row["invalid"][0]["column"], "duration_seconds", "{row}");
    assert_eq!(row["invalid"][0]["value"], "\"abc\"", "{row}");
}

/// Schema 11 (the daemon's deaths told before their store answered, noted so that a
/// daemon stopped before the store answers leaves them to the next one to mark): an
/// old catalog file (schema 1) migrates to it, and what is noted in it is read back,
/// a path that is not UTF-8 with its bytes, until it is marked.
#[test]
fn an_old_catalog_migrates_to_keep_the_deaths_told_before_their_store_answered() {
    use std::os::unix::ffi::OsStrExt;
    let e = setup();
    std::fs::create_dir_all(e.catalog.parent().unwrap()).unwrap();
    std::fs::copy("tests/fixtures/catalog-v1.db", &e.catalog).unwrap();
    let mut c = snapring::catalog::Catalog::open(&e.catalog, false).unwrap();
    assert_eq!(c.version().unwrap(), snapring::catalog::SCHEMA_VERSION);
    assert_eq!(c.told_deaths().unwrap(), vec![]);
    let latin1 = Path::new(std::ffi::OsStr::from_bytes(b"/mnt/caf\xe9/s"));
    c.note_told_death(
        "20261207T020000Z-0a1b2c",
        Path::new("/mnt/s"),
        latin1,
        "killed",
    )
    .unwrap();
    drop(c);
    let mut c = snapring::catalog::Catalog::open(&e.catalog, false).unwrap();
    assert_eq!(
        c.told_deaths().unwrap(),
        vec![(
            "20261207T020000Z-0a1b2c".to_string(),
            PathBuf::from("/mnt/s"),
            latin1.to_path_buf(),
            "killed".to_string()
        )]
    );
    c.marked_told("20261207T020000Z-0a1b2c").unwrap();
    assert_eq!(c.told_deaths().unwrap(), vec![]);
    // The old run is still there.
    let (code, h, err) = e.cli(&["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(h[0]["id"], "20251101T020000Z-0a1b2c");
}
