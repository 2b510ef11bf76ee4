//! Index files: which blobs each pack holds and where (JSON, sealed like any unpacked
//! file), and the in-memory index of a whole repository built from all of them. No I/O.

use std::collections::HashMap;

use hashbrown::HashTable;
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

/// One blob of an index file. Checked as it is parsed ([`BlobJson::try_from`]): an
/// entry no pack can hold is an error of its index file, named, when the index is
/// loaded, not a panic (or a length near 2^64) when the blob is read later.
#[derive(Serialize, Deserialize, Debug)]
#[serde(try_from = "RawBlobJson")]
pub struct BlobJson {
    pub id: Id,
    #[serde(rename = "type")]
    pub kind: BlobType,
    pub offset: u32,
    pub length: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_length: Option<u32>,
}

/// A [`BlobJson`] as written, before it is checked.
#[derive(Deserialize)]
struct RawBlobJson {
    id: Id,
    #[serde(rename = "type")]
    kind: BlobType,
    offset: u32,
    length: u32,
    #[serde(default)]
    uncompressed_length: Option<u32>,
}

impl TryFrom<RawBlobJson> for BlobJson {
    type Error = String;

    /// A sealed blob is at least its nonce and MAC ([`super::crypto::OVERHEAD`]
    /// bytes), and ends within 4 GiB of its pack's start (offsets are 32-bit).
    fn try_from(b: RawBlobJson) -> Result<BlobJson, String> {
        let overhead = super::crypto::OVERHEAD as u32;
        if b.length < overhead {
            return Err(format!(
                "blob {} has length {}, less than the {overhead} bytes of its encryption",
                b.id, b.length
            ));
        }
        if b.offset.checked_add(b.length).is_none() {
            return Err(format!(
                "blob {} at offset {} of length {} ends past 4 GiB",
                b.id, b.offset, b.length
            ));
        }
        Ok(BlobJson {
            id: b.id,
            kind: b.kind,
            offset: b.offset,
            length: b.length,
            uncompressed_length: b.uncompressed_length,
        })
    }
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

    /// Its blobs as pack entries (the inverse of [`PackJson::new`]).
    pub fn entries(&self) -> Vec<Entry> {
        self.blobs
            .iter()
            .map(|b| Entry {
                kind: b.kind,
                id: b.id,
                offset: b.offset,
                length: b.length,
                uncompressed_length: b.uncompressed_length,
            })
            .collect()
    }
}

/// Where a blob lives.
#[derive(Clone, Debug)]
pub struct Location {
    pub pack: Id,
    pub entry: Entry,
}

impl Location {
    /// The blob's plaintext length. (An index entry shorter than the encryption's
    /// overhead is refused as its file is parsed; one from a pack header gives 0.)
    pub fn plain_len(&self) -> u64 {
        match self.entry.uncompressed_length {
            Some(n) => n as u64,
            None => (self.entry.length as u64).saturating_sub(super::crypto::OVERHEAD as u64),
        }
    }
}

/// Every blob of the repository, by type and id. Compact, as it holds one entry per
/// blob of the whole repository (a million for a million small files): the pack is a
/// number into the pack table, the blob's place 16 bytes beside its id, in a
/// [`BlobMap`] (about 60 bytes per blob at the peak, where a `HashMap` took 150 while
/// it grew, and a `Location` per blob over 100). A blob stored in more than one pack
/// (two backups at once, an interrupted prune, `restic copy`) keeps its first place
/// inline and its other copies in a side table, so a reader whose pack is lost or
/// damaged finds another ([`Index::locations`]) and memory per blob does not grow.
#[derive(Default)]
pub struct Index {
    /// The packs, each once; a [`Slot`] names its pack by its place here.
    packs: Vec<Id>,
    pack_no: HashMap<Id, u32>,
    data: BlobMap,
    tree: BlobMap,
}

/// Entries per chunk of a [`BlobMap`] (a power of two): 3 MiB of entries each.
const CHUNK_BITS: u32 = 16;

/// Blob ids and their slots, found by id. The entries live in fixed chunks that never
/// move (a growing `Vec` would hold its old and new buffer at once), and the hash table
/// holds only each entry's 4-byte number. A `HashMap<Id, Slot>` of a million blobs takes
/// 103 MB of buckets and 154 MB while it doubles; this takes 48 MB of entries, 10.5 MB
/// of table and 5 MB more while that doubles. Ids are SHA-256 hashes, so their first
/// eight bytes are the hash.
#[derive(Default)]
struct BlobMap {
    table: HashTable<u32>,
    chunks: Vec<Vec<(Id, Slot)>>,
    len: usize,
    /// The other copies of the few blobs stored more than once, by entry number (the
    /// first copy is the entry's own slot). Empty, it holds no memory.
    extra: HashMap<u32, Vec<Slot>>,
}

