//! Charts drawn on the server as inline SVG (no script, no CDN, nothing inline for the CSP
//! to refuse): colours come from the stylesheet's state classes.

use std::fmt::Write as _;

/// Width and height of a chart's drawing (CSS scales it to the page).
const W: f64 = 720.0;
const H: f64 = 140.0;
/// Room at the bottom for the hour labels.
const AXIS: f64 = 16.0;

/// One bar: its label (shown under every sixth bar and in the tooltip) and its stacked parts,
/// `(state, value)`, bottom first.
pub struct Bar {
    pub label: String,
    pub parts: Vec<(String, f64)>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A stacked bar chart; `unit` follows each value in the tooltips. Empty bars still take
/// their place, so the hours line up between charts.
pub fn stacked_bars(id: &str, bars: &[Bar], unit: &str) -> String {
    let max = bars
        .iter()
        .map(|b| b.parts.iter().map(|(_, v)| v).sum::<f64>())
        .fold(0.0_f64, f64::max);
    let slot = W / bars.len().max(1) as f64;
    let mut svg = format!(
        r#"<svg class="chart" id="{}" viewBox="0 0 {W} {H}" role="img" preserveAspectRatio="none">"#,
        escape(id)
    );
    let plot = H - AXIS;
    let _ = write!(
        svg,
        r#"<line class="axis" x1="0" y1="{plot}" x2="{W}" y2="{plot}"/>"#
    );
    for (i, bar) in bars.iter().enumerate() {
        let x = i as f64 * slot + slot * 0.1;
        let mut y = plot;
        for (state, value) in &bar.parts {
            if *value <= 0.0 || max <= 0.0 {
                continue;
            }
            let h = value / max * (plot - 4.0);
            y -= h;
            let _ = write!(
                svg,
                r#"<rect class="bar st-{}" x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}"><title>{} {}: {} {}</title></rect>"#,
                escape(state),
                slot * 0.8,
                escape(&bar.label),
                escape(state),
                format_value(*value),
                escape(unit)
            );
        }
        if i % 6 == 0 {
            let _ = write!(
                svg,
                r#"<text class="tick" x="{x:.1}" y="{}">{}</text>"#,
                H - 3.0,
                escape(&bar.label)
            );
        }
    }
    if max <= 0.0 {
        let _ = write!(
            svg,
            r#"<text class="tick" x="{}" y="{}">nothing in the last 24 hours</text>"#,
            W / 2.0 - 80.0,
            plot / 2.0
        );
    } else {
        let _ = write!(
            svg,
            r#"<text class="tick" x="2" y="10">{} {}</text>"#,
            format_value(max),
            escape(unit)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_escape_labels() {
        let bars = vec![
            Bar {
                label: "<b>".into(),
                parts: vec![("success".into(), 2.0), ("failed".into(), 2.0)],
            },
            Bar {
                label: "b".into(),
                parts: vec![("success".into(), 1.0)],
            },
        ];
        let svg = stacked_bars("c", &bars, "runs");
        assert!(svg.contains("&lt;b&gt; failed: 2 runs"), "{svg}");
        assert!(!svg.contains("<b>"));
        // The tallest stack fills the plot; the other is a quarter of it.
        assert!(
            svg.contains(r#"height="60.0""#) && svg.contains(r#"height="30.0""#),
            "{svg}"
        );
        let empty = stacked_bars("e", &[], "runs");
        assert!(empty.contains("nothing in the last 24 hours"));
    }
}
