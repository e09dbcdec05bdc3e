//! `vdpa-emu bench doorbells`: what a doorbell costs on each path, measured against real
//! `vdpa-emu serve` processes.
//!
//! For each path a `serve --port loopback --queue-pairs 1` child is started and the driver
//! model attaches over vfio-user (the [`Client`] maps what the server offers, as QEMU does),
//! starts the device and posts its RX buffers. Then:
//!
//! 1. idle: nothing happens for `--idle-secs`; the serve process's CPU time over that time
//!    (utime + stime of /proc/PID/stat, clock ticks; and the sum of its threads'
//!    /proc/PID/task/TID/schedstat, nanoseconds) as a share of one core;
//! 2. kicks: one frame at a time, after an idle gap (`--gaps`): `kick` is how long the
//!    driver's send (ring update + doorbell) takes, which is what a vCPU is stalled for;
//!    `frame` is from the send to the frame looped back in the RX used ring, which includes
//!    the doorbell's way to the device and the device's work. Medians and 99th percentiles;
//! 3. serve's CPU time per kick over the back-to-back (first gap) series.
//!
//! The paths: `mmap` (`serve --doorbell mmap`: the kick is a store into the mapped notify
//! page), `trap-posted` (`serve --doorbell trap`, posted REGION_WRITEs: QEMU's behaviour when
//! nothing is mappable) and `trap-sync` (`serve --doorbell mmap` but the client traps its
//! doorbells: a REGION_WRITE that waits for its reply, which is what every trapped BAR write
//! costs once QEMU saw FLAG_MMAP). The trap paths are the anchor of the same run.

use super::serve_child::{self, schedstat_cpu, stat_cpu, ServeChild, ServeChildError, ServeSpawn};
use crate::driver::net::rxq;
use crate::driver::{DriverOptions, NetDriver};
use crate::frames;
use crate::vfio_user::Client;
use device::InterruptRecorder;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Clone, Debug)]
pub struct DoorbellBenchOptions {
    /// The `vdpa-emu` binary to serve with.
    pub serve_bin: PathBuf,
    /// Idle time measured per path.
    pub idle: Duration,
    /// Kicks per gap.
    pub kicks: u32,
    /// Idle gaps before each kick (the first one also gives the CPU per kick).
    pub gaps: Vec<Duration>,
}

/// Kick latencies after one gap.
#[derive(Clone, Debug, Serialize)]
pub struct GapLatency {
    pub gap_us: u64,
    pub kick_us_p50: f64,
    pub kick_us_p99: f64,
    pub frame_us_p50: f64,
    pub frame_us_p99: f64,
}

