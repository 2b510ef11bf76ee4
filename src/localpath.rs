//! Local paths (a source, a store, a restore's target, a log) in records: the text field
//! as before, and beside it the exact bytes when the path is not UTF-8. Pure; no I/O.
//!
//! JSON and SQLite text are UTF-8, and a directory name need not be (a Latin-1 tree on
//! an old NFS export). A path that is UTF-8 is written as it always was, one text field,
//! and read back as that text, never reinterpreted (a `%` in it is a `%`). A path that
//! is not is written twice: the text field lossily (U+FFFD for each invalid byte, for a
//! human reading the record) and a `<field>_raw` field holding its bytes (a JSON array
//! of numbers, a SQLite BLOB). A reader takes the raw field when there is one, else the
//! text: a record without one (every record written before) reads as it did.

use std::borrow::Cow;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// The text field of `p`: itself when it is UTF-8, else with U+FFFD for the bytes that
/// are not (for humans; [`raw`] holds the path).
pub fn text(p: &Path) -> Cow<'_, str> {
    p.to_string_lossy()
}

/// The raw field of `p`: its bytes when it is not UTF-8, else none (the text is exact).
pub fn raw(p: &Path) -> Option<&[u8]> {
    p.to_str().is_none().then(|| p.as_os_str().as_bytes())
}

/// The path a record's fields stand for: the raw bytes when given, else the text.
pub fn from_fields(text: &str, raw: Option<Vec<u8>>) -> PathBuf {
    match raw {
        Some(b) => OsString::from_vec(b).into(),
        None => PathBuf::from(text),
    }
}

/// A path that must be UTF-8 where it is going (a restic snapshot's `paths`, a JSON
/// string with no room for bytes beside it): `Err` with the first byte that is not.
pub fn utf8(p: &Path) -> Result<&str, String> {
    p.to_str().ok_or_else(|| {
        let b = p.as_os_str().as_bytes();
        let bad = b.utf8_chunks().find(|c| !c.invalid().is_empty());
        let byte = bad.map_or(0, |c| c.invalid()[0]);
        format!("its name has the byte \\x{byte:02X}, which is not UTF-8")
    })
}

/// Serializes a path as the map `{text: .., raw: ..}` (the raw entry only when the path
/// is not UTF-8), for a `#[serde(flatten, with = "...")]` field: see [`field!`].
pub fn serialize_fields<S: serde::Serializer>(
    p: Option<&Path>,
    names: [&'static str; 2],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(None)?;
    if let Some(p) = p {
        m.serialize_entry(names[0], &text(p))?;
        if let Some(b) = raw(p) {
            m.serialize_entry(names[1], b)?;
        }
    }
    m.end()
}

/// Reverses [`serialize_fields`]: none when neither entry is there.
pub fn deserialize_fields<'de, D: serde::Deserializer<'de>>(
    names: &'static [&'static str; 2],
    d: D,
) -> Result<Option<PathBuf>, D::Error> {
    struct V(&'static [&'static str; 2]);
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<PathBuf>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a path as {} (and {})", self.0[0], self.0[1])
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let (mut text, mut raw) = (None::<String>, None::<Vec<u8>>);
            while let Some(k) = m.next_key::<String>()? {
                if k == self.0[0] {
                    text = m.next_value::<Option<String>>()?;
                } else if k == self.0[1] {
                    raw = m.next_value()?;
                } else {
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(match (text, raw) {
                // none, or written `null`
                (None, None) => None,
                (t, r) => Some(from_fields(t.as_deref().unwrap_or_default(), r)),
            })
        }
    }
    d.deserialize_struct("path", names, V(names))
}

