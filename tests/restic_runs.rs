//! Backups into a restic repository are runs like any other (docs/format.md, "Runs into
//! a repository"): `snapring run JOB --config` with `dest = "file://…"` and
//! `password_file`, and `snapring backup --dest`, land in a real SQLite catalog with
//! bytes uploaded, objects written and the dedup ratio, and notify a real HTTP webhook;
//! a wrong password is a recorded, notified `failed` run. The password is nowhere in
//! the catalog, the run log or the notification. An old catalog migrates to the new
//! columns.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::restic::restore_latest;
use common::*;

const PASSWORD: &str = "repo-secret-5d1e0c";

fn cli(catalog: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, serde_json::Value, String) {
    let mut a: Vec<&OsStr> = vec!["--catalog".as_ref(), catalog.as_os_str()];
    a.extend(args.iter().map(OsStr::new));
    let out = snapring(&a, env);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The catalog's row for run `id`: status, kind, job, store, snapshot, bytes uploaded,
/// objects written, dedup ratio, log path.
type Row = (
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<f64>,
    Option<String>,
);

fn row(catalog: &Path, id: &str) -> Row {
    let c = rusqlite::Connection::open(catalog).unwrap();
    c.query_row(
        "SELECT status, kind, job, store, snapshot, bytes_uploaded, objects_written,
                dedup_ratio, log_path FROM runs WHERE id = ?1",
        [id],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        },
    )
    .unwrap()
}

/// The webhook bodies received so far, parsed.
fn hooks(http: &Http) -> Vec<serde_json::Value> {
    http.got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| serde_json::from_str(b).unwrap())
        .collect()
}

#[test]
fn repository_runs_land_in_the_catalog_and_the_webhook_without_the_password() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let catalog = t.path().join("state/catalog.db");
    let pw = t.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    write(&src.join("a"), &common::restic::pseudo_random(3 << 20, 1));
    write(&src.join("b"), b"small");
    let url = format!("file://{}", repo.display());
    let (code, _, err) = cli(
        &catalog,
        &[
            "init",
            "--dest",
            &url,
            "--password-file",
            pw.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let http = http_server();
    let cfg = t.path().join("s.toml");
    let write_cfg = |password_file: &Path, extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[job.offsite]\nsource = \"{}\"\ndest = \"{url}\"\npassword_file = \"{}\"\nretain = 2\nnotify = [\"hook\"]\nnotify_success = true\n{extra}\n[notify.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{}/w\"\n",
                src.display(),
                password_file.display(),
                http.port
            ),
        )
        .unwrap();
    };
    write_cfg(&pw, "");
    let (code, _, err) = cli(&catalog, &["config", "check", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "config check: {err}");
    let run = |catalog: &Path| {
        cli(
            catalog,
            &[
                "run",
                "offsite",
                "--config",
                cfg.to_str().unwrap(),
                "--json",
            ],
            &[],
        )
    };

    // The first run: everything new.
    let (code, r1, err) = run(&catalog);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r1["status"], "complete", "{r1}");
    let k = &r1["repository"];
    let (up1, obj1) = (
        k["bytes_uploaded"].as_u64().unwrap(),
        k["objects_written"].as_u64().unwrap(),
    );
    // At least a data pack, a tree pack, an index file and the snapshot file.
    assert!(obj1 >= 4, "{r1}");
    assert!(up1 > 3 << 20, "{r1}");
    assert_eq!(k["dedup_ratio"], 0.0, "{r1}");
    assert_eq!(r1["backup_bytes_added"], up1, "{r1}");
    let id1 = r1["id"].as_str().unwrap();
    let (status, kind, job, store, snap, up, obj, ratio, log) = row(&catalog, id1);
    assert_eq!(
        (
            status.as_str(),
            kind.as_str(),
            job.as_deref(),
            store.as_str()
        ),
        ("complete", "backup", Some("offsite"), url.as_str())
    );
    assert_eq!(snap.as_deref(), r1["snapshot"].as_str());
    assert_eq!(snap.as_deref(), k["snapshot_id"].as_str());
    assert_eq!(
        (up, obj, ratio),
        (Some(up1 as i64), Some(obj1 as i64), Some(0.0))
    );
    let log = log.unwrap();
    assert!(
        Path::new(&log).starts_with(catalog.parent().unwrap()),
        "the log is beside the catalog: {log}"
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("backup into a repository finished"),
        "{log_text}"
    );

    // An unchanged run reads nothing; then a copy of a stored file deduplicates fully.
    let (_, r2, _) = run(&catalog);
    assert_eq!(r2["repository"]["bytes_read"], 0, "{r2}");
    assert_eq!(r2["repository"]["data_blobs_added"], 0, "{r2}");
    assert!(
        r2["repository"]["bytes_uploaded"].as_u64().unwrap() < 10_000,
        "{r2}"
    );
    std::fs::copy(src.join("a"), src.join("a-copy")).unwrap();
    let (_, r3, _) = run(&catalog);
    assert_eq!(r3["repository"]["bytes_read"], 3 << 20, "{r3}");
    assert_eq!(r3["repository"]["dedup_ratio"], 1.0, "{r3}");
    assert_eq!(r3["repository"]["data_blobs_added"], 0, "{r3}");
    // retain = 2: the third run forgot the first snapshot.
    assert_eq!(r3["expired"], serde_json::json!([r1["snapshot"]]), "{r3}");
    let (.., ratio3, _) = row(&catalog, r3["id"].as_str().unwrap());
    assert_eq!(ratio3, Some(1.0));

    // `show` has the KPIs.
    let out = snapring(
        &[
            "--catalog".as_ref(),
            catalog.as_os_str(),
            "show".as_ref(),
            OsStr::new(r3["id"].as_str().unwrap()),
        ],
        &[],
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("repository: uploaded") && shown.contains("dedup ratio 1.00"),
        "{shown}"
    );

    // A wrong password: a failed run, recorded and notified.
    let wrong = t.path().join("wrong");
    std::fs::write(&wrong, "not it").unwrap();
    write_cfg(&wrong, "");
    let (code, rf, err) = run(&catalog);
    assert_eq!(code, 1, "{rf}{err}");
    assert_eq!(rf["status"], "failed", "{rf}");
    assert!(
        rf["message"].as_str().unwrap().contains("wrong password"),
        "{rf}"
    );
    assert!(err.contains("wrong password"), "{err}");
    let (status, ..) = row(&catalog, rf["id"].as_str().unwrap());
    assert_eq!(status, "failed");

    let got = hooks(&http);
    assert_eq!(got.len(), 4, "one notification per run: {got:?}");
    let first = got
        .iter()
        .find(|b| b.to_string().contains(id1))
        .expect("the first run's notification");
    assert!(
        first.to_string().contains("\"bytes_uploaded\""),
        "the webhook has the repository KPIs: {first}"
    );
    assert!(
        got.last().unwrap().to_string().contains("failed"),
        "{got:?}"
    );

    // The password is nowhere: catalog (with its journal files), logs, notifications.
    let mut seen = Vec::new();
    let mut stack = vec![catalog.parent().unwrap().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                seen.push(p);
            }
        }
    }
    assert!(seen.len() >= 5, "catalog and four logs: {seen:?}");
    for p in &seen {
        let bytes = std::fs::read(p).unwrap();
        assert!(
            !bytes
                .windows(PASSWORD.len())
                .any(|w| w == PASSWORD.as_bytes()),
            "the password is in {}",
            p.display()
        );
    }
    for (_, body) in http.got.lock().unwrap().iter() {
        assert!(
            !body.contains(PASSWORD),
            "the password is in a notification"
        );
    }

    // Settings a repository does not take are refused, naming them: by `config
    // check` at the key's line, and by the run.
    write_cfg(&pw, "prefix = \"home\"\n");
    let out = snapring(&["config".as_ref(), "check".as_ref(), cfg.as_os_str()], &[]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(
            ":8:1: job.offsite.prefix: prefix is not supported with a restic repository dest"
        ),
        "{said}"
    );
    let (code, _, err) = run(&catalog);
    assert_eq!(code, 1);
    assert!(
        err.contains("prefix") && err.contains("not supported with a restic repository"),
        "{err}"
    );
    assert_eq!(hooks(&http).len(), 4, "a refused run notifies nobody");
}

