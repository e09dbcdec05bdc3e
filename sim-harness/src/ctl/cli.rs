//! `vdpa-emu ctl`: one request to a served device's control socket, printed as a table or
//! JSON (`--json` prints the server's response line as it came).

use super::client::{default_ctl_path, CtlClient, CtlError};
use super::protocol::{Request, Response};
use super::stats::StatsReport;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `vdpa-emu ctl`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The control socket (as `serve --ctl` opened it).
    #[arg(long, conflicts_with = "socket", required_unless_present = "socket")]
    pub ctl: Option<PathBuf>,
    /// The device's vfio-user socket: its control socket is SOCKET.ctl (serve's default).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Print the server's JSON response instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the server's answer.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

/// What to ask.
#[derive(Debug, clap::Subcommand)]
pub enum CtlCmd {
    /// The server's version, protocol, commands, quirks and injectable faults.
    Hello,
    /// Every counter, per queue: device status, features, link, faults, IOMMU, dirty log,
    /// capture.
    Stats {
        /// Refresh every SECS seconds until interrupted (with per-queue frame rates).
        #[arg(long, value_name = "SECS", value_parser = parse_interval)]
        watch: Option<Duration>,
        /// With --watch: stop after this many refreshes.
        #[arg(long, requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Link up or down: config status LINK_UP changes and the driver gets a config interrupt.
    Link {
        #[arg(value_parser = ["up", "down"])]
        state: String,
    },
    /// Ask the guest to announce itself (VIRTIO_NET_S_ANNOUNCE; needs GUEST_ANNOUNCE negotiated).
    Announce,
    /// Switch an injectable hardware bug on or off on the live device (names: `vdpa-emu
    /// validate --list-quirks`). Datapath and ring-state bugs act at once; log-ignores-end at
    /// the next logging start; no-guest-announce at the next feature negotiation.
    Quirk {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        name: String,
    },
    /// Inject a fault: needs-reset (DEVICE_NEEDS_RESET now) or dma-fault (the next DMA access
    /// fails as an IOMMU fault would).
    Fault {
        #[arg(value_parser = ["inject"])]
        action: String,
        kind: String,
    },
    /// Start or stop a pcapng capture of every frame the device carries.
    Pcap {
        #[command(subcommand)]
        action: PcapAction,
    },
}

/// `ctl pcap start FILE` / `ctl pcap stop`.
#[derive(Debug, clap::Subcommand)]
pub enum PcapAction {
    /// Start capturing into FILE (written by the server; a relative path is taken from here).
    Start { file: PathBuf },
    /// Stop and close the file.
    Stop,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("interval {s:?}: expected 0.1 to 3600 seconds")),
    }
}

/// Exit status: 0 done, 1 the server refused, 2 the server could not be reached or answered
/// nonsense.
pub fn run(args: &CtlArgs) -> ExitCode {
    let path = match (&args.ctl, &args.socket) {
        (Some(p), _) => p.clone(),
        (None, Some(s)) => default_ctl_path(s),
        (None, None) => unreachable!("clap requires --ctl or --socket"),
    };
    let mut c = match CtlClient::connect(&path, Duration::from_secs(args.timeout)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vdpa-emu ctl: {e} (is `vdpa-emu serve` running with its control socket?)");
            return ExitCode::from(2);
        }
    };
    let req = match &args.cmd {
        CtlCmd::Stats {
            watch: Some(every),
            count,
        } => return watch(&mut c, *every, *count, args.json),
        CtlCmd::Hello => Request::Hello {},
        CtlCmd::Stats { watch: None, .. } => Request::Stats {},
        CtlCmd::Link { state } => Request::Link { up: state == "up" },
        CtlCmd::Announce => Request::Announce {},
        CtlCmd::Quirk { state, name } => Request::Quirk {
            name: name.clone(),
            on: state == "on",
        },
        CtlCmd::Fault { kind, .. } => Request::Fault {
            inject: kind.clone(),
        },
        CtlCmd::Pcap {
            action: PcapAction::Start { file },
        } => Request::PcapStart {
            // The server may run elsewhere in the file system: send the path as meant here.
            file: std::path::absolute(file).unwrap_or_else(|_| file.clone()),
        },
        CtlCmd::Pcap {
            action: PcapAction::Stop,
        } => Request::PcapStop {},
    };
    match c.call_raw(&req) {
        Ok(r) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&r).expect("responses serialize")
                );
            } else if r.ok {
                print!("{}", text(&req, &r));
            }
            if r.ok {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "vdpa-emu ctl: refused: {}",
                    r.error.as_deref().unwrap_or("no reason given")
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("vdpa-emu ctl: {e}");
            ExitCode::from(2)
        }
    }
}

