//! `vdpa-emu scenario run`: scenario files (TOML) that configure one or more device instances,
//! drive them through ordered steps (traffic, stop/start, reset, migration, hostile input,
//! link, queue pairs, announce) with the driver model, and check expectations on counters,
//! ring states, frame delivery, status bits, interrupts and migration reports.
//!
//! The file format is documented in scenarios/README.md and docs/scenarios.md. The pieces:
//!
//! - [`schema`]: the file as serde reads it (unknown fields are errors, values keep their spans);
//! - [`compile`]: checks it into a [`Scenario`] (errors name file, line and field);
//! - [`metrics`] and [`expect`]: what expectations observe and how they compare;
//! - [`runner`] (with `inject` and `migration`): runs the steps; [`ledger`] accounts frames;
//! - [`report`]: table, JSON and JUnit renderings.

pub mod compile;
pub mod error;
pub mod expect;
mod inject;
pub mod ledger;
pub mod metrics;
pub mod migration;
pub mod model;
pub mod report;
pub mod runner;
pub mod schema;

use crate::pcap::PcapCapture;
pub use compile::{parse_str, parse_str_with};
pub use error::{ScenarioError, StepError};
pub use model::{Scenario, FAULTS, STEP_KINDS};
pub use report::{FileReport, RunReport, Verdict};
pub use runner::{run, run_captured};
use std::sync::Arc;

use std::path::{Path, PathBuf};

/// Loads and checks one scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    load_with(path, None)
}

/// Loads and checks one scenario file, every driven device given `profile` if set
/// (`scenario run --profile`).
pub fn load_with(
    path: &Path,
    profile: Option<&bar_registers::Profile>,
) -> Result<Scenario, ScenarioError> {
    let file = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
        file: file.clone(),
        source,
    })?;
    parse_str_with(&src, &file, profile)
}

/// Expands directories into the `*.toml` files they hold (sorted); files are kept as given. A
/// path that does not exist, or a directory without scenarios, is an error: a run of nothing
/// must not pass.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ScenarioError> {
    let mut out = Vec::new();
    for p in paths {
        if !p.exists() {
            return Err(ScenarioError::NotFound {
                file: p.display().to_string(),
            });
        }
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|source| ScenarioError::Io {
                file: p.display().to_string(),
                source,
            })?;
            let mut v: Vec<PathBuf> = rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(ScenarioError::NoScenarios {
                    dir: p.display().to_string(),
                });
            }
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Loads and runs every file (directories expand to their `*.toml`); a file that cannot be
/// loaded is reported as malformed and the others still run.
pub fn run_files(paths: &[PathBuf]) -> RunReport {
    match collect_files(paths) {
        Ok(files) => run_collected(&files, false, None),
        Err(e) => RunReport::new(vec![FileReport::malformed(&e.to_string(), e.to_string())]),
    }
}

/// Loads and runs files [`collect_files`] has already expanded, with progress on stderr when
/// `progress` (a bar on a terminal, a line per file otherwise), capturing every frame into
/// `capture` when given.
pub fn run_collected(
    files: &[PathBuf],
    progress: bool,
    capture: Option<&Arc<PcapCapture>>,
) -> RunReport {
    run_collected_with(files, progress, capture, None)
}

/// [`run_collected`] with every driven device of every file given `profile`, when set.
pub fn run_collected_with(
    files: &[PathBuf],
    progress: bool,
    capture: Option<&Arc<PcapCapture>>,
    profile: Option<&bar_registers::Profile>,
) -> RunReport {
    let p = crate::progress::Progress::new(progress, files.len() as u64, "scenario files");
    let reports = files
        .iter()
        .map(|f| {
            p.message(&format!("scenario {}", f.display()));
            let r = match load_with(f, profile) {
                Ok(sc) => runner::run_captured(&sc, capture),
                Err(e) => FileReport::malformed(&f.display().to_string(), e.to_string()),
            };
            p.inc();
            r
        })
        .collect();
    p.finish();
    RunReport::new(reports)
}
