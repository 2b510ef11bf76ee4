//! Tree blobs: a directory's entries (`nodes`, sorted by name) as restic writes them —
//! Go's `fs.FileMode` bits, RFC 3339 times, names quoted as Go's `strconv.Quote` does
//! (so any byte string survives; names restic 0.14 wrote unquoted are read as they
//! are), a symlink target that is not UTF-8 in `linktarget_raw`. JSON bytes close to
//! Go's `encoding/json` (HTML characters escaped, a final newline). No I/O.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::{Id, Result, corrupt};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExtendedAttribute {
    pub name: String,
    /// Base64, as Go writes a byte slice.
    pub value: String,
}

/// One entry of a tree, field for field as restic's `Node`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// Quoted (`encode_name`); `name_bytes` gives the real name.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub mode: u32,
    #[serde(default)]
    pub mtime: String,
    #[serde(default)]
    pub atime: String,
    #[serde(default)]
    pub ctime: String,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inode: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub device_id: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub links: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub linktarget: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linktarget_raw: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extended_attributes: Vec<ExtendedAttribute>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub device: u64,
    pub content: Option<Vec<Id>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}
fn is_zero32(x: &u32) -> bool {
    *x == 0
}

#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Node {
    pub fn name_bytes(&self) -> Vec<u8> {
        decode_name(&self.name)
    }

    pub fn link_target_bytes(&self) -> Result<Vec<u8>> {
        match &self.linktarget_raw {
            Some(raw) => B64
                .decode(raw)
                .map_err(|e| corrupt(format!("linktarget_raw of {:?}", self.name), e)),
            None => Ok(self.linktarget.as_bytes().to_vec()),
        }
    }

    pub fn set_link_target(&mut self, t: &[u8]) {
        match std::str::from_utf8(t) {
            Ok(s) => self.linktarget = s.to_string(),
            Err(_) => {
                self.linktarget = String::from_utf8_lossy(t).into_owned();
                self.linktarget_raw = Some(B64.encode(t));
            }
        }
    }
}

impl Tree {
    /// The blob's bytes: nodes sorted by name, Go-style JSON and a newline.
    pub fn to_blob(mut self) -> Vec<u8> {
        self.nodes.sort_by_key(|n| n.name_bytes());
        let json = serde_json::to_string(&self).expect("tree serialises");
        let mut out = go_escape(&json).into_bytes();
        out.push(b'\n');
        out
    }

    pub fn from_blob(b: &[u8], id: &Id) -> Result<Tree> {
        serde_json::from_slice(b).map_err(|e| corrupt(format!("tree {id}"), e))
    }
}