#[test]
fn backup_with_dest_flag_is_recorded_too() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let catalog = t.path().join("catalog.db");
    write(&src.join("f"), b"data");
    let url = format!("file://{}", repo.display());
    let env = [("SNAPRING_PASSWORD", PASSWORD)];
    assert_eq!(cli(&catalog, &["init", "--dest", &url], &env).0, 0);
    let (code, r, err) = cli(
        &catalog,
        &[
            "backup",
            "--source",
            src.to_str().unwrap(),
            "--dest",
            &url,
            "--label",
            "hourly",
            "--json",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let (status, _, job, _, snap, up, ..) = row(&catalog, r["id"].as_str().unwrap());
    assert_eq!(status, "complete");
    assert_eq!(job, None);
    assert_eq!(snap.as_deref(), r["snapshot"].as_str());
    assert!(up.unwrap() > 0);
    let c = rusqlite::Connection::open(&catalog).unwrap();
    let label: String = c
        .query_row("SELECT label FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(label, "hourly");
    // `history --dest URL` finds it by the URL (not a directory to canonicalize).
    let (code, rows, err) = cli(&catalog, &["history", "--dest", &url, "--json"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["id"], r["id"], "{rows}");
}

/// A restore from a repository is a run like a restore from a store: its own run id,
/// a catalog row of kind `restore` with the repository's URL and the counts; one that
/// cannot start (no such snapshot) is recorded as `failed`, with the error.
#[test]
fn restores_from_a_repository_are_recorded_in_the_catalog() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let catalog = t.path().join("catalog.db");
    write(&src.join("d/f"), b"restored and recorded");
    write(&src.join("g"), b"two");
    let url = format!("file://{}", repo.display());
    let env = [("SNAPRING_PASSWORD", PASSWORD)];
    assert_eq!(cli(&catalog, &["init", "--dest", &url], &env).0, 0);
    let backup = [
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &url,
        "--json",
    ];
    let (code, b, err) = cli(&catalog, &backup, &env);
    assert_eq!(code, 0, "{err}");
    let to = t.path().join("to");
    let restore = [&restore_latest(&url, &to)[..], &["--json"]].concat();
    let (code, r, err) = cli(&catalog, &restore, &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(to.join("d/f")).unwrap(),
        b"restored and recorded"
    );
    let id = r["id"].as_str().unwrap_or_else(|| panic!("a run id: {r}"));
    assert_ne!(Some(id), b["id"].as_str());
    let (status, kind, job, store, snap, ..) = row(&catalog, id);
    assert_eq!((status.as_str(), kind.as_str()), ("complete", "restore"));
    assert_eq!((job, store.as_str()), (None, url.as_str()));
    assert_eq!(snap.as_deref(), Some("latest"));
    let c = rusqlite::Connection::open(&catalog).unwrap();
    let (files, bytes): (i64, i64) = c
        .query_row(
            "SELECT files_transferred, bytes_transferred FROM runs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((files, bytes), (2, 24));

    let missing = [
        "restore",
        "--dest",
        &url,
        "no-such",
        "--to",
        to.to_str().unwrap(),
    ];
    // A snapshot the repository does not have is a usage error, no run (session 49;
    // it was a recorded `failed` restore, exit 1):
    // `a_restore_of_a_snapshot_the_repository_does_not_have_exits_64_and_is_no_run`.
    let (code, _, err) = cli(&catalog, &missing, &env);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("no snapshot \"no-such\" in the repository"),
        "{err}"
    );
    let rows: i64 = c
        .query_row(
            "SELECT count(*) FROM runs WHERE kind = 'restore' AND snapshot = 'no-such'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 0);
}

/// Session 49: `restore` of a snapshot a repository does not have (an id or prefix
/// none of its snapshots has, or one several have) exits 64 with a message naming the
/// snapshot and the repository, writes nothing, records no run and notifies nobody, as
/// for a store (tests/restore.rs). It was a recorded `failed` restore (exit 1) that
/// paged the job's notifiers. A repository that cannot be opened (a wrong password),
/// or has no snapshot yet, stays the restore's own failure: recorded and told.
#[test]
fn a_restore_of_a_snapshot_the_repository_does_not_have_exits_64_and_is_no_run() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let catalog = t.path().join("catalog.db");
    let pw = t.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    write(&src.join("f"), b"data");
    let url = format!("file://{}", repo.display());
    let http = http_server();
    let cfg = t.path().join("s.toml");
    let write_cfg = |password_file: &Path| {
        std::fs::write(
            &cfg,
            format!(
                "[job.offsite]\nsource = \"{}\"\ndest = \"{url}\"\npassword_file = \"{}\"\nnotify = [\"hook\"]\nnotify_success = true\n\n[notify.hook]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{}/w\"\n",
                src.display(),
                password_file.display(),
                http.port
            ),
        )
        .unwrap();
    };
    write_cfg(&pw);
    let restore = |snap: &str, to: &Path| {
        let to = to.to_str().unwrap();
        let args = [
            "restore",
            "--config",
            cfg.to_str().unwrap(),
            snap,
            "--to",
            to,
            "--json",
        ];
        let (code, _, err) = cli(&catalog, &args, &[]);
        (code, err)
    };
    let restores = || -> i64 {
        if !catalog.exists() {
            return 0;
        }
        let c = rusqlite::Connection::open(&catalog).unwrap();
        c.query_row(
            "SELECT count(*) FROM runs WHERE kind = 'restore'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let pwf = ["--password-file", pw.to_str().unwrap()];
    let (code, _, err) = cli(
        &catalog,
        &[&["init", "--dest", &url][..], &pwf].concat(),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    // No snapshot yet: the repository's state, the restore's own failure.
    let to = t.path().join("to");
    let (code, err) = restore("latest", &to);
    assert_eq!(code, 1, "{err}");
    assert_eq!(restores(), 1);
    assert_eq!(
        http.got.lock().unwrap().len(),
        1,
        "a failed restore is told"
    );
    let backup = [
        &["backup", "--source", src.to_str().unwrap(), "--dest", &url][..],
        &pwf,
    ];
    for _ in 0..2 {
        let (code, _, err) = cli(&catalog, &backup.concat(), &[]);
        assert_eq!(code, 0, "{err}");
    }
    http.got.lock().unwrap().clear();
    // The prefix both snapshots' ids start with, when they share one (one time in 16).
    let ids: Vec<String> = std::fs::read_dir(repo.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let shared: String = ids[0]
        .chars()
        .zip(ids[1].chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    let mut cases = vec![
        (
            "0123abcd".to_string(),
            "no snapshot \"0123abcd\" in the repository",
        ),
        (
            "no-such".to_string(),
            "no snapshot \"no-such\" in the repository",
        ),
    ];
    if !shared.is_empty() {
        cases.push((shared.clone(), "2 snapshots in the repository"));
    }
    for (snap, says) in &cases {
        let (code, err) = restore(snap, &to);
        assert_eq!(code, 64, "{snap}: {err}");
        assert!(err.contains(says) && err.contains(&url), "{snap}: {err}");
        assert!(!to.exists(), "{snap}: nothing is written");
    }
    assert_eq!(restores(), 1, "a mistake is no run");
    assert!(
        http.got.lock().unwrap().is_empty(),
        "a mistake pages nobody: {:?}",
        http.got.lock().unwrap()
    );
    // A repository that cannot be opened stays a recorded, told failure.
    let wrong = t.path().join("wrong");
    std::fs::write(&wrong, "not the password\n").unwrap();
    write_cfg(&wrong);
    let (code, err) = restore("0123abcd", &to);
    assert_eq!(code, 1, "{err}");
    assert_eq!(restores(), 2);
    assert_eq!(http.got.lock().unwrap().len(), 1);
    // A restore that runs is a run.
    write_cfg(&pw);
    let (code, err) = restore(&ids[0][..8], &to);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(to.join("f")).unwrap(), b"data");
    assert_eq!(restores(), 3);
}

#[test]
fn a_schema_1_catalog_gains_the_repository_columns_empty() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("catalog.db");
    std::fs::copy("tests/fixtures/catalog-v1.db", &db).unwrap();
    let c = snapring::catalog::Catalog::open(&db, false).unwrap();
    assert_eq!(c.version().unwrap(), snapring::catalog::SCHEMA_VERSION);
    drop(c);
    let c = rusqlite::Connection::open(&db).unwrap();
    let (rows, filled): (i64, i64) = c
        .query_row(
            "SELECT count(*), count(bytes_uploaded) + count(objects_written) + count(dedup_ratio)
             FROM runs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(rows > 0, "the fixture has runs");
    assert_eq!(filled, 0, "store runs have no repository KPIs");
}

/// The JSON report of a backup that exited 2, `partial`.
fn partial(out: &std::process::Output) -> serde_json::Value {
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(2), "{r}");
    assert_eq!(r["status"], "partial", "{r}");
    r
}

/// Unreadable entries (EACCES, by running without CAP_DAC_OVERRIDE) make a `partial`
/// repository run (exit 2) whose problems name each entry relative to the source, in
/// the report and the catalog's `problems` table; the rest is in the snapshot.
#[test]
fn unreadable_entries_make_a_partial_repository_run_naming_them() {
    use std::process::Command;
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let catalog = t.path().join("catalog.db");
    write(&src.join("ok"), b"fine");
    write(&src.join("d1/secret file"), b"no");
    write(&src.join("d2/inner"), b"no");
    let url = format!("file://{}", repo.display());
    assert_eq!(
        cli(
            &catalog,
            &["init", "--dest", &url],
            &[("SNAPRING_PASSWORD", PASSWORD)]
        )
        .0,
        0
    );
    chmod(&src.join("d1/secret file"), 0o000);
    chmod(&src.join("d2"), 0o000);
    let out = Command::new("setpriv")
        .args([
            "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-dac_override,-dac_read_search",
        ])
        .arg(bin())
        .env("SNAPRING_PASSWORD", PASSWORD)
        .arg("--catalog")
        .arg(&catalog)
        .args(["backup", "--json", "--source"])
        .arg(&src)
        .args(["--dest", &url])
        .output()
        .unwrap();
    chmod(&src.join("d2"), 0o755);
    let r = partial(&out);
    let mut problems: Vec<(String, String, String)> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().into(),
                p["kind"].as_str().unwrap().into(),
                p["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    problems.sort();
    assert_eq!(
        problems,
        vec![
            (
                "d1/secret%20file".into(),
                "unreadable".into(),
                "open".into()
            ),
            ("d2".into(), "unreadable".into(), "list".into()),
        ],
        "{r}"
    );
    assert_eq!(r["errors"], 2, "{r}");
    // A first run has nothing to keep of `d2`: the problem says it is not in the
    // snapshot (it said only "Permission denied").
    let d2 = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["path"] == "d2")
        .unwrap();
    assert_eq!(
        d2["error"],
        "Permission denied (os error 13); the directory is missing from this snapshot: there is no previous snapshot to keep its entries from",
        "{r}"
    );
    // The files the snapshot holds: `ok` (the unreadable one is a problem, not one).
    assert_eq!(r["files_total"], 1, "{r}");
    let c = rusqlite::Connection::open(&catalog).unwrap();
    let mut paths: Vec<String> = c
        .prepare("SELECT path FROM problems WHERE run_id = ?1")
        .unwrap()
        .query_map([r["id"].as_str().unwrap()], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    paths.sort();
    assert_eq!(paths, vec!["d1/secret%20file", "d2"]);
    let to = t.path().join("T");
    let (code, _, err) = cli(
        &catalog,
        &restore_latest(&url, &to),
        &[("SNAPRING_PASSWORD", PASSWORD)],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(to.join("ok")).unwrap(), b"fine");
    assert!(!to.join("d1/secret file").exists());
}

/// A directory that cannot be opened (EACCES) keeps the parent snapshot's entries of
/// it, as the store's walk and a shard unit keep an unreadable directory's: one
/// transient error does not drop its history. Today's exclusions hold for what is
/// kept; a kept file of several links is no hard link (its inode number is the
/// previous snapshot's); an unchanged kept subtree is the parent's tree, not written
/// again. The run is `partial`, its problem says what was kept; the repository passes
/// `restic check --read-data` and restic restores the kept entries. Before, the
/// directory was left out of the snapshot, and with it every file of its history.
#[test]
fn a_directory_that_cannot_be_opened_keeps_its_entries_of_the_parent_snapshot() {
    use common::restic::{PASSWORD, file_url, restic_binary, run_restic, sr};
    use snapring::restic::{Id, backup::descend, repo::Repo, snapshot::Snapshot};
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("ok"), b"fine");
    write(&src.join("d2/inner"), b"inner then");
    write(&src.join("d2/image.iso"), b"excluded since");
    write(&src.join("d2/sub/deep"), b"deep");
    write(&src.join("d2/sub/deeper/f"), b"f");
    std::fs::hard_link(src.join("d2/inner"), src.join("d2/linked")).unwrap();
    std::os::unix::fs::symlink("inner", src.join("d2/link")).unwrap();
    let url = file_url(&repo);
    let (code, out, err) = sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{out}\n{err}");
    let backup = |extra: &[&str]| {
        let (code, out, err) = sr(&[
            &["backup", "--json", "--dest", &url, "--source"][..],
            &[src.to_str().unwrap()],
            extra,
        ]
        .concat());
        assert_eq!(code, 0, "{out}\n{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let first = backup(&[]);
    let first_id = first["snapshot"].as_str().unwrap().to_string();
    // Since: changed and added in the directory that will not open.
    std::fs::write(src.join("d2/inner"), b"inner now").unwrap();
    write(&src.join("d2/added"), b"added since");
    chmod(&src.join("d2"), 0o000);
    let out = snapring_without_dac()
        .env("SNAPRING_PASSWORD", PASSWORD)
        .args([
            "backup",
            "--json",
            "--exclude",
            "*.iso",
            "--dest",
            &url,
            "--source",
        ])
        .arg(&src)
        .output()
        .unwrap();
    chmod(&src.join("d2"), 0o755);
    let r = partial(&out);
    let problems = r["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{r}");
    assert_eq!(problems[0]["path"], "d2", "{r}");
    assert_eq!(problems[0]["kind"], "unreadable", "{r}");
    assert_eq!(problems[0]["action"], "list", "{r}");
    assert_eq!(
        problems[0]["error"],
        format!(
            "Permission denied (os error 13); its 4 entries of the previous snapshot ({}) were kept",
            &first_id[..8]
        ),
        "{r}"
    );
    // The kept files are the snapshot's: `ok`, `inner`, `linked`, `deep`, `f`.
    assert_eq!(r["files_total"], 5, "{r}");
    let second_id = r["snapshot"].as_str().unwrap().to_string();
    // The unchanged subtree kept is the parent's own tree: nothing written again.
    let opened = Repo::open(&repo, PASSWORD.as_bytes()).unwrap();
    let sub_tree = |id: &str| {
        let id = Id::parse(id).unwrap();
        let snap: Snapshot = opened
            .load_json(snapring::restic::backend::Kind::Snapshot, &id)
            .unwrap();
        let canon = std::fs::canonicalize(&src).unwrap();
        let mut comps: Vec<&OsStr> = canon.iter().skip(1).collect();
        comps.extend([OsStr::new("d2"), OsStr::new("sub")]);
        descend(&opened, snap.tree, &comps).unwrap().unwrap()
    };
    assert_eq!(sub_tree(&first_id), sub_tree(&second_id));
    let kept_as_before = |d2: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(d2)
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["inner", "link", "linked", "sub"],
            "{}",
            d2.display()
        );
        assert_eq!(std::fs::read(d2.join("inner")).unwrap(), b"inner then");
        assert_eq!(std::fs::read(d2.join("linked")).unwrap(), b"inner then");
        assert_ne!(
            ino(&d2.join("inner")),
            ino(&d2.join("linked")),
            "no hard link"
        );
        assert_eq!(
            std::fs::read_link(d2.join("link")).unwrap(),
            Path::new("inner")
        );
        assert_eq!(std::fs::read(d2.join("sub/deep")).unwrap(), b"deep");
        assert_eq!(std::fs::read(d2.join("sub/deeper/f")).unwrap(), b"f");
    };
    let to = t.path().join("restored");
    let (code, out, err) = sr(&[
        "restore",
        "--dest",
        &url,
        &second_id,
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    kept_as_before(&to.join("d2"));
    assert_eq!(std::fs::read(to.join("ok")).unwrap(), b"fine");
    if let Some(restic) = restic_binary("restic's check and restore of a kept directory") {
        run_restic(&restic, &repo, &["check", "--read-data"]);
        let target = t.path().join("by-restic");
        run_restic(
            &restic,
            &repo,
            &["restore", &second_id, "--target", target.to_str().unwrap()],
        );
        let canon = std::fs::canonicalize(&src).unwrap();
        kept_as_before(&target.join(canon.strip_prefix("/").unwrap()).join("d2"));
    }
    // Readable again: the next run has it as it is now.
    let third = backup(&[]);
    assert_eq!(third["status"], "complete", "{third}");
    let now = t.path().join("restored-now");
    let (code, out, err) = sr(&restore_latest(&url, &now));
    assert_eq!(code, 0, "{out}\n{err}");
    assert_same_tree(&describe(&src), &describe(&now), "readable again");
}

/// An engine's index variable makes a backup into a repository a shard worker
/// (`shard::repository`, tests/restic_shard.rs), as it does for the hard-link store: a
/// Slurm array element alone builds every unit and publishes the run under the array's
/// id; an index without a count is refused (exit 64) before anything is written.
#[test]
fn an_engines_index_makes_a_repository_backup_a_shard_worker() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let catalog = t.path().join("catalog.db");
    write(&src.join("f"), b"data");
    let url = format!("file://{}", repo.display());
    let env = [("SNAPRING_PASSWORD", PASSWORD)];
    assert_eq!(cli(&catalog, &["init", "--dest", &url], &env).0, 0);
    let base = [
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &url,
        "--json",
    ];
    let no_count = [
        ("SNAPRING_PASSWORD", PASSWORD),
        ("JOB_COMPLETION_INDEX", "0"),
        ("SNAPRING_RUN_ID", "k1"),
    ];
    let (code, _, err) = cli(&catalog, &base, &no_count);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("number of workers"), "{err}");
    assert!(!repo.join("snapring").exists());
    let slurm = [
        ("SNAPRING_PASSWORD", PASSWORD),
        ("SLURM_ARRAY_TASK_ID", "1"),
        ("SLURM_ARRAY_TASK_COUNT", "2"),
        ("SLURM_ARRAY_TASK_MIN", "1"),
        ("SLURM_ARRAY_JOB_ID", "77"),
    ];
    let (code, r, err) = cli(&catalog, &base, &slurm);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (r["run"].as_str(), r["worker"].as_u64()),
        (Some("slurm-77"), Some(0)),
        "{r}"
    );
    assert_eq!(r["finalized"], true, "{r}");
    let snaps = std::fs::read_dir(repo.join("snapshots")).unwrap().count();
    assert_eq!(snaps, 1);
    let (status, kind, ..) = row(&catalog, "slurm-77");
    assert_eq!((status.as_str(), kind.as_str()), ("complete", "backup"));
}

/// A sparse file (64 MiB with 8 KiB of data) backed up into a repository and restored
/// keeps its holes: the same bytes, and of the disk only the chunks with data. It was restored fully
/// allocated (a VM image with large holes could fill the target).
#[test]
fn a_sparse_file_is_restored_sparse() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let (src, repo, to) = (
        t.path().join("src"),
        t.path().join("repo"),
        t.path().join("to"),
    );
    std::fs::create_dir(&src).unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(src.join("sparse")).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(&[9u8; 4096]).unwrap();
        f.set_len(64 << 20).unwrap();
    }
    let url = common::restic::file_url(&repo);
    let (code, out, err) = common::restic::sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) =
        common::restic::sr(&["backup", "--source", src.to_str().unwrap(), "--dest", &url]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = common::restic::sr(&restore_latest(&url, &to));
    assert_eq!(code, 0, "{out}{err}");
    let got = to.join("sparse");
    assert_eq!(
        std::fs::read(&got).unwrap(),
        std::fs::read(src.join("sparse")).unwrap()
    );
    let used = std::fs::metadata(&got).unwrap().blocks() * 512;
    // The chunks holding the data are written whole (zeros included): a few MiB.
    assert!(
        used < 16 << 20,
        "{used} bytes of disk for 8 KiB of data in 64 MiB"
    );
}

/// The hostnames of the repository's snapshots, as Debian's restic lists them (`None`
/// when restic is not installed: printed as skipped).
fn restic_hostnames(repo: &Path) -> Option<Vec<String>> {
    let restic = common::restic::restic_binary("the snapshots' hostnames as restic reads them")?;
    let out = std::process::Command::new(restic)
        .arg("--repo")
        .arg(repo)
        .args(["--no-cache", "snapshots", "--json"])
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut hosts: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["hostname"].as_str().unwrap().to_string())
        .collect();
    hosts.sort();
    Some(hosts)
}

/// Whether `r`'s warnings hold the hint that other hosts have snapshots of the path.
fn other_hosts_hint(r: &serde_json::Value) -> Option<String> {
    r["warnings"]
        .as_array()?
        .iter()
        .filter_map(|w| w.as_str())
        .find(|w| w.contains("from other hosts"))
        .map(str::to_string)
}

/// `--host NAME` (or SNAPRING_HOST) names the lineage of a backup into a repository, as
/// restic's `backup --host`: two runs of one source under one name (two pods of a
/// CronJob, whose hostnames differ) share a parent (the second reads no file) and a
/// retention group (`--retain 1` leaves one snapshot); the snapshot records the name.
/// Another name is another lineage, told that the path has snapshots of other hosts.
/// A hard-link store refuses it (usage, 64), the job's `host` in a config too.
#[test]
fn host_names_the_parent_the_snapshot_and_the_retention_group() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let catalog = t.path().join("catalog.db");
    for f in ["a", "b", "c"] {
        write(&src.join(f), f.as_bytes());
    }
    let url = format!("file://{}", repo.display());
    let env = [("SNAPRING_PASSWORD", PASSWORD)];
    assert_eq!(cli(&catalog, &["init", "--dest", &url], &env).0, 0);
    let base = [
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &url,
        "--retain",
        "1",
        "--json",
    ];
    let (code, r1, err) = cli(&catalog, &[&base[..], &["--host", "pod-a"]].concat(), &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r1["repository"]["files_read"], 3, "{r1}");
    assert_eq!(other_hosts_hint(&r1), None, "{r1}");
    // The next pod, the name from the environment.
    let (code, r2, err) = cli(
        &catalog,
        &base,
        &[("SNAPRING_PASSWORD", PASSWORD), ("SNAPRING_HOST", "pod-a")],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(r2["based_on"], r1["snapshot"], "{r2}");
    assert_eq!(r2["repository"]["files_read"], 0, "{r2}");
    assert_eq!(r2["repository"]["files_unchanged"], 3, "{r2}");
    assert_eq!(r2["expired"], serde_json::json!([r1["snapshot"]]), "{r2}");
    let snaps = || std::fs::read_dir(repo.join("snapshots")).unwrap().count();
    assert_eq!(snaps(), 1);
    if let Some(hosts) = restic_hostnames(&repo) {
        assert_eq!(hosts, ["pod-a"]);
    }
    // Another name: no parent, its own retention group, and the hint.
    let (code, r3, err) = cli(&catalog, &[&base[..], &["--host", "pod-b"]].concat(), &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r3["based_on"], serde_json::Value::Null, "{r3}");
    assert_eq!(r3["repository"]["files_read"], 3, "{r3}");
    assert_eq!(r3["expired"], serde_json::json!([]), "{r3}");
    let hint = other_hosts_hint(&r3).unwrap_or_else(|| panic!("no hint: {r3}"));
    assert!(
        hint.contains("no earlier snapshot of host pod-b")
            && hint.contains("1 snapshot of the same path")
            && hint.contains("newest: host pod-a")
            // --host was given: the name to give is the earlier runs'.
            && hint.contains("give the host name its earlier runs recorded (--host \"pod-a\""),
        "{hint}"
    );
    assert_eq!(snaps(), 2);
    if let Some(hosts) = restic_hostnames(&repo) {
        assert_eq!(hosts, ["pod-a", "pod-b"]);
    }
    // A job's `host` in the config: the same lineage as --host pod-b.
    let config = t.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[job.pods]\nsource = \"{}\"\ndest = \"{url}\"\nretain = 1\nhost = \"pod-b\"\n",
            src.display()
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let (code, r4, err) = cli(&catalog, &["run", "pods", "--config", c, "--json"], &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r4["based_on"], r3["snapshot"], "{r4}");
    assert_eq!(r4["repository"]["files_read"], 0, "{r4}");
    assert_eq!(r4["expired"], serde_json::json!([r3["snapshot"]]), "{r4}");
    assert_eq!(snaps(), 2);
    // A shard worker refuses it: its plan picks the parent from any host.
    let (code, _, err) = cli(
        &catalog,
        &[&base[..], &["--host", "pod-a"]].concat(),
        &[
            ("SNAPRING_PASSWORD", PASSWORD),
            ("JOB_COMPLETION_INDEX", "0"),
            ("SNAPRING_SHARDS", "1"),
            ("SNAPRING_RUN_ID", "k1"),
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("shard worker"), "{err}");
    // Not for a hard-link store: a usage error, nothing run.
    let store = t.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let (code, _, err) = cli(
        &catalog,
        &[
            "backup",
            "--source",
            src.to_str().unwrap(),
            "--dest",
            store.to_str().unwrap(),
            "--host",
            "pod-a",
        ],
        &env,
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("applies to a restic repository"), "{err}");
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), 0);
    // SNAPRING_HOST, set for a whole machine or daemon, leaves a store's backups alone
    // (it failed them, exit 64), and a shard worker's.
    let (code, _, err) = cli(
        &catalog,
        &[
            "backup",
            "--source",
            src.to_str().unwrap(),
            "--dest",
            store.to_str().unwrap(),
        ],
        &[("SNAPRING_PASSWORD", PASSWORD), ("SNAPRING_HOST", "pod-a")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(store.join("daily.0").is_dir());
    let (code, _, err) = cli(
        &catalog,
        &base,
        &[
            ("SNAPRING_PASSWORD", PASSWORD),
            ("SNAPRING_HOST", "pod-a"),
            ("JOB_COMPLETION_INDEX", "0"),
            ("SNAPRING_SHARDS", "1"),
            ("SNAPRING_RUN_ID", "k2"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    // Published (its lineage's host; `--retain 1` expires that lineage's older one).
    let n = snaps();
    assert!(n >= 2, "{n}");
    // Nor an empty or multi-line name, or one with white space around it (another
    // lineage than the name alone).
    for bad in ["", "pod\nb", " pod-a"] {
        let (code, _, err) = cli(&catalog, &[&base[..], &["--host", bad]].concat(), &env);
        assert_eq!(code, 64, "{bad:?}: {err}");
    }
    assert_eq!(snaps(), n);
}

/// A run under another hostname (a container's: `unshare -u`, `hostname other`) without
/// `--host` finds no parent, and says that the path has snapshots of another host and
/// that `--host` makes them one lineage; with `--host` the first run's hostname, it
/// finds the first run's snapshot as its parent and reads nothing.
#[test]
fn a_run_under_a_new_hostname_is_told_of_the_other_hosts_snapshots() {
    if !common::uts_namespaces() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    for f in ["a", "b"] {
        write(&src.join(f), f.as_bytes());
    }
    let url = format!("file://{}", repo.display());
    let env = [("SNAPRING_PASSWORD", PASSWORD)];
    let catalog = t.path().join("catalog.db");
    assert_eq!(cli(&catalog, &["init", "--dest", &url], &env).0, 0);
    let args = [
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &url,
        "--json",
    ];
    let (code, r1, err) = cli(&catalog, &args, &env);
    assert_eq!(code, 0, "{err}");
    let here = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(here, "other-pod");
    let on_other = |extra: &[&str]| {
        let mut c = std::process::Command::new(bin());
        c.args(["--catalog", "off"])
            .args(args)
            .args(extra)
            .env("SNAPRING_PASSWORD", PASSWORD)
            .env_remove("SNAPRING_HOST")
            .env(
                "XDG_CACHE_HOME",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache"),
            );
        let out = common::on_host(&c, "other-pod").output().unwrap();
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (
            out.status.code(),
            r,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, r2, err) = on_other(&[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(r2["based_on"], serde_json::Value::Null, "{r2}");
    assert_eq!(r2["repository"]["files_read"], 2, "{r2}");
    let hint = other_hosts_hint(&r2).unwrap_or_else(|| panic!("no hint: {r2}"));
    assert!(
        hint.contains("no earlier snapshot of host other-pod for ")
            && hint.contains(&format!("newest: host {here},"))
            && hint.contains("give --host NAME"),
        "{hint}"
    );
    let (code, r3, err) = on_other(&["--host", &here]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(r3["based_on"], r1["snapshot"], "{r3}");
    assert_eq!(r3["repository"]["files_read"], 0, "{r3}");
    assert_eq!(other_hosts_hint(&r3), None, "{r3}");
    if let Some(hosts) = restic_hostnames(&repo) {
        let mut want = vec![here.clone(), here.clone(), "other-pod".to_string()];
        want.sort();
        assert_eq!(hosts, want);
    }
}

/// A restore from a repository into a file system that runs full stops saying so,
/// with what it restored and what not, and leaves the record of its unfinished work
/// naming the files it had begun; run again once there is room, the same command
/// finishes the job (it said only "cannot write …: No space left on device", left
/// half-written files named nowhere, and refused the rerun: "is not empty").
/// A backup into a repository whose file system fills up fails, and says what becomes
/// of the packs it did write: the next run reuses them, `snapring prune` removes them;
/// the prune it names frees the space.
#[test]
fn a_repository_backup_failing_on_a_full_disk_names_the_prune_that_frees_its_uploads() {
    use common::restic::{pseudo_random, sr};
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for i in 0..5 {
        write(&src.join(format!("f{i}")), &pseudo_random(8 << 20, 10 + i));
    }
    let small = t.path().join("small");
    let Some(_mounted) = Tmpfs::mount(&small, "24m") else {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    };
    let url = common::restic::file_url(&small.join("repo"));
    let (code, out, err) = sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = sr(&["backup", "--source", src.to_str().unwrap(), "--dest", &url]);
    assert_eq!(code, 1, "{out}\n{err}");
    let prune = format!("snapring prune --dest {url}");
    assert!(
        err.contains("No space left on device") && err.contains(&prune),
        "the failure does not name `{prune}`:\n{err}"
    );
    fn used(d: &std::path::Path) -> u64 {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => used(&e.path()),
                _ => e.metadata().map(|m| m.len()).unwrap_or(0),
            })
            .sum()
    }
    let data = small.join("repo/data");
    assert!(used(&data) > 1 << 20, "the failed run left no packs");
    let (code, out, err) = sr(&["prune", "--dest", &url]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(used(&data), 0, "the prune left the failed run's packs");
}

/// A prune of a repository whose file system is full (a backup failed there for a full
/// disk, then the last free block went) fails saying what it needs room for, that it
/// removed nothing, and where to find the room: outside the repository, never by
/// deleting its files (it said only "cannot write …/locks/…: No space left on device").
/// With room freed elsewhere, the same prune runs.
#[test]
fn a_prune_on_a_full_repository_file_system_says_what_room_it_needs() {
    use common::restic::{pseudo_random, sr};
    use std::io::Write;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for i in 0..3 {
        write(&src.join(format!("f{i}")), &pseudo_random(8 << 20, 20 + i));
    }
    let small = t.path().join("small");
    let Some(_mounted) = Tmpfs::mount(&small, "12m") else {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    };
    let url = common::restic::file_url(&small.join("repo"));
    let (code, out, err) = sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = sr(&["backup", "--source", src.to_str().unwrap(), "--dest", &url]);
    assert_eq!(code, 1, "{out}\n{err}");
    // The rest of the file system filled (another user of it, a log).
    let filler = small.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while f.write_all(&[7u8; 4096]).is_ok() {}
    drop(f);
    let (code, out, err) = sr(&["prune", "--dest", &url]);
    assert_eq!(code, 1, "{out}\n{err}");
    for said in [
        "No space left on device",
        "/repo/locks/",
        "prune removed nothing",
        "lock file",
        "new index",
        "to repack",
        &format!("snapring prune --dry-run --dest {url}"),
        "outside the repository",
        "do not delete files inside the repository",
    ] {
        assert!(err.contains(said), "not said: {said:?}:\n{err}");
    }
    std::fs::remove_file(&filler).unwrap();
    let (code, out, err) = sr(&["prune", "--dest", &url]);
    assert_eq!(code, 0, "{out}{err}");
}

/// A prune that runs out of room while it repacks (its first new pack written, the
/// second not) removes the packs it wrote, which are in no index: it left a 16 MiB pack
/// behind on the full file system, taking the room the next prune needs. The
/// repository's packs are those it had before, and with room freed the prune runs.
#[test]
fn a_prune_that_fills_the_file_system_while_repacking_removes_its_new_packs() {
    use common::restic::{pseudo_random, sr};
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for i in 10..50 {
        write(&src.join(format!("f{i}")), &pseudo_random(1 << 20, i));
    }
    let small = t.path().join("small");
    let Some(_mounted) = Tmpfs::mount(&small, "64m") else {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    };
    let url = common::restic::file_url(&small.join("repo"));
    let (code, out, err) = sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = sr(&[
        "backup",
        "--json",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &url,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let first: serde_json::Value = serde_json::from_str(&out).unwrap();
    // Every other file gone: each pack is half used once the first snapshot is forgotten
    // (20 MiB to repack: a full 16 MiB pack, then the rest).
    for i in (11..50).step_by(2) {
        std::fs::remove_file(src.join(format!("f{i}"))).unwrap();
    }
    let (code, out, err) = sr(&["backup", "--source", src.to_str().unwrap(), "--dest", &url]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = sr(&[
        "forget",
        "--dest",
        &url,
        first["snapshot"].as_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let packs = || {
        let mut v: Vec<_> = walkdir(&small.join("repo/data"));
        v.sort();
        v
    };
    fn walkdir(d: &Path) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walkdir(&e.path()),
                _ => vec![e.path()],
            })
            .collect()
    }
    let before = packs();
    // Room for the first new pack, not for the second.
    let free = |p: &Path| {
        let s = rustix::fs::statvfs(p).unwrap();
        s.f_bavail * s.f_frsize
    };
    let fill = free(&small) - (17 << 20);
    write(&small.join("filler"), &vec![0u8; fill as usize]);
    let room = free(&small);
    let (code, out, err) = sr(&["prune", "--dest", &url]);
    assert_eq!(code, 1, "{out}\n{err}");
    for said in [
        "No space left on device",
        "/repo/data/",
        "prune removed nothing",
        "to repack",
    ] {
        assert!(err.contains(said), "not said: {said:?}:\n{err}");
    }
    assert_eq!(
        packs(),
        before,
        "the failed prune left packs of its own, or removed some"
    );
    assert!(
        free(&small) >= room,
        "{} bytes free before, {} after",
        room,
        free(&small)
    );
    std::fs::remove_file(small.join("filler")).unwrap();
    let (code, out, err) = sr(&["prune", "--dest", &url]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_repository_restore_into_a_full_target_is_finished_by_running_it_again() {
    use common::restic::{pseudo_random, repo_of, sr};
    use std::process::Command;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("a"), &pseudo_random(3 << 20, 1));
    write(&src.join("b"), &pseudo_random(3 << 20, 2));
    write(&src.join("d/c"), b"small");
    write(&src.join("d/e/f"), &pseudo_random(100 << 10, 3));
    std::os::unix::fs::symlink("d/c", src.join("l")).unwrap();
    let url = repo_of(&t.path().join("repo"), &src);
    let small = t.path().join("small");
    let Some(_mounted) = Tmpfs::mount(&small, "4m") else {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    };
    let to = small.join("r");
    let args = restore_latest(&url, &to);
    let (code, out, err) = sr(&args);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("restore's target file system is full (out of space)")
            && err.contains("unfinished (named in")
            && err.contains("run the same restore again"),
        "{err}"
    );
    let record = std::fs::read_to_string(to.join(".snapring-restore-unfinished")).unwrap();
    assert!(
        record.lines().any(|l| l == "f a" || l == "f b"),
        "the half-written file is named: {record}"
    );
    // No file is left half-written under its name, filling the disk (before, the one
    // being written when the disk filled stayed, cut short, mode 0600): each file
    // there is whole, the others are removed (named in the record).
    for rel in ["a", "b", "d/c", "d/e/f"] {
        if let Ok(got) = std::fs::read(to.join(rel)) {
            assert!(
                got == std::fs::read(src.join(rel)).unwrap(),
                "{rel}: {} bytes, not the whole file",
                got.len()
            );
        }
    }
    // Room made: the same file system, grown; the same command finishes it.
    assert!(
        Command::new("mount")
            .args(["-o", "remount,size=32m"])
            .arg(&small)
            .status()
            .unwrap()
            .success()
    );
    let (code, out, err) = sr(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("complete"), "{out}");
    assert!(!to.join(".snapring-restore-unfinished").exists());
    assert_same_tree(&describe(&src), &describe(&to), "finished by the rerun");
    // A finished restore's target is the user's again: no rerun into it.
    let (code, _, err) = sr(&args);
    assert_eq!(code, 1);
    assert!(err.contains("is not empty"), "{err}");
}

/// One big file's chunks are sealed (hashed, compressed, encrypted) by several threads
/// at once, not one after the other by the thread that reads it: with the first seal
/// paused, a second chunk of the same file reaches its seal. The file then restores
/// byte for byte (its blobs stay in file order). One 2 GiB file took 1.5 times
/// restic's time on one core of two.
#[test]
fn one_big_files_chunks_are_sealed_at_once() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo, to) = (
        t.path().join("src"),
        t.path().join("repo"),
        t.path().join("to"),
    );
    std::fs::create_dir(&src).unwrap();
    // 12 MiB that do not compress: several chunks (512 KiB to 8 MiB, 1.5 MiB on average).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..12 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    write(&src.join("big"), &data);
    let url = common::restic::file_url(&repo);
    let (code, out, err) = common::restic::sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{out}{err}");
    let (first, second) = (t.path().join("seal1"), t.path().join("seal2"));
    let child = std::process::Command::new(bin())
        .args(["backup", "--json", "--jobs", "1", "--source"])
        .arg(&src)
        .args(["--dest", &url])
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_PASSWORD", common::restic::PASSWORD)
        .env(
            "SNAPRING_FAILPOINTS",
            format!(
                "restic.packer.seal=pause:{}@1;restic.packer.seal=pause:{}@2",
                first.display(),
                second.display()
            ),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&first);
    // Read one after the other, the second chunk would wait for the first's seal.
    let t0 = std::time::Instant::now();
    while !second.exists() && t0.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let at_once = second.exists();
    let _ = std::fs::remove_file(&first);
    if !at_once {
        wait_for(&second);
    }
    std::fs::remove_file(&second).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        at_once,
        "the second chunk of one file was not sealed while the first one's seal waited"
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        r["repository"]["data_blobs_added"].as_u64().unwrap() >= 2,
        "report: {r}"
    );
    let (code, out, err) = common::restic::sr(&restore_latest(&url, &to));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        std::fs::read(to.join("big")).unwrap() == data,
        "restored bytes differ"
    );
}

/// The threads packing a big file's chunks come out of the run's `--jobs`: with
/// `--jobs 1` the process has its main thread (waiting for the walk), the walk's one
/// thread (which reads the file, and packs a chunk when the packing thread is busy)
/// and one packing thread, not one per core, besides the lock's refresher. Counted in
/// /proc while the first two seals wait: every thread that packs is then started and
/// none is done.
#[test]
fn a_big_files_chunk_threads_respect_the_jobs() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    std::fs::create_dir(&src).unwrap();
    write(
        &src.join("big"),
        &common::restic::pseudo_random(12 << 20, 7),
    );
    let url = common::restic::file_url(&repo);
    let (code, out, err) = common::restic::sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{out}{err}");
    let (first, second) = (t.path().join("seal1"), t.path().join("seal2"));
    let child = std::process::Command::new(bin())
        .args(["backup", "--jobs", "1", "--source"])
        .arg(&src)
        .args(["--dest", &url])
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_PASSWORD", common::restic::PASSWORD)
        .env(
            "SNAPRING_FAILPOINTS",
            format!(
                "restic.packer.seal=pause:{}@1;restic.packer.seal=pause:{}@2",
                first.display(),
                second.display()
            ),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&first);
    wait_for(&second);
    let tasks = std::path::PathBuf::from(format!("/proc/{}/task", child.id()));
    let names: Vec<String> = std::fs::read_dir(&tasks)
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    std::fs::remove_file(&first).unwrap();
    std::fs::remove_file(&second).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let working = names.iter().filter(|n| *n != "restic-lock").count();
    assert!(
        working <= 3,
        "with --jobs 1, {working} threads besides the lock's (main, the walk's, at most one \
         packing): {names:?}"
    );
}

/// snapring with the test password and `SNAPRING_FAILPOINTS` set: (exit code or -1
/// when killed, stdout, stderr).
fn sr_failing(args: &[&str], failpoints: &str) -> (i32, String, String) {
    let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let out = snapring(
        &a,
        &[
            ("SNAPRING_PASSWORD", common::restic::PASSWORD),
            ("SNAPRING_FAILPOINTS", failpoints),
        ],
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A repository restore killed while its directories get their metadata (every file
/// written) keeps its record until they have it: run again, it sets the rest. The
/// record went first, so a kill there left the directories root's, 0700, with the
/// wrong times, and the rerun was refused ("is not empty").
#[test]
fn a_repository_restore_killed_while_directories_get_their_metadata_is_finished_by_a_rerun() {
    use common::restic::{repo_of, sr};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let as_root = rustix::process::geteuid().is_root();
    for i in 0..6 {
        let d = src.join(format!("d{i}"));
        write(&d.join("f"), format!("file {i}").as_bytes());
        write(&d.join("e/g"), b"deeper");
    }
    let mut dirs: Vec<_> = describe(&src)
        .into_iter()
        .filter(|(_, d)| d.kind == "dir")
        .map(|(k, _)| src.join(OsStr::from_bytes(&k)))
        .collect();
    // Deepest first: a directory's time after its children's changes.
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, d) in dirs.iter().enumerate() {
        if as_root {
            std::os::unix::fs::chown(d, Some(1234), Some(1234 + i as u32)).unwrap();
        }
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o751)).unwrap();
        let f = std::fs::File::open(d).unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000 + i as u64);
        f.set_times(
            std::fs::FileTimes::new()
                .set_modified(when)
                .set_accessed(when),
        )
        .unwrap();
    }
    let url = repo_of(&t.path().join("repo"), &src);
    let to = t.path().join("to");
    let args = common::restic::restore_latest(&url, &to);
    // Killed at the fourth directory: some have their metadata, the others not.
    let (code, out, err) = sr_failing(&args, "restic.restore.dirs=kill@4");
    assert_eq!(code, -1, "killed: {out}\n{err}");
    assert!(
        to.join(".snapring-restore-unfinished").exists(),
        "the record stays until every directory has its metadata"
    );
    let (code, out, err) = sr(&args);
    assert_eq!(code, 0, "the rerun finishes it: {out}\n{err}");
    assert!(!to.join(".snapring-restore-unfinished").exists());
    assert_same_tree(&describe(&src), &describe(&to), "finished by the rerun");
}

/// A rerun keeps a file the stopped restore finished only when its content is the
/// snapshot's, not on its size, mode and modification time alone: files whose data
/// is not what was written (a power cut before it reached the disk, a user's edit
/// keeping size and times; here changed by hand after a kill once every file was
/// written) are written again, with a warning, and the others kept (`--json`:
/// `skipped_identical`, as a store restore's rerun reports them). The rerun kept
/// them and said `complete`.
#[test]
fn a_repository_restores_rerun_keeps_a_file_only_when_its_content_checks() {
    use common::restic::{pseudo_random, repo_of, sr};
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("a"), &pseudo_random(3 << 20, 1));
    write(&src.join("d/c"), b"small\n");
    write(&src.join("d/e"), &pseudo_random(100 << 10, 3));
    write(&src.join("z"), &pseudo_random(200 << 10, 4));
    let url = repo_of(&t.path().join("repo"), &src);
    let to = t.path().join("to");
    let args = restore_latest(&url, &to);
    let (code, out, err) = sr_failing(&args, "restic.restore.dirs=kill@1");
    assert_eq!(code, -1, "killed once every file is written: {out}\n{err}");
    assert!(to.join(".snapring-restore-unfinished").exists());
    // Same size, mode and times; other bytes (in `a`, past its first chunk).
    let change = |name: &str, at: usize| {
        let p = to.join(name);
        let m = std::fs::metadata(&p).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[at] ^= 0x55;
        std::fs::write(&p, &bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_times(
                std::fs::FileTimes::new()
                    .set_modified(m.modified().unwrap())
                    .set_accessed(m.accessed().unwrap()),
            )
            .unwrap();
        let now = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (now.len(), now.mode(), now.mtime(), now.mtime_nsec()),
            (m.len(), m.mode(), m.mtime(), m.mtime_nsec())
        );
    };
    change("a", (3 << 20) - 10);
    change("d/c", 0);
    let (code, out, err) = sr(&[&args[..], &["--json"]].concat());
    assert_eq!(code, 0, "{out}\n{err}");
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rep["status"], "complete", "{rep}");
    // a and d/c written again, d/e and z kept: in `--json` as the store's restore
    // counts what a rerun found identical (it said nothing of them, and counted them
    // restored).
    assert_eq!(
        (
            &rep["skipped_identical"],
            &rep["files_restored"],
            &rep["bytes_restored"]
        ),
        (&2.into(), &2.into(), &((3u64 << 20) + 6).into()),
        "{rep}"
    );
    let again: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("written again"))
        .collect();
    assert_eq!(again.len(), 2, "{err}");
    for name in ["/a:", "/d/c:"] {
        assert!(
            again.iter().any(|l| l.contains(name)),
            "{name} named: {err}"
        );
    }
    assert_eq!(
        std::fs::read(to.join("a")).unwrap(),
        pseudo_random(3 << 20, 1)
    );
    assert_eq!(std::fs::read(to.join("d/c")).unwrap(), b"small\n");
    assert_same_tree(&describe(&src), &describe(&to), "finished by the rerun");
}

/// A tmpfs mounted on a new directory `dir`, unmounted however the test ends; `None`
/// when it cannot be mounted (not root).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir(dir).unwrap();
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success())
            .then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` (a file `dir/fill`, written until it is full).
fn fill_up(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("fill")).unwrap();
    let block = vec![7u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let one = [7u8];
    while f.write_all(&one).is_ok() {}
}

/// A `--path` that is not in the snapshot is refused before anything is made: no
/// `--to`, no record naming that path (which refused the corrected command: "holds an
/// unfinished restore of another snapshot or path").
#[test]
fn a_repository_restore_of_a_path_not_in_the_snapshot_writes_nothing() {
    use common::restic::{repo_of, sr};
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("sub/f"), b"in sub");
    write(&src.join("other"), b"other");
    let url = repo_of(&t.path().join("repo"), &src);
    let to = t.path().join("to");
    for flat in [false, true] {
        let mut args = restore_latest(&url, &to).to_vec();
        args.extend(["--path", "nosuch/dir"]);
        if flat {
            args.push("--flat");
        }
        let (code, out, err) = sr(&args);
        assert_eq!(code, 1, "flat {flat}: {out}\n{err}");
        assert!(err.contains("nosuch/dir is not in the snapshot"), "{err}");
        assert!(!to.exists(), "flat {flat}: nothing made");
    }
    let args = [&restore_latest(&url, &to)[..], &["--path", "sub"]].concat();
    let (code, out, err) = sr(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(std::fs::read(to.join("sub/f")).unwrap(), b"in sub");
    assert!(!to.join("other").exists());
    assert!(!to.join(".snapring-restore-unfinished").exists());
}

/// A repository restore into a target whose file system is full before the record's
/// first line is written says so and leaves no record (an empty one stayed, and the
/// rerun was refused: "is not empty"); an empty record alone in `--to` (a restore
/// killed before its first line) is taken as this restore's, which starts afresh.
#[test]
fn a_repository_restore_whose_record_cannot_be_written_leaves_none() {
    use common::restic::{repo_of, sr};
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("a"), b"a file");
    write(&src.join("d/b"), b"another");
    let url = repo_of(&t.path().join("repo"), &src);
    let Some(small) = Tmpfs::mount(&t.path().join("small"), "1m") else {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    };
    fill_up(&small.0);
    let to = small.0.join("r");
    let args = restore_latest(&url, &to);
    let (code, out, err) = sr(&args);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("cannot write the record of unfinished work")
            && err.contains("nothing was restored (the record removed)"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(&to).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::remove_file(small.0.join("fill")).unwrap();
    let (code, out, err) = sr(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_same_tree(
        &describe(&src),
        &describe(&to),
        "restored once there is room",
    );
    // Killed between making the record and writing its first line.
    let to2 = small.0.join("r2");
    std::fs::create_dir(&to2).unwrap();
    std::fs::write(to2.join(".snapring-restore-unfinished"), b"").unwrap();
    let args = restore_latest(&url, &to2);
    let (code, out, err) = sr(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!to2.join(".snapring-restore-unfinished").exists());
    assert_same_tree(&describe(&src), &describe(&to2), "over an empty record");
    // Not with anything else there.
    let to3 = small.0.join("r3");
    std::fs::create_dir(&to3).unwrap();
    std::fs::write(to3.join(".snapring-restore-unfinished"), b"").unwrap();
    std::fs::write(to3.join("theirs"), b"").unwrap();
    let (code, _, err) = sr(&restore_latest(&url, &to3));
    assert_eq!(code, 1);
    assert!(err.contains("is not empty"), "{err}");
}

/// The message of a repository restore stopped by a full target names the file it
/// was writing escaped (`%0A` for a newline), as its other paths are, on stderr and in
/// `--json`: the raw name broke the line in two.
#[test]
fn a_stopped_repository_restore_names_the_file_escaped() {
    use common::restic::{pseudo_random, repo_of, sr};
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("d\nir/f\nx"), &pseudo_random(3 << 20, 7));
    let url = repo_of(&t.path().join("repo"), &src);
    let Some(small) = Tmpfs::mount(&t.path().join("small"), "1m") else {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    };
    let to = small.0.join("r");
    let (code, out, err) = sr(&restore_latest(&url, &to));
    assert_eq!(code, 1, "{out}\n{err}");
    let want = format!("while writing {}/d%0Air/f%0Ax:", to.display());
    assert!(err.contains(&want) && !err.contains("d\nir"), "{err}");
    std::fs::remove_dir_all(&to).unwrap();
    let args = [&restore_latest(&url, &to)[..], &["--json"]].concat();
    let (code, out, err) = sr(&args);
    assert_eq!(code, 1, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains(&want) && !msg.contains('\n'), "{msg}");
}

/// A hard-linked file changed between the backup's reads of its two names (driven by a
/// pause between them, `--jobs 1`): the snapshot records the first name with the old
/// content and the other with the new one. The later name is recorded as no hard link
/// (`inode: 0`, `links: 1`), a `metadata` problem "join hard link" naming both;
/// snapring's restore and restic's give each name its own content. Recorded as one
/// inode, both restores gave the second name the first's bytes, and `restic check
/// --read-data` and `verify` were clean; with `links: 1` alone, restic 0.14's restore
/// removed that name (its second pass).
#[test]
fn a_hard_link_changed_between_the_reads_of_its_names_restores_each_names_content() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let (src, repo, to) = (
        t.path().join("src"),
        t.path().join("repo"),
        t.path().join("to"),
    );
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::create_dir_all(src.join("z")).unwrap();
    write(&src.join("a/f01"), b"AAAA content");
    std::fs::hard_link(src.join("a/f01"), src.join("z/hl01")).unwrap();
    let url = common::restic::file_url(&repo);
    let (code, out, err) = common::restic::sr(&["init", "--dest", &url]);
    assert_eq!(code, 0, "{out}{err}");
    let pause = t.path().join("between");
    let child = std::process::Command::new(bin())
        .args(["backup", "--json", "--jobs", "1", "--source"])
        .arg(&src)
        .args(["--dest", &url])
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_PASSWORD", common::restic::PASSWORD)
        .env(
            "SNAPRING_FAILPOINTS",
            format!("restic.backup.hard_link=pause:{}", pause.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&pause);
    // The first name is read; the other is not yet: the inode changes in between.
    std::fs::write(src.join("a/f01"), b"BBBB newer content!!").unwrap();
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(2), "{r}\n{err}");
    let problems = r["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{r}");
    assert_eq!(problems[0]["action"], "join hard link", "{r}");
    assert_eq!(problems[0]["kind"], "metadata", "{r}");

    let contents = |to: &Path| {
        let (a, z) = (to.join("a/f01"), to.join("z/hl01"));
        let mut got = [std::fs::read(&a).unwrap(), std::fs::read(&z).unwrap()];
        assert_ne!(
            std::fs::metadata(&a).unwrap().ino(),
            std::fs::metadata(&z).unwrap().ino(),
            "restored as one inode"
        );
        got.sort();
        got
    };
    let want = [b"AAAA content".to_vec(), b"BBBB newer content!!".to_vec()];
    let (code, out, err) = common::restic::sr(&restore_latest(&url, &to));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(contents(&to), want);

    if let Some(restic) = common::restic::restic_binary("restic's restore of the two names") {
        let rto = t.path().join("rto");
        common::restic::run_restic(
            &restic,
            &repo,
            &["restore", "latest", "--target", rto.to_str().unwrap()],
        );
        assert_eq!(contents(&rto.join(src.strip_prefix("/").unwrap())), want);
        common::restic::run_restic(&restic, &repo, &["check", "--read-data"]);
    }
}

