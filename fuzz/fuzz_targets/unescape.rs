//! Fuzzes the `%XX` unescaping of names and paths (`relpath::unescape`,
//! `RelPath::from_escaped`), which reads every name in a manifest, a run record's
//! problem paths and `--path` arguments. Checks that whatever it accepts escapes and
//! reads back to the same bytes, and that it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapring::relpath::{RelPath, escape, unescape};

fuzz_target!(|data: &[u8]| {
    // Escaped text is read from text lines: the callers only ever pass `&str`.
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bytes) = unescape(s) {
        assert!(bytes.len() <= s.len(), "unescaping never grows the text");
        assert_eq!(unescape(&escape(&bytes)).as_deref(), Ok(&bytes[..]));
    }
    if let Ok(p) = RelPath::from_escaped(s) {
        assert_eq!(RelPath::from_escaped(&p.escaped()).as_ref(), Ok(&p));
    }
});
