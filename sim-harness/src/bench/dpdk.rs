//! The anchor of `vdpa-emu bench datapath`: DPDK's vhost-user pair, one forwarding core each.
//!
//! - `tx`: a testpmd with `--vdev net_virtio_user0,path=SOCK` in `txonly` (the driver's side,
//!   like our driver model sending) feeds a testpmd with `--vdev net_vhost0,iface=SOCK` in
//!   `rxonly` (the device's side, like our device taking TX chains); the rate is the vhost
//!   testpmd's own `Rx-pps` (app/test-pmd/config.c `nic_stats_display`, printed every
//!   `--stats-period` second).
//! - `rx`: the vhost testpmd in `txonly` fills the virtio-user testpmd's RX rings (`rxonly`); the
//!   rate is the virtio-user side's `Rx-pps`.
//!
//! The device's forwarding lcore runs on the device's CPU, the driver's on the driver's CPU
//! (`-l A,B --main-lcore`); the main lcores only print statistics. Memory is `--no-huge`:
//! DPDK then backs its memory with a memfd (`--single-file-segments` on the virtio-user side,
//! so its memory table is one region) that it passes to the vhost side with
//! VHOST_USER_SET_MEM_TABLE, so no hugepages are reserved or mounted. testpmd comes from
//! scripts/bench-dpdk.sh (the host's, Debian's `dpdk-dev` installed by it, or the e2e chroot's,
//! run under `unshare -m` with /sys, /proc and the socket directory bound into the chroot).

use super::placement::{Placement, Probe, Sampler};
use super::serve_child::{stat_cpu, ServeChildError};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The testpmd scripts/bench-dpdk.sh found.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Testpmd {
    /// `host`, `apt` or `e2e-chroot`.
    pub source: String,
    /// `/` or the chroot's root.
    pub root: PathBuf,
    /// The binary inside `root`.
    pub bin: String,
    /// Debian package version.
    pub version: String,
}

/// Why the anchor is missing or failed.
#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error("{script}: {why}")]
    Locate { script: PathBuf, why: String },
    #[error("starting testpmd: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("testpmd ({side}) {why}; last lines of its output:\n{tail}")]
    Run {
        side: &'static str,
        why: String,
        tail: String,
    },
    #[error(transparent)]
    Proc(#[from] ServeChildError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("starting the CPU distance probe: {0}")]
    Probe(#[source] std::io::Error),
}

/// Parses the script's `DPDK-TESTPMD key=value ...` line.
pub fn parse_locate(out: &str) -> Option<Testpmd> {
    let line = out.lines().find_map(|l| l.strip_prefix("DPDK-TESTPMD "))?;
    let get = |k: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_string)
    };
    Some(Testpmd {
        source: get("source")?,
        root: get("root")?.into(),
        bin: get("bin")?,
        version: get("version").unwrap_or_else(|| "unknown".into()),
    })
}

/// Runs `script` (scripts/bench-dpdk.sh): it installs DPDK if it has to and says which testpmd
/// to use.
pub fn locate(script: &Path, no_install: bool) -> Result<Testpmd, DpdkError> {
    let err = |why: String| DpdkError::Locate {
        script: script.into(),
        why,
    };
    if !script.exists() {
        return Err(err("not found (give --dpdk-script)".into()));
    }
    let mut cmd = Command::new("bash");
    cmd.arg(script);
    if no_install {
        cmd.arg("--no-install");
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for l in stderr.lines() {
        tracing::info!("{l}");
    }
    match parse_locate(&stdout) {
        Some(t) if out.status.success() => Ok(t),
        _ => Err(err(stderr
            .lines()
            .last()
            .unwrap_or("no DPDK-TESTPMD line")
            .to_string())),
    }
}

/// One block of testpmd's periodic port statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsBlock {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_pps: u64,
    pub tx_pps: u64,
}

/// The periodic `NIC statistics for port 0` blocks of testpmd's output, in order.
pub fn parse_stats(log: &str) -> Vec<StatsBlock> {
    let num_after = |l: &str, key: &str| -> Option<u64> {
        let i = l.find(key)? + key.len();
        l[i..].split_whitespace().next()?.parse().ok()
    };
    let mut out = Vec::new();
    let mut cur: Option<StatsBlock> = None;
    for l in log.lines() {
        if l.contains("NIC statistics for port") {
            if let Some(b) = cur.take() {
                out.push(b);
            }
            cur = Some(StatsBlock::default());
            continue;
        }
        let Some(b) = cur.as_mut() else { continue };
        if let Some(v) = num_after(l, "RX-packets:") {
            b.rx_packets = v;
        }
        if let Some(v) = num_after(l, "TX-packets:") {
            b.tx_packets = v;
        }
        if let Some(v) = num_after(l, "Rx-pps:") {
            b.rx_pps = v;
        }
        if let Some(v) = num_after(l, "Tx-pps:") {
            b.tx_pps = v;
            // Tx-pps is a block's last line.
            out.push(cur.take().expect("in a block"));
        }
    }
    out
}