/// A snapshot written before the writer recorded such a name as no hard link (or by
/// another writer): two names of one `(device, inode)` with more than one link and
/// different contents (here two files' nodes made so, as an NFS server giving two files
/// one inode number leaves them). snapring's restore links only names recording the
/// same content and metadata: each gets its own, and the name not linked is a problem.
/// Linked by `(device, inode)` alone, the second name came back with the first's bytes.
#[test]
fn names_of_one_recorded_inode_with_two_contents_are_not_linked_on_restore() {
    use snapring::restic::{
        Id,
        backend::Kind,
        pack::BlobType,
        repo::{Packer, Repo},
        snapshot,
        tree::Tree,
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo, to) = (
        t.path().join("src"),
        t.path().join("repo"),
        t.path().join("to"),
    );
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::create_dir_all(src.join("z")).unwrap();
    write(&src.join("a/f01"), b"AAAA content");
    write(&src.join("z/g01"), b"BBBB other file");
    write(&src.join("z/g02"), b"BBBB other file");
    // g01 and g02 as two names of one inode would record them: the same times.
    let when = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    for f in ["a/f01", "z/g01", "z/g02"] {
        let f = std::fs::File::options()
            .write(true)
            .open(src.join(f))
            .unwrap();
        f.set_modified(when).unwrap();
    }
    common::restic::repo_of(&repo, &src);

    // Every tree again, f01, g01 and g02 given one inode with 3 links.
    let mut r = Repo::open(&repo, common::restic::PASSWORD.as_bytes()).unwrap();
    let (_, snap) = snapshot::find(&r, "latest").unwrap();
    let packer = Packer::default();
    fn again(r: &Repo, packer: &Packer, id: Id) -> Id {
        let mut tree = r.read_tree(&id).unwrap();
        for n in &mut tree.nodes {
            if let Some(sub) = n.subtree {
                n.subtree = Some(again(r, packer, sub));
            }
            if ["f01", "g01", "g02"].contains(&n.name.as_str()) {
                (n.device_id, n.inode, n.links) = (1, 4242, 3);
            }
        }
        packer
            .save(r, BlobType::Tree, &Tree { nodes: tree.nodes }.to_blob())
            .unwrap()
    }
    let root = again(&r, &packer, snap.tree);
    packer.finish(&mut r).unwrap();
    let id = r
        .save_json(
            Kind::Snapshot,
            &snapshot::Snapshot {
                tree: root,
                ..snap.clone()
            },
        )
        .unwrap();

    let url = common::restic::file_url(&repo);
    let (code, out, err) = common::restic::sr(&[
        "restore",
        "--dest",
        &url,
        &id.hex()[..8],
        "--to",
        to.to_str().unwrap(),
        "--json",
    ]);
    let read = |p: &str| std::fs::read(to.join(p)).unwrap();
    assert_eq!(read("a/f01"), b"AAAA content", "{out}{err}");
    assert_eq!(read("z/g01"), b"BBBB other file", "{out}{err}");
    assert_eq!(read("z/g02"), b"BBBB other file", "{out}{err}");
    assert_eq!(code, 2, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // g01 is not linked to f01 (a problem); g02 is linked to g01, as recorded.
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v}");
    assert_eq!(problems[0]["path"], "z/g01", "{v}");
    assert_eq!(problems[0]["action"], "create hard link", "{v}");
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| std::fs::metadata(to.join(p)).unwrap().ino();
    assert_eq!(ino("z/g01"), ino("z/g02"));
    assert_ne!(ino("a/f01"), ino("z/g01"));
}

