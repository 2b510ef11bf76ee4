//! Fuzzes the manifest reader (`manifest::Reader`) with arbitrary `<id>.mf` text. The
//! index is built for that text as a writer would (one record per `D` block, the root
//! line's place in the header), so every block the text has is also reached through
//! `lookup`. Checks that nothing panics and that every entry the reader accepts writes
//! out and reads back unchanged.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use snapring::manifest::{self, Entry, Reader};
use snapring::relpath::RelPath;

fuzz_target!(|data: &[u8]| {
    let _budget = common::Budget::new();
    let dir = common::scratch("manifest");
    let (mf, idx) = manifest::paths(dir, "m");
    common::put(&mf, data);
    let (index, dirs) = index_for(data);
    common::put(&idx, &index);
    let Ok(r) = Reader::open(dir, "m") else {
        return;
    };
    let _ = r.root();
    let _ = r.for_each(|_, e| {
        assert_eq!(Entry::parse_line(&e.to_line()), Ok(e));
        Ok(())
    });
    for d in dirs.iter().chain([&RelPath::root()]) {
        let _ = r.lookup(d);
    }
});

/// Lines of `data` with their offsets (each with its newline, if any).
fn lines(data: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut off = 0u64;
    data.split_inclusive(|b| *b == b'\n').map(move |l| {
        let at = off;
        off += l.len() as u64;
        (at, l)
    })
}

/// The `<id>.idx` a writer would have made for manifest text `data` (format in
/// docs/format.md), and the directories of its blocks.
fn index_for(data: &[u8]) -> (Vec<u8>, Vec<RelPath>) {
    let mut recs = Vec::new();
    let mut dirs = Vec::new();
    let mut root = (0u64, 0u64);
    let mut open: Option<(u64, u64)> = None; // (key, offset) of the block being read
    let close = |open: &mut Option<(u64, u64)>, recs: &mut Vec<[u64; 3]>, end: u64| {
        if let Some((k, o)) = open.take() {
            recs.push([k, o, end - o]);
        }
    };
    for (at, l) in lines(data) {
        if l.starts_with(b"D ") || l.starts_with(b"R ") {
            close(&mut open, &mut recs, at);
        }
        if let Some(head) = l.strip_prefix(b"D ") {
            let text = std::str::from_utf8(head)
                .unwrap_or("")
                .trim_end_matches('\n');
            if let Ok(d) = RelPath::from_escaped(text) {
                open = Some((manifest::dir_key(&d), at));
                dirs.push(d);
            }
        } else if l.starts_with(b"R ") {
            root = (at, l.len() as u64);
        }
    }
    close(&mut open, &mut recs, data.len() as u64);
    recs.sort_unstable();
    let mut out = b"SRIDX01\n".to_vec();
    for v in [root.0, root.1]
        .into_iter()
        .chain(recs.into_iter().flatten())
    {
        out.extend_from_slice(&v.to_le_bytes());
    }
    (out, dirs)
}
