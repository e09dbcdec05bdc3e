//! The `--plot` chart of `vdpa-emu bench bus`, as hand-written SVG: small multiples (one panel
//! per logging mode and frame size), in each a group per batch size and event-idx setting with
//! one bar per ring layout, stacked by kind of DMA, in TLPs per packet (requests + completions).

use super::bus::{BusReport, Category, Config, Ring};
use std::fmt::Write;

const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#b07aa1",
];
const BAR_W: f64 = 16.0;
const BAR_GAP: f64 = 3.0;
const GROUP_GAP: f64 = 18.0;
const PLOT_H: f64 = 170.0;
const PANEL_TOP: f64 = 28.0;
const PANEL_BOTTOM: f64 = 46.0;
const PANEL_LEFT: f64 = 54.0;
const PANEL_RIGHT: f64 = 16.0;
const HEADER: f64 = 72.0;
const LEGEND_ROW: f64 = 20.0;
/// Legend items: the six kinds and three ring markers.
const LEGEND_ITEMS: usize = 9;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" axis maximum and tick step for values up to `max`.
fn axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn uniq<T: PartialEq + Copy>(v: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for &x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// TLPs per packet of each category for `c`, or None when it did not run.
fn stack(r: &BusReport, c: &Config) -> Option<[f64; 6]> {
    let m = r.find(c)?;
    let mut out = [0.0; 6];
    for (i, k) in Category::ALL.iter().enumerate() {
        out[i] = m.per_packet(m.get(*k).pcie.all_tlps());
    }
    Some(out)
}

impl BusReport {
    /// An SVG chart: TLPs per packet stacked by kind, split and packed side by side.
    pub fn svg(&self) -> String {
        chart(self)
    }
}

fn chart(r: &BusReport) -> String {
    let o = &r.opts;
    let logs = uniq(&o.logging);
    let frames = uniq(&o.frames);
    let rings = uniq(&o.rings);
    let groups: Vec<(u16, bool)> = uniq(&o.batches)
        .into_iter()
        .flat_map(|b| uniq(&o.event_idx).into_iter().map(move |e| (b, e)))
        .collect();
    let nb = rings.len().max(1) as f64;
    let group_w = nb * (BAR_W + BAR_GAP) - BAR_GAP + GROUP_GAP;
    let plot_w = groups.len() as f64 * group_w;
    let panel_w = PANEL_LEFT + plot_w + PANEL_RIGHT;
    let panel_h = PANEL_TOP + PLOT_H + PANEL_BOTTOM;
    let width = (24.0 + frames.len() as f64 * panel_w).max(720.0);
    let legend_rows = LEGEND_ITEMS.div_ceil((((width - 48.0) / 168.0).floor() as usize).max(1));
    let height = HEADER + logs.len() as f64 * panel_h + 16.0 + legend_rows as f64 * LEGEND_ROW;
    // One y scale per frame size (column), so the logging modes compare directly.
    let scale: Vec<(f64, f64)> = frames
        .iter()
        .map(|&f| {
            let max = r
                .rows
                .iter()
                .filter(|row| row.config.frame == f)
                .filter_map(|row| stack(r, &row.config))
                .map(|s| s.iter().sum::<f64>())
                .fold(0.0, f64::max);
            axis(max)
        })
        .collect();

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r##"<defs><pattern id="hatch" width="5" height="5" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="5" stroke="#ffffff" stroke-width="1.6" stroke-opacity="0.7"/></pattern></defs>"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="{:.0}" y="22" text-anchor="middle" font-size="15" font-weight="bold">PCIe TLPs per packet: split vs packed ring (1 TX + 1 RX, loopback)</text>"#,
        width / 2.0
    );
    let packed_note = if r.packed_offered() {
        ""
    } else {
        "; packed ring not available yet (dashed)"
    };
    let _ = writeln!(
        s,
        r##"<text x="{:.0}" y="40" text-anchor="middle" fill="#444">MPS {} B, MRRS {} B; TLPs = device requests + read completions, stacked by kind of DMA</text>"##,
        width / 2.0,
        o.mps,
        o.mrrs
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.0}" y="55" text-anchor="middle" fill="#444">one bar per ring: S = split, P = packed (hatched){}</text>"##,
        width / 2.0,
        esc(packed_note)
    );

    for (ri, &log) in logs.iter().enumerate() {
        for (ci, &frame) in frames.iter().enumerate() {
            let x0 = 24.0 + ci as f64 * panel_w + PANEL_LEFT;
            let y0 = HEADER + ri as f64 * panel_h + PANEL_TOP;
            let (ymax, step) = scale[ci];
            let y = |v: f64| y0 + PLOT_H - v / ymax * PLOT_H;
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="12" font-weight="bold">{} B frames, dirty log {}</text>"#,
                x0 + plot_w / 2.0,
                y0 - 10.0,
                frame,
                esc(&log.label())
            );
            // Grid and y axis.
            let mut v = 0.0;
            while v <= ymax + step / 2.0 {
                let yy = y(v);
                let _ = writeln!(
                    s,
                    r##"<line x1="{x0:.1}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e3e3e3"/>"##,
                    x0 + plot_w
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                    x0 - 5.0,
                    yy + 4.0,
                    fmt_tick(v)
                );
                v += step;
            }
            let _ = writeln!(
                s,
                r##"<line x1="{x0:.1}" y1="{y0:.1}" x2="{x0:.1}" y2="{:.1}" stroke="#333"/>"##,
                y0 + PLOT_H
            );
            let _ = writeln!(
                s,
                r##"<line x1="{x0:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
                y0 + PLOT_H,
                x0 + plot_w,
                y0 + PLOT_H
            );
            let _ = writeln!(
                s,
                r#"<text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle">TLPs per packet</text>"#,
                x0 - 38.0,
                y0 + PLOT_H / 2.0
            );
            for (gi, &(batch, ev)) in groups.iter().enumerate() {
                let gx = x0 + GROUP_GAP / 2.0 + gi as f64 * group_w;
                for (bi, &ring) in rings.iter().enumerate() {
                    let bx = gx + bi as f64 * (BAR_W + BAR_GAP);
                    let c = Config {
                        ring,
                        frame,
                        batch,
                        event_idx: ev,
                        logging: log,
                    };
                    match stack(r, &c) {
                        Some(parts) => {
                            let mut acc = 0.0;
                            let mut tip = Vec::new();
                            for (k, part) in parts.iter().enumerate() {
                                if *part <= 0.0 {
                                    continue;
                                }
                                let (top, bottom) = (y(acc + part), y(acc));
                                let _ = writeln!(
                                    s,
                                    r#"<rect x="{bx:.1}" y="{top:.2}" width="{BAR_W}" height="{:.2}" fill="{}"/>"#,
                                    (bottom - top).max(0.0),
                                    COLORS[k]
                                );
                                if ring == Ring::Packed {
                                    let _ = writeln!(
                                        s,
                                        r#"<rect x="{bx:.1}" y="{top:.2}" width="{BAR_W}" height="{:.2}" fill="url(#hatch)"/>"#,
                                        (bottom - top).max(0.0)
                                    );
                                }
                                acc += part;
                                tip.push(format!("{} {:.2}", Category::ALL[k].name(), part));
                            }
                            let _ = writeln!(
                                s,
                                r##"<rect x="{bx:.1}" y="{:.2}" width="{BAR_W}" height="{:.2}" fill="none" stroke="#333" stroke-width="0.6"><title>{}: {:.2} TLPs/packet ({})</title></rect>"##,
                                y(acc),
                                y(0.0) - y(acc),
                                esc(&c.label()),
                                acc,
                                tip.join(", ")
                            );
                            let _ = writeln!(
                                s,
                                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="8">{:.0}</text>"#,
                                bx + BAR_W / 2.0,
                                y(acc) - 3.0,
                                acc
                            );
                        }
                        None => {
                            let h = PLOT_H * 0.25;
                            let _ = writeln!(
                                s,
                                r##"<rect x="{bx:.1}" y="{:.1}" width="{BAR_W}" height="{h:.1}" fill="none" stroke="#999" stroke-dasharray="3,2"><title>{}: not available</title></rect>"##,
                                y0 + PLOT_H - h,
                                esc(&c.label())
                            );
                            let _ = writeln!(
                                s,
                                r##"<text transform="translate({:.1},{:.1}) rotate(-90)" font-size="9" fill="#888">n/a</text>"##,
                                bx + BAR_W / 2.0 + 3.0,
                                y0 + PLOT_H - 4.0
                            );
                        }
                    }
                    let _ = writeln!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9" fill="#555">{}</text>"##,
                        bx + BAR_W / 2.0,
                        y0 + PLOT_H + 11.0,
                        if ring == Ring::Split { "S" } else { "P" }
                    );
                }
                let cx = gx + (nb * (BAR_W + BAR_GAP) - BAR_GAP) / 2.0;
                let _ = writeln!(
                    s,
                    r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle">batch {batch}</text>"#,
                    y0 + PLOT_H + 24.0
                );
                let _ = writeln!(
                    s,
                    r##"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" fill="#555">evidx {}</text>"##,
                    y0 + PLOT_H + 36.0,
                    if ev { "on" } else { "off" }
                );
            }
        }
    }

    // Legend: the kinds, then the ring markers, in a grid that fits the width.
    let col_w = 168.0;
    let cols = (((width - 48.0) / col_w).floor() as usize).max(1);
    let ly0 = HEADER + logs.len() as f64 * panel_h + 12.0;
    let item = |i: usize| {
        (
            24.0 + PANEL_LEFT / 2.0 + (i % cols) as f64 * col_w,
            ly0 + (i / cols) as f64 * LEGEND_ROW,
        )
    };
    for (k, c) in Category::ALL.iter().enumerate() {
        let (lx, ly) = item(k);
        let _ = writeln!(
            s,
            r##"<rect x="{lx:.1}" y="{ly:.1}" width="12" height="12" fill="{}" stroke="#333" stroke-width="0.5"/>"##,
            COLORS[k]
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 16.0,
            ly + 10.0,
            c.describe()
        );
    }
    let n = Category::ALL.len();
    let (lx, ly) = item(n);
    let _ = writeln!(
        s,
        r##"<rect x="{lx:.1}" y="{ly:.1}" width="12" height="12" fill="#888" stroke="#333" stroke-width="0.5"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}">S: split ring</text>"#,
        lx + 16.0,
        ly + 10.0
    );
    let (lx, ly) = item(n + 1);
    let _ = writeln!(
        s,
        r##"<rect x="{lx:.1}" y="{ly:.1}" width="12" height="12" fill="#888" stroke="#333" stroke-width="0.5"/>"##
    );
    let _ = writeln!(
        s,
        r##"<rect x="{lx:.1}" y="{ly:.1}" width="12" height="12" fill="url(#hatch)"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}">P: packed ring (hatched)</text>"#,
        lx + 16.0,
        ly + 10.0
    );
    let (lx, ly) = item(n + 2);
    let _ = writeln!(
        s,
        r##"<rect x="{lx:.1}" y="{ly:.1}" width="12" height="12" fill="none" stroke="#999" stroke-dasharray="3,2"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}">not available / not run</text>"#,
        lx + 16.0,
        ly + 10.0
    );
    s.push_str("</svg>\n");
    s
}

