//! `vdpa-emu`: the command line of the vDPA NIC model.

// The doc comments here are clap's help texts, where `tx<P>` is the usual placeholder notation
// (as in the man pages and docs/ctl.md), not an HTML tag.
#![allow(rustdoc::invalid_html_tags)]

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "vdpa-emu",
    version,
    about = "A software model of a vDPA-capable (IFC VF-style) virtio-net NIC"
)]
struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Loopback traffic through the built-in model, with its counters printed.
    Demo {
        /// Queue pairs (1..=32) [default: 4, or the profile's].
        #[arg(long, value_parser = parse_queue_pairs)]
        queue_pairs: Option<u16>,
        /// Device profile: a built-in name (full, ifcvf; see `vdpa-emu profiles`) or a TOML
        /// file (docs/profiles.md) [default: full].
        #[arg(long, value_parser = parse_profile)]
        profile: Option<bar_registers::Profile>,

        /// Frames to send (at least 1).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
        frames: u64,
        /// Random seed (frame sizes and payloads).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Capture every frame into this pcapng file (interfaces tx<P>/rx<P> per queue pair).
        #[arg(long)]
        pcap: Option<std::path::PathBuf>,
    },
    /// Print the register map (the datasheet) rendered from the declarations the device decodes
    /// with: Markdown (docs/registers.md is the default output), a C header, or JSON.
    Registers {
        /// Output format.
        #[arg(long, value_enum, default_value_t = RegistersFormat::Markdown)]
        format: RegistersFormat,
        /// Queue pairs (1..=32): array registers (doorbells, MSI-X entries, LM ring states) have
        /// one entry per queue or vector.
        #[arg(long, default_value_t = bar_registers::render::DOC_QUEUE_PAIRS, value_parser = parse_queue_pairs)]
        queue_pairs: u16,
        /// Show only this LM block layout (dpdk or linux) [default: both].
        #[arg(long, value_parser = parse_lm_layout)]
        lm_layout: Option<bar_registers::LmLayout>,
    },
    /// Validate a device's vDPA HW prerequisites: the built-in model in-process, or any
    /// vfio-user device with --socket.
    Validate {
        /// Validate the vfio-user device at this socket instead of the built-in model (it must
        /// loop frames back, e.g. `vdpa-emu serve --port loopback`). One connection is made.
        #[arg(long, conflicts_with = "vfio")]
        socket: Option<std::path::PathBuf>,
        /// With --socket: the device's control socket, for the checks that need the VMM side
        /// (GUEST_ANNOUNCE on request) [default: SOCKET.ctl when it exists; without one those
        /// checks are NOT RUN].
        #[arg(long, requires = "socket")]
        ctl: Option<std::path::PathBuf>,
        /// Validate the PCI function at this address (DDDD:BB:DD.F), bound to vfio-pci, through
        /// Linux VFIO (a board, or a device in a guest behind a vIOMMU). It must loop frames
        /// back. See docs/validate.md.
        #[arg(long, value_parser = parse_bdf)]
        vfio: Option<sim_harness::validate::vfio::Bdf>,
        /// Open a new session for every check group instead of one for the whole run (only
        /// for devices that need it; a server that accepts one connection then fails).
        #[arg(long)]
        reconnect_per_group: bool,
        /// Queue pairs of the built-in model (1..=32; a served device has its own) [default: 4,
        /// or the profile's].
        #[arg(long, value_parser = parse_queue_pairs, conflicts_with_all = ["socket", "vfio"])]
        queue_pairs: Option<u16>,
        /// LM block layout the device presents: dpdk or linux [default: dpdk, or the profile's].
        #[arg(long, value_parser = parse_lm_layout)]
        lm_layout: Option<bar_registers::LmLayout>,
        /// Device profile: a built-in name (full, ifcvf; see `vdpa-emu profiles`) or a TOML
        /// file (docs/profiles.md). The built-in model is created with it [default: full]; with
        /// --socket or --vfio it is what the device is expected to offer [default: whatever the
        /// device offers, read from it]. Groups that need a feature the profile does not offer
        /// are NOT RUN.
        #[arg(long, value_parser = parse_profile)]
        profile: Option<bar_registers::Profile>,
        /// Dirty-log granularity the device declares: a power of two from 4K (4K, 64K, 2M).
        #[arg(long, default_value = "4K", value_parser = parse_log_granularity)]
        log_granularity: u64,
        /// Inject a device bug into the built-in model (see --list-quirks). A served device
        /// gets its quirks from `vdpa-emu serve --quirk`.
        #[arg(long = "quirk", value_parser = parse_quirk, conflicts_with_all = ["socket", "vfio"])]
        quirks: Vec<device::Quirk>,
        /// List the quirks and exit.
        #[arg(long)]
        list_quirks: bool,
        /// Skip the 2^16 index wrap-around check (65,536+ completions).
        #[arg(long)]
        no_wraparound: bool,
        /// Run only this check group (repeatable; default all). An unknown id is an error.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Report format.
        #[arg(long, default_value = "table", value_parser = ["table", "json", "junit"])]
        format: String,
    },
    /// Serve the NIC over vfio-user (QEMU >= 10.1 -device vfio-user-pci) until SIGINT/SIGTERM.
    Serve {
        /// vfio-user socket path (removed on exit).
        #[arg(long)]
        socket: std::path::PathBuf,
        /// Queue pairs (1..=32) [default: 4, or the profile's].
        #[arg(long, value_parser = parse_queue_pairs)]
        queue_pairs: Option<u16>,
        /// Device profile: a built-in name (full, ifcvf; see `vdpa-emu profiles`) or a TOML
        /// file (docs/profiles.md) [default: full].
        #[arg(long, value_parser = parse_profile)]
        profile: Option<bar_registers::Profile>,
        /// MAC address in the device config.
        #[arg(long, default_value = "52:54:00:12:34:56", value_parser = sim_harness::serve::parse_mac)]
        mac: [u8; 6],
        /// Wire: loopback, null (count and discard), gen:SIZE (receive-side generator), tap:IFNAME (host TAP, needs root; the kernel finishes checksums and segments GSO frames), tap:IFNAME:no-offloads (the device does, the TAP sees wire frames) or unix:PATH (link to another device).
        #[arg(long, default_value = "loopback")]
        port: sim_harness::ports::PortSpec,
        /// LM block layout: dpdk or linux [default: dpdk, or the profile's].
        #[arg(long, value_parser = parse_lm_layout)]
        lm_layout: Option<bar_registers::LmLayout>,
        /// Do not offer the packed ring (VIRTIO_F_RING_PACKED) even if the profile does: guests
        /// use split rings.
        #[arg(long)]
        no_packed: bool,
        /// Take every received frame through the receive path's general code, not its express
        /// lane for plain frames to a driver without receive offloads (the two must behave
        /// alike: this tells a suspected lane bug from the rest).
        #[arg(long)]
        no_rx_express: bool,
        /// Read every split ring descriptor on its own, as a design that fetches one descriptor
        /// at a time, instead of the head descriptors of adjacent chains in one read (up to 16).
        #[arg(long)]
        no_desc_runs: bool,
        /// Doorbell layout in BAR0: compact (notify_off_multiplier 4, all doorbells in one page)
        /// or page-per-queue (4096: one page per queue, which DPDK's virtio-user over
        /// vhost-vdpa needs to map when the device offers VIRTIO_F_NOTIFICATION_DATA).
        #[arg(long, default_value = "compact", value_parser = parse_notify_layout)]
        notify_layout: bar_registers::NotifyLayout,
        /// Inject a device bug into the served device (see `vdpa-emu validate --list-quirks`),
        /// e.g. to check that a real driver's migration catches it.
        #[arg(long = "quirk", value_parser = parse_quirk)]
        quirks: Vec<device::Quirk>,
        /// Seconds a client may stall inside a message, or leave a reply unread, before it is
        /// dropped (idle clients between messages are never dropped).
        #[arg(long, default_value = "5", value_parser = parse_timeout)]
        client_timeout: std::time::Duration,
        /// Microseconds the server keeps polling its socket after each message before it
        /// sleeps (0: never): back-to-back synchronous messages, such as QEMU's DMA_MAP /
        /// DMA_UNMAP per IOTLB entry under a strict guest vIOMMU, then cost one wakeup per
        /// round trip instead of two. An idle client costs nothing.
        #[arg(long, default_value = "200", value_parser = clap::value_parser!(u64).range(0..=100_000))]
        reply_spin_us: u64,
        /// Control socket for `vdpa-emu ctl` (JSON lines; owner-only) [default: SOCKET.ctl].
        #[arg(long, conflicts_with = "no_ctl")]
        ctl: Option<std::path::PathBuf>,
        /// Open no control socket.
        #[arg(long)]
        no_ctl: bool,
        /// Capture every frame into this pcapng file from the start (stop or restart it with
        /// `vdpa-emu ctl pcap`).
        #[arg(long)]
        pcap: Option<std::path::PathBuf>,
        /// Doorbell path: mmap (BAR0's notify window is shared memory a doorbell engine
        /// polls; QEMU then stops posting trapped writes) or trap (every doorbell is a
        /// REGION_WRITE message). See docs/doorbells.md.
        #[arg(long, default_value = "mmap", value_parser = sim_harness::serve::parse_doorbell_mode)]
        doorbell: sim_harness::serve::DoorbellMode,
        /// How the doorbell engine polls the mapped notify window, in microseconds: min (first
        /// sleep after a kick or device activity, then doubling), warm (longest sleep while the
        /// last event is recent), warm-for, idle (longest sleep when idle), spin (polling with
        /// CPU pauses right after a kick), busy (yield-polling after that). Keys left out keep
        /// their defaults.
        #[arg(long, default_value = "min=20,warm=500,warm-for=100000,idle=10000,spin=0,busy=0", value_parser = sim_harness::serve::parse_poll_policy)]
        doorbell_poll: device::doorbell::PollPolicy,
        /// How the doorbell engine thread asks to be scheduled: normal, slice (a 100 us EEVDF
        /// slice: wakes sooner) or prompt (SCHED_FIFO priority 1 if allowed, else slice: the
        /// lowest kick latency, but it preempts a vCPU on the same core; docs/doorbells.md).
        #[arg(long, default_value = "normal", value_parser = sim_harness::serve::parse_sched)]
        doorbell_sched: device::doorbell::SchedRequest,
    },
    /// Talk to a served device's control socket: counters, link, announce, quirks, faults,
    /// capture (the protocol: docs/ctl.md).
    Ctl(sim_harness::ctl::cli::CtlArgs),
    /// Live-migrate a guest between two device instances under traffic and verify nothing is lost.
    Migrate {
        /// Guest RAM (e.g. 64M, 1G, 64G). Allocated lazily on both sides: a run needs memory
        /// for what the guest writes, not for --memory (pages never written are sent as zero
        /// pages without being read).
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        memory: u64,
        /// Queue pairs (1..=32) [default: 1, or the profile's].
        #[arg(long, value_parser = parse_queue_pairs)]
        queue_pairs: Option<u16>,
        /// Device profile of the source (and, unless --dest-profile, of the destination): a
        /// built-in name (full, ifcvf) or a TOML file [default: full].
        #[arg(long, value_parser = parse_profile)]
        profile: Option<bar_registers::Profile>,
        /// Device profile of the destination [default: the source's]. A destination that does
        /// not offer exactly the source's features is refused before anything runs.
        #[arg(long, value_parser = parse_profile)]
        dest_profile: Option<bar_registers::Profile>,
        /// Frames per second in each direction (0 = as fast as possible).
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// Dirty-log granularity: a power of two from 4K (4K, 64K, 2M, ...).
        #[arg(long, default_value = "4K", value_parser = parse_log_granularity)]
        log_granularity: u64,
        /// LM block layout: dpdk or linux [default: dpdk, or the profile's].
        #[arg(long, value_parser = parse_lm_layout)]
        lm_layout: Option<bar_registers::LmLayout>,
        /// Inject a device bug on the source (see `vdpa-emu migrate --list-quirks`).
        #[arg(long = "quirk", value_parser = parse_quirk)]
        quirks: Vec<device::Quirk>,
        /// List the quirks and exit.
        #[arg(long)]
        list_quirks: bool,
        /// Downtime limit in milliseconds (QEMU's downtime-limit, same default): pre-copy stops
        /// once the dirty pages left, at the copy rate measured in the last round, would be
        /// copied within it.
        #[arg(long, value_name = "MS", default_value_t = 300,
              value_parser = clap::value_parser!(u64).range(..=sim_harness::migrate::policy::MAX_DOWNTIME_MS))]
        max_downtime: u64,
        /// Instead of --max-downtime: stop pre-copy when a round copies fewer pages than this
        /// (a fixed page threshold).
        #[arg(long, value_name = "PAGES", conflicts_with = "max_downtime")]
        dirty_threshold: Option<u64>,
        /// Most pre-copy rounds; at the limit stop-and-copy is forced and the report says the
        /// migration did not converge.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
        max_rounds: u32,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Back-to-back migrations of the same guest (at least 1).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
        /// Report format.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// Also write each migration's pre-copy timeline (rounds, pages copied and dirtied,
        /// stop-and-copy and downtime) as an SVG chart to this file.
        #[arg(long)]
        plot: Option<std::path::PathBuf>,
        /// Capture every frame of every device instance into this pcapng file (interfaces
        /// m0-tx<P>/m0-rx<P> for the source, mN-... for the destination of migration N).
        #[arg(long)]
        pcap: Option<std::path::PathBuf>,
    },
    /// Device profiles: list the built-ins, or show one profile's features (a built-in name or
    /// a TOML file; docs/profiles.md).
    Profiles {
        /// A built-in profile name or a TOML file [default: list the built-ins].
        profile: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Scenario files (TOML): devices, ordered steps, expectations (docs/scenarios.md).
    Scenario {
        #[command(subcommand)]
        cmd: ScenarioCmd,
    },
    /// Measurements of the model (docs/bus-model.md).
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
    /// Print a shell completion script, e.g. `vdpa-emu completions bash >
    /// /etc/bash_completion.d/vdpa-emu`.
    Completions {
        /// bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Write a man page for vdpa-emu and each of its commands into DIR (`make docs` writes
    /// docs/man/).
    Man {
        /// Output directory (created if missing).
        dir: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// PCIe bus overhead per packet by kind of DMA: split vs packed ring, frame size, batch,
    /// event idx, dirty logging.
    Bus(sim_harness::bench::bus::BusArgs),
    /// What a doorbell costs per path (mmap, trapped posted, trapped waiting) against `serve`
    /// processes: idle CPU, kick latency, CPU per kick (docs/doorbells.md).
    Doorbells(sim_harness::bench::doorbells::DoorbellArgs),
    /// Frames per second through a `serve` process driven over vfio-user by the driver model
    /// in this one (TX, RX, loopback; 64/1500 B; 1/4 queue pairs; split/packed), next to DPDK's
    /// vhost-user pair in the same run (docs/bench.md).
    Datapath(sim_harness::bench::datapath::DatapathArgs),
}

#[derive(Subcommand)]
enum ScenarioCmd {
    /// Run scenario files (directories run every *.toml in them). Exit status: 0 all passed,
    /// 1 a scenario failed, 2 a file is malformed.
    Run {
        /// Scenario files or directories.
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// Report format.
        #[arg(long, default_value = "table", value_parser = ["table", "json", "junit"])]
        format: String,
        /// Capture every frame of every device into this pcapng file (interfaces named
        /// SCENARIO/DEVICE-tx<P> and -rx<P>).
        #[arg(long)]
        pcap: Option<std::path::PathBuf>,
        /// Device profile for every device of every scenario, overriding their `profile` keys:
        /// a built-in name (full, ifcvf) or a TOML file.
        #[arg(long, value_parser = parse_profile)]
        profile: Option<bar_registers::Profile>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => {
            let m = match s[i..]
                .to_ascii_uppercase()
                .trim_end_matches("IB")
                .trim_end_matches('B')
            {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                u => return Err(format!("unknown size unit {u:?} (use K, M or G)")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("not a size: {s:?}"))
}

/// `vdpa-emu registers --format`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum RegistersFormat {
    Markdown,
    CHeader,
    Json,
}

fn parse_queue_pairs(s: &str) -> Result<u16, String> {
    let max = bar_registers::layout::MAX_QUEUE_PAIRS;
    match s.trim().parse::<u16>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("queue pairs must be 1..={max}, got {}", s.trim())),
    }
}

/// A dirty-log granularity: one bit of the vhost log per this many bytes, a power of two of at
/// least a 4 KiB page (the vhost-user log format, VHOST_LOG_PAGE).
fn parse_log_granularity(s: &str) -> Result<u64, String> {
    let g = parse_size(s)?;
    if g < 4096 || !g.is_power_of_two() {
        return Err(format!(
            "log granularity must be a power of two of at least 4K (4K, 64K, 2M), got {g} bytes"
        ));
    }
    Ok(g)
}

fn parse_bdf(s: &str) -> Result<sim_harness::validate::vfio::Bdf, String> {
    s.parse()
        .map_err(|e: sim_harness::validate::vfio::VfioError| e.to_string())
}

fn parse_profile(s: &str) -> Result<bar_registers::Profile, String> {
    sim_harness::profile::load(s).map_err(|e| e.to_string())
}

fn parse_notify_layout(s: &str) -> Result<bar_registers::NotifyLayout, String> {
    match s {
        "compact" => Ok(bar_registers::NotifyLayout::Compact),
        "page-per-queue" => Ok(bar_registers::NotifyLayout::PagePerQueue),
        _ => Err(format!(
            "unknown notify layout {s:?} (compact or page-per-queue)"
        )),
    }
}

fn parse_lm_layout(s: &str) -> Result<bar_registers::LmLayout, String> {
    bar_registers::LmLayout::parse(s)
        .ok_or_else(|| format!("unknown LM layout {s:?}: use dpdk or linux"))
}

/// Parses a positive number of seconds (fractions allowed, at most a day).
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("timeout {s:?}: expected seconds, e.g. 5 or 0.5"))?;
    if !(secs > 0.0 && secs <= 86400.0) {
        return Err(format!(
            "timeout {s:?}: must be above 0 and at most 86400 seconds"
        ));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

fn parse_quirk(s: &str) -> Result<device::Quirk, String> {
    device::Quirk::parse(s).ok_or_else(|| {
        format!(
            "unknown quirk {s:?}; known: {}",
            device::Quirk::ALL.map(|q| q.name()).join(", ")
        )
    })
}

/// The profile (full unless given) with the queue pairs and LM layout it fixes, checked
/// against the command line's.
fn profiled(
    profile: Option<bar_registers::Profile>,
    queue_pairs: Option<u16>,
    lm_layout: Option<bar_registers::LmLayout>,
    default_pairs: u16,
) -> Result<
    (bar_registers::Profile, u16, bar_registers::LmLayout),
    sim_harness::profile::ProfileLoadError,
> {
    let p = profile.unwrap_or_default();
    let qp = sim_harness::profile::queue_pairs(&p, queue_pairs, default_pairs)?;
    let lm = sim_harness::profile::lm_layout(&p, lm_layout)?;
    Ok((p, qp, lm))
}

fn list_quirks() {
    for q in device::Quirk::ALL {
        println!("{:<28} {}", q.name(), q.describe());
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Serve { .. }) {
        // A report piped into `head` ends the process quietly, as for any Unix filter, instead
        // of a panic on EPIPE (Rust ignores SIGPIPE by default). `serve` keeps it ignored: a
        // client that goes away must not kill the server.
        // SAFETY: restoring a signal's default disposition has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let level = match cli.verbose {
        // serve is a daemon: its session lines (connect, disconnect, DMA map statistics) show
        0 if matches!(cli.cmd, Cmd::Serve { .. }) => "info",
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match cli.cmd {
        Cmd::Demo {
            queue_pairs,
            profile,
            frames,
            seed,
            pcap,
        } => match profiled(
            profile.clone(),
            queue_pairs,
            None,
            // One pair where the profile has no multiqueue.
            if profile
                .as_ref()
                .is_none_or(|p| p.offers(bar_registers::virtio::bits::MQ))
            {
                4
            } else {
                1
            },
        )
        .map_err(|e| e.to_string())
        .and_then(|(p, qp, _)| {
            sim_harness::demo::run(qp, frames, seed, pcap.as_deref(), p).map_err(|e| e.to_string())
        }) {
            Ok(r) => {
                print!("{}", r.text);
                if r.tracker.clean() && r.tracker.delivered == r.frames {
                    ExitCode::SUCCESS
                } else {
                    eprintln!(
                        "vdpa-emu demo: frames were lost, duplicated, reordered or corrupted"
                    );
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("vdpa-emu demo: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Migrate {
            list_quirks: true, ..
        } => {
            list_quirks();
            ExitCode::SUCCESS
        }
        Cmd::Migrate {
            memory,
            queue_pairs,
            profile,
            dest_profile,
            rate,
            log_granularity,
            lm_layout,
            quirks,
            max_downtime,
            dirty_threshold,
            max_rounds,
            seed,
            count,
            format,
            plot,
            pcap,
            ..
        } => {
            use sim_harness::migrate::policy::StopPolicy;
            let (profile, queue_pairs, lm_layout) =
                match profiled(profile, queue_pairs, lm_layout, 1) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("vdpa-emu migrate: {e}");
                        return ExitCode::from(2);
                    }
                };
            let o = sim_harness::migrate::MigrateOptions {
                profile,
                dest_profile,
                memory,
                queue_pairs,
                rate,
                log_granularity,
                lm_layout,
                quirks: quirks.into_iter().collect(),
                stop: match dirty_threshold {
                    Some(t) => StopPolicy::DirtyThreshold(t),
                    None => StopPolicy::MaxDowntime(std::time::Duration::from_millis(max_downtime)),
                },
                max_rounds,
                seed,
                count,
                progress: true,
                pcap,
                ..Default::default()
            };
            match sim_harness::migrate::run(&o) {
                Ok(r) => {
                    if let Some(path) = &plot {
                        if let Err(e) = std::fs::write(path, sim_harness::migrate::plot::svg(&r)) {
                            eprintln!("vdpa-emu migrate: writing {}: {e}", path.display());
                            return ExitCode::from(2);
                        }
                    }
                    if format == "json" {
                        println!("{}", r.json());
                    } else {
                        print!("{}", r.table());
                    }
                    if r.clean() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("vdpa-emu migrate: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Validate {
            list_quirks: true, ..
        } => {
            list_quirks();
            ExitCode::SUCCESS
        }
        Cmd::Validate {
            socket,
            ctl,
            vfio,
            reconnect_per_group,
            queue_pairs,
            lm_layout,
            profile,
            log_granularity,
            quirks,
            no_wraparound,
            groups,
            format,
            ..
        } => {
            let in_process = socket.is_none() && vfio.is_none();
            // The built-in model is created with the profile (full by default); a device
            // reached over --socket or --vfio is expected to offer it, if one is given.
            let expected = profile.clone();
            let (profile, queue_pairs, lm_layout) =
                match profiled(profile, queue_pairs, lm_layout, 4) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("vdpa-emu validate: {e}");
                        return ExitCode::from(2);
                    }
                };
            let mut cfg = device::DeviceConfig::default().with_profile(profile.clone());
            cfg.layout.queue_pairs = queue_pairs;
            cfg.layout.lm_layout = lm_layout;
            cfg.log_granularity = log_granularity;
            cfg.quirks = quirks.into_iter().collect();
            if let Err(e) = bar_registers::DeviceLayout::new(cfg.layout.clone()) {
                eprintln!("vdpa-emu validate: {e}");
                return ExitCode::from(2);
            }
            let o = sim_harness::validate::ValidateOptions {
                lm_layout,
                log_granularity,
                wraparound: !no_wraparound,
                reconnect_per_group,
                profile: if in_process { Some(profile) } else { expected },
            };
            use sim_harness::validate::{self as v, Target};
            let target: Box<dyn Target> = match (socket, vfio) {
                (Some(path), _) => {
                    let mut t = v::OverSocket::new(path);
                    if ctl.is_some() {
                        t.ctl = ctl;
                    }
                    Box::new(t)
                }
                (None, Some(bdf)) => Box::new(v::vfio::OverVfio::new(bdf)),
                (None, None) => Box::new(v::InProcess { cfg }),
            };
            let r = match v::run_groups(target.as_ref(), &o, &groups) {
                Ok(r) => r,
                Err(e) => {
                    // Could not reach or drive the device: nothing was learnt about it.
                    eprintln!("vdpa-emu validate: could not open the device: {e}");
                    return ExitCode::from(v::EXIT_UNREACHABLE);
                }
            };
            match format.as_str() {
                "json" => println!("{}", r.json()),
                "junit" => print!("{}", r.junit()),
                _ => print!("{}", r.table()),
            }
            if let Some(why) = &r.aborted {
                eprintln!("vdpa-emu validate: lost the device: {why}");
            }
            ExitCode::from(r.exit_code())
        }
        Cmd::Registers {
            format,
            queue_pairs,
            lm_layout,
        } => {
            use bar_registers::{render::Datasheet, LmLayout};
            let ds = Datasheet {
                queue_pairs,
                lm_layouts: lm_layout.map_or(vec![LmLayout::Dpdk, LmLayout::Linux], |l| vec![l]),
            };
            let out = match format {
                RegistersFormat::Markdown => ds.markdown(),
                RegistersFormat::CHeader => ds.c_header(),
                RegistersFormat::Json => ds.json().map(|j| {
                    serde_json::to_string_pretty(&j).expect("the datasheet serializes") + "\n"
                }),
            };
            match out {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vdpa-emu registers: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Serve {
            socket,
            queue_pairs,
            profile,
            mac,
            port,
            lm_layout,
            no_packed,
            no_rx_express,
            no_desc_runs,
            notify_layout,
            quirks,
            client_timeout,
            reply_spin_us,
            ctl,
            no_ctl,
            pcap,
            doorbell,
            mut doorbell_poll,
            doorbell_sched,
        } => {
            let ctl = (!no_ctl)
                .then(|| ctl.unwrap_or_else(|| sim_harness::ctl::default_ctl_path(&socket)));
            doorbell_poll.sched = doorbell_sched;
            let (profile, queue_pairs, lm_layout) =
                match profiled(profile, queue_pairs, lm_layout, 4) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("vdpa-emu serve: {e}");
                        return ExitCode::FAILURE;
                    }
                };
            match sim_harness::serve::run(&sim_harness::serve::ServeOptions {
                socket,
                queue_pairs,
                profile,
                mac,
                port,
                lm_layout,
                no_packed,
                no_rx_express,
                no_desc_runs,
                notify_layout,
                quirks: quirks.into_iter().collect(),
                client_timeout,
                reply_spin: std::time::Duration::from_micros(reply_spin_us),
                ctl,
                pcap,
                doorbell,
                doorbell_poll,
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vdpa-emu serve: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Scenario {
            cmd:
                ScenarioCmd::Run {
                    files,
                    format,
                    pcap,
                    profile,
                },
        } => {
            let files = match sim_harness::scenario::collect_files(&files) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("vdpa-emu scenario run: {e}");
                    return ExitCode::from(2);
                }
            };
            let capture = match pcap.as_deref().map(sim_harness::pcap::PcapCapture::create) {
                Some(Err(e)) => {
                    eprintln!("vdpa-emu scenario run: {e}");
                    return ExitCode::from(2);
                }
                c => c.map(Result::unwrap),
            };
            let r = sim_harness::scenario::run_collected_with(
                &files,
                true,
                capture.as_ref(),
                profile.as_ref(),
            );
            if let Some(c) = capture {
                match c.finish() {
                    Ok(s) => eprintln!(
                        "vdpa-emu scenario run: captured {} frames ({} bytes) into {}",
                        s.frames,
                        s.bytes,
                        s.path.display()
                    ),
                    Err(e) => {
                        eprintln!("vdpa-emu scenario run: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            match format.as_str() {
                "json" => println!("{}", r.json()),
                "junit" => print!("{}", r.junit()),
                _ => print!("{}", r.table()),
            }
            ExitCode::from(r.exit_code())
        }
        Cmd::Bench {
            cmd: BenchCmd::Bus(a),
        } => sim_harness::bench::bus::cli(&a),
        Cmd::Ctl(a) => sim_harness::ctl::cli::run(&a),
        Cmd::Bench {
            cmd: BenchCmd::Doorbells(a),
        } => sim_harness::bench::doorbells::cli(&a),
        Cmd::Profiles { profile, json } => {
            use sim_harness::profile as pr;
            let shown = match profile.as_deref().map(pr::load).transpose() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("vdpa-emu profiles: {e}");
                    return ExitCode::from(2);
                }
            };
            match (shown, json) {
                (Some(p), false) => print!("{}", pr::show_table(&p)),
                (Some(p), true) => println!(
                    "{}",
                    sim_harness::report_json::to_json(&pr::ProfileJson::of(&p))
                ),
                (None, false) => print!("{}", pr::list_table(&bar_registers::Profile::builtins())),
                (None, true) => {
                    let all: Vec<pr::ProfileJson> = bar_registers::Profile::builtins()
                        .iter()
                        .map(pr::ProfileJson::of)
                        .collect();
                    println!("{}", sim_harness::report_json::to_json(&all));
                }
            }
            ExitCode::SUCCESS
        }
        Cmd::Bench {
            cmd: BenchCmd::Datapath(a),
        } => sim_harness::bench::datapath::cli(&a),
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "vdpa-emu", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Cmd::Man { dir } => {
            let written = std::fs::create_dir_all(&dir).and_then(|()| {
                clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir)
            });
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vdpa-emu man: writing {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}
