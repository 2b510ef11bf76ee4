//! Index files: which blobs each pack holds and where (JSON, sealed like any unpacked
//! file), and the in-memory index of a whole repository built from all of them. No I/O.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Id;
use super::pack::{BlobType, Entry};

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct IndexFile {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<Id>,
    pub packs: Vec<PackJson>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct PackJson {
    pub id: Id,
    pub blobs: Vec<BlobJson>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct BlobJson {
    pub id: Id,
    #[serde(rename = "type")]
    pub kind: BlobType,
    pub offset: u32,
    pub length: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_length: Option<u32>,
}

impl PackJson {
    pub fn new(id: Id, entries: &[Entry]) -> PackJson {
        PackJson {
            id,
            blobs: entries
                .iter()
                .map(|e| BlobJson {
                    id: e.id,
                    kind: e.kind,
                    offset: e.offset,
                    length: e.length,
                    uncompressed_length: e.uncompressed_length,
                })
                .collect(),
        }
    }
}

/// Where a blob lives.
#[derive(Clone, Debug)]
pub struct Location {
    pub pack: Id,
    pub entry: Entry,
}

impl Location {
    /// The blob's plaintext length.
    pub fn plain_len(&self) -> u64 {
        match self.entry.uncompressed_length {
            Some(n) => n as u64,
            None => self.entry.length as u64 - super::crypto::OVERHEAD as u64,
        }
    }
}

/// Every blob of the repository, by type and id.
#[derive(Default)]
pub struct Index {
    map: HashMap<(BlobType, Id), Location>,
}

impl Index {
    pub fn add_pack(&mut self, pack: Id, entries: &[Entry]) {
        for e in entries {
            self.map.entry((e.kind, e.id)).or_insert(Location {
                pack,
                entry: e.clone(),
            });
        }
    }

    pub fn add_file(&mut self, f: &IndexFile) {
        for p in &f.packs {
            for b in &p.blobs {
                let entry = Entry {
                    kind: b.kind,
                    id: b.id,
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed_length,
                };
                self.map
                    .entry((b.kind, b.id))
                    .or_insert(Location { pack: p.id, entry });
            }
        }
    }

    pub fn get(&self, kind: BlobType, id: &Id) -> Option<&Location> {
        self.map.get(&(kind, *id))
    }

    pub fn contains(&self, kind: BlobType, id: &Id) -> bool {
        self.map.contains_key(&(kind, *id))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restic::crypto::Key;
    use crate::restic::pack::PackBuilder;

    #[test]
    fn index_json_round_trip() {
        let key = Key::random();
        let mut b = PackBuilder::default();
        b.add(&key, BlobType::Tree, Id::hash(b"{}"), b"{}");
        b.add(&key, BlobType::Tree, Id::hash(&[b'x'; 900]), &[b'x'; 900]);
        let (pid, _, entries) = b.finish(&key);
        let f = IndexFile {
            supersedes: vec![],
            packs: vec![PackJson::new(pid, &entries)],
        };
        let json = serde_json::to_string(&f).unwrap();
        assert!(json.contains("\"type\":\"tree\"") && json.contains("uncompressed_length"));
        assert!(!json.contains("supersedes"));
        let back: IndexFile = serde_json::from_str(&json).unwrap();
        let mut idx = Index::default();
        idx.add_file(&back);
        assert_eq!(idx.len(), 2);
        let loc = idx.get(BlobType::Tree, &Id::hash(&[b'x'; 900])).unwrap();
        assert_eq!(loc.pack, pid);
        assert_eq!(loc.entry, entries[1]);
        assert_eq!(loc.plain_len(), 900);
        assert_eq!(idx.get(BlobType::Data, &Id::hash(b"{}")).map(|_| ()), None);
    }
}