/// The window of `blocks` (one per second): skip blocks before traffic and the first one with
/// traffic (a partial period), then `warmup` blocks; the next `seconds` blocks. Returns their
/// mean Rx-pps and the packets counted over them.
pub fn window(blocks: &[StatsBlock], warmup: usize, seconds: usize) -> Option<(f64, u64)> {
    let first = blocks.iter().position(|b| b.rx_packets > 0)?;
    let start = first + 1 + warmup;
    let w = blocks.get(start..start + seconds)?;
    if w.is_empty() {
        return None;
    }
    let mean = w.iter().map(|b| b.rx_pps as f64).sum::<f64>() / w.len() as f64;
    let packets = w.last()?.rx_packets - blocks[start - 1].rx_packets;
    Some((mean, packets))
}

/// What one anchor run measured.
#[derive(Clone, Debug, Serialize)]
pub struct DpdkRun {
    /// `tx` (virtio-user txonly -> vhost rxonly) or `rx` (vhost txonly -> virtio-user rxonly).
    pub dir: &'static str,
    pub frame: usize,
    pub queue_pairs: u16,
    /// Mean of testpmd's Rx-pps over the window (the receiving side's).
    pub pps: f64,
    /// Packets the receiving side counted over the window.
    pub packets: u64,
    /// Seconds of the window (testpmd's stats periods).
    pub seconds: usize,
    /// The vhost (device-side) testpmd's CPU per frame over the window, microseconds.
    pub device_cpu_us_per_frame: Option<f64>,
    /// Its share of one core over the window, %.
    pub device_cpu_percent: Option<f64>,
    /// Which round of `vdpa-emu bench datapath --rounds` ran it (0: the first).
    pub round: usize,
    /// How far apart the two CPUs were over the window ([`DpdkRunOptions::probe`]).
    pub placement: Option<Placement>,
    /// Runs made for this one (`vdpa-emu bench datapath --placement-retries`); this is the
    /// last.
    pub attempts: usize,
}

/// How to run the pair.
#[derive(Clone, Debug)]
pub struct DpdkRunOptions {
    pub dir: &'static str,
    pub frame: usize,
    pub queue_pairs: u16,
    pub warmup: usize,
    pub seconds: usize,
    /// (device's CPU, driver's CPU).
    pub cpus: (usize, usize),
    /// Sample the distance between the two CPUs over the window.
    pub probe: Option<Probe>,
}

/// A testpmd child, stopped with SIGINT (then killed) on drop.
struct TestpmdProc {
    child: Child,
    log: PathBuf,
    side: &'static str,
}

