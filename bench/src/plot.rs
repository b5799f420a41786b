//! Minimal SVG line charts for the result files: a latency CDF and
//! throughput against offered rate. Plain SVG, no dependencies, readable in
//! any browser and on GitHub.

use hdrhistogram::Histogram;
use std::fmt::Write;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 180.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Percentile (y, 0-100) against latency in ms (x, log scale) per series.
pub fn latency_cdf(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    let series: Vec<Series> = series
        .iter()
        .map(|(name, histogram)| Series {
            name: (*name).to_owned(),
            points: histogram
                .iter_quantiles(4)
                .map(|v| {
                    (
                        (v.value_iterated_to() as f64 / 1000.0).max(0.001),
                        v.quantile_iterated_to() * 100.0,
                    )
                })
                .collect(),
        })
        .collect();
    line_chart(
        title,
        "latency (ms, log scale)",
        "percentile",
        &series,
        true,
    )
}

/// A line chart; `log_x` puts x on a base-10 log scale.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
) -> String {
    let tx = |x: f64| if log_x { x.max(1e-3).log10() } else { x };
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (mut x_min, mut x_max) = (f64::MAX, f64::MIN);
    let (mut y_min, mut y_max) = (0.0f64, f64::MIN);
    for &(x, y) in all() {
        x_min = x_min.min(tx(x));
        x_max = x_max.max(tx(x));
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if x_min >= x_max {
        x_max = x_min + 1.0;
    }
    if y_min >= y_max {
        y_max = y_min + 1.0;
    }
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let px = |x: f64| MARGIN_LEFT + (tx(x) - x_min) / (x_max - x_min) * plot_w;
    let py = |y: f64| MARGIN_TOP + plot_h - (y - y_min) / (y_max - y_min) * plot_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        svg,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        MARGIN_LEFT + plot_w / 2.0,
        escape(title)
    );
    // Axes with five ticks each.
    let _ = write!(
        svg,
        r#"<path d="M{l},{t} V{b} H{r}" stroke="black" fill="none"/>"#,
        l = MARGIN_LEFT,
        t = MARGIN_TOP,
        b = MARGIN_TOP + plot_h,
        r = MARGIN_LEFT + plot_w
    );
    for i in 0..=4 {
        let fraction = f64::from(i) / 4.0;
        let xv = x_min + fraction * (x_max - x_min);
        let x_value = if log_x { 10f64.powf(xv) } else { xv };
        let x = MARGIN_LEFT + fraction * plot_w;
        let bottom = MARGIN_TOP + plot_h;
        grid_line(
            &mut svg,
            [(x, MARGIN_TOP), (x, bottom)],
            (x, bottom + 16.0, "middle"),
            x_value,
        );
        let yv = y_min + fraction * (y_max - y_min);
        let y = py(yv);
        grid_line(
            &mut svg,
            [(MARGIN_LEFT, y), (MARGIN_LEFT + plot_w, y)],
            (MARGIN_LEFT - 6.0, y + 4.0, "end"),
            yv,
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        MARGIN_LEFT + plot_w / 2.0,
        HEIGHT - 12.0,
        escape(x_label)
    );
    let _ = write!(
        svg,
        r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        MARGIN_TOP + plot_h / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for &(x, y) in &s.points {
            if s.points.len() <= 30 {
                let _ = write!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    px(x),
                    py(y)
                );
            }
        }
        let ly = MARGIN_TOP + 10.0 + 18.0 * i as f64;
        let lx = MARGIN_LEFT + plot_w + 12.0;
        let _ = write!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 18.0,
            lx + 24.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn short(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A grid line from `ends[0]` to `ends[1]` and its axis label `value` at
/// `(x, y, text-anchor)`.
fn grid_line(svg: &mut String, ends: [(f64, f64); 2], label: (f64, f64, &str), value: f64) {
    let [(x1, y1), (x2, y2)] = ends;
    let (tx, ty, anchor) = label;
    let _ = write!(
        svg,
        r##"<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#ddd"/><text x="{tx}" y="{ty}" text-anchor="{anchor}">{}</text>"##,
        short(value),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_well_formed_svg_with_every_series() {
        let series = vec![
            Series {
                name: "a <b>".into(),
                points: vec![(1.0, 1.0), (2.0, 4.0)],
            },
            Series {
                name: "c".into(),
                points: vec![(1.0, 2.0), (3.0, 1.0)],
            },
        ];
        let svg = line_chart("t", "x", "y", &series, false);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;b&gt;"));
        let mut h = crate::report::histogram();
        for v in 1..1000 {
            h.record(v).unwrap();
        }
        let cdf = latency_cdf("cdf", &[("h", &h)]);
        assert_eq!(cdf.matches("<polyline").count(), 1);
    }
}
