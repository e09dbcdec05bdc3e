//! `migrate --plot FILE.svg`: each migration's timeline as hand-written SVG. Time runs left to
//! right; each phase (bulk copy, pre-copy round, stop-and-copy) is a bar as wide as it took and
//! as high as the pages it copied (log scale: the bulk copy is thousands of times a late
//! round), with markers for the pages the device's log and the guest's CPU dirtied in it; the
//! stop-and-copy bar is the downtime, labelled.

use super::engine::Phase;
use super::MigrateReport;
use std::fmt::Write;

const W: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 40.0;
const PANEL_H: f64 = 190.0;
const PANEL_GAP: f64 = 46.0;
const TOP: f64 = 64.0;
/// Most migrations drawn (one panel each).
pub const MAX_PANELS: usize = 8;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Log-scale y: 1 page at the bottom, `top` pages at the panel's top.
fn y_of(pages: u64, top_decade: u32, y0: f64) -> f64 {
    let v = (pages.max(1) as f64).log10() / f64::from(top_decade.max(1));
    y0 + PANEL_H - v.min(1.0) * PANEL_H
}

fn panel(s: &mut String, index: usize, phases: &[Phase], y0: f64) {
    let end = phases
        .iter()
        .map(|p| p.end_ms)
        .fold(0.0, f64::max)
        .max(1e-3);
    let max_pages = phases
        .iter()
        .map(|p| {
            p.pages_copied
                .max(p.dirtied_by_device)
                .max(p.dirtied_by_cpu)
        })
        .max()
        .unwrap_or(1);
    let top_decade = ((max_pages.max(10) as f64).log10().ceil()) as u32;
    let x_of = |ms: f64| LEFT + ms / end * (W - LEFT - RIGHT);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{:.1}" font-weight="bold">migration {index}</text>"#,
        y0 - 8.0
    );
    // Axes and decade grid lines.
    for d in 0..=top_decade {
        let y = y0 + PANEL_H - f64::from(d) / f64::from(top_decade) * PANEL_H;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            10u64.pow(d)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.1}" font-size="11" transform="rotate(-90 14 {:.1})">pages</text>"#,
        y0 + PANEL_H / 2.0,
        y0 + PANEL_H / 2.0
    );
    for i in 0..=5 {
        let ms = end * f64::from(i) / 5.0;
        let x = x_of(ms);
        let anchor = if i == 5 { "end" } else { "middle" };
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="{anchor}" font-size="11">{ms:.1} ms</text>"#,
            y0 + PANEL_H + 16.0
        );
    }
    for p in phases {
        let x = x_of(p.start_ms);
        let w = (x_of(p.end_ms) - x).max(2.0);
        let stop = p.name == "stop-and-copy";
        let color = if stop {
            "#e15759"
        } else if p.name == "bulk" {
            "#bab0ac"
        } else {
            "#4e79a7"
        };
        let y = y_of(p.pages_copied, top_decade, y0);
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{color}"><title>{}: {} pages copied, {} dirtied by the device, {} by the CPU, {:.3}..{:.3} ms</title></rect>"#,
            y0 + PANEL_H - y,
            esc(&p.name),
            p.pages_copied,
            p.dirtied_by_device,
            p.dirtied_by_cpu,
            p.start_ms,
            p.end_ms
        );
        let mid = x + w / 2.0;
        for (n, c) in [
            (p.dirtied_by_device, "#f28e2b"),
            (p.dirtied_by_cpu, "#59a14f"),
        ] {
            if n > 0 {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{mid:.1}" cy="{:.1}" r="3.5" fill="{c}"/>"#,
                    y_of(n, top_decade, y0)
                );
            }
        }
        if stop {
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="12" fill="#e15759">downtime {:.0} µs, {} pages</text>"##,
                (x + w).min(W - RIGHT),
                y0 - 8.0,
                (p.end_ms - p.start_ms) * 1e3,
                p.pages_copied
            );
        }
    }
}

/// The whole SVG document.
pub fn svg(r: &MigrateReport) -> String {
    let n = r.timelines.len().min(MAX_PANELS);
    let h = TOP + n as f64 * (PANEL_H + PANEL_GAP) + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h:.0}" font-family="sans-serif" font-size="12">"#
    );
    s.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    let more = if r.timelines.len() > n {
        format!(" (first {n} of {})", r.timelines.len())
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">vdpa-emu migrate: pre-copy timeline{}</text>"#,
        esc(&more)
    );
    let legend = [
        ("#bab0ac", "bulk copy"),
        ("#4e79a7", "pre-copy round (pages copied)"),
        ("#e15759", "stop-and-copy = downtime"),
        ("#f28e2b", "dirtied by the device (its log)"),
        ("#59a14f", "dirtied by the CPU"),
    ];
    let mut x = LEFT;
    for (c, t) in legend {
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="34" width="10" height="10" fill="{c}"/><text x="{:.1}" y="43" font-size="11">{t}</text>"#,
            x + 14.0
        );
        x += 14.0 + 6.5 * t.len() as f64 + 14.0;
    }
    for (i, phases) in r.timelines.iter().take(n).enumerate() {
        panel(
            &mut s,
            i,
            phases,
            TOP + 12.0 + i as f64 * (PANEL_H + PANEL_GAP),
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(name: &str, a: f64, b: f64, pages: u64, dev: u64, cpu: u64) -> Phase {
        Phase {
            name: name.into(),
            start_ms: a,
            end_ms: b,
            pages_copied: pages,
            dirtied_by_device: dev,
            dirtied_by_cpu: cpu,
        }
    }

    #[test]
    fn one_bar_per_phase_and_the_downtime_labelled() {
        let r = MigrateReport {
            timelines: vec![vec![
                phase("bulk", 0.0, 40.0, 16384, 0, 0),
                phase("round 1", 40.0, 45.0, 165, 150, 20),
                phase("stop-and-copy", 45.0, 45.2, 4, 3, 1),
            ]],
            ..Default::default()
        };
        let svg = svg(&r);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<rect x=").count(),
            3 + 5,
            "3 phases + 5 legend swatches"
        );
        assert!(svg.contains("downtime 200 µs, 4 pages"), "{svg}");
        assert!(svg.contains("round 1: 165 pages copied, 150 dirtied by the device, 20 by the CPU"));
        // Log scale up to 10^5 for 16384 pages.
        assert!(svg.contains(">100000</text>"));
    }

    #[test]
    fn panels_are_capped() {
        let one = vec![phase("bulk", 0.0, 1.0, 10, 0, 0)];
        let r = MigrateReport {
            timelines: vec![one; MAX_PANELS + 3],
            ..Default::default()
        };
        let svg = svg(&r);
        assert_eq!(
            svg.matches("font-weight=\"bold\">migration ").count(),
            MAX_PANELS
        );
        assert!(svg.contains(&format!("(first {MAX_PANELS} of {})", MAX_PANELS + 3)));
    }
}
