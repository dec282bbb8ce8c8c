//! Small SVG charts drawn on the server: numbers in, markup out, so the
//! overview needs no charting script and works offline. Only numbers reach
//! the markup, which is why it can be inserted unescaped.

use std::fmt::Write;

const WIDTH: f64 = 360.0;
const HEIGHT: f64 = 64.0;

/// Bars of `values` (oldest first), scaled to the largest; `label` is the
/// chart's accessible name.
pub fn bars(values: &[i64], label: &str) -> String {
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let n = values.len().max(1) as f64;
    let step = WIDTH / n;
    let mut svg = open(label);
    for (i, v) in values.iter().enumerate() {
        let h = (*v.max(&0) as f64 / max) * (HEIGHT - 4.0);
        let _ = write!(
            svg,
            r#"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"><title>{v}</title></rect>"#,
            i as f64 * step,
            HEIGHT - h,
            (step - 1.0).max(1.0),
            h
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A line through `points` (x = epoch ms, y = value), with the x range `from..to`.
pub fn line(points: &[(i64, i64)], from: i64, to: i64, label: &str) -> String {
    let max = points.iter().map(|p| p.1).max().unwrap_or(0).max(1) as f64;
    let span = (to - from).max(1) as f64;
    let mut svg = open(label);
    if !points.is_empty() {
        let coords: Vec<String> = points
            .iter()
            .map(|(x, y)| {
                format!(
                    "{:.1},{:.1}",
                    ((x - from) as f64 / span).clamp(0.0, 1.0) * WIDTH,
                    HEIGHT - 2.0 - (*y.max(&0) as f64 / max) * (HEIGHT - 4.0)
                )
            })
            .collect();
        let _ = write!(
            svg,
            r#"<polyline class="line" points="{}"/>"#,
            coords.join(" ")
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A horizontal gauge: `part` of `whole`.
pub fn gauge(part: i64, whole: i64, label: &str) -> String {
    let ratio = if whole > 0 {
        (part.max(0) as f64 / whole as f64).clamp(0.0, 1.0)
    } else {
        0.0
    };
    format!(
        r#"<svg class="gauge" viewBox="0 0 {WIDTH} 14" role="img" aria-label="{}"><rect class="track" x="0" y="0" width="{WIDTH}" height="14"/><rect class="fill" x="0" y="0" width="{:.1}" height="14"/></svg>"#,
        attr(label),
        ratio * WIDTH
    )
}

fn open(label: &str) -> String {
    format!(
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" role="img" aria-label="{}">"#,
        attr(label)
    )
}

/// Labels are ours, but escaped anyway: a target's name comes from YAML.
fn attr(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_plain_svg() {
        let b = bars(&[0, 5, 10], "calls <per> minute");
        assert!(b.starts_with("<svg") && b.ends_with("</svg>"));
        assert!(b.contains("calls &lt;per&gt; minute"));
        assert_eq!(b.matches("<rect").count(), 3);
        let l = line(&[(0, 1), (50, 3)], 0, 100, "depth");
        assert!(l.contains("polyline"));
        assert!(gauge(5, 10, "budget").contains("width=\"180.0\""));
    }
}
