//! SVG charts drawn on the server as plain polylines (no chart library, no script): a
//! sparkline for the overview and a time chart with axes, labels and one marked point
//! per run (with a `<title>` tooltip) for a job's page. Pure.

use std::fmt::Write;

use super::text::esc;

/// A sparkline of `values` (oldest first), `w`×`h` pixels; empty without values.
pub fn sparkline(values: &[f64], w: f64, h: f64) -> String {
    if values.is_empty() {
        return String::new();
    }
    let max = values
        .iter()
        .cloned()
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let step = if values.len() > 1 {
        (w - 2.0) / (values.len() - 1) as f64
    } else {
        0.0
    };
    if values.len() == 1 {
        // One run: a dot, not an invisible one-point line.
        return format!(
            r##"<svg class="spark" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="durations"><circle cx="2" cy="{:.1}" r="2" fill="#3b6ea8"/></svg>"##,
            h / 2.0
        );
    }
    let mut pts = String::new();
    for (i, v) in values.iter().enumerate() {
        let x = 1.0 + i as f64 * step;
        let y = h - 1.0 - (v / max) * (h - 2.0);
        let _ = write!(pts, "{x:.1},{y:.1} ");
    }
    format!(
        r##"<svg class="spark" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="durations"><polyline fill="none" stroke="#3b6ea8" stroke-width="1.5" points="{}"/></svg>"##,
        pts.trim_end()
    )
}

/// One point of a time chart: seconds since the epoch, the value, and its tooltip.
pub struct Point {
    pub t: f64,
    pub v: f64,
    pub tip: String,
}

const W: f64 = 640.0;
const H: f64 = 180.0;
/// Left margin (y labels), right, top, bottom (x labels).
const ML: f64 = 70.0;
const MR: f64 = 10.0;
const MT: f64 = 22.0;
const MB: f64 = 24.0;

/// A chart of `points` (oldest first) over time, titled `title`, with y labels made by
/// `label`. Each point is a `<circle class="pt">`; the line joins them.
pub fn chart(title: &str, points: &[Point], label: &dyn Fn(f64) -> String) -> String {
    let mut s = format!(
        r#"<svg class="chart" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{t}"><text x="{ML}" y="15" class="title">{t}</text>"#,
        t = esc(title)
    );
    if points.is_empty() {
        s.push_str(r#"<text x="300" y="100">no runs</text></svg>"#);
        return s;
    }
    let (t0, t1) = span(points.iter().map(|p| p.t));
    let vmax = points.iter().map(|p| p.v).fold(0.0_f64, f64::max);
    let vmax = if vmax > 0.0 { vmax } else { 1.0 };
    let x = |t: f64| ML + (t - t0) / (t1 - t0) * (W - ML - MR);
    let y = |v: f64| H - MB - v / vmax * (H - MT - MB);
    axes(&mut s, vmax, t0, t1, label);
    let line: Vec<String> = points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.t), y(p.v)))
        .collect();
    let _ = write!(
        s,
        r##"<polyline fill="none" stroke="#3b6ea8" stroke-width="1.5" points="{}"/>"##,
        line.join(" ")
    );
    for p in points {
        let _ = write!(
            s,
            r##"<circle class="pt" cx="{:.1}" cy="{:.1}" r="2.5" fill="#3b6ea8"><title>{}</title></circle>"##,
            x(p.t),
            y(p.v),
            esc(&p.tip)
        );
    }
    s.push_str("</svg>");
    s
}

/// The frame, the y labels (0 and the maximum) and the x labels (first and last day).
fn axes(s: &mut String, vmax: f64, t0: f64, t1: f64, label: &dyn Fn(f64) -> String) {
    // Seconds only matter on a chart spanning less than an hour.
    let fmt = if t1 - t0 < 3600.0 {
        "%Y-%m-%d %H:%M:%S"
    } else {
        "%Y-%m-%d %H:%M"
    };
    let day = |t: f64| {
        chrono::DateTime::from_timestamp(t as i64, 0)
            .map(|d| d.format(fmt).to_string())
            .unwrap_or_default()
    };
    let _ = write!(
        s,
        r##"<line x1="{ML}" y1="{MT}" x2="{ML}" y2="{b}" stroke="#999"/><line x1="{ML}" y1="{b}" x2="{r}" y2="{b}" stroke="#999"/><text x="{lx}" y="{ty}" text-anchor="end">{top}</text><text x="{lx}" y="{b}" text-anchor="end">{zero}</text><text x="{ML}" y="{xl}">{d0}</text><text x="{r}" y="{xl}" text-anchor="end">{d1}</text>"##,
        b = H - MB,
        r = W - MR,
        lx = ML - 4.0,
        ty = MT + 4.0,
        xl = H - 6.0,
        top = esc(&label(vmax)),
        zero = esc(&label(0.0)),
        d0 = day(t0),
        d1 = day(t1),
    );
}

/// The range of `ts`, widened to a second when all are equal.
fn span(ts: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = ts.fold((f64::MAX, f64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    if hi - lo < 1.0 {
        (lo - 0.5, lo + 0.5)
    } else {
        (lo, hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_one_marked_point_per_value_and_escapes_its_text() {
        let pts: Vec<Point> = (0..5)
            .map(|i| Point {
                t: 1e9 + i as f64 * 3600.0,
                v: i as f64,
                tip: format!("<run {i}>"),
            })
            .collect();
        let s = chart("a <b>", &pts, &|v| format!("{v}"));
        assert_eq!(s.matches("<circle").count(), 5);
        assert!(s.contains("a &lt;b&gt;") && s.contains("&lt;run 4&gt;"));
        assert!(!s.contains("<b>") && !s.contains("NaN"), "{s}");
        let one = chart("t", &pts[..1], &|v| format!("{v}"));
        assert!(!one.contains("NaN") && one.contains("<circle"), "{one}");
        assert!(sparkline(&[0.0, 0.0], 80.0, 20.0).contains("<polyline"));
        assert!(!sparkline(&[0.0, 0.0], 80.0, 20.0).contains("NaN"));
    }
}