fn id_hash(id: &Id) -> u64 {
    u64::from_le_bytes(id.0[..8].try_into().expect("eight bytes"))
}

/// Entry `n` of a [`BlobMap`]'s chunks.
fn entry_in(chunks: &[Vec<(Id, Slot)>], n: u32) -> &(Id, Slot) {
    &chunks[(n >> CHUNK_BITS) as usize][(n & ((1 << CHUNK_BITS) - 1)) as usize]
}

impl BlobMap {
    fn entry(&self, n: u32) -> &(Id, Slot) {
        entry_in(&self.chunks, n)
    }

    fn number(&self, id: &Id) -> Option<u32> {
        self.table
            .find(id_hash(id), |&n| self.entry(n).0 == *id)
            .copied()
    }

    fn get(&self, id: &Id) -> Option<&Slot> {
        self.number(id).map(|n| &self.entry(n).1)
    }

    /// Every place of `id`: the first, then the other copies in the order added.
    fn places(&self, id: &Id) -> impl Iterator<Item = Slot> + '_ {
        let n = self.number(id);
        let first = n.map(|n| self.entry(n).1);
        let others = n.and_then(|n| self.extra.get(&n)).into_iter().flatten();
        first.into_iter().chain(others.copied())
    }

    /// Adds `id`; a blob in the map already keeps its first place, and a new place of
    /// it (another pack, or another spot in one) is kept as another copy.
    fn insert(&mut self, id: Id, slot: Slot) {
        let Self {
            table,
            chunks,
            len,
            extra,
        } = self;
        if let Some(&n) = table.find(id_hash(&id), |&n| entry_in(chunks, n).0 == id) {
            if entry_in(chunks, n).1.same_place(&slot) {
                return;
            }
            let copies = extra.entry(n).or_default();
            if !copies.iter().any(|c| c.same_place(&slot)) {
                copies.push(slot);
            }
            return;
        }
        let n = u32::try_from(*len).expect("fewer than 2^32 blobs");
        table.insert_unique(id_hash(&id), n, |&m| id_hash(&entry_in(chunks, m).0));
        if chunks.last().is_none_or(|c| c.len() == 1 << CHUNK_BITS) {
            chunks.push(Vec::with_capacity(1 << CHUNK_BITS));
        }
        chunks.last_mut().expect("pushed").push((id, slot));
        *len += 1;
    }

    /// Every place of every blob: each blob's first, then the other copies.
    fn into_entries(self) -> impl Iterator<Item = (Id, Slot)> {
        let copies: Vec<(Id, Slot)> = self
            .extra
            .iter()
            .flat_map(|(&n, slots)| {
                let id = self.entry(n).0;
                slots.iter().map(move |s| (id, *s))
            })
            .collect();
        self.chunks.into_iter().flatten().chain(copies)
    }

    /// Bytes the map holds on the heap.
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(Id, Slot)>();
        self.table.allocation_size()
            + self
                .chunks
                .iter()
                .map(|c| c.capacity() * entry)
                .sum::<usize>()
            + self.chunks.capacity() * std::mem::size_of::<Vec<(Id, Slot)>>()
            + self.extra.capacity() * std::mem::size_of::<(u32, Vec<Slot>)>()
            + self
                .extra
                .values()
                .map(|v| v.capacity() * std::mem::size_of::<Slot>())
                .sum::<usize>()
    }
}

/// A blob's place: its pack's number, offset and sealed length in it, and its
/// plaintext length when compressed ([`NOT_COMPRESSED`] when not).
#[derive(Clone, Copy)]
struct Slot {
    pack: u32,
    offset: u32,
    length: u32,
    uncompressed: u32,
}

const NOT_COMPRESSED: u32 = u32::MAX;

impl Slot {
    fn new(pack: u32, offset: u32, length: u32, uncompressed_length: Option<u32>) -> Slot {
        Slot {
            pack,
            offset,
            length,
            uncompressed: uncompressed_length.unwrap_or(NOT_COMPRESSED),
        }
    }

    fn uncompressed_length(&self) -> Option<u32> {
        (self.uncompressed != NOT_COMPRESSED).then_some(self.uncompressed)
    }

    /// The same bytes of the same pack (one pack named by two index files).
    fn same_place(&self, o: &Slot) -> bool {
        (self.pack, self.offset, self.length) == (o.pack, o.offset, o.length)
    }
}

