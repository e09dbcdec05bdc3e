//! Errors of the scenario runner: a malformed file (named by file, line, column and field) and
//! the failures a step can hit while it runs.

use crate::driver::{DriverError, MemoryError};
use std::ops::Range;

/// Why a scenario file could not be loaded. Every malformed-file error names the file, the
/// 1-based line and column, and (when it can be told) the field, e.g. `step[3].count`.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// A path given on the command line does not exist.
    #[error("{file}: not found")]
    NotFound { file: String },
    /// A directory given on the command line holds no `*.toml` scenario.
    #[error("{dir}: no scenario files (*.toml) in this directory")]
    NoScenarios { dir: String },
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid scenario: TOML syntax, unknown or mistyped field, unknown step
    /// kind, counter, quirk, fault or device, or a value out of range.
    #[error("{file}:{line}:{column}: {}{message}", field_prefix(.field))]
    Malformed {
        file: String,
        line: usize,
        column: usize,
        field: Option<String>,
        message: String,
    },
}

fn field_prefix(field: &Option<String>) -> String {
    field
        .as_ref()
        .map(|f| format!("field `{f}`: "))
        .unwrap_or_default()
}

impl ScenarioError {
    /// The line a malformed-file error points at (None for I/O errors).
    pub fn line(&self) -> Option<usize> {
        match self {
            ScenarioError::Malformed { line, .. } => Some(*line),
            _ => None,
        }
    }

    /// The field a malformed-file error names, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ScenarioError::Malformed { field, .. } => field.as_deref(),
            _ => None,
        }
    }
}

/// A semantic error found while checking a parsed file: a message and where it points.
#[derive(Debug, Clone)]
pub(crate) struct Spot {
    pub span: Range<usize>,
    pub field: String,
    pub message: String,
}

impl Spot {
    pub(crate) fn new(
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Spot {
            span,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A 1-based line and column (in characters) of a byte offset in `src`.
pub(crate) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Builds a [`ScenarioError::Malformed`] for a byte span of `src`.
pub(crate) fn malformed(
    file: &str,
    src: &str,
    span: Option<Range<usize>>,
    field: Option<String>,
    message: impl Into<String>,
) -> ScenarioError {
    let start = span.map_or(0, |s| s.start);
    let (line, column) = line_col(src, start);
    let field = field.or_else(|| field_at(src, start));
    ScenarioError::Malformed {
        file: file.to_string(),
        line,
        column,
        field,
        message: message.into(),
    }
}

/// The dotted field path at a byte offset, read back from the source text: the key on that line
/// (or the nearest line above it that starts a key, for multi-line arrays) prefixed by its table
/// header, with `[[step]]` / `[[device]]` tables numbered from 1 (`step[3].count`).
pub(crate) fn field_at(src: &str, offset: usize) -> Option<String> {
    let lines: Vec<&str> = src.split('\n').collect();
    let (target, _) = line_col(src, offset);
    let mut key = None;
    let mut header_line = None;
    for i in (0..target.min(lines.len())).rev() {
        let l = lines.get(i)?.trim();
        if l.starts_with('[') {
            header_line = Some(i);
            break;
        }
        if key.is_none() {
            key = key_of(l);
        }
    }
    let table = header_line.and_then(|h| {
        let head = lines.get(h)?.trim();
        let name = head
            .trim_start_matches('[')
            .split(']')
            .next()?
            .trim()
            .to_string();
        if head.starts_with("[[") {
            let n = lines
                .iter()
                .take(h + 1)
                .filter(|l| {
                    l.trim().starts_with("[[")
                        && l.trim()
                            .trim_start_matches('[')
                            .split(']')
                            .next()
                            .map(str::trim)
                            == Some(&name)
                })
                .count();
            Some(format!("{name}[{n}]"))
        } else {
            Some(name)
        }
    });
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

/// The bare key a `key = value` line starts with.
fn key_of(line: &str) -> Option<String> {
    let (k, _) = line.split_once('=')?;
    let k = k.trim();
    (!k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    .then(|| k.to_string())
}

/// A failure while a step runs (as opposed to a failed expectation).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("driver: {0}")]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Capture(#[from] crate::pcap::CaptureError),
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    #[error("device: {0}")]
    Layout(#[from] bar_registers::LayoutError),
    #[error("DMA mapping: {0}")]
    Map(#[from] dma::MapError),
    #[error("dirty log memory: {0}")]
    Shm(#[from] dma::ShmError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Usage(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_from_source() {
        let src =
            "name = \"x\"\n[[device]]\nqueue_pairs = 2\n\n[[step]]\nkind = \"start\"\n\n[[step]]\nkind = \"traffic\"\nexpect = [\n  \"frames.lost == 0\",\n]\n";
        let at = |needle: &str| src.find(needle).expect("needle");
        assert_eq!(
            field_at(src, at("2\n")).as_deref(),
            Some("device[1].queue_pairs")
        );
        assert_eq!(
            field_at(src, at("\"traffic\"")).as_deref(),
            Some("step[2].kind")
        );
        assert_eq!(
            field_at(src, at("\"frames")).as_deref(),
            Some("step[2].expect")
        );
        assert_eq!(field_at(src, 3).as_deref(), Some("name"));
        assert_eq!(line_col(src, at("\"frames")), (11, 3));
    }
}