/// A module for `#[serde(flatten, with = "crate::localpath::NAME")]` on a `PathBuf`
/// field written as the text field `"text"` and, when not UTF-8, `"raw"` (and
/// `NAME::option` for an `Option<PathBuf>`, with neither written when none).
macro_rules! field {
    ($name:ident, $text:literal, $raw:literal) => {
        pub mod $name {
            use std::path::{Path, PathBuf};
            static NAMES: [&str; 2] = [$text, $raw];

            pub fn serialize<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
                super::serialize_fields(Some(p), NAMES, s)
            }

            pub fn deserialize<'de, D: serde::Deserializer<'de>>(
                d: D,
            ) -> Result<PathBuf, D::Error> {
                super::deserialize_fields(&NAMES, d)?
                    .ok_or_else(|| serde::de::Error::missing_field($text))
            }

            /// An `Option<PathBuf>` whose none is written `"text": null` (as serde's
            /// own writes it).
            pub mod nullable {
                use super::*;

                pub fn serialize<S: serde::Serializer>(
                    p: &Option<PathBuf>,
                    s: S,
                ) -> Result<S::Ok, S::Error> {
                    match p {
                        Some(p) => super::super::serialize_fields(Some(p), NAMES, s),
                        None => {
                            use serde::ser::SerializeMap;
                            let mut m = s.serialize_map(Some(1))?;
                            m.serialize_entry($text, &())?;
                            m.end()
                        }
                    }
                }

                pub use super::option::deserialize;
            }

            pub mod option {
                use super::*;

                pub fn serialize<S: serde::Serializer>(
                    p: &Option<PathBuf>,
                    s: S,
                ) -> Result<S::Ok, S::Error> {
                    super::super::serialize_fields(p.as_deref(), NAMES, s)
                }

                pub fn deserialize<'de, D: serde::Deserializer<'de>>(
                    d: D,
                ) -> Result<Option<PathBuf>, D::Error> {
                    super::super::deserialize_fields(&NAMES, d)
                }
            }
        }
    };
}

field!(source, "source", "source_raw");
field!(store, "store", "store_raw");
field!(to, "to", "to_raw");
field!(log, "log", "log_raw");
field!(record, "record", "record_raw");

/// `exclude_from` (a list of pattern files), for `#[serde(flatten, with = ...)]`: the
/// text list as before, and when any of them is not UTF-8, `exclude_from_raw`, the
/// bytes of every one of them in the same order (read instead of the text list).
pub mod exclude_from {
    use super::*;
    static NAMES: [&str; 2] = ["exclude_from", "exclude_from_raw"];

    pub fn serialize<S: serde::Serializer>(v: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        let texts: Vec<Cow<str>> = v.iter().map(|p| text(p)).collect();
        m.serialize_entry(NAMES[0], &texts)?;
        if v.iter().any(|p| raw(p).is_some()) {
            let raws: Vec<&[u8]> = v.iter().map(|p| p.as_os_str().as_bytes()).collect();
            m.serialize_entry(NAMES[1], &raws)?;
        }
        m.end()
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<PathBuf>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("exclude_from (and exclude_from_raw)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let (mut texts, mut raws) = (None::<Vec<String>>, None::<Vec<Vec<u8>>>);
                while let Some(k) = m.next_key::<String>()? {
                    if k == NAMES[0] {
                        texts = m.next_value()?;
                    } else if k == NAMES[1] {
                        raws = m.next_value()?;
                    } else {
                        m.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(match raws {
                    Some(r) => r
                        .into_iter()
                        .map(|b| OsString::from_vec(b).into())
                        .collect(),
                    None => texts
                        .unwrap_or_default()
                        .into_iter()
                        .map(PathBuf::from)
                        .collect(),
                })
            }
        }
        d.deserialize_struct("exclude_from", &NAMES, V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct R {
        id: u32,
        #[serde(flatten, with = "source")]
        source: PathBuf,
        #[serde(flatten, with = "log::option")]
        log: Option<PathBuf>,
        n: u32,
    }

    fn p(b: &[u8]) -> PathBuf {
        OsString::from_vec(b.to_vec()).into()
    }

    /// UTF-8 paths are written as before, one text field, and read back as written (a
    /// `%E9` stays those three characters); a path that is not UTF-8 gets its bytes
    /// beside the text, and reads back exactly.
    #[test]
    fn a_path_is_its_text_and_when_not_utf8_its_bytes_too() {
        let r = R {
            id: 1,
            source: p(b"/mnt/src%E9 caf\xc3\xa9"),
            log: None,
            n: 2,
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(j, r#"{"id":1,"source":"/mnt/src%E9 café","n":2}"#);
        assert_eq!(serde_json::from_str::<R>(&j).unwrap(), r);
        let r = R {
            id: 1,
            source: p(b"/mnt/caf\xe9"),
            log: Some(p(b"/l/\xff")),
            n: 2,
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"id":1,"source":"/mnt/caf\u{fffd}","source_raw":[47,109,110,116,47,99,97,102,233],"log":"/l/\u{fffd}","log_raw":[47,108,47,255],"n":2}"#
                .replace("\\u{fffd}", "\u{fffd}")
        );
        assert_eq!(serde_json::from_str::<R>(&j).unwrap(), r);
        // An old record: the text alone, read as it is.
        let old: R = serde_json::from_str(r#"{"id":1,"source":"/mnt/src%E9","n":2}"#).unwrap();
        assert_eq!(old.source, p(b"/mnt/src%E9"));
        assert!(serde_json::from_str::<R>(r#"{"id":1,"n":2}"#).is_err());
    }
}