/// The id of a pack not written yet (no pack's SHA-256 is all zeros).
const UNWRITTEN: Id = Id([0; 32]);

impl Index {
    fn pack_number(&mut self, pack: Id) -> u32 {
        *self.pack_no.entry(pack).or_insert_with(|| {
            self.packs.push(pack);
            (self.packs.len() - 1) as u32
        })
    }

    fn insert(&mut self, kind: BlobType, id: Id, slot: Slot) {
        let map = match kind {
            BlobType::Data => &mut self.data,
            BlobType::Tree => &mut self.tree,
        };
        map.insert(id, slot);
    }

    /// A pack number for a pack not written yet (its id is the hash of all its bytes):
    /// its blobs can be added now, and [`Index::set_pack`] names it once written.
    pub fn unwritten_pack(&mut self) -> u32 {
        self.packs.push(UNWRITTEN);
        (self.packs.len() - 1) as u32
    }

    /// Names the pack `number` (from [`Index::unwritten_pack`]), now written.
    pub fn set_pack(&mut self, number: u32, id: Id) {
        self.packs[number as usize] = id;
        self.pack_no.insert(id, number);
    }

    /// Adds one blob of the pack `number`.
    pub fn add_entry(&mut self, number: u32, e: &Entry) {
        let slot = Slot::new(number, e.offset, e.length, e.uncompressed_length);
        self.insert(e.kind, e.id, slot);
    }

    /// Adds `other`'s blobs in written packs (those of packs never named by
    /// [`Index::set_pack`] are left out). Into an empty index, `other` is moved whole.
    pub fn absorb(&mut self, other: Index) {
        let all_written = !other.packs.contains(&UNWRITTEN);
        if self.packs.is_empty() && all_written {
            *self = other;
            return;
        }
        let numbers: Vec<Option<u32>> = other
            .packs
            .iter()
            .map(|id| (*id != UNWRITTEN).then(|| self.pack_number(*id)))
            .collect();
        for (kind, map) in [(BlobType::Data, other.data), (BlobType::Tree, other.tree)] {
            for (id, s) in map.into_entries() {
                if let Some(n) = numbers[s.pack as usize] {
                    self.insert(kind, id, Slot { pack: n, ..s });
                }
            }
        }
    }

    pub fn add_pack(&mut self, pack: Id, entries: &[Entry]) {
        let n = self.pack_number(pack);
        for e in entries {
            self.add_entry(n, e);
        }
    }

    pub fn add_file(&mut self, f: &IndexFile) {
        for p in &f.packs {
            let n = self.pack_number(p.id);
            for b in &p.blobs {
                let slot = Slot::new(n, b.offset, b.length, b.uncompressed_length);
                self.insert(b.kind, b.id, slot);
            }
        }
    }

    fn map(&self, kind: BlobType) -> &BlobMap {
        match kind {
            BlobType::Data => &self.data,
            BlobType::Tree => &self.tree,
        }
    }

    fn location(&self, kind: BlobType, id: &Id, s: &Slot) -> Location {
        Location {
            pack: self.packs[s.pack as usize],
            entry: Entry {
                kind,
                id: *id,
                offset: s.offset,
                length: s.length,
                uncompressed_length: s.uncompressed_length(),
            },
        }
    }

    /// Where the blob is (its first copy, when it has several).
    pub fn get(&self, kind: BlobType, id: &Id) -> Option<Location> {
        self.map(kind).get(id).map(|s| self.location(kind, id, s))
    }

    /// Every copy of the blob, the first (as [`Index::get`] gives it) first; empty when
    /// no index names it.
    pub fn locations(&self, kind: BlobType, id: &Id) -> Vec<Location> {
        self.map(kind)
            .places(id)
            .map(|s| self.location(kind, id, &s))
            .collect()
    }

    /// Where each pack's last indexed blob ends, by pack: in a pack the index
    /// describes whole its header (and the header's 4-byte length) follows, so
    /// `verify` reads a pack's header as the bytes from there to the pack's end (one
    /// small read, not a fixed tail of 64 KiB). Every copy of a blob counts.
    pub fn blob_ends(&self) -> HashMap<Id, u64> {
        let mut ends: HashMap<u32, u64> = HashMap::new();
        for m in [&self.data, &self.tree] {
            let firsts = m.chunks.iter().flatten().map(|(_, s)| *s);
            for s in firsts.chain(m.extra.values().flatten().copied()) {
                let end = ends.entry(s.pack).or_default();
                *end = (*end).max(s.offset as u64 + s.length as u64);
            }
        }
        ends.into_iter()
            .map(|(n, end)| (self.packs[n as usize], end))
            .collect()
    }