/// 20 small files in four directories, old enough not to be read again as changed.
fn small_tree(src: &Path) {
    for i in 0..20 {
        let p = src.join(format!("d{}/f{i}", i % 4));
        write(&p, format!("content {i}").as_bytes());
        set_mtime(&p, 1_600_000_000, i);
    }
}

/// The snapshot files of the repository at `repo`, sorted.
fn snapshot_files(repo: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `snapring backup --json --jobs 1 --source SRC --dest URL --retain 1` into a
/// repository, paused when it first opens a subdirectory (after the root's listing),
/// until the returned file is removed; `Paused::resume` lets it go on.
fn paused_repository_backup(t: &Path, src: &Path, url: &str) -> Paused {
    let pause = t.join("paused");
    let child = std::process::Command::new(bin())
        .args([
            "backup", "--json", "--jobs", "1", "--retain", "1", "--source",
        ])
        .arg(src)
        .args(["--dest", url])
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_PASSWORD", common::restic::PASSWORD)
        .env(
            "SNAPRING_FAILPOINTS",
            format!("restic.backup.open_dir=pause:{}@1", pause.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&pause);
    Paused { child, pause }
}

/// A repository backup whose source goes away mid-run is `failed` (exit 1), its
/// message naming the source and what was seen, with no snapshot written and nothing
/// forgotten; the repository checks clean and the next run (the source back) completes.
fn a_lost_source_fails_the_repository_run(lose: impl FnOnce(&FaultFs), says: &str) {
    let t = tempfile::tempdir().unwrap();
    let (src, mnt, repo) = (
        t.path().join("src"),
        t.path().join("src-fs"),
        t.path().join("repo"),
    );
    small_tree(&src);
    let Some(fs) = FaultFs::mount(&src, &mnt, &[]) else {
        return;
    };
    let url = common::restic::file_url(&repo);
    common::restic::sr_init(&url);
    let first = ["backup", "--json", "--retain", "1", "--source"];
    let args = [&first[..], &[mnt.to_str().unwrap(), "--dest", &url]].concat();
    let (code, out, err) = common::restic::sr(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    let complete = snapshot_files(&repo);
    assert_eq!(complete.len(), 1);
    let run = paused_repository_backup(t.path(), &mnt, &url);
    lose(&fs);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (code, rep) = run.resume();
    assert_eq!(code, 1, "{rep}");
    assert_eq!(rep["status"], "failed", "{rep}");
    let msg = rep["message"].as_str().unwrap_or("");
    assert!(
        msg.contains(&format!("source {} went away", mnt.display())) && msg.contains(says),
        "{msg}"
    );
    assert!(msg.contains("no snapshot was written"), "{msg}");
    assert_eq!(rep["snapshot"], serde_json::Value::Null, "{rep}");
    assert_eq!(rep["expired"].as_array().map_or(0, |a| a.len()), 0, "{rep}");
    // Before: a snapshot tagged `partial` (exit 2), and the complete one forgotten.
    assert_eq!(snapshot_files(&repo), complete);
    drop(fs);
    if let Some(restic) = common::restic::restic_binary("restic check after a lost source") {
        common::restic::run_restic(&restic, &repo, &["check"]);
    }
    let _fs = FaultFs::mount(&src, &mnt, &[]).unwrap();
    let (code, out, err) = common::restic::sr(&args);
    assert_eq!(code, 0, "{out}\n{err}");
}

/// Session 49: the source's FUSE server dies in the middle of a repository backup
/// (every later call: ENOTCONN, the root's descriptor too): the run fails as a store's
/// does (tests/faults.rs), rather than leave every directory out (or keep the parent's
/// entries of it) and write a `partial` snapshot that `--retain 1` kept in place of
/// the complete one.
#[test]
fn a_source_that_goes_away_mid_run_fails_the_repository_run_and_forgets_nothing() {
    let kill = |fs: &FaultFs| {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &fs.pid().to_string()])
            .status();
    };
    a_lost_source_fails_the_repository_run(kill, "not connected");
}

/// Session 49: the source's mount is torn away (a lazy unmount) in the middle of a
/// repository backup: the walk reads on through its open descriptors, but the source's
/// path now shows the directory below the mount point: when the walk ends, the run
/// fails rather than write a snapshot of a file system no longer there.
#[test]
fn a_source_unmounted_mid_run_fails_the_repository_run_and_forgets_nothing() {
    let unmount = |fs: &FaultFs| {
        let st = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&fs.mnt)
            .status()
            .unwrap();
        assert!(st.success());
    };
    a_lost_source_fails_the_repository_run(unmount, "its root is now another directory");
}