/// Escapes what Go's `encoding/json` escapes and serde_json does not. These characters
/// only occur inside strings, so a replacement over the whole document is safe.
fn go_escape(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Go's `strconv.Quote` without the surrounding quotes: `\` and `"` escaped, control
/// characters and bytes that are not UTF-8 as `\a \b \f \n \r \t \v` or `\xNN`.
/// (Go also escapes printable-looking format characters such as U+200B; those are kept
/// here, which Go's unquoting reads back the same.)
pub fn encode_name(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\x0c' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\x0b' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c == '\x7f' => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The bytes of a name `encode_name` wrote; a name that does not unquote (restic 0.14
/// did not quote) is taken as it is.
pub fn decode_name(s: &str) -> Vec<u8> {
    unquote(s).unwrap_or_else(|| s.as_bytes().to_vec())
}

fn unquote(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => return None,
            b'\\' => {
                let (bytes, used) = unescape(&b[i + 1..])?;
                out.extend_from_slice(&bytes);
                i += 1 + used;
            }
            x => {
                out.push(x);
                i += 1;
            }
        }
    }
    Some(out)
}

/// One escape after a backslash: its bytes and how many input bytes it used.
fn unescape(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let hex = |n: usize| -> Option<u32> {
        let s = std::str::from_utf8(b.get(1..1 + n)?).ok()?;
        u32::from_str_radix(s, 16).ok()
    };
    let simple = |c: u8| Some((vec![c], 1));
    match *b.first()? {
        b'a' => simple(7),
        b'b' => simple(8),
        b'f' => simple(12),
        b'n' => simple(b'\n'),
        b'r' => simple(b'\r'),
        b't' => simple(b'\t'),
        b'v' => simple(11),
        b'\\' => simple(b'\\'),
        b'"' => simple(b'"'),
        b'\'' => simple(b'\''),
        b'x' => Some((vec![hex(2)? as u8], 3)),
        b'u' => Some((char::from_u32(hex(4)?)?.to_string().into_bytes(), 5)),
        b'U' => Some((char::from_u32(hex(8)?)?.to_string().into_bytes(), 9)),
        b'0'..=b'7' => {
            let s = std::str::from_utf8(b.get(..3)?).ok()?;
            Some((vec![u8::from_str_radix(s, 8).ok()?], 3))
        }
        _ => None,
    }
}

// Go's fs.FileMode bits.
const GO_DIR: u32 = 1 << 31;
const GO_SYMLINK: u32 = 1 << 27;
const GO_DEVICE: u32 = 1 << 26;
const GO_PIPE: u32 = 1 << 25;
const GO_SOCKET: u32 = 1 << 24;
const GO_SETUID: u32 = 1 << 23;
const GO_SETGID: u32 = 1 << 22;
const GO_CHARDEV: u32 = 1 << 21;
const GO_STICKY: u32 = 1 << 20;

/// restic's node type and Go mode from a Unix `st_mode`.
pub fn go_mode(st_mode: u32) -> (&'static str, u32) {
    let mut m = st_mode & 0o777;
    if st_mode & 0o4000 != 0 {
        m |= GO_SETUID;
    }
    if st_mode & 0o2000 != 0 {
        m |= GO_SETGID;
    }
    if st_mode & 0o1000 != 0 {
        m |= GO_STICKY;
    }
    match st_mode & 0o170000 {
        0o040000 => ("dir", m | GO_DIR),
        0o120000 => ("symlink", m | GO_SYMLINK),
        0o060000 => ("dev", m | GO_DEVICE),
        0o020000 => ("chardev", m | GO_DEVICE | GO_CHARDEV),
        0o010000 => ("fifo", m | GO_PIPE),
        0o140000 => ("socket", m | GO_SOCKET),
        _ => ("file", m),
    }
}

/// The Unix permission bits (with setuid, setgid, sticky) of a Go mode.
pub fn unix_perm(go: u32) -> u32 {
    let mut m = go & 0o777;
    if go & GO_SETUID != 0 {
        m |= 0o4000;
    }
    if go & GO_SETGID != 0 {
        m |= 0o2000;
    }
    if go & GO_STICKY != 0 {
        m |= 0o1000;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_quoting() {
        let names: [&[u8]; 7] = [
            b"plain.txt",
            b"with \"quote\" and \\",
            b"new\nline\ttab",
            b"\xff\xfebad utf8",
            "caf\u{e9} \u{1f600}".as_bytes(),
            b"<html>&",
            b"\x01\x7f",
        ];
        for n in names {
            let q = encode_name(n);
            assert_eq!(decode_name(&q), n, "{q}");
        }
        assert_eq!(encode_name(b"a\"b"), "a\\\"b");
        assert_eq!(encode_name(b"\xff"), "\\xff");
        // A name written unquoted by restic 0.14 is read as it is.
        assert_eq!(decode_name("a\"b"), b"a\"b");
    }

    #[test]
    fn modes_map_both_ways() {
        assert_eq!(go_mode(0o100644), ("file", 0o644));
        assert_eq!(go_mode(0o040755), ("dir", 0o755 | (1 << 31)));
        assert_eq!(go_mode(0o120777), ("symlink", 134218239));
        assert_eq!(unix_perm(go_mode(0o104755).1), 0o4755);
        assert_eq!(unix_perm(go_mode(0o041777).1), 0o1777);
    }

    #[test]
    fn tree_blob_is_sorted_go_json() {
        let mk = |n: &str| Node {
            name: n.into(),
            kind: "file".into(),
            content: Some(vec![]),
            ..Default::default()
        };
        let t = Tree {
            nodes: vec![mk("b&"), mk("a")],
        };
        let blob = t.to_blob();
        let s = String::from_utf8(blob.clone()).unwrap();
        assert!(s.starts_with("{\"nodes\":[{\"name\":\"a\""), "{s}");
        assert!(s.contains("b\\u0026") && s.ends_with("}\n"), "{s}");
        let back = Tree::from_blob(&blob, &Id::hash(&blob)).unwrap();
        assert_eq!(back.nodes[1].name, "b&");
    }
}
