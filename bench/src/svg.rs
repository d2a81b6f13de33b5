//! The cost curves as one SVG (a panel per curve), written by hand: a few
//! polylines and labels need no plotting crate.

use std::fmt::Write as _;

use super::report::Curve;

const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 300.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 18.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 72.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Escape text for SVG.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A short label for a number (1k, 10k, 1M).
fn short(x: f64) -> String {
    if x >= 1_000_000.0 {
        format!("{}M", x / 1_000_000.0)
    } else if x >= 1000.0 {
        format!("{}k", x / 1000.0)
    } else if x.fract() == 0.0 {
        format!("{x}")
    } else {
        format!("{x:.1}")
    }
}

/// Every curve in a grid of two columns.
pub fn render(curves: &[Curve], command: &str) -> String {
    let columns = 2usize;
    let rows = curves.len().div_ceil(columns).max(1);
    let width = PANEL_W * columns as f64;
    let height = PANEL_H * rows as f64 + 30.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="{width}" height="{height}" fill="white"/><text x="8" y="{}" fill="#555">livedesk cost curves — {}</text>"##,
        height - 10.0,
        esc(command)
    );
    for (i, curve) in curves.iter().enumerate() {
        let x0 = PANEL_W * (i % columns) as f64;
        let y0 = PANEL_H * (i / columns) as f64;
        panel(&mut out, curve, x0, y0);
    }
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, curve: &Curve, x0: f64, y0: f64) {
    let (px, py) = (x0 + LEFT, y0 + TOP);
    let (pw, ph) = (PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM);
    let xs: Vec<f64> = curve
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let ys: Vec<f64> = curve
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .collect();
    let tx = |x: f64| if curve.log_x { x.max(1e-9).log10() } else { x };
    let (xmin, xmax) = xs.iter().fold((f64::MAX, f64::MIN), |(a, b), x| {
        (a.min(tx(*x)), b.max(tx(*x)))
    });
    let ymax = ys.iter().fold(0.0f64, |a, y| a.max(*y)) * 1.15;
    let ymax = if ymax > 0.0 { ymax } else { 1.0 };
    let xspan = if xmax > xmin { xmax - xmin } else { 1.0 };
    let sx = |x: f64| px + (tx(x) - xmin) / xspan * pw;
    let sy = |y: f64| py + ph - y / ymax * ph;
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
        x0 + 10.0,
        y0 + 15.0,
        esc(&curve.title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{px}" y="{py}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    for k in 0..=4 {
        let y = ymax * k as f64 / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{px}" x2="{}" y1="{y1:.1}" y2="{y1:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            px + pw,
            px - 4.0,
            sy(y) + 4.0,
            if ymax < 10.0 {
                format!("{y:.1}")
            } else {
                format!("{y:.0}")
            },
            y1 = sy(y)
        );
    }
    let mut ticks: Vec<f64> = xs.clone();
    ticks.sort_by(|a, b| a.total_cmp(b));
    ticks.dedup();
    for x in &ticks {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#555">{}</text>"##,
            sx(*x),
            py + ph + 14.0,
            short(*x)
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#333">{}</text>"##,
        px + pw / 2.0,
        py + ph + 30.0,
        esc(&curve.x_label)
    );
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" fill="#333">{}</text>"##,
        px,
        py - 6.0,
        esc(&curve.y_label)
    );
    for (n, series) in curve.series.iter().enumerate() {
        let colour = COLOURS[n % COLOURS.len()];
        let points: Vec<String> = series
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            points.join(" ")
        );
        for (x, y) in &series.points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/><text x="{:.1}" y="{:.1}" fill="{colour}" text-anchor="middle">{}</text>"#,
                sx(*x),
                sy(*y),
                sx(*x),
                sy(*y) - 7.0,
                if *y < 10.0 {
                    format!("{y:.2}")
                } else {
                    format!("{y:.0}")
                }
            );
        }
        // The legend: below the axis title, side by side.
        let lx = px + 210.0 * n as f64;
        let ly = py + ph + 48.0;
        let _ = writeln!(
            out,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="3" fill="{colour}"/><text x="{:.1}" y="{ly:.1}" fill="{colour}">{}</text>"#,
            ly - 4.0,
            lx + 16.0,
            esc(&series.name)
        );
    }
}