    pub fn contains(&self, kind: BlobType, id: &Id) -> bool {
        self.map(kind).get(id).is_some()
    }

    pub fn len(&self) -> usize {
        self.data.len + self.tree.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restic::crypto::Key;
    use crate::restic::pack::PackBuilder;

    /// The blob map finds every entry across chunks, keeps a blob's first place first
    /// and its other copies beside it (a place added again is no new copy), and takes
    /// at most 64 bytes per blob (a `HashMap<Id, Slot>` takes 103 at its load factor,
    /// and half as much again while it doubles).
    #[test]
    fn blob_map_is_compact_and_keeps_first_places() {
        let n = 250_000u32;
        let id = |i: u32| Id::hash(&i.to_le_bytes());
        let first = |i: u32| Slot::new(i % 7, i, i + 1, i.is_multiple_of(2).then_some(i));
        let mut m = BlobMap::default();
        for i in 0..n {
            m.insert(id(i), first(i));
        }
        let before = m.heap_bytes();
        // The same places again (a pack named by two index files): nothing new.
        for i in (0..n).step_by(3) {
            m.insert(id(i), first(i));
        }
        assert_eq!(m.heap_bytes(), before);
        assert!(m.extra.is_empty());
        // Other copies of a few blobs, one twice.
        let copies = (0..n).step_by(1000).count();
        for i in (0..n).step_by(1000) {
            m.insert(id(i), Slot::new(99, i, i + 1, None));
            m.insert(id(i), Slot::new(99, i, i + 1, None));
        }
        m.insert(id(0), Slot::new(98, 5, 6, None));
        assert_eq!(m.len, n as usize);
        let places =
            |i: u32| -> Vec<(u32, u32)> { m.places(&id(i)).map(|s| (s.pack, s.offset)).collect() };
        assert_eq!(places(0), vec![(0, 0), (99, 0), (98, 5)]);
        assert_eq!(places(2000), vec![(2000 % 7, 2000), (99, 2000)]);
        assert_eq!(places(2001), vec![(2001 % 7, 2001)]);
        assert!(places(n).is_empty());
        assert!(
            m.chunks.len() > 3,
            "more than one chunk: {}",
            m.chunks.len()
        );
        for i in 0..n {
            let s = m.get(&id(i)).unwrap_or_else(|| panic!("blob {i} found"));
            assert_eq!((s.pack, s.offset, s.length), (i % 7, i, i + 1));
            assert_eq!(s.uncompressed_length(), (i % 2 == 0).then_some(i));
        }
        assert!(m.get(&id(n)).is_none());
        let per_blob = m.heap_bytes() / n as usize;
        assert!(per_blob <= 64, "{per_blob} bytes per blob");
        let back: Vec<(Id, Slot)> = m.into_entries().collect();
        assert_eq!(back.len(), n as usize + copies + 1);
        assert_eq!(back[12_345].0, id(12_345));
        assert!(back[n as usize..].iter().all(|(_, s)| s.pack >= 98));
    }

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

    /// An entry shorter than a sealed blob's nonce and MAC, or ending past 4 GiB, is an
    /// error as the index file is parsed (`plain_len` subtracted the overhead from it
    /// later: a panic in a debug build, a length near 2^64 in a release build).
    #[test]
    fn an_entry_no_pack_can_hold_is_refused_as_it_is_parsed() {
        let json = |offset: u32, length: u32| {
            format!(
                r#"{{"packs":[{{"id":"{}","blobs":[{{"id":"{}","type":"data","offset":{offset},"length":{length}}}]}}]}}"#,
                Id::hash(b"pack"),
                Id::hash(b"blob")
            )
        };
        let parse = |offset, length| serde_json::from_str::<IndexFile>(&json(offset, length));
        let e = parse(0, 31).unwrap_err().to_string();
        assert!(
            e.contains(&format!("blob {} has length 31", Id::hash(b"blob"))),
            "{e}"
        );
        let e = parse(u32::MAX - 40, 41).unwrap_err().to_string();
        assert!(e.contains("ends past 4 GiB"), "{e}");
        let f = parse(7, 32).unwrap();
        let mut idx = Index::default();
        idx.add_file(&f);
        let loc = idx.get(BlobType::Data, &Id::hash(b"blob")).unwrap();
        assert_eq!(loc.plain_len(), 0);
    }
}
