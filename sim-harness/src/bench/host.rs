//! The machine a bench ran on, printed and reported with its figures: the ratio to an anchor
//! measured in the same run cancels the machine's speed, not its kind. On 2026-12-06 the same
//! TX code measured 1.06x DPDK's 1-QP TX cell in one session and 0.77-0.80x on an AMD EPYC
//! host in the next (docs/bench.md), so a figure without its CPU cannot be compared.

use serde::Serialize;
use std::fmt;

/// What a bench report says of the host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostInfo {
    /// The CPU's model name (/proc/cpuinfo `model name`; None where the kernel gives none,
    /// as on most Arm hosts).
    pub cpu_model: Option<String>,
    /// CPUs this process may run on.
    pub cpus: usize,
    /// The kernel release (/proc/sys/kernel/osrelease).
    pub kernel: Option<String>,
}

impl HostInfo {
    /// Reads this host's.
    pub fn probe() -> Self {
        HostInfo {
            cpu_model: std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|s| cpu_model(&s)),
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        }
    }
}

impl fmt::Display for HostInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {} CPUs",
            self.cpu_model.as_deref().unwrap_or("CPU model unknown"),
            self.cpus
        )?;
        if let Some(k) = &self.kernel {
            write!(f, ", Linux {k}")?;
        }
        Ok(())
    }
}

/// The first `model name` of a /proc/cpuinfo, its spaces collapsed.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == "model name")
            .then(|| value.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_name_is_read_and_its_spaces_collapsed() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD  EPYC 7B13 \nmodel name\t: other\n";
        assert_eq!(cpu_model(x86).as_deref(), Some("AMD EPYC 7B13"));
        // Arm: no model name line; an empty one counts as none.
        let arm = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n";
        assert_eq!(cpu_model(arm), None);
        assert_eq!(cpu_model("model name\t:   \n"), None);
        let h = HostInfo {
            cpu_model: None,
            cpus: 2,
            kernel: Some("6.1.0".into()),
        };
        assert_eq!(h.to_string(), "CPU model unknown, 2 CPUs, Linux 6.1.0");
    }
}