/// A dead FUSE mount inside the source (a user's sshfs, killed) answers ENOTCONN for
/// its mount point while the source answers: that entry's problem (`partial`, named),
/// not a source gone away, as for a store (tests/faults.rs).
#[test]
fn a_dead_mount_inside_the_source_is_that_entrys_problem_in_a_repository_run() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    small_tree(&src);
    let under = t.path().join("under");
    write(&under.join("x"), b"inside the mount");
    let nested = src.join("nested");
    std::fs::create_dir(&nested).unwrap();
    let Some(fs) = FaultFs::mount(&under, &nested, &[]) else {
        return;
    };
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &fs.pid().to_string()])
        .status();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let e = std::fs::symlink_metadata(&nested).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(107), "{e}");
    let url = common::restic::file_url(&repo);
    common::restic::sr_init(&url);
    for extra in [&[][..], &["--one-file-system"][..]] {
        let args = [
            &["backup", "--json", "--source", src.to_str().unwrap()][..],
            &["--dest", &url],
            extra,
        ]
        .concat();
        let (code, out, err) = common::restic::sr(&args);
        assert_eq!(code, 2, "{extra:?}: {out}\n{err}");
        let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(rep["status"], "partial", "{extra:?}: {rep}");
        let named = rep["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["path"] == "nested");
        assert!(named, "{extra:?}: {rep}");
    }
    drop(fs);
}

