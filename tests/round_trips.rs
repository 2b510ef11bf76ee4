//! Round trips per file, counted by the FUSE layer of bench/tools (`latencyfs --stats`,
//! docs/performance.md): the source and the store both on one mount, as in EFS-to-EFS,
//! with an NFS-like attribute cache and READDIRPLUS. Each test skips (and says why)
//! where FUSE is not usable.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const DIRS: usize = 4;
const PER_DIR: usize = 50;

/// Delayed calls by kind so far (`--stats`, rewritten within 50 ms of a change).
fn counts(stats: &Path) -> BTreeMap<String, u64> {
    std::thread::sleep(Duration::from_millis(200));
    let text = std::fs::read_to_string(stats).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn diff(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// An incremental of an unchanged tree, on a fresh mount (a cold client cache) with a
/// 60 s TTL and READDIRPLUS: an unchanged file costs its link, the negative lookup of
/// the new name and the directory's attributes (FUSE drops them after every link). Its
/// source `lstat` and the lookup of its previous version come from the listings (the
/// previous snapshot's directory is listed too), so there is no positive LOOKUP per
/// file.
#[test]
fn unchanged_files_cost_no_lookup_with_readdirplus() {
    let Some(calls) = unchanged_incremental_calls(&[], |out| out.clone()) else {
        return;
    };
    let files = (DIRS * PER_DIR) as u64;
    let get = |k: &str| calls.get(k);
    // A handful for the paths to the roots and the store's own files; none per file.
    calls.assert_positive_lookups_below(files / 10);
    let total = calls.total();
    // 3 per file (negative lookup, the directory's getattr, link) and the store's
    // bookkeeping (a few hundred calls at most).
    assert!(
        total < 3 * files + 400,
        "{total} calls for {files} unchanged files: {calls:?}"
    );
    assert_eq!(get("link"), files, "{calls:?}");
}

/// The same incremental by the one worker of a shard run (`--shard 0/1`): its units'
/// walks list the previous snapshot's directories as a single-node run does, so an
/// unchanged file's link needs no LOOKUP of its previous version. Without that listing
/// the run made 250 positive lookups for the 200 files; with it, about 50, the `lstat`s
/// of one source directory's files, which a single-node run finds in the cache of its
/// listing (not explained yet: docs/scale-out.md). The claims, commits and
/// the finalize make the rest of the calls (about 13 per file at this size, most of
/// them fixed costs per unit), so there is no bound on the total here.
#[test]
fn a_shard_worker_links_unchanged_files_with_no_lookup_each() {
    let Some(calls) =
        unchanged_incremental_calls(&["--shard", "0/1", "--run-id", "second"], |out| {
            out["report"].clone()
        })
    else {
        return;
    };
    let files = (DIRS * PER_DIR) as u64;
    let get = |k: &str| calls.get(k);
    calls.assert_positive_lookups_below(files / 2);
    // One per file (its link into the unit's work directory), one more for each file
    // of a unit that is not its directory's anchor (moved into the run's tree: half
    // of them here, each directory being two units), and the claims' and commits'
    // exclusive creates (a temporary file linked into place). Before anchors every
    // file was linked twice (400 and more here): an anchor's work directory is now
    // renamed into place whole.
    assert!(get("link") >= files, "{calls:?}");
    assert!(get("link") < 2 * files, "{calls:?}");
    // A committed unit's files are linked into the run's tree, not renamed: a rename
    // across directories takes the kernel's one rename lock of the mount, and four
    // workers' moves went one at a time (238 renames here before). What is left are
    // directories and the store's own files written under a temporary name.
    assert!(
        get("rename") < files / 4,
        "{} renames for {files} files: {calls:?}",
        get("rename")
    );
}

/// Backs up a tree twice through latencyfs (60 s TTL, READDIRPLUS), the second time
/// with `extra` arguments on a fresh mount, and checks that the second run linked every
/// file (`report` finds its report in the `--json` output): the calls it made; `None`
/// where FUSE is not usable.
fn unchanged_incremental_calls(
    extra: &[&str],
    report: impl Fn(&serde_json::Value) -> serde_json::Value,
) -> Option<Calls> {
    let t = tempfile::tempdir().unwrap();
    let (under, mnt, stats) = (
        t.path().join("under"),
        t.path().join("mnt"),
        t.path().join("stats.json"),
    );
    for i in 0..DIRS * PER_DIR {
        let p = under.join(format!("src/d{}/f{i:04}", i % DIRS));
        write(&p, format!("content {i}").as_bytes());
        set_mtime(&p, 1_600_000_000, i as i64);
    }
    std::fs::create_dir(under.join("backup")).unwrap();
    // Old enough (2 s) not to be "racy" for the next run: unchanged files are linked
    // without being read.
    std::thread::sleep(Duration::from_millis(2100));
    let args = ["--ttl-ms", "60000", "--readdirplus", "--stats"];
    let mut args: Vec<&str> = args.to_vec();
    let stats_arg = stats.to_str().unwrap();
    args.push(stats_arg);
    let fs = FaultFs::mount(&under, &mnt, &args)?;
    let (code, _, err) = backup(&mnt.join("src"), &mnt.join("backup"), &[], &[]);
    assert_eq!(code, 0, "{err}");
    drop(fs);
    let _fs = FaultFs::mount(&under, &mnt, &args).unwrap();
    let before = counts(&stats);
    let (code, out, err) = backup(&mnt.join("src"), &mnt.join("backup"), extra, &[]);
    assert_eq!(code, 0, "{err}");
    let calls = diff(&before, &counts(&stats));
    let rep = report(&out);
    assert_eq!(rep["files_linked"], (DIRS * PER_DIR) as u64, "{rep}");
    Some(Calls(calls))
}

/// The calls a run made, by kind.
#[derive(Debug)]
struct Calls(BTreeMap<String, u64>);

impl Calls {
    fn get(&self, kind: &str) -> u64 {
        self.0.get(kind).copied().unwrap_or(0)
    }

    /// Every call but the negative LOOKUPs (counted among the LOOKUPs already).
    fn total(&self) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| k.as_str() != "lookup_negative")
            .map(|(_, v)| v)
            .sum()
    }

    /// Fewer than `limit` LOOKUPs found their name.
    fn assert_positive_lookups_below(&self, limit: u64) {
        let n = self.get("lookup") - self.get("lookup_negative");
        assert!(
            n < limit,
            "{n} positive lookups for {} unchanged files: {self:?}",
            DIRS * PER_DIR
        );
    }
}