/// One path's results.
#[derive(Clone, Debug, Serialize)]
pub struct PathReport {
    pub path: &'static str,
    /// Idle serve CPU from /proc/PID/stat (10 ms ticks), % of one core.
    pub idle_cpu_percent_stat: f64,
    /// Idle serve CPU from the threads' schedstat (ns), % of one core.
    pub idle_cpu_percent_schedstat: f64,
    pub latency: Vec<GapLatency>,
    /// serve's CPU time per kick over the back-to-back series (frame TX + loopback RX).
    pub serve_cpu_us_per_kick: f64,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct DoorbellReport {
    pub idle_secs: f64,
    pub kicks_per_gap: u32,
    pub paths: Vec<PathReport>,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum DoorbellBenchError {
    #[error(transparent)]
    Serve(#[from] ServeChildError),
    #[error("{0}")]
    Client(#[from] crate::vfio_user::ClientError),
    #[error("driver: {0}")]
    Driver(#[from] crate::driver::DriverError),
    #[error("{path}: frame {n} not looped back within 2 s")]
    Lost { path: &'static str, n: u32 },
    #[error("the mmap path was not taken: the client mapped {0:?}")]
    NotMapped(Vec<(u32, u64, u64)>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path3 {
    Mmap,
    TrapPosted,
    TrapSync,
}

impl Path3 {
    fn name(self) -> &'static str {
        match self {
            Path3::Mmap => "mmap",
            Path3::TrapPosted => "trap-posted",
            Path3::TrapSync => "trap-sync",
        }
    }
    fn serve_mode(self) -> &'static str {
        match self {
            Path3::TrapPosted => "trap",
            _ => "mmap",
        }
    }
}

fn spawn_serve(bin: &Path, mode: &str) -> Result<ServeChild, DoorbellBenchError> {
    let args = [
        "--queue-pairs",
        "1",
        "--port",
        "loopback",
        "--doorbell",
        mode,
    ];
    Ok(serve_child::spawn(&ServeSpawn {
        bin,
        tag: &format!("doorbells-{mode}"),
        args: args.iter().map(|s| s.to_string()).collect(),
        log: None,
        cpu: None,
    })?)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn measure(path: Path3, o: &DoorbellBenchOptions) -> Result<PathReport, DoorbellBenchError> {
    let serve = spawn_serve(&o.serve_bin, path.serve_mode())?;
    let pid = serve.pid();
    let c = Arc::new(Client::connect(&serve.socket)?);
    match path {
        Path3::Mmap => {
            if c.mapped_areas().is_empty() {
                return Err(DoorbellBenchError::NotMapped(c.mapped_areas()));
            }
        }
        Path3::TrapPosted => c.set_posted_writes(true),
        Path3::TrapSync => c.set_use_mmap(false),
    }
    let n = c
        .irq_info(vfio_bindings::bindings::vfio::VFIO_PCI_MSIX_IRQ_INDEX)?
        .count;
    let irq = Arc::new(InterruptRecorder::new(n as u16));
    let _pump = c.wire_interrupts(irq.clone())?;
    let mut drv = NetDriver::new(c.clone(), irq, DriverOptions::default())?;
    drv.start()?;
    let mac = drv.mac()?;

    // 1. Idle.
    let (st0, ss0, t0) = (stat_cpu(pid)?, schedstat_cpu(pid)?, Instant::now());
    std::thread::sleep(o.idle);
    let (st1, ss1, wall) = (stat_cpu(pid)?, schedstat_cpu(pid)?, t0.elapsed());
    let pct = |d: Duration| round2(d.as_secs_f64() / wall.as_secs_f64() * 100.0);

    // 2. Kicks after each gap.
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(9);
    let mem = drv.mem.clone();
    let mut latency = Vec::new();
    let mut cpu_per_kick = 0.0;
    for (gi, &gap) in o.gaps.iter().enumerate() {
        let (mut kick, mut done) = (Vec::new(), Vec::new());
        let cpu0 = schedstat_cpu(pid)?;
        for k in 0..o.kicks {
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
            let f = frames::build(mac, mac, 0, u64::from(k), 64, &mut rng);
            let before = drv.ring(rxq(0))?.used_idx(&mem)?;
            let t = Instant::now();
            let sent = drv.send(0, &[&f])?;
            let t_kick = t.elapsed();
            if sent != 1 {
                return Err(DoorbellBenchError::Lost {
                    path: path.name(),
                    n: k,
                });
            }
            loop {
                if drv.ring(rxq(0))?.used_idx(&mem)? != before {
                    break;
                }
                if t.elapsed() > Duration::from_secs(2) {
                    return Err(DoorbellBenchError::Lost {
                        path: path.name(),
                        n: k,
                    });
                }
                std::hint::spin_loop();
            }
            let t_done = t.elapsed();
            drv.recv(0)?;
            kick.push(t_kick.as_secs_f64() * 1e6);
            done.push(t_done.as_secs_f64() * 1e6);
        }
        if gi == 0 {
            let cpu = schedstat_cpu(pid)?.saturating_sub(cpu0);
            cpu_per_kick = round2(cpu.as_secs_f64() * 1e6 / f64::from(o.kicks.max(1)));
        }
        kick.sort_by(f64::total_cmp);
        done.sort_by(f64::total_cmp);
        latency.push(GapLatency {
            gap_us: gap.as_micros() as u64,
            kick_us_p50: round2(percentile(&kick, 0.5)),
            kick_us_p99: round2(percentile(&kick, 0.99)),
            frame_us_p50: round2(percentile(&done, 0.5)),
            frame_us_p99: round2(percentile(&done, 0.99)),
        });
    }
    drv.stop()?;
    Ok(PathReport {
        path: path.name(),
        idle_cpu_percent_stat: pct(st1.saturating_sub(st0)),
        idle_cpu_percent_schedstat: pct(ss1.saturating_sub(ss0)),
        latency,
        serve_cpu_us_per_kick: cpu_per_kick,
    })
}

/// Runs the three paths one after the other.
pub fn run(o: &DoorbellBenchOptions) -> Result<DoorbellReport, DoorbellBenchError> {
    let paths = [Path3::Mmap, Path3::TrapPosted, Path3::TrapSync]
        .into_iter()
        .map(|p| measure(p, o))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DoorbellReport {
        idle_secs: o.idle.as_secs_f64(),
        kicks_per_gap: o.kicks,
        paths,
    })
}

/// The report as a table.
pub fn table(r: &DoorbellReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "idle serve CPU over {:.0} s (% of one core: /proc/PID/stat | schedstat), serve CPU per kick back to back",
        r.idle_secs
    );
    for p in &r.paths {
        let _ = writeln!(
            s,
            "  {:<12} idle {:>6.2} % | {:>6.3} %   per kick {:>7.2} us",
            p.path, p.idle_cpu_percent_stat, p.idle_cpu_percent_schedstat, p.serve_cpu_us_per_kick
        );
    }
    let _ = writeln!(
        s,
        "\nper kick, {} kicks per gap (us, p50 / p99): kick = the driver's send incl. doorbell; frame = send to frame looped back",
        r.kicks_per_gap
    );
    let _ = writeln!(
        s,
        "  {:<12} {:>8}  {:>17}  {:>19}",
        "path", "gap us", "kick p50/p99", "frame p50/p99"
    );
    for p in &r.paths {
        for g in &p.latency {
            let _ = writeln!(
                s,
                "  {:<12} {:>8}  {:>8.1}/{:<8.1}  {:>9.1}/{:<9.1}",
                p.path, g.gap_us, g.kick_us_p50, g.kick_us_p99, g.frame_us_p50, g.frame_us_p99
            );
        }
    }
    s
}

/// `vdpa-emu bench doorbells` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct DoorbellArgs {
    /// Seconds of idle device measured per path.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// Kicks measured per gap.
    #[arg(long, default_value_t = 500)]
    pub kicks: u32,
    /// Idle gaps before each kick, in microseconds (the first gives serve's CPU per kick).
    #[arg(long, value_delimiter = ',', default_value = "0,200,2000")]
    pub gaps_us: Vec<u64>,
    /// Report format.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

/// `vdpa-emu bench doorbells`.
pub fn cli(a: &DoorbellArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    if a.kicks == 0 || a.gaps_us.is_empty() {
        eprintln!("vdpa-emu bench doorbells: --kicks must be >= 1 and --gaps-us not empty");
        return ExitCode::from(2);
    }
    let serve_bin = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vdpa-emu bench doorbells: cannot find the vdpa-emu binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let o = DoorbellBenchOptions {
        serve_bin,
        idle: Duration::from_secs(a.idle_secs),
        kicks: a.kicks,
        gaps: a
            .gaps_us
            .iter()
            .map(|&u| Duration::from_micros(u))
            .collect(),
    };
    match run(&o) {
        Ok(r) => {
            if a.format == "json" {
                println!("{}", crate::report_json::to_json(&r));
            } else {
                print!("{}", table(&r));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vdpa-emu bench doorbells: {e}");
            ExitCode::FAILURE
        }
    }
}
