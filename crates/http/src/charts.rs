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
    close_chart(&mut svg, max, unit, "nothing in the last 24 hours");
    svg
}

/// Ends a chart: the largest value (the top of the scale) at the top left, or, for a chart
/// with nothing to show, what that means, in the middle.
fn close_chart(svg: &mut String, max: f64, unit: &str, empty: &str) {
    if max <= 0.0 {
        let _ = write!(
            svg,
            r#"<text class="tick" x="{:.1}" y="{}">{}</text>"#,
            W / 2.0 - empty.len() as f64 * 3.0,
            (H - AXIS) / 2.0,
            escape(empty)
        );
    } else {
        let _ = write!(
            svg,
            r#"<text class="tick" x="2" y="10">{} {}</text>"#,
            format_value((max * 10.0).round() / 10.0),
            escape(unit)
        );
    }
    svg.push_str("</svg>");
}

/// Series a line chart tells apart by class (`series-0` .. `series-7` in the stylesheet).
pub const MAX_SERIES: usize = 8;

/// A line chart: one line per series over the same x labels (`None`: no point there), each
/// point with a tooltip; the legend lists the series in their colours.
pub fn lines(
    id: &str,
    labels: &[String],
    series: &[(String, Vec<Option<f64>>)],
    unit: &str,
) -> String {
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .copied()
        .fold(0.0_f64, f64::max);
    let plot = H - AXIS;
    let step = W / labels.len().max(1) as f64;
    let x = |i: usize| i as f64 * step + step / 2.0;
    let y = |v: f64| {
        plot - 2.0
            - if max > 0.0 {
                v / max * (plot - 12.0)
            } else {
                0.0
            }
    };
    let mut svg = format!(
        r#"<svg class="chart lines" id="{}" viewBox="0 0 {W} {H}" role="img" preserveAspectRatio="none">"#,
        escape(id)
    );
    let _ = write!(
        svg,
        r#"<line class="axis" x1="0" y1="{plot}" x2="{W}" y2="{plot}"/>"#
    );
    for (k, (name, values)) in series.iter().take(MAX_SERIES).enumerate() {
        // A line through consecutive points; a gap (a run without the task) breaks it.
        let mut d = String::new();
        let mut pen_down = false;
        for (i, v) in values.iter().enumerate() {
            match v {
                Some(v) => {
                    let _ = write!(
                        d,
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        x(i),
                        y(*v)
                    );
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        let _ = write!(
            svg,
            r#"<path class="series series-{k}" d="{}"><title>{}</title></path>"#,
            d.trim_end(),
            escape(name)
        );
        for (i, v) in values.iter().enumerate() {
            let Some(v) = v else { continue };
            let _ = write!(
                svg,
                r#"<circle class="series series-{k}" cx="{:.1}" cy="{:.1}" r="2.5"><title>{} · {}: {} {}</title></circle>"#,
                x(i),
                y(*v),
                escape(name),
                escape(labels.get(i).map_or("", String::as_str)),
                format_value((*v * 10.0).round() / 10.0),
                escape(unit)
            );
        }
    }
    close_chart(&mut svg, max, unit, "no finished task yet");
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

    #[test]
    fn lines_break_at_gaps_and_scale_to_the_largest() {
        let labels = vec!["r1".to_owned(), "r2".to_owned(), "r3".to_owned()];
        let series = vec![
            ("<extract>".to_owned(), vec![Some(1.0), None, Some(4.0)]),
            ("load".to_owned(), vec![Some(2.0), Some(2.0), Some(2.0)]),
        ];
        let svg = lines("t", &labels, &series, "s");
        assert!(svg.contains("&lt;extract&gt; · r3: 4 s"), "{svg}");
        assert!(!svg.contains("<extract>"));
        // The gap starts a new line: two moves in the first series' path.
        let first = svg.split("series-0\" d=\"").nth(1).unwrap();
        let path = &first[..first.find('"').unwrap()];
        assert_eq!(path.matches('M').count(), 2, "{path}");
        // The largest value sits 10 units below the top of the plot.
        assert!(svg.contains(r#"cy="10.0""#), "{svg}");
        assert!(lines("e", &labels, &[], "s").contains("no finished task yet"));
    }
}