/// A restore of a snapshot into a new directory, the store and the target on one
/// mount at TTL 0 (every call the kernel makes reaches latencyfs). Per restored file
/// there is no `lstat` by name before its open (the listing's `d_type` says it is a
/// file; its attributes are the ones the open fetched), no xattr listing (the manifest
/// records that it has none), and no `fchown` or `fchmod` (it is created with its mode,
/// and the create's reply says it has the snapshot's owner and mode already; a FUSE
/// `fchown` is two calls, a getattr and the setattr). What is left per file is the
/// open of the snapshot's file, the create (with FUSE's negative lookup and permission
/// checks), the kernel's `security.capability` read before the write, and `futimens`:
/// about 12 calls per file, 20 before.
#[test]
fn a_restored_file_needs_no_stat_by_name_xattr_listing_chown_or_chmod() {
    let t = tempfile::tempdir().unwrap();
    let (under, mnt, stats) = (
        t.path().join("under"),
        t.path().join("mnt"),
        t.path().join("stats.json"),
    );
    for i in 0..DIRS * PER_DIR {
        let p = under.join(format!("src/d{}/f{i:04}", i % DIRS));
        write(&p, format!("content {i}").as_bytes());
        chmod(&p, 0o640);
        set_mtime(&p, 1_600_000_000, i as i64);
    }
    std::fs::create_dir(under.join("backup")).unwrap();
    let stats_arg = stats.to_str().unwrap();
    let args = ["--stats", stats_arg];
    let Some(fs) = FaultFs::mount(&under, &mnt, &args) else {
        return;
    };
    let (code, _, err) = backup(&mnt.join("src"), &mnt.join("backup"), &[], &[]);
    assert_eq!(code, 0, "{err}");
    drop(fs);
    let _fs = FaultFs::mount(&under, &mnt, &args).unwrap();
    let before = counts(&stats);
    let out = snapring(
        &[
            "restore".as_ref(),
            "--dest".as_ref(),
            mnt.join("backup").as_os_str(),
            "latest".as_ref(),
            "--to".as_ref(),
            mnt.join("out").as_os_str(),
            "--json".as_ref(),
            "--no-progress".as_ref(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = Calls(diff(&before, &counts(&stats)));
    let (want, got) = (describe(&under.join("src")), describe(&under.join("out")));
    assert_same_tree(&want, &got, "restored");
    let files = (DIRS * PER_DIR) as u64;
    let get = |k: &str| calls.get(k);
    // The store's own files (snapshot list, manifest, lock) and the directories: a
    // few dozen calls of each kind; none of these kinds per file.
    assert!(get("listxattr") < files / 10, "{calls:?}");
    // futimens per file (no fchown, no fchmod: 3 more before), and owner, mode and
    // times per directory.
    assert!(get("setattr") <= files + 40, "{calls:?}");
    let total = calls.total();
    assert!(
        total < 14 * files,
        "{total} calls for {files} restored files: {calls:?}"
    );
}

/// A shard plan records the source directory's inode number only where every client of
/// the file system sees the same one (NFS, a local disk): on FUSE (sshfs, s3fs, rclone
/// number inodes per mount) it is not recorded, so a worker on another node is not
/// refused as "not mounted". Through latencyfs (FUSE) here, and a local directory.
#[test]
fn a_shard_plan_records_the_source_inode_only_where_clients_share_it() {
    let t = tempfile::tempdir().unwrap();
    let (under, mnt) = (t.path().join("under"), t.path().join("mnt"));
    write(&under.join("src/d/f"), b"f");
    let Some(_fs) = FaultFs::mount(&under, &mnt, &[]) else {
        return;
    };
    let plan = |src: &Path, dest: &Path, run: &str| -> serde_json::Value {
        let (code, _, err) = backup(src, dest, &["--shard", "0/1", "--run-id", run], &[]);
        assert_eq!(code, 0, "{err}");
        let p = dest.join(format!(".snapring/shards/{run}/plan.json"));
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let fuse = plan(&mnt.join("src"), &t.path().join("b1"), "fuse");
    assert!(fuse.get("source_ino").is_none(), "{fuse}");
    let local = plan(&under.join("src"), &t.path().join("b2"), "local");
    assert!(local["source_ino"].as_u64().is_some(), "{local}");
}