impl TestpmdProc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn tail(&self) -> String {
        let l = self.log();
        let lines: Vec<&str> = l.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
    fn fail(&self, why: impl Into<String>) -> DpdkError {
        DpdkError::Run {
            side: self.side,
            why: why.into(),
            tail: self.tail(),
        }
    }
    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestpmdProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn spawn_testpmd(
    t: &Testpmd,
    dir: &Path,
    side: &'static str,
    args: &[String],
) -> Result<TestpmdProc, DpdkError> {
    let log = dir.join(format!("{side}.log"));
    let out = std::fs::File::create(&log)?;
    let mut cmd = if t.root == Path::new("/") {
        let mut c = Command::new(&t.bin);
        c.args(args);
        c
    } else {
        // A private mount namespace: the chroot gets /sys (EAL's CPU and memory discovery),
        // /proc and our socket directory as its /tmp; nothing outlives testpmd.
        let r = t.root.display().to_string();
        let mut script = format!(
            "mount --bind /sys {r}/sys && mount --bind /proc {r}/proc && mount --bind {} {r}/tmp && exec chroot {r} {}",
            sh_quote(&dir.display().to_string()),
            sh_quote(&t.bin)
        );
        for a in args {
            script.push(' ');
            script.push_str(&sh_quote(a));
        }
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c", &script]);
        c
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .map_err(DpdkError::Spawn)?;
    Ok(TestpmdProc { child, log, side })
}

/// Runs the pair once and reads the receiving side's statistics over the window.
pub fn run(t: &Testpmd, o: &DpdkRunOptions) -> Result<DpdkRun, DpdkError> {
    let dir = std::env::temp_dir().join(format!("vdpa-emu-bench-dpdk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let res = run_in(t, o, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn run_in(t: &Testpmd, o: &DpdkRunOptions, dir: &Path) -> Result<DpdkRun, DpdkError> {
    let sock_inside = if t.root == Path::new("/") {
        dir.join("vh.sock")
    } else {
        PathBuf::from("/tmp/vh.sock")
    };
    let (dev_cpu, drv_cpu) = o.cpus;
    let lcores = format!("{},{}", dev_cpu.min(drv_cpu), dev_cpu.max(drv_cpu));
    let q = o.queue_pairs;
    let (vh_mode, vu_mode) = if o.dir == "tx" {
        ("rxonly", "txonly")
    } else {
        ("txonly", "rxonly")
    };
    let app = |mode: &str| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "--".into(),
            format!("--forward-mode={mode}"),
            "--stats-period=1".into(),
            "--nb-cores=1".into(),
            format!("--rxq={q}"),
            format!("--txq={q}"),
            "--total-num-mbufs=16384".into(),
        ];
        if mode == "txonly" {
            v.push(format!("--txpkts={}", o.frame));
        }
        v
    };
    // The device's side: forwarding lcore on the device's CPU, main lcore on the other.
    let mut vh_args: Vec<String> = vec![
        "-l".into(),
        lcores.clone(),
        "--main-lcore".into(),
        drv_cpu.to_string(),
        "--no-huge".into(),
        "-m".into(),
        "256".into(),
        "--no-pci".into(),
        "--no-shconf".into(),
        "--file-prefix=vdpaemu-vh".into(),
        format!(
            "--vdev=net_vhost0,iface={},queues={q}",
            sock_inside.display()
        ),
    ];
    vh_args.extend(app(vh_mode));
    let mut vu_args: Vec<String> = vec![
        "-l".into(),
        lcores,
        "--main-lcore".into(),
        dev_cpu.to_string(),
        "--no-huge".into(),
        "-m".into(),
        "256".into(),
        "--single-file-segments".into(),
        "--no-pci".into(),
        "--no-shconf".into(),
        "--file-prefix=vdpaemu-vu".into(),
        format!(
            "--vdev=net_virtio_user0,path={},queues={q}",
            sock_inside.display()
        ),
    ];
    vu_args.extend(app(vu_mode));

    let sock_host = dir.join("vh.sock");
    let mut vh = spawn_testpmd(t, dir, "vhost", &vh_args)?;
    let t0 = Instant::now();
    while !sock_host.exists() {
        if let Ok(Some(st)) = vh.child.try_wait() {
            return Err(vh.fail(format!("exited ({st}) before its socket appeared")));
        }
        if t0.elapsed() > Duration::from_secs(20) {
            return Err(vh.fail("made no socket in 20 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut vu = spawn_testpmd(t, dir, "virtio-user", &vu_args)?;
    // Wait for traffic at the receiving side.
    let t0 = Instant::now();
    loop {
        for p in [&mut vh, &mut vu] {
            if let Ok(Some(st)) = p.child.try_wait() {
                return Err(p.fail(format!("exited ({st}) before traffic flowed")));
            }
        }
        let measured = if o.dir == "tx" { &vh } else { &vu };
        if parse_stats(&measured.log())
            .iter()
            .any(|b| b.rx_packets > 0)
        {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let other = if o.dir == "tx" { &vu } else { &vh };
            let why = format!(
                "saw no traffic in 30 s; the other side ({}) says:\n{}",
                other.side,
                other.tail()
            );
            return Err(measured.fail(why));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let vh_pid = vh.child.id();
    std::thread::sleep(Duration::from_millis(1000 * o.warmup as u64 + 500));
    let sampler = o
        .probe
        .map(Sampler::start)
        .transpose()
        .map_err(DpdkError::Probe)?;
    let (c0, w0) = (stat_cpu(vh_pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs(o.seconds as u64));
    let (c1, wall) = (stat_cpu(vh_pid)?, w0.elapsed());
    let placement = sampler.map(Sampler::finish);
    // A starved testpmd prints late: wait (up to 15 s) for the blocks the window needs.
    let t1 = Instant::now();
    loop {
        let measured = if o.dir == "tx" { &vh } else { &vu };
        let blocks = parse_stats(&measured.log());
        let have = blocks
            .iter()
            .position(|b| b.rx_packets > 0)
            .map_or(0, |first| blocks.len() - first);
        if have > 1 + o.warmup + o.seconds || t1.elapsed() > Duration::from_secs(15) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    vu.stop();
    vh.stop();
    let measured = if o.dir == "tx" { &vh } else { &vu };
    let blocks = parse_stats(&measured.log());
    let (pps, packets) = window(&blocks, o.warmup, o.seconds).ok_or_else(|| {
        measured.fail(format!(
            "printed {} statistics blocks, fewer than the {} s window needs",
            blocks.len(),
            o.warmup + o.seconds
        ))
    })?;
    let cpu = c1.saturating_sub(c0).as_secs_f64();
    let frames = pps * wall.as_secs_f64();
    Ok(DpdkRun {
        dir: o.dir,
        frame: o.frame,
        queue_pairs: q,
        pps,
        packets,
        seconds: o.seconds,
        device_cpu_us_per_frame: (frames > 0.0).then(|| cpu * 1e6 / frames),
        device_cpu_percent: Some(cpu / wall.as_secs_f64() * 100.0),
        round: 0,
        placement,
        attempts: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "
Port statistics ====================================
  ######################## NIC statistics for port 0  ########################
  RX-packets: 0          RX-missed: 0          RX-bytes:  0
  RX-errors: 0
  RX-nombuf:  0
  TX-packets: 0          TX-errors: 0          TX-bytes:  0

  Throughput (since last show)
  Rx-pps:            0          Rx-bps:            0
  Tx-pps:            0          Tx-bps:            0
  ############################################################################
  ######################## NIC statistics for port 0  ########################
  RX-packets: 6647680    RX-missed: 0          RX-bytes:  425451520
  TX-packets: 0          TX-errors: 0          TX-bytes:  0
  Rx-pps:      3321378          Rx-bps:   1700545792
  Tx-pps:            0          Tx-bps:            0
  ######################## NIC statistics for port 0  ########################
  RX-packets: 35354400   RX-missed: 0          RX-bytes:  2262681600
  TX-packets: 0          TX-errors: 0          TX-bytes:  0
  Rx-pps:     14351581          Rx-bps:   7348009688
  Tx-pps:            0          Tx-bps:            0
  ######################## NIC statistics for port 0  ########################
  RX-packets: 47879328   RX-missed: 0          RX-bytes:  3064276992
  TX-packets: 0          TX-errors: 0          TX-bytes:  0
  Rx-pps:      6261748          Rx-bps:   3206015072
  Tx-pps:            0          Tx-bps:            0
  ######################## NIC statistics for port 0  ########################
  RX-packets: 57687360   RX-missed: 0          RX-bytes:  3691991040
  TX-packets: 0          TX-errors: 0          TX-bytes:  0
  Rx-pps:      4903390          Rx-bps:   2510535856
  Tx-pps:            0          Tx-bps:            0
  ---------------------- Forward statistics for port 0  ----------------------
  RX-packets: 57687360       RX-dropped: 0             RX-total: 57687360
";

    #[test]
    fn stats_blocks_and_window() {
        let b = parse_stats(LOG);
        assert_eq!(b.len(), 5);
        assert_eq!(b[1].rx_packets, 6_647_680);
        assert_eq!(b[2].rx_pps, 14_351_581);
        // The first block with traffic is partial; warmup 1 skips the next; 2 s follow.
        let (pps, packets) = window(&b, 1, 2).unwrap();
        assert_eq!(pps, (6_261_748.0 + 4_903_390.0) / 2.0);
        assert_eq!(packets, 57_687_360 - 35_354_400);
        // Not enough blocks for the window.
        assert_eq!(window(&b, 1, 3), None);
        assert_eq!(window(&b[..1], 0, 1), None);
    }

    #[test]
    fn locate_line() {
        let t = parse_locate(
            "noise\nDPDK-TESTPMD source=e2e-chroot root=/c/root bin=/usr/bin/dpdk-testpmd version=24.11.8-0+deb13u1\n",
        )
        .unwrap();
        assert_eq!(t.source, "e2e-chroot");
        assert_eq!(t.root, PathBuf::from("/c/root"));
        assert_eq!(t.bin, "/usr/bin/dpdk-testpmd");
        assert_eq!(t.version, "24.11.8-0+deb13u1");
        assert_eq!(parse_locate("DPDK-TESTPMD source=host\n"), None);
        assert_eq!(parse_locate(""), None);
    }
}
