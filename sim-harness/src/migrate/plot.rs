//! `migrate --plot FILE.svg`: each migration's timeline as hand-written SVG. Time runs left to
//! right; each phase (bulk copy, pre-copy round, stop-and-copy) is a bar as wide as it took and
//! as high as the pages it copied (log scale: the bulk copy is thousands of times a late
//! round), with markers for the pages the device's log and the guest's CPU dirtied in it; the
//! stop-and-copy bar is the downtime, labelled with the estimate pre-copy stopped on. Each
//! stop-or-continue decision shows the dirty pages pending (a diamond) against the pages the
//! downtime limit allows at the measured rate (a bar: QEMU's `threshold_size`); the decision
//! that stopped pre-copy is a dashed line with its reason.

use super::engine::{Decision, Phase};
use super::policy::StopReason;
use super::{MigrateReport, StopSummary};
use std::fmt::Write;

const W: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 40.0;
const PANEL_H: f64 = 190.0;
const PANEL_GAP: f64 = 46.0;
const TOP: f64 = 80.0;
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

/// Where the panel is and what the run stopped on.
struct Frame<'a> {
    index: usize,
    y0: f64,
    stop: Option<&'a StopSummary>,
    limit_ms: Option<f64>,
}

fn panel(s: &mut String, phases: &[Phase], f: &Frame<'_>) {
    let (index, y0) = (f.index, f.y0);
    let decisions: &[Decision] = f.stop.map_or(&[], |st| &st.decisions);
    let end = phases
        .iter()
        .map(|p| p.end_ms)
        .chain(decisions.iter().map(|d| d.at_ms))
        .fold(0.0, f64::max)
        .max(1e-3);
    let max_pages = phases
        .iter()
        .map(|p| {
            p.pages_copied
                .max(p.dirtied_by_device)
                .max(p.dirtied_by_cpu)
        })
        .chain(decisions.iter().map(|d| d.pending_pages))
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
            r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{color}"><title>{}: {} pages copied ({} zero pages), {} dirtied by the device, {} by the CPU, {:.3}..{:.3} ms</title></rect>"#,
            y0 + PANEL_H - y,
            esc(&p.name),
            p.pages_copied,
            p.zero_pages,
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
            let est = f
                .stop
                .and_then(|st| st.estimated_downtime_us)
                .map_or(String::new(), |e| format!(" (estimated {e:.0} µs)"));
            let _ = writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="12" fill="#e15759">downtime {:.0} µs{est}, {} pages</text>"##,
                (x + w).min(W - RIGHT),
                y0 - 8.0,
                (p.end_ms - p.start_ms) * 1e3,
                p.pages_copied
            );
        }
    }
    for d in decisions {
        decision(s, d, f, x_of(d.at_ms), top_decade);
    }
}

