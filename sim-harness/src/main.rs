//! `vdpa-emu`: the command line of the vDPA NIC model.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "vdpa-emu", version, about = "A software model of a vDPA-capable (IFC VF-style) virtio-net NIC")]
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
        /// Queue pairs (1..=32).
        #[arg(long, default_value_t = 4)]
        queue_pairs: u16,
        /// Frames to send.
        #[arg(long, default_value_t = 10_000)]
        frames: u64,
        /// Random seed (frame sizes and payloads).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Print the register map (docs/registers.md) rendered from the declarations.
    Registers,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match cli.cmd {
        Cmd::Demo { queue_pairs, frames, seed } => match sim_harness::demo::run(queue_pairs, frames, seed) {
            Ok(r) => {
                print!("{}", r.text);
                if r.tracker.clean() && r.tracker.delivered == r.frames {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("vdpa-emu demo: frames were lost, duplicated, reordered or corrupted");
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("vdpa-emu demo: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Registers => {
            print!("{}", bar_registers::render::registers_markdown());
            ExitCode::SUCCESS
        }
    }
}
