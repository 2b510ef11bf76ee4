//! Text helpers of the dashboard: HTML escaping (every value from a config, the catalog
//! or a log goes through `esc`), percent-encoding of names in URLs and its decoding,
//! and human units (bytes, durations, ages). Pure.

use std::fmt::Write;

/// `s` escaped for HTML text and for quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` as one URL path segment: everything but unreserved characters percent-encoded.
pub fn url_seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes a percent-encoded path segment; `None` when it is malformed or not UTF-8.
pub fn url_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n;
    let mut u = 0;
    while v.abs() >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration in seconds as `850 ms`, `12.3 s`, `4m 05s`, `2h 10m`, `3d 4h`.
pub fn duration(s: f64) -> String {
    if s < 1.0 {
        return format!("{:.0} ms", s * 1e3);
    }
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let t = s.round() as u64;
    match t {
        0..3600 => format!("{}m {:02}s", t / 60, t % 60),
        3600..86400 => format!("{}h {:02}m", t / 3600, t % 3600 / 60),
        _ => format!("{}d {}h", t / 86400, t % 86400 / 3600),
    }
}

/// An RFC 3339 time shortened for a table, in UTC: `2026-12-01 07:10:33`. What is no
/// such time (a catalog edited by hand: an offset dropped) is `invalid`, not shown as
/// if it were one; another offset is taken to UTC (its digits were shown as UTC's).
pub fn when(t: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(t) => t
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => "invalid".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn url_segments_round_trip() {
        for s in ["home", "<script>alert(1)</script>", "a b/c%d", "ünï"] {
            let e = url_seg(s);
            assert!(!e.contains(['/', '<', ' ', '%']) || e.contains('%'), "{e}");
            assert_eq!(url_decode(&e).as_deref(), Some(s));
        }
        assert_eq!(url_decode("%zz"), None);
        assert_eq!(url_decode("%4"), None);
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(75.0), "1m 15s");
        assert_eq!(duration(7800.0), "2h 10m");
        assert_eq!(when("2026-12-01T07:10:33.123Z"), "2026-12-01 07:10:33");
        assert_eq!(when("2026-12-01T07:10:33.123+00:00"), "2026-12-01 07:10:33");
        // Edited by hand: another offset, none, nothing of a time.
        assert_eq!(when("2026-12-01T12:10:33+05:00"), "2026-12-01 07:10:33");
        for bad in ["2026-12-01T07:10:33", "2026-12-01", "", "yesterday"] {
            assert_eq!(when(bad), "invalid", "{bad:?}");
        }
    }
}