/// A repository run whose catalog is locked for the whole run (its `running` row and
/// its final one both refused past the busy wait) keeps its report in its marker
/// beside the catalog; the next run that writes the catalog records it and removes the
/// marker. (`settle_repository_runs` looked only at `running` rows: the run had none,
/// was never recorded, and its marker stayed for ever.)
#[test]
fn a_repository_run_whose_catalog_was_locked_throughout_is_recorded_by_the_next() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let catalog = t.path().join("catalog.db");
    small_tree(&src);
    let url = format!("file://{}", repo.display());
    let env = [("SNAPRING_PASSWORD", PASSWORD)];
    assert_eq!(cli(&catalog, &["init", "--dest", &url], &env).0, 0);
    let backup = [
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &url,
        "--json",
    ];
    let (code, _, err) = cli(&catalog, &backup, &env);
    assert_eq!(code, 0, "{err}");
    let db = rusqlite::Connection::open(&catalog).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (code, r, err) = cli(&catalog, &backup, &env);
    db.execute_batch("ROLLBACK").unwrap();
    assert_eq!(code, 0, "{r}\n{err}");
    let id = r["id"].as_str().unwrap().to_string();
    let marker = t.path().join("logs").join(format!("{id}.running"));
    assert!(marker.exists(), "{r}\n{err}");
    let rows = |id: &str| -> Vec<String> {
        let mut q = db.prepare("SELECT status FROM runs WHERE id = ?1").unwrap();
        q.query_map([id], |r| r.get(0))
            .unwrap()
            .map(|s| s.unwrap())
            .collect()
    };
    assert_eq!(
        rows(&id),
        Vec::<String>::new(),
        "recorded in a locked catalog?"
    );
    // A marker whose name is no run id (`store::plain_name`), holding a report of that
    // name: not a run's, never a row (review L4: any `*.running` name was taken).
    let forged_id = "not a run id";
    let mut forged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    forged["id"] = forged_id.into();
    let forged_marker = t.path().join("logs").join(format!("{forged_id}.running"));
    std::fs::write(&forged_marker, serde_json::to_vec(&forged).unwrap()).unwrap();
    let (code, _, err) = cli(&catalog, &backup, &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        rows(&id),
        ["complete"],
        "the locked-out run was never recorded"
    );
    assert!(!marker.exists(), "its marker was left");
    assert_eq!(
        rows(forged_id),
        Vec::<String>::new(),
        "a forged id recorded"
    );
    assert!(forged_marker.exists());
}