/// A response to `req` as text for a person.
fn text(req: &Request, r: &Response) -> String {
    let mut o = String::new();
    if let Some(h) = &r.hello {
        o += &format!(
            "{} (control protocol {})\ncommands: {}\nquirks: {}\nfaults: {}\n",
            h.server,
            h.protocol,
            h.commands.join(", "),
            h.quirks.join(", "),
            h.faults.join(", ")
        );
    }
    if let Some(s) = &r.stats {
        o += &s.table();
    }
    if let Some(up) = r.link_up {
        o += &format!("link {}\n", if up { "up" } else { "down" });
    }
    if let Some(a) = r.announced {
        o += if a {
            "announce requested (VIRTIO_NET_S_ANNOUNCE set, config interrupt sent)\n"
        } else {
            "not announced: the driver did not negotiate VIRTIO_NET_F_GUEST_ANNOUNCE and STATUS\n"
        };
    }
    if let Some(q) = &r.quirks {
        o += &format!(
            "quirks on: {}\n",
            if q.is_empty() {
                "none".to_string()
            } else {
                q.join(", ")
            }
        );
    }
    if let Request::Fault { .. } = req {
        o += &match &r.fault {
            Some(f) => format!("device needs reset: {f}\n"),
            None => "armed: the device's next DMA access faults\n".to_string(),
        };
    }
    if let Some(c) = &r.capture {
        o += &format!(
            "capture {}: {} frames, {} bytes, {} interfaces\n",
            c.path.display(),
            c.frames,
            c.bytes,
            c.interfaces
        );
    }
    o
}

/// `stats --watch`: the table every `every`, with frame rates since the previous refresh.
fn watch(c: &mut CtlClient, every: Duration, count: Option<u64>, json: bool) -> ExitCode {
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<(std::time::Instant, StatsReport)> = None;
    let mut n = 0u64;
    loop {
        let r = match c.call(&Request::Stats {}) {
            Ok(r) => r,
            Err(CtlError::Refused(e)) => {
                eprintln!("vdpa-emu ctl: refused: {e}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("vdpa-emu ctl: {e}");
                return ExitCode::from(2);
            }
        };
        let now = std::time::Instant::now();
        let Some(s) = r.stats else {
            eprintln!("vdpa-emu ctl: the server's stats response has no stats");
            return ExitCode::from(2);
        };
        if json {
            println!("{}", serde_json::to_string(&s).expect("stats serialize"));
        } else {
            if tty {
                // Clear the screen and home the cursor: a refreshing view, like `watch`.
                print!("\x1b[H\x1b[2J");
            } else if n > 0 {
                println!();
            }
            print!("{}", s.table());
            if let Some((t, p)) = &prev {
                let dt = now.duration_since(*t).as_secs_f64().max(1e-9);
                let rates: Vec<String> = s
                    .queues
                    .iter()
                    .zip(&p.queues)
                    .filter(|(a, b)| a.frames != b.frames)
                    .map(|(a, b)| {
                        format!(
                            "{} {:.0} frames/s",
                            a.role,
                            a.frames.saturating_sub(b.frames) as f64 / dt
                        )
                    })
                    .collect();
                println!(
                    "rates: {}",
                    if rates.is_empty() {
                        "idle".to_string()
                    } else {
                        rates.join(", ")
                    }
                );
            }
        }
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return ExitCode::SUCCESS;
        }
        prev = Some((now, s));
        std::thread::sleep(every);
    }
}