fn fmt_tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::axis;
    use crate::bench::bus::{
        BusBenchOptions, BusReport, Config, Logging, Measurement, Outcome, Ring, Row, Totals,
    };
    use dma::{PcieTraffic, Traffic};

    /// A report where the split ring ran and the packed ring is not offered.
    fn report() -> BusReport {
        let opts = BusBenchOptions {
            frames: vec![64],
            batches: vec![1, 32],
            event_idx: vec![false],
            logging: vec![Logging::Off],
            ..Default::default()
        };
        let t = |n: u64| Totals {
            traffic: Traffic {
                transactions: n,
                bytes: 16 * n,
            },
            pcie: PcieTraffic {
                tlps: n,
                tlps_4dw: 0,
                completions: n,
                payload_bytes: 16 * n,
            },
        };
        let rows = opts
            .configs()
            .into_iter()
            .map(|config| Row {
                config,
                outcome: match config.ring {
                    Ring::Split => Outcome::Measured(Box::new(Measurement {
                        packets: 10,
                        categories: [
                            t(20),
                            t(30 / u64::from(config.batch)),
                            t(5),
                            t(5),
                            t(20),
                            t(0),
                        ],
                        kicks: 10,
                        interrupts: 10,
                    })),
                    Ring::Packed => Outcome::NotAvailable("not available yet".into()),
                },
            })
            .collect();
        BusReport {
            opts,
            offered: 0,
            rows,
        }
    }

    #[test]
    fn unavailable_packed_rows_are_drawn_as_placeholders() {
        let r = report();
        let svg = r.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("not available</title>").count(),
            2,
            "one dashed placeholder per packed bar"
        );
        assert!(svg.contains("packed ring not available yet"));
        assert!(svg.contains("split 64B b1 evidx-off log-off: 16.00 TLPs/packet"));
        let c = Config {
            ring: Ring::Packed,
            frame: 64,
            batch: 1,
            event_idx: false,
            logging: Logging::Off,
        };
        assert!(r.find(&c).is_none());
        assert!(r.table().contains("packed vs split: not available yet"));
    }

    #[test]
    fn nice_axes() {
        assert_eq!(axis(9.3), (10.0, 2.0));
        assert_eq!(axis(47.0), (50.0, 10.0));
        let (m, st) = axis(0.0);
        assert!((m - 1.0).abs() < 1e-9 && (st - 0.2).abs() < 1e-9);
        assert_eq!(axis(11.0), (12.5, 2.5));
    }
}
