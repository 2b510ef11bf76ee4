//! `snapring repair index` on a damaged restic repository (restic's `repair index`): a
//! lost data pack is left out of the index, which names the snapshots that lost data;
//! the next backup then reads again the unchanged files whose blobs were lost and
//! stores them (it does not deduplicate against blobs no pack holds), so its snapshot
//! restores whole, `restic check --read-data` agrees, and `prune` runs again once the
//! snapshots still damaged are forgotten (by id: `forget ID`); prune repacks a pack
//! whose index entries no longer account for its size (a damaged blob left out). A pack no index names is added back; a pack
//! whose header does not read is left out (and `--read-data` finds one whose size is
//! right); a damaged blob is left out with `--read-data`. SIGTERM before the new index
//! changes nothing; a kill between the new index and the old one's removal leaves a
//! repository restic accepts. The S3 case is in tests/restic_s3.rs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::restic::*;
use common::*;

/// `repair index --json` (with `extra`): its exit code and report.
fn repair(url: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let args = [&["repair", "index", "--dest", url, "--json"][..], extra].concat();
    let (code, out, err) = sr_nocache(&args);
    let r = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, r)
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(files_in(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

fn damaged_ids(r: &serde_json::Value) -> Vec<String> {
    r["damaged_snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

/// A repository of two snapshots: the first of three small files, the second adding a
/// big file and `gone/x`, whose data is in a pack of its own.
struct Two {
    t: tempfile::TempDir,
    src: PathBuf,
    repo: PathBuf,
    url: String,
    first: String,
    second: String,
    /// The second backup's data pack (the big file's and `gone/x`'s blobs).
    data2: PathBuf,
    /// The index file the second backup wrote.
    index2: PathBuf,
    /// The second backup's tree pack.
    tree2: PathBuf,
}

fn two_backups() -> Two {
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    for i in 0..3 {
        write(
            &src.join("a").join(format!("f{i}")),
            format!("small {i}\n").as_bytes(),
        );
    }
    let url = file_url(&repo);
    sr_init(&url);
    let first = sr_backup_id(&src, &url);
    let packs1 = files_in(&repo.join("data"));
    let index1 = files_in(&repo.join("index"));
    // 8 MiB: at least two chunks whatever the repository's random chunker polynomial.
    // With 3 MiB a test failed once in about 15 runs: by the chunker's odds (a cut
    // point on average every 1 MiB after the 512 KiB minimum) 3 MiB has none in about
    // one repository of 12, 8 MiB in about one of 1,800.
    write(&src.join("big/random"), &pseudo_random(8 << 20, 11));
    write(&src.join("gone/x"), b"only in the second snapshot\n");
    let second = sr_backup_id(&src, &url);
    let mut new: Vec<(u64, PathBuf)> = files_in(&repo.join("data"))
        .into_iter()
        .filter(|p| !packs1.contains(p))
        .map(|p| (std::fs::metadata(&p).unwrap().len(), p))
        .collect();
    new.sort();
    assert_eq!(new.len(), 2, "a data and a tree pack: {new:?}");
    let index2: Vec<PathBuf> = files_in(&repo.join("index"))
        .into_iter()
        .filter(|p| !index1.contains(p))
        .collect();
    assert_eq!(index2.len(), 1, "{index2:?}");
    Two {
        data2: new.pop().unwrap().1,
        tree2: new.pop().unwrap().1,
        index2: index2[0].clone(),
        t,
        src,
        repo,
        url,
        first,
        second,
    }
}

#[test]
fn a_lost_pack_is_left_out_and_the_next_backup_stores_its_data_again() {
    let w = two_backups();
    let url = &w.url;
    std::fs::remove_file(&w.data2).unwrap();

    // verify finds the damage and points to the repair.
    let (code, out, err) = sr_nocache(&["verify", "--dest", url, "latest"]);
    assert_eq!(code, 2, "verify: {out}\n{err}");
    assert!(out.contains("`snapring repair index --dest"), "{out}");
    // prune is stuck, and says what to do.
    let (code, out, err) = sr_nocache(&["prune", "--dest", url]);
    assert_eq!(code, 1, "prune: {out}\n{err}");
    assert!(err.contains("snapring repair index"), "{err}");

    let (code, r) = repair(url, &[]);
    assert_eq!(code, 2, "a snapshot lost data: {r}");
    assert_eq!(r["packs_missing"], 1, "{r}");
    assert_eq!(r["packs_kept"], 3, "{r}");
    assert_eq!(r["packs_added"], 0, "{r}");
    assert_eq!(r["packs_unreadable"], 0, "{r}");
    assert!(r["blobs_lost"].as_u64().unwrap() >= 2, "{r}");
    assert_eq!(r["index_rewritten"], true, "{r}");
    assert_eq!(damaged_ids(&r), vec![w.second.clone()], "{r}");
    assert!(r["missing_data_blobs"].as_u64().unwrap() >= 2, "{r}");
    // Again: the index matches the packs; the snapshot is still damaged.
    let (code, out, err) = sr_nocache(&["repair", "index", "--dest", url]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.contains("nothing written"), "{out}");
    assert!(
        out.contains(&format!("{} ", &w.second[..8]))
            && out.contains("references data no pack holds"),
        "{out}"
    );
    assert!(out.contains("the next backup stores again"), "{out}");

    // The next backup, `gone/x` removed from the source: the big file is unchanged
    // against the parent, but its blobs are in no pack, so it is read again.
    std::fs::remove_dir_all(w.src.join("gone")).unwrap();
    let third = sr_backup_json(&w.src, url);
    let repo3 = &third["repository"];
    assert_eq!(third["status"], "complete", "{third}");
    assert_eq!(third["based_on"], w.second.as_str(), "{third}");
    assert_eq!(repo3["files_read"], 1, "the big file read again: {third}");
    assert_eq!(repo3["files_unchanged"], 3, "{third}");
    let (code, out, err) = sr_nocache(&["verify", "--dest", url, "latest"]);
    assert_eq!(code, 0, "verify: {out}\n{err}");
    let to = w.t.path().join("restored");
    let (code, out, err) = sr_nocache(&restore_latest(url, &to));
    assert_eq!(code, 0, "restore: {out}\n{err}");
    assert_same_tree(
        &describe(&w.src),
        &describe(&to),
        "restored after the repair",
    );

    // Only `gone/x` is lost for good: the second snapshot stays damaged, the first
    // was never.
    let (code, r) = repair(url, &[]);
    assert_eq!(code, 2, "{r}");
    assert_eq!(r["index_rewritten"], false, "{r}");
    assert_eq!(r["snapshots"], 3, "{r}");
    assert_eq!(damaged_ids(&r), vec![w.second.clone()], "{r}");
    assert_eq!(r["missing_data_blobs"], 1, "{r}");
    let (code, out, err) = sr_nocache(&["verify", "--dest", url, &w.first]);
    assert_eq!(code, 0, "{out}\n{err}");

    // restic agrees: the new snapshot is whole, the second one is not.
    let restic = restic_binary("restic's view of the repaired repository");
    if let Some(restic) = &restic {
        let out = restic_cmd(restic, &w.repo)
            .args(["check", "--read-data"])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "restic check passed a damaged snapshot"
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("not found in index") || text.contains("missing"),
            "{text}"
        );
        let to = w.t.path().join("restic-restored");
        run_restic(
            restic,
            &w.repo,
            &["restore", "latest", "--target", to.to_str().unwrap()],
        );
        let got = to.join(w.src.strip_prefix("/").unwrap());
        assert_same_tree(&describe(&w.src), &describe(&got), "restic's restore");
    }

    // prune refuses while a snapshot references lost data; forgotten by its id (the
    // one damaged snapshot, not every snapshot but the newest as `--retain 1` would),
    // prune runs.
    let (code, out, err) = sr_nocache(&["prune", "--dest", url]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("forget those with `snapring forget --dest URL ID...`, then prune"),
        "{err}"
    );
    let (_, out, _) = sr_nocache(&["repair", "index", "--dest", url]);
    assert!(out.contains("`snapring forget --dest URL ID...`"), "{out}");
    let snaps = || -> Vec<String> {
        let (code, out, err) = sr_nocache(&["list", "--dest", url, "--json"]);
        assert_eq!(code, 0, "{out}\n{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let all = snaps();
    assert_eq!(all.len(), 3, "{all:?}");
    // A name that is no snapshot's: an error naming it, and nothing removed (not even
    // the snapshot named beside it).
    let (code, out, err) = sr_nocache(&["forget", "--dest", url, &w.second[..8], "00000000ff"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("no snapshot \"00000000ff\""), "{err}");
    assert_eq!(snaps(), all);
    // Either a policy or names, not both; and one of them.
    let (code, _, err) = sr_nocache(&[
        "forget", "--dest", url, "--label", "daily", "--retain", "1", &w.second,
    ]);
    assert_eq!(code, 64, "{err}");
    let (code, _, err) = sr_nocache(&["forget", "--dest", url]);
    assert_eq!(code, 64, "{err}");
    assert_eq!(snaps(), all);
    let (code, out, err) = sr_nocache(&["forget", "--dest", url, "--dry-run", &w.second[..8]]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!("{} ", &w.second[..8]))
            && out.contains(&format!("forgotten: named ({})", &w.second[..8]))
            && out.contains("dry run: would forget 1 snapshots; nothing removed"),
        "{out}"
    );
    assert_eq!(snaps(), all);
    let (code, out, err) = sr_nocache(&["forget", "--dest", url, &w.second[..8], &w.second]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("forgot 1 snapshots"), "{out}");
    let left: Vec<String> = all.iter().filter(|i| **i != w.second).cloned().collect();
    assert_eq!(snaps(), left);
    assert!(left.contains(&w.first));
    let (code, out, err) = sr_nocache(&["prune", "--dest", url]);
    assert_eq!(code, 0, "prune after the repair: {out}\n{err}");
    if let Some(restic) = &restic {
        run_restic(restic, &w.repo, &["check", "--read-data"]);
    }
    let (code, r) = repair(url, &[]);
    assert_eq!(code, 0, "{r}");
    assert!(damaged_ids(&r).is_empty(), "{r}");
    let (code, out, err) = sr_nocache(&["verify", "--dest", url, "--all"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

/// A lost tree pack, the index repaired: prune stops naming the snapshot whose tree
/// is gone and what to do. It said only "Tree blob …: not in any index".
#[test]
fn prune_after_a_lost_tree_pack_names_the_snapshot_and_the_way_out() {
    let w = two_backups();
    std::fs::remove_file(&w.tree2).unwrap();
    let (code, r) = repair(&w.url, &[]);
    assert_eq!(code, 2, "a snapshot lost its trees: {r}");
    let (code, out, err) = sr_nocache(&["prune", "--dest", &w.url]);
    assert_eq!(code, 1, "prune: {out}\n{err}");
    assert!(
        err.contains(&format!("of snapshot {}", &w.second[..8])),
        "{err}"
    );
    assert!(err.contains("tree blob"), "{err}");
    assert!(err.contains("snapring forget --dest URL ID"), "{err}");
}

#[test]
fn a_pack_no_index_names_is_added_back() {
    let w = two_backups();
    std::fs::remove_file(&w.index2).unwrap();
    let (code, r) = repair(&w.url, &[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["packs_added"], 2, "{r}");
    assert_eq!(r["packs_kept"], 2, "{r}");
    assert_eq!(r["packs_missing"], 0, "{r}");
    assert_eq!(r["blobs_lost"], 0, "{r}");
    assert_eq!(r["index_files_written"], 1, "{r}");
    assert_eq!(r["index_files_removed"], 1, "{r}");
    assert!(damaged_ids(&r).is_empty(), "{r}");
    assert_eq!(files_in(&w.repo.join("index")).len(), 1);
    let (code, out, err) = sr_nocache(&["verify", "--dest", &w.url, "--all"]);
    assert_eq!(code, 0, "{out}\n{err}");
    if let Some(restic) = restic_binary("restic check after the pack was indexed again") {
        run_restic(&restic, &w.repo, &["check", "--read-data"]);
    }
    // The next backup reads nothing: every blob is indexed again.
    let r = sr_backup_json(&w.src, &w.url);
    assert_eq!(r["repository"]["files_read"], 0, "{r}");
}

/// Flips one byte of the file `p`, `from_end` bytes before its end.
fn flip(p: &Path, from_end: usize) {
    let mut b = std::fs::read(p).unwrap();
    let at = b.len() - from_end;
    b[at] ^= 0x55;
    std::fs::write(p, b).unwrap();
}

#[test]
fn a_pack_whose_header_does_not_read_is_left_out() {
    let w = two_backups();
    // The header's sealed bytes (the last 4 are its length).
    flip(&w.data2, 10);
    // Of the size the index implies: kept unread, as restic's repair index keeps it.
    let (code, r) = repair(&w.url, &[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["index_rewritten"], false, "{r}");
    assert_eq!(r["packs_kept"], 4, "{r}");
    // With --read-data the header is read: it does not open, but the pack is indexed
    // and each of its blobs hashes to its id at its indexed place: they are salvaged
    // into a new pack and the damaged one deleted (until session 49 the pack was left
    // out whole, and the second snapshot, restorable, became damaged).
    let (code, r) = repair(&w.url, &["--read-data"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["packs_unreadable"], 0, "{r}");
    assert_eq!(r["packs_salvaged"], 1, "{r}");
    assert_eq!(r["packs_kept"], 3, "{r}");
    let data2_id = w.data2.file_name().unwrap().to_str().unwrap();
    assert_eq!(r["salvaged"][0], data2_id, "{r}");
    assert_eq!(r["blobs_lost"], 0, "{r}");
    assert!(damaged_ids(&r).is_empty(), "{r}");
    assert!(!w.data2.exists(), "the damaged pack is deleted");

    // Not in any index, the damaged pack's header is read without --read-data too.
    let w = two_backups();
    flip(&w.data2, 10);
    std::fs::remove_file(&w.index2).unwrap();
    let data2_id = w.data2.file_name().unwrap().to_str().unwrap();
    let (code, out, err) = sr_nocache(&["repair", "index", "--dest", &w.url]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        out.contains(&format!("unreadable pack {data2_id}")),
        "{out}"
    );
    assert!(out.contains("1 added"), "the tree pack: {out}");
    // The header is read each time the pack is in no index; it stays left out, and
    // the index is not written again for it.
    let (code, r) = repair(&w.url, &[]);
    assert_eq!(code, 2, "{r}");
    assert_eq!(damaged_ids(&r), vec![w.second.clone()], "{r}");
    assert_eq!(r["unreadable"][0], data2_id, "{r}");
    assert_eq!(r["index_rewritten"], false, "{r}");
    // The next backup stores the data again; prune deletes the damaged pack.
    let r3 = sr_backup_json(&w.src, &w.url);
    assert_eq!(r3["repository"]["files_read"], 2, "{r3}");
    let (code, r) = repair(&w.url, &[]);
    assert_eq!(code, 0, "every snapshot whole again (the same blobs): {r}");
    let (code, out, err) = sr_nocache(&["prune", "--dest", &w.url, "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!w.data2.exists(), "prune deletes the damaged pack");
    if let Some(restic) = restic_binary("restic check after the damaged pack was pruned") {
        run_restic(&restic, &w.repo, &["check", "--read-data"]);
    }
}

/// A damaged blob in a pack of several: `--read-data` leaves it out without indexing
/// part of its pack (which `restic check` reports as of the wrong size, and a later
/// repair would add back whole): the good blobs go into a new pack, the damaged pack is
/// deleted. A plain repair then changes nothing, the next backup stores the blob
/// again, and after prune `restic check --read-data` is clean.
#[test]
fn read_data_leaves_a_damaged_blob_out_and_the_next_backup_stores_it_again() {
    let w = two_backups();
    // Inside the big file's blobs (the pack is more than 3 MiB).
    flip(&w.data2, 2 << 20);
    let (code, r) = repair(&w.url, &[]);
    assert_eq!((code, &r["index_rewritten"]), (0, &false.into()), "{r}");
    let (code, r) = repair(&w.url, &["--read-data"]);
    assert_eq!(code, 2, "{r}");
    assert_eq!(r["read_data"], true, "{r}");
    assert_eq!(r["blobs_damaged"], 1, "{r}");
    assert_eq!(r["blobs_lost"], 1, "{r}");
    assert_eq!(r["packs_kept"], 3, "{r}");
    assert_eq!(r["packs_salvaged"], 1, "{r}");
    assert_eq!(
        (&r["packs_written"], &r["packs_removed"]),
        (&1.into(), &1.into()),
        "{r}"
    );
    assert!(!w.data2.exists(), "the damaged pack is deleted");
    assert_eq!(damaged_ids(&r), vec![w.second.clone()], "{r}");
    let restic = restic_binary("restic check after a damaged blob was left out");
    if let Some(restic) = &restic {
        // The index names no pack of another size than its entries.
        let out = restic_cmd(restic, &w.repo)
            .args(["check"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!text.contains("unexpected file size"), "{text}");
    }
    // A plain repair finds the index as the packs are: the blob stays out.
    let (code, r2) = repair(&w.url, &[]);
    assert_eq!(code, 2, "{r2}");
    assert_eq!(r2["index_rewritten"], false, "{r2}");
    assert_eq!(
        (&r2["packs_added"], &r2["packs_reread"]),
        (&0.into(), &0.into()),
        "{r2}"
    );
    assert_eq!(
        r2["missing_data_blobs"], 1,
        "the damaged blob still out: {r2}"
    );
    let r3 = sr_backup_json(&w.src, &w.url);
    assert_eq!(r3["repository"]["files_read"], 1, "the big file: {r3}");
    assert_eq!(r3["repository"]["files_unchanged"], 4, "{r3}");
    let (code, out, err) = sr_nocache(&["verify", "--dest", &w.url, "--all"]);
    assert_eq!(code, 0, "every snapshot whole again: {out}\n{err}");
    let to = w.t.path().join("restored");
    let (code, out, err) = sr_nocache(&restore_latest(&w.url, &to));
    assert_eq!(code, 0, "restore: {out}\n{err}");
    assert_same_tree(&describe(&w.src), &describe(&to), "restored");
    if let Some(restic) = &restic {
        run_restic(restic, &w.repo, &["check"]);
    }
    let (code, r4) = repair(&w.url, &[]);
    assert_eq!(code, 0, "{r4}");
    assert_eq!(r4["index_rewritten"], false, "{r4}");
    let (code, out, err) = sr_nocache(&["prune", "--dest", &w.url]);
    assert_eq!(code, 0, "prune: {out}\n{err}");
    if let Some(restic) = &restic {
        run_restic(restic, &w.repo, &["check", "--read-data"]);
    }
}

/// A pack read garbled once (a proxy flipping a byte on its way) is read again and
/// found whole: `--read-data` salvages nothing and deletes no pack. A pack whose reads
/// differ every time stops the repair with nothing changed.
#[test]
fn read_data_reads_a_pack_again_before_calling_it_damaged() {
    let w = two_backups();
    let packs = files_in(&w.repo.join("data"));
    let run = |fp: &str| {
        let out = repair_text_with_failpoint(&w.url, fp, &["--json", "--read-data"])
            .wait_with_output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (
            out.status.code(),
            text,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = run("restic.repair_pack_garbled=error");
    assert_eq!(code, Some(0), "{out}\n{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["read_data"], true, "{r}");
    assert_eq!(
        (
            &r["blobs_damaged"],
            &r["packs_salvaged"],
            &r["packs_removed"]
        ),
        (&0.into(), &0.into(), &0.into()),
        "a garbled read salvaged a healthy pack: {r}"
    );
    assert_eq!(files_in(&w.repo.join("data")), packs, "packs changed");
    // The first five reads garbled, each differently.
    let every: Vec<String> = (1..=5)
        .map(|n| format!("restic.repair_pack_garbled=error@{n}"))
        .collect();
    let (code, out, err) = Command::new(bin())
        .args(["repair", "index", "--dest", &w.url, "--read-data"])
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_CACHE", "off")
        .env("SNAPRING_PASSWORD", PASSWORD)
        .env("SNAPRING_FAILPOINTS", every.join(";"))
        .output()
        .map(|o| {
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stdout).to_string(),
                String::from_utf8_lossy(&o.stderr).to_string(),
            )
        })
        .unwrap();
    // Spread over several packs, each reads whole in the end; on one, it stops.
    assert!(
        code == Some(0) || err.contains("read differently each of 5 times"),
        "{code:?} {out}\n{err}"
    );
    assert_eq!(files_in(&w.repo.join("data")), packs, "packs changed");
    let (code, out, err) = sr_nocache(&["verify", "--dest", &w.url, "--all"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

/// After `repair index --read-data` left a damaged blob out, the next backup stores
/// it again and prune leaves no trace of the damaged pack: `restic check --read-data`
/// is clean, every snapshot restores equal. Before, prune kept the pack (every blob its
/// index entries name is used) and restic's check kept reporting it.
#[test]
fn prune_repacks_a_pack_whose_damaged_blob_repair_left_out() {
    let w = two_backups();
    // Inside one of the big file's blobs (the pack is more than 3 MiB, several blobs).
    flip(&w.data2, 2 << 20);
    let (code, r) = repair(&w.url, &["--read-data"]);
    assert_eq!(code, 2, "{r}");
    assert_eq!(r["blobs_damaged"], 1, "{r}");
    let r3 = sr_backup_json(&w.src, &w.url);
    assert_eq!(r3["repository"]["files_read"], 1, "the big file: {r3}");
    let (code, out, err) = sr_nocache(&["prune", "--dest", &w.url]);
    assert_eq!(code, 0, "{out}\n{err}");
    if let Some(restic) = restic_binary("restic check after the damaged pack was pruned") {
        run_restic(&restic, &w.repo, &["check", "--read-data"]);
    }
    assert!(
        !w.data2.exists(),
        "the damaged pack is deleted: {out}\n{err}"
    );
    // Every snapshot whole (the blob stored again has the same id), byte for byte.
    let (code, out, err) = sr_nocache(&["verify", "--dest", &w.url, "--all"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let to = w.t.path().join("restored");
    let to_s = to.to_str().unwrap();
    let (code, out, err) = sr_nocache(&["restore", "--dest", &w.url, &w.second, "--to", to_s]);
    assert_eq!(code, 0, "restore: {out}\n{err}");
    assert_same_tree(
        &describe(&w.src),
        &describe(&to),
        "restored after the prune",
    );
}

/// A pack whose index entries do not account for its whole size (one blob's entry
/// gone from the index, as the repair of a damaged blob used to leave it) is repacked
/// by prune, never kept: its used indexed blobs are copied into a new pack and it is
/// deleted, so `restic check --read-data` (which checks each pack's size against its
/// index entries) is clean. Before, prune kept it (every indexed blob used), and
/// restic's check failed on it (`unexpected file size`).
#[test]
fn prune_repacks_a_pack_its_index_entries_do_not_account_for() {
    let w = two_backups();
    // The second backup's index without the entry of one of the big file's blobs.
    let pw = PASSWORD.as_bytes();
    let repo = snapring::restic::repo::Repo::open(&w.repo, pw).unwrap();
    let index = snapring::restic::backend::Kind::Index;
    let old = snapring::restic::Id::parse(w.index2.file_name().unwrap().to_str().unwrap());
    let old = old.unwrap();
    let mut f: snapring::restic::index::IndexFile = repo.load_json(index, &old).unwrap();
    let data2 = w.data2.file_name().unwrap().to_str().unwrap();
    let p = f.packs.iter_mut().find(|p| p.id.hex() == data2).unwrap();
    let blobs = p.blobs.len();
    assert!(blobs >= 3, "the big file's blobs and gone/x's: {blobs}");
    let at = (0..blobs).max_by_key(|&i| p.blobs[i].length).unwrap();
    p.blobs.remove(at);
    repo.save_json(index, &f).unwrap();
    repo.backend.remove(index, &old).unwrap();
    drop(repo);
    // The next backup stores the blob again (in no index, it is not deduplicated).
    let r3 = sr_backup_json(&w.src, &w.url);
    assert_eq!(r3["repository"]["files_read"], 1, "the big file: {r3}");
    let (code, out, err) = sr_nocache(&["prune", "--dest", &w.url, "--dry-run", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["plan"]["packs_partly_indexed"], 1, "{p}");
    assert_eq!(p["plan"]["packs_repacked"], 1, "{p}");
    assert!(w.data2.exists());
    let (code, out, err) = sr_nocache(&["prune", "--dest", &w.url]);
    assert_eq!(code, 0, "{out}\n{err}");
    if let Some(restic) = restic_binary("restic check after the partly indexed pack was pruned") {
        run_restic(&restic, &w.repo, &["check", "--read-data"]);
    }
    assert!(
        out.contains("1 packs are of another size than their index entries imply"),
        "{out}"
    );
    assert!(
        err.contains(&format!("pack {}", w.data2.display())),
        "{err}"
    );
    assert!(!w.data2.exists(), "the pack is deleted: {out}\n{err}");
    let (code, out, err) = sr_nocache(&["verify", "--dest", &w.url, "--all"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let to = w.t.path().join("restored");
    let to_s = to.to_str().unwrap();
    let (code, out, err) = sr_nocache(&["restore", "--dest", &w.url, &w.second, "--to", to_s]);
    assert_eq!(code, 0, "restore: {out}\n{err}");
    assert_same_tree(
        &describe(&w.src),
        &describe(&to),
        "restored after the prune",
    );
    // Nothing more to do.
    let (code, out, err) = sr_nocache(&["prune", "--dest", &w.url, "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["plan"]["packs_partly_indexed"], 0, "{p}");
    assert_eq!(p["packs_written"], 0, "{p}");
}

/// A snapshot file that does not read is counted, and makes the repair exit 2: it is
/// not "every one whole".
#[test]
fn a_snapshot_file_that_does_not_read_is_reported() {
    let w = two_backups();
    let snap = w.repo.join("snapshots").join(&w.second);
    flip(&snap, 20);
    let (code, r) = repair(&w.url, &[]);
    assert_eq!(code, 2, "{r}");
    assert_eq!(r["unreadable_snapshots"][0], w.second.as_str(), "{r}");
    assert_eq!(r["snapshots"], 1, "{r}");
    assert!(damaged_ids(&r).is_empty(), "{r}");
    let (code, out, err) = sr_nocache(&["repair", "index", "--dest", &w.url]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(
        out.contains(&format!("snapshot file {} does not read", w.second)),
        "{out}"
    );
    assert!(out.contains("1 snapshot files do not read"), "{out}");
}

fn repair_with_failpoint(url: &str, failpoint: &str) -> std::process::Child {
    repair_text_with_failpoint(url, failpoint, &["--json"])
}

fn repair_text_with_failpoint(url: &str, failpoint: &str, extra: &[&str]) -> std::process::Child {
    Command::new(bin())
        .args(["repair", "index", "--dest", url])
        .args(extra)
        .env("SNAPRING_CATALOG", "off")
        .env("SNAPRING_CACHE", "off")
        .env("SNAPRING_PASSWORD", PASSWORD)
        .env("SNAPRING_FAILPOINTS", failpoint)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn sigterm_before_the_new_index_changes_nothing() {
    let w = two_backups();
    std::fs::remove_file(&w.data2).unwrap();
    let before = describe(&w.repo.join("index"));
    let pause = w.t.path().join("paused");
    let child = repair_with_failpoint(
        &w.url,
        &format!("restic.repair_index_before_write=pause:{}", pause.display()),
    );
    wait_for(&pause);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("the index was not changed"), "{err}");
    assert_same_tree(
        &before,
        &describe(&w.repo.join("index")),
        "index/ after SIGTERM",
    );
    assert!(files_in(&w.repo.join("locks")).is_empty(), "lock released");
    let (code, r) = repair(&w.url, &[]);
    assert_eq!((code, &r["packs_missing"]), (2, &1.into()), "{r}");
}

#[test]
fn killed_between_the_new_index_and_the_old_ones_removal_the_repository_is_valid() {
    let w = two_backups();
    std::fs::remove_file(&w.index2).unwrap();
    let out = repair_with_failpoint(&w.url, "restic.repair_index_written=kill")
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), None, "not killed: {out:?}");
    // The old index file and the new one, naming the same packs.
    assert_eq!(files_in(&w.repo.join("index")).len(), 2);
    if let Some(restic) = restic_binary("restic check after a killed repair") {
        run_restic(&restic, &w.repo, &["unlock"]);
        run_restic(&restic, &w.repo, &["check", "--read-data"]);
    }
    let (code, out, err) = sr_nocache(&["verify", "--dest", &w.url, "--all"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // The next repair finds nothing to add and leaves both (duplicates are fine).
    let (code, r) = repair(&w.url, &[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["packs_added"], 0, "{r}");
    assert!(damaged_ids(&r).is_empty(), "{r}");
}

fn sigterm(child: &std::process::Child) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
}

/// SIGTERM once the new index is written: the old index files are removed all the
/// same, and the check of the snapshots stops, exit 3, saying so.
#[test]
fn sigterm_after_the_new_index_stops_the_snapshots_check() {
    let w = two_backups();
    std::fs::remove_file(&w.data2).unwrap();
    let pause = w.t.path().join("paused");
    let child = repair_text_with_failpoint(
        &w.url,
        &format!("restic.repair_index_written=pause:{}", pause.display()),
        &[],
    );
    wait_for(&pause);
    sigterm(&child);
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{err}");
    assert!(
        err.contains(
            "snapring: interrupted while checking the snapshots (the index is rebuilt); \
             `snapring verify --all` tells which are damaged"
        ),
        "{err}"
    );
    assert!(
        !stdout.contains("references data no pack holds"),
        "{stdout}"
    );
    assert_eq!(
        files_in(&w.repo.join("index")).len(),
        1,
        "the old files removed"
    );
    let (code, r) = repair(&w.url, &[]);
    assert_eq!((code, &r["index_rewritten"]), (2, &false.into()), "{r}");
}

/// The lock lost while the new index is written (removed by `restic unlock`, or as
/// stale by another process): the old index files are not removed (exit 1), and the
/// repository has both, which restic accepts.
#[test]
fn a_lock_lost_before_the_old_index_files_go_leaves_them() {
    let w = two_backups();
    std::fs::remove_file(&w.index2).unwrap();
    let old = files_in(&w.repo.join("index"));
    let pause = w.t.path().join("paused");
    let child = repair_with_failpoint(
        &w.url,
        &format!("restic.repair_index_written=pause:{}", pause.display()),
    );
    wait_for(&pause);
    for l in files_in(&w.repo.join("locks")) {
        std::fs::remove_file(l).unwrap();
    }
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("was removed"), "{err}");
    let now = files_in(&w.repo.join("index"));
    assert_eq!(now.len(), 2, "the new index beside the old: {now:?}");
    assert!(old.iter().all(|f| now.contains(f)), "{old:?} {now:?}");
    if let Some(restic) = restic_binary("restic check after the lock was lost") {
        run_restic(&restic, &w.repo, &["check", "--read-data"]);
    }

    // The same with SIGTERM meanwhile: interrupted (exit 3), and the message says
    // where the index was left, not that it was not changed.
    let w = two_backups();
    std::fs::remove_file(&w.index2).unwrap();
    let child = repair_with_failpoint(
        &w.url,
        &format!("restic.repair_index_written=pause:{}", pause.display()),
    );
    wait_for(&pause);
    for l in files_in(&w.repo.join("locks")) {
        std::fs::remove_file(l).unwrap();
    }
    sigterm(&child);
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("was removed"), "{err}");
    assert!(!err.contains("the index was not changed"), "{err}");
    assert!(
        err.contains("the index files written so far are beside the old ones"),
        "{err}"
    );
    assert_eq!(files_in(&w.repo.join("index")).len(), 2);
}

/// A repository restic wrote (its packs compressed, its own index files): every pack is
/// of the size its index entries imply, so a repair reads none and writes nothing;
/// with restic's index files removed, every pack's header is read and the new index
/// is one restic checks, and the next snapring backup reads nothing.
#[test]
fn a_repository_restic_wrote_is_repaired_as_restic_would() {
    let Some(restic) = restic_binary("repair index on a repository restic wrote") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (src, repo) = (t.path().join("src"), t.path().join("repo"));
    write(&src.join("big/random"), &pseudo_random(3 << 20, 5));
    write(&src.join("big/zeros"), &vec![0u8; 1 << 20]);
    for i in 0..5 {
        write(
            &src.join(format!("s/f{i}")),
            format!("file {i}\n").as_bytes(),
        );
    }
    run_restic(&restic, &repo, &["init", "--repository-version", "2"]);
    run_restic(&restic, &repo, &["backup", src.to_str().unwrap()]);
    let url = file_url(&repo);
    let packs = files_in(&repo.join("data")).len() as u64;
    let (code, r) = repair(&url, &[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["packs_kept"], packs, "{r}");
    assert_eq!(r["index_rewritten"], false, "{r}");
    let (code, r) = repair(&url, &["--read-data"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (&r["packs_kept"], &r["blobs_damaged"]),
        (&packs.into(), &0.into()),
        "{r}"
    );
    assert_eq!(r["index_rewritten"], false, "{r}");

    for f in files_in(&repo.join("index")) {
        std::fs::remove_file(f).unwrap();
    }
    let (code, r) = repair(&url, &[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["packs_added"], packs, "{r}");
    assert!(damaged_ids(&r).is_empty(), "{r}");
    run_restic(&restic, &repo, &["check", "--read-data"]);
    let b = sr_backup_json(&src, &url);
    assert_eq!(b["repository"]["files_read"], 0, "{b}");
}

/// A data pack cut short at its end (`truncate -s -100`: its header and the header's
/// length damaged; `restic check --read-data` fails it). Every blob still reads at the
/// place the index gives, so `verify` found the snapshot clean; it now says DAMAGED and
/// names the pack (exit 2). `repair index` dropped the whole pack (a restorable snapshot
/// became damaged); it now salvages the blobs that hash to their ids into a new pack
/// and deletes the damaged one: the snapshot restores whole, verify is clean, and
/// restic's check agrees (HA, session 49).
#[test]
fn a_pack_cut_short_at_its_header_is_damage_to_verify_and_its_blobs_are_salvaged() {
    let w = two_backups();
    let len = std::fs::metadata(&w.data2).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&w.data2)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let data2_id = w.data2.file_name().unwrap().to_str().unwrap().to_string();
    let (code, out, err) = sr_nocache(&["verify", "--dest", &w.url, "latest", "--json"]);
    assert_eq!(code, 2, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["clean"], false, "{v}");
    assert_eq!(v[0]["damaged_packs"], serde_json::json!([data2_id]), "{v}");
    assert_eq!(v[0]["corrupt"], 0, "its files' blobs read: {v}");
    let (code, out, err) = sr_nocache(&["verify", "--dest", &w.url, "latest"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.contains("DAMAGED"), "{out}");
    assert!(out.contains(&data2_id), "the pack named: {out}");
    assert!(out.contains("snapring repair index"), "{out}");

    let (code, r) = repair(&w.url, &[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["packs_salvaged"], 1, "{r}");
    assert_eq!(r["salvaged"][0], data2_id.as_str(), "{r}");
    assert_eq!(r["packs_unreadable"], 0, "{r}");
    assert_eq!(r["blobs_lost"], 0, "{r}");
    assert!(damaged_ids(&r).is_empty(), "{r}");
    assert!(
        !w.data2.exists(),
        "the damaged pack is deleted once salvaged"
    );
    let to = w.t.path().join("T");
    let (code, out, err) = sr_nocache(&restore_latest(&w.url, &to));
    assert_eq!(code, 0, "{out}\n{err}");
    assert_same_tree(
        &describe(&w.src),
        &describe(&to),
        "restore after the salvage",
    );
    let (code, out, err) = sr_nocache(&["verify", "--dest", &w.url, "--all"]);
    assert_eq!(code, 0, "{out}\n{err}");
    if let Some(restic) = restic_binary("restic check after the salvage") {
        run_restic(&restic, &w.repo, &["check", "--read-data"]);
    }
}

/// With its index files gone, a restore or a diff fails on the first tree ("Tree blob
/// …: not in any index") and now says the way out, as verify does: `snapring repair
/// index --dest …` (HA, session 49).
#[test]
fn a_restore_or_diff_with_the_index_gone_names_repair_index() {
    let w = two_backups();
    for f in files_in(&w.repo.join("index")) {
        std::fs::remove_file(f).unwrap();
    }
    let to = w.t.path().join("T");
    let (code, out, err) = sr_nocache(&restore_latest(&w.url, &to));
    assert_ne!(code, 0, "{out}\n{err}");
    let said = format!("{out}\n{err}");
    assert!(said.contains("not in any index"), "{said}");
    assert!(
        said.contains(&format!("snapring repair index --dest {}", w.url)),
        "{said}"
    );
    let (code, out, err) = sr_nocache(&[
        "diff",
        "--dest",
        &w.url,
        "latest",
        "--against",
        w.src.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(
        err.contains(&format!("snapring repair index --dest {}", w.url)),
        "{out}\n{err}"
    );
}

/// A restic tree naming one entry twice (crafted: a symlink `x` and a directory `x`).
/// The restore stopped on "cannot create directory …/x: File exists" and said "run the
/// same restore again", which failed the same way each time. Now the second entry is a
/// problem of kind `damaged` naming the duplicate (the restore `partial`, no retry
/// advice), the rest restored; `verify` calls the snapshot DAMAGED (HA, session 49).
#[test]
fn a_tree_naming_an_entry_twice_is_damage_not_a_failed_restore() {
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
    std::fs::create_dir_all(&src).unwrap();
    std::os::unix::fs::symlink("target", src.join("x")).unwrap();
    write(&src.join("y/inner"), b"in the directory");
    write(&src.join("z"), b"after both");
    common::restic::repo_of(&repo, &src);
    // The directory `y` renamed `x`, after the symlink `x`.
    let mut r = Repo::open(&repo, PASSWORD.as_bytes()).unwrap();
    let (orig, snap) = snapshot::find(&r, "latest").unwrap();
    let packer = Packer::default();
    fn again(r: &Repo, packer: &Packer, id: Id) -> Id {
        let mut tree = r.read_tree(&id).unwrap();
        for n in &mut tree.nodes {
            if let Some(sub) = n.subtree {
                n.subtree = Some(again(r, packer, sub));
            }
            if n.name == "y" && n.kind == "dir" {
                n.name = "x".into();
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
    let url = file_url(&repo);
    let short = &id.hex()[..8];
    let (code, out, err) = sr_nocache(&[
        "restore",
        "--dest",
        &url,
        short,
        "--to",
        to.to_str().unwrap(),
        "--json",
    ]);
    let rep: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(rep["status"], "partial", "{rep}\n{err}");
    assert_ne!(code, 0, "{rep}");
    let problems = rep["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{rep}");
    assert_eq!(problems[0]["path"], "x", "{rep}");
    assert_eq!(problems[0]["kind"], "damaged", "{rep}");
    let why = problems[0]["error"].as_str().unwrap();
    assert!(why.contains("names \"x\" twice"), "{why}");
    assert!(!why.contains("again"), "no retry advice: {why}");
    assert_eq!(
        std::fs::read_link(to.join("x")).unwrap(),
        Path::new("target")
    );
    assert_eq!(std::fs::read(to.join("z")).unwrap(), b"after both");

    let (code, out, err) = sr_nocache(&["verify", "--dest", &url, short]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.contains("DAMAGED"), "{out}");
    assert!(out.contains("names \"x\" twice"), "{out}");

    // `diff` from the snapshot it was made from: the second `x` is damage, as verify
    // and restore say (exit 2, verify's wording), not an added directory `x` with its
    // contents (until session 50); `y` and its contents are removed.
    let orig = &orig.hex()[..8];
    let (dcode, out, err) = sr_nocache(&["diff", "--dest", &url, orig, short, "--json"]);
    assert_eq!(dcode, code, "diff exits as verify does: {out}\n{err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    let diffs: Vec<(String, String)> = d["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["path"].as_str().unwrap().to_string(),
                x["change"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        diffs.iter().all(|(p, _)| p == "y" || p == "y/inner"),
        "only y and y/inner differ: {d}"
    );
    assert_eq!(diffs.len(), 2, "{d}");
    assert_eq!(d["added"], 0, "{d}");
    assert_eq!(d["damaged"].as_array().unwrap().len(), 1, "{d}");
    assert_eq!(d["damaged"][0]["path"], ".", "{d}");
    let why = d["damaged"][0]["reason"].as_str().unwrap();
    assert!(
        why.contains("names \"x\" twice") && why.contains(short),
        "{why}"
    );
    let (tcode, out, err) = sr_nocache(&["diff", "--dest", &url, orig, short]);
    assert_eq!(tcode, code, "{out}\n{err}");
    assert!(
        out.contains("DAMAGED") && out.contains("names \"x\" twice"),
        "{out}"
    );
    assert!(!out.contains("+ x"), "{out}");
}

/// A pack header whose read fails with an I/O error (EIO) says nothing of the pack: it
/// is not checked (`unchecked_packs`, a problem, `unreadable`), the snapshot not clean
/// and not damaged, the text NOT FULLY CHECKED naming the pack's header. Until session
/// 50 such a pack counted as checked and the snapshot as clean (exit 0).
#[test]
fn a_pack_header_that_does_not_read_is_not_checked_and_not_clean() {
    let w = two_backups();
    let run = |extra: &[&str]| {
        let o = Command::new(bin())
            .args(["verify", "--dest", &w.url, "latest"])
            .args(extra)
            .env("SNAPRING_CATALOG", "off")
            .env("SNAPRING_CACHE", "off")
            .env("SNAPRING_PASSWORD", PASSWORD)
            .env("SNAPRING_FAILPOINTS", "restic.pack_header_read=error")
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, out, err) = run(&["--json"]);
    assert_eq!(code, 2, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["clean"], false, "{v}");
    assert_eq!(v[0]["unchecked_packs"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["damaged_packs"], serde_json::json!([]), "{v}");
    assert_eq!(v[0]["damaged"], serde_json::json!([]), "{v}");
    assert_eq!(v[0]["corrupt"], 0, "{v}");
    assert_eq!(v[0]["unreadable"], 1, "{v}");
    let pack = v[0]["unchecked_packs"][0].as_str().unwrap();
    let why = v[0]["problems"][0][1].as_str().unwrap();
    assert!(why.contains(&format!("header of pack {pack}")), "{why}");
    let (tcode, out, err) = run(&[]);
    assert_eq!(tcode, code, "{out}\n{err}");
    assert!(out.contains("NOT FULLY CHECKED"), "{out}");
    assert!(out.contains(&format!("header of pack {pack}")), "{out}");
    assert!(!out.contains("DAMAGED"), "{out}");
    // Without the fault it reads, and the snapshot is clean.
    let (code, out, err) = sr_nocache(&["verify", "--dest", &w.url, "latest"]);
    assert_eq!(code, 0, "{out}\n{err}");
}

/// The blobs of `pack` before its header (all of them) overwritten with zeros, its header
/// damaged too: no blob checks at its indexed place.
fn zero_blobs_and_flip_header(pack: &Path) {
    let mut b = std::fs::read(pack).unwrap();
    let n = u32::from_le_bytes(b[b.len() - 4..].try_into().unwrap()) as usize;
    let end = b.len() - 4 - n;
    b[..end].fill(0);
    let at = b.len() - 10;
    b[at] ^= 0x55;
    std::fs::write(pack, b).unwrap();
}

/// An indexed pack whose header does not read and of whose blobs some (one) or all do
/// not check at their indexed places (`--read-data`, and a plain repair, which reads the
/// header of a pack of the wrong size only: here the size is right, so `--read-data`).
/// Some: the good blobs are salvaged, the bad one is damaged and lost, the second
/// snapshot damaged. All: the pack is left out (nothing to salvage; the next prune
/// deletes it), every one of its blobs counted damaged and lost (until session 50
/// `blobs_damaged` said 0 of blobs read and found damaged). Either way restic's
/// `check --read-data` agrees: the second snapshot lacks data, and once it is forgotten
/// and pruned, the repository is clean.
#[test]
fn a_pack_with_a_bad_header_and_damaged_blobs_loses_just_those() {
    for all in [false, true] {
        let w = two_backups();
        let data2_id = w.data2.file_name().unwrap().to_str().unwrap().to_string();
        // Its blobs, by its header (the index names the same ones).
        let indexed = {
            let r = snapring::restic::repo::Repo::open(&w.repo, PASSWORD.as_bytes()).unwrap();
            let bytes = std::fs::read(&w.data2).unwrap();
            snapring::restic::pack::read_header(&r.key, &bytes, "data2")
                .unwrap()
                .len() as u64
        };
        assert!(indexed >= 3, "the big file's chunks and gone/x: {indexed}");
        if all {
            zero_blobs_and_flip_header(&w.data2);
        } else {
            flip(&w.data2, 10);
            // Inside the big file's blobs (the pack is more than 3 MiB).
            flip(&w.data2, 2 << 20);
        }
        let (code, r) = repair(&w.url, &["--read-data"]);
        assert_eq!(code, 2, "{r}");
        assert_eq!(damaged_ids(&r), vec![w.second.clone()], "{r}");
        if all {
            assert_eq!(r["packs_salvaged"], 0, "{r}");
            assert_eq!(r["packs_unreadable"], 1, "{r}");
            assert_eq!(r["unreadable"][0], data2_id.as_str(), "{r}");
            assert_eq!(r["blobs_damaged"], indexed, "{r}");
            assert_eq!(r["blobs_lost"], indexed, "{r}");
            assert!(w.data2.exists(), "left for prune");
        } else {
            assert_eq!(r["packs_salvaged"], 1, "{r}");
            assert_eq!(r["salvaged"][0], data2_id.as_str(), "{r}");
            assert_eq!(r["packs_unreadable"], 0, "{r}");
            assert_eq!(r["blobs_damaged"], 1, "{r}");
            assert_eq!(r["blobs_lost"], 1, "{r}");
            assert!(
                !w.data2.exists(),
                "the damaged pack is deleted once salvaged"
            );
        }
        let Some(restic) = restic_binary("restic check after a bad header's salvage") else {
            continue;
        };
        // restic agrees: the repository lacks data the second snapshot needs.
        let out = restic_cmd(&restic, &w.repo)
            .args(["check", "--read-data"])
            .output()
            .unwrap();
        let said = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("restic check --read-data (all: {all}):\n{said}");
        assert!(!out.status.success(), "{said}");
        // Forgotten and pruned, the damaged snapshot leaves a clean repository.
        let (code, out, err) = sr_nocache(&["forget", "--dest", &w.url, &w.second]);
        assert_eq!(code, 0, "{out}\n{err}");
        let (code, out, err) = sr_nocache(&["prune", "--dest", &w.url]);
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(!w.data2.exists(), "prune deletes the pack left out");
        run_restic(&restic, &w.repo, &["check", "--read-data"]);
        let (code, out, err) = sr_nocache(&["verify", "--dest", &w.url, "--all"]);
        assert_eq!(code, 0, "{out}\n{err}");
    }
}