/// Session 49 (as session 48 for a store's run, tests/serve.rs): a repository run whose
/// start waits for a catalog another writer holds (3 s here) records a duration of its
/// backup only, not of that wait (its `stats`, the dashboard's durations).
#[test]
fn a_repository_runs_duration_leaves_out_its_wait_for_a_locked_catalog() {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    let catalog = t.path().join("catalog.db");
    small_tree(&src);
    let url = format!("file://{}", repo.display());
    let env = [("SNAPRING_PASSWORD", PASSWORD)];
    assert_eq!(cli(&catalog, &["init", "--dest", &url], &env).0, 0);
    let backup = [
        "backup",
        "--source",
        src.to_str().unwrap(),
        "--dest",
        &url,
        "--json",
    ];
    let (code, _, err) = cli(&catalog, &backup, &env);
    assert_eq!(code, 0, "{err}");
    let db = rusqlite::Connection::open(&catalog).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let t0 = std::time::Instant::now();
    let child = std::process::Command::new(bin())
        .arg("--catalog")
        .arg(&catalog)
        .args(backup)
        .env("SNAPRING_PASSWORD", PASSWORD)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    db.execute_batch("ROLLBACK").unwrap();
    let out = child.wait_with_output().unwrap();
    let took = t0.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = r["id"].as_str().unwrap();
    let (status, secs): (String, f64) = db
        .query_row(
            "SELECT status, duration_seconds FROM runs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "complete");
    assert!(took > 2.5, "the run did not wait for the catalog: {took} s");
    assert!(
        // Under the 2.5 s the run waited at least (a debug build on a loaded machine
        // opens a repository slowly: no tighter bound).
        secs < 2.5 && r["duration_seconds"].as_f64().unwrap() < 2.5,
        "the run's duration counts its wait for the catalog: {secs} s of {took} s"
    );
}
