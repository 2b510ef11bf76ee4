//! Model-based property test: random sequences of mutate-source / backup (with random
//! retain, jobs and labels) check after every step that every published snapshot still
//! equals the source as it was when that snapshot was taken, forever.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use proptest::prelude::*;
use snapring::engine::{BackupOptions, backup};

#[derive(Clone, Debug)]
enum Op {
    Write { file: u8, len: u16, seed: u8 },
    Append { file: u8 },
    Delete { file: u8 },
    Chmod { file: u8, mode: u16 },
    Chown { file: u8, uid: u8 },
    Touch { file: u8, nsec: u32 },
    Symlink { file: u8, target: u8 },
    HardLink { file: u8, other: u8 },
    Xattr { file: u8, val: u8 },
    MkdirRename { dir: u8 },
    Backup { retain: u32, jobs: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<u8>(), 0u16..20000, any::<u8>()).prop_map(|(file, len, seed)| Op::Write { file, len, seed }),
        1 => any::<u8>().prop_map(|file| Op::Append { file }),
        1 => any::<u8>().prop_map(|file| Op::Delete { file }),
        1 => (any::<u8>(), 0u16..0o7777).prop_map(|(file, mode)| Op::Chmod { file, mode }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(file, uid)| Op::Chown { file, uid }),
        1 => (any::<u8>(), 0u32..999_999_999).prop_map(|(file, nsec)| Op::Touch { file, nsec }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(file, target)| Op::Symlink { file, target }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(file, other)| Op::HardLink { file, other }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(file, val)| Op::Xattr { file, val }),
        1 => any::<u8>().prop_map(|dir| Op::MkdirRename { dir }),
        3 => (1u32..4, 1usize..6).prop_map(|(retain, jobs)| Op::Backup { retain, jobs }),
    ]
}

/// Names include odd bytes so the property covers them too.
fn path_of(src: &Path, file: u8) -> std::path::PathBuf {
    let dir = ["a", "b c", "a/\u{e9}", "d\nq"][(file % 4) as usize];
    src.join(dir).join(format!("f{} x", file % 13))
}

fn apply(src: &Path, op: &Op) {
    match *op {
        Op::Write { file, len, seed } => {
            let p = path_of(src, file);
            let _ = std::fs::remove_file(&p);
            write(
                &p,
                &(0..len)
                    .map(|i| (i as u8).wrapping_mul(seed))
                    .collect::<Vec<_>>(),
            );
        }
        Op::Append { file } => {
            use std::io::Write;
            let p = path_of(src, file);
            if p.is_file() {
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&p)
                    .unwrap()
                    .write_all(b"more")
                    .unwrap();
            }
        }
        Op::Delete { file } => {
            let _ = std::fs::remove_file(path_of(src, file));
        }
        Op::Chmod { file, mode } => {
            let p = path_of(src, file);
            if std::fs::symlink_metadata(&p)
                .map(|m| m.is_file())
                .unwrap_or(false)
            {
                chmod(&p, mode as u32);
            }
        }
        Op::Chown { file, uid } => {
            let p = path_of(src, file);
            if std::fs::symlink_metadata(&p).is_ok() {
                chown(&p, uid as u32, 1000 + uid as u32);
            }
        }
        Op::Touch { file, nsec } => {
            let p = path_of(src, file);
            if std::fs::symlink_metadata(&p).is_ok() {
                set_mtime(&p, 1_700_000_000, nsec as i64);
            }
        }
        Op::Symlink { file, target } => {
            let p = path_of(src, file);
            let _ = std::fs::remove_file(&p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(format!("target-{target}"), &p).unwrap();
        }
        Op::HardLink { file, other } => {
            let (p, q) = (path_of(src, file), path_of(src, other));
            if p != q
                && std::fs::symlink_metadata(&p)
                    .map(|m| m.is_file())
                    .unwrap_or(false)
            {
                let _ = std::fs::remove_file(&q);
                std::fs::create_dir_all(q.parent().unwrap()).unwrap();
                std::fs::hard_link(&p, &q).unwrap();
            }
        }
        Op::Xattr { file, val } => {
            let p = path_of(src, file);
            if std::fs::symlink_metadata(&p)
                .map(|m| m.is_file())
                .unwrap_or(false)
            {
                set_xattr(&p, "user.v", &[val]);
            }
        }
        Op::MkdirRename { dir } => {
            let from = src.join(format!("tmp{dir}"));
            write(&from.join("inside"), &[dir]);
            let to = src.join(format!("moved{}", dir % 3));
            let _ = std::fs::remove_dir_all(&to);
            std::fs::rename(&from, &to).unwrap();
        }
        Op::Backup { .. } => unreachable!(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_snapshot_stays_equal_to_the_source_at_its_time(ops in proptest::collection::vec(op(), 1..24)) {
        let t = tempfile::tempdir().unwrap();
        let (src, store) = (t.path().join("src"), t.path().join("store"));
        std::fs::create_dir(&src).unwrap();
        write(&src.join("seed"), b"never empty");
        // Newest first: the model of each retained snapshot.
        let mut models: Vec<BTreeMap<Vec<u8>, Desc>> = Vec::new();
        for op in &ops {
            if let Op::Backup { retain, jobs } = *op {
                let mut o = BackupOptions::new(&src, &store);
                o.retain = retain;
                o.jobs = jobs;
                let rep = backup(&o, &AtomicBool::new(false)).unwrap();
                prop_assert_eq!(rep.status, snapring::report::Status::Complete, "{:?}", rep);
                models.insert(0, describe(&src));
                models.truncate(retain as usize);
                prop_assert_eq!(snapshot_names(&store).len(), models.len());
                for (i, m) in models.iter().enumerate() {
                    assert_same_tree(m, &describe(&store.join(format!("daily.{i}"))), &format!("daily.{i} after {ops:?}"));
                }
            } else {
                apply(&src, op);
            }
        }
    }
}