/// One decision: pending pages (diamond), the pages the policy allows (bar), and for the stop a
/// dashed line with its reason.
fn decision(s: &mut String, d: &Decision, f: &Frame<'_>, x: f64, top_decade: u32) {
    let y0 = f.y0;
    let est = d
        .estimated_downtime_us
        .map_or("unknown".into(), |e| format!("{:.3} ms", e / 1e3));
    let verdict = match d.stop {
        None => "continue".to_string(),
        Some(StopReason::DowntimeFits) => "stop: fits the downtime limit".into(),
        Some(StopReason::UnderThreshold) => "stop: the last round was under the threshold".into(),
        Some(StopReason::RoundLimit) => "stop forced: round limit (did not converge)".into(),
    };
    let y = y_of(d.pending_pages, top_decade, y0);
    let _ = writeln!(
        s,
        r##"<path d="M{x:.1} {:.1} l5 5 l-5 5 l-5 -5 z" fill="#b07aa1"><title>after round {}: {} dirty pages pending, estimated stop-and-copy {est}; {verdict}</title></path>"##,
        y - 5.0,
        d.after_round,
        d.pending_pages
    );
    if let Some(t) = d.threshold_pages {
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#000" stroke-width="2"><title>{t} pages allowed</title></line>"##,
            x - 7.0,
            x + 7.0,
            ty = y_of(t, top_decade, y0)
        );
    }
    let Some(reason) = d.stop else {
        return;
    };
    let known = d.estimated_downtime_us.is_some();
    let limit = match (reason, f.limit_ms) {
        (StopReason::DowntimeFits, Some(l)) => format!(" < {l} ms limit"),
        (StopReason::RoundLimit, Some(l)) if known => {
            format!(" ≥ {l} ms limit; round limit: did not converge")
        }
        (StopReason::RoundLimit, _) => "; round limit: did not converge".into(),
        (StopReason::UnderThreshold, _) => "; the last round was under the threshold".into(),
        (StopReason::DowntimeFits, None) => String::new(),
    };
    let label = format!(
        "stop after round {}: {} pages pending, estimated {est}{limit}",
        d.after_round, d.pending_pages
    );
    let color = if reason == StopReason::RoundLimit {
        "#e15759"
    } else {
        "#333"
    };
    let _ = writeln!(
        s,
        r##"<line x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{:.1}" stroke="{color}" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11" fill="{color}">{}</text>"##,
        y0 + PANEL_H,
        (x - 4.0).max(LEFT + 300.0),
        y0 + 14.0,
        esc(&label)
    );
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
    let legend: [&[(&str, &str)]; 2] = [
        &[
            ("#bab0ac", "bulk copy"),
            ("#4e79a7", "pre-copy round (pages copied)"),
            ("#e15759", "stop-and-copy = downtime"),
            ("#f28e2b", "dirtied by the device (its log)"),
            ("#59a14f", "dirtied by the CPU"),
        ],
        &[
            ("#b07aa1", "dirty pages pending at a decision"),
            (
                "#000",
                "pages that fit the downtime limit at the measured rate",
            ),
            ("#333", "the decision that stopped pre-copy (dashed)"),
        ],
    ];
    for (row, items) in legend.iter().enumerate() {
        let y = 34.0 + 16.0 * row as f64;
        let mut x = LEFT;
        for (c, t) in items.iter() {
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="10" height="10" fill="{c}"/><text x="{:.1}" y="{:.1}" font-size="11">{t}</text>"#,
                x + 14.0,
                y + 9.0
            );
            x += 14.0 + 6.5 * t.len() as f64 + 14.0;
        }
    }
    for (i, phases) in r.timelines.iter().take(n).enumerate() {
        panel(
            &mut s,
            phases,
            &Frame {
                index: i,
                y0: TOP + 12.0 + i as f64 * (PANEL_H + PANEL_GAP),
                stop: r.stops.get(i),
                limit_ms: r.max_downtime_ms,
            },
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
            zero_pages: 0,
            copy_ms: b - a,
            dirtied_by_device: dev,
            dirtied_by_cpu: cpu,
        }
    }

    fn decision(after_round: u32, at_ms: f64, pending: u64, stop: Option<StopReason>) -> Decision {
        Decision {
            after_round,
            at_ms,
            pending_pages: pending,
            copy_rate_bytes_per_s: Some(1e9),
            estimated_downtime_us: Some(pending as f64 * 4.096),
            threshold_pages: Some(73_242),
            stop,
        }
    }

    fn stop(reason: StopReason, decisions: Vec<Decision>) -> StopSummary {
        let last = decisions.last().unwrap().clone();
        StopSummary {
            reason,
            rounds: last.after_round,
            pending_pages: last.pending_pages,
            copy_rate_bytes_per_s: last.copy_rate_bytes_per_s,
            estimated_downtime_us: last.estimated_downtime_us,
            stop_copy_us: 100.0,
            downtime_us: 200.0,
            decisions,
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
            stops: vec![stop(
                StopReason::DowntimeFits,
                vec![
                    decision(0, 40.0, 80_000, None),
                    decision(1, 45.0, 3, Some(StopReason::DowntimeFits)),
                ],
            )],
            max_downtime_ms: Some(300.0),
            ..Default::default()
        };
        let svg = svg(&r);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<rect x=").count(),
            3 + 8,
            "3 phases + 8 legend swatches"
        );
        assert!(
            svg.contains("downtime 200 µs (estimated 12 µs), 4 pages"),
            "{svg}"
        );
        assert!(svg.contains(
            "round 1: 165 pages copied (0 zero pages), 150 dirtied by the device, 20 by the CPU"
        ));
        // Log scale up to 10^5 for 80,000 pending pages.
        assert!(svg.contains(">100000</text>"));
        // Both decisions drawn, the first one continuing (80,000 pending > 73,242 allowed).
        assert_eq!(svg.matches("fill=\"#b07aa1\"><title>").count(), 2);
        assert!(svg.contains("after round 0: 80000 dirty pages pending, estimated stop-and-copy 327.680 ms; continue"));
        assert_eq!(svg.matches("<title>73242 pages allowed</title>").count(), 2);
        // One stop line, with its reason.
        assert_eq!(svg.matches("stroke-dasharray").count(), 1);
        assert!(
            svg.contains(
                "stop after round 1: 3 pages pending, estimated 0.012 ms &lt; 300 ms limit"
            ),
            "{svg}"
        );
    }

    #[test]
    fn a_forced_stop_says_it_did_not_converge() {
        let r = MigrateReport {
            timelines: vec![vec![
                phase("bulk", 0.0, 10.0, 2048, 0, 0),
                phase("round 1", 10.0, 12.0, 900_000, 900_000, 0),
                phase("stop-and-copy", 12.0, 20.0, 900_000, 900_000, 0),
            ]],
            stops: vec![stop(
                StopReason::RoundLimit,
                vec![
                    decision(0, 10.0, 900_000, None),
                    decision(1, 12.0, 900_000, Some(StopReason::RoundLimit)),
                ],
            )],
            max_downtime_ms: Some(300.0),
            ..Default::default()
        };
        let svg = svg(&r);
        assert!(
            svg.contains("estimated 3686.400 ms ≥ 300 ms limit; round limit: did not converge"),
            "{svg}"
        );
        assert!(svg.contains("stop forced: round limit (did not converge)"));
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
