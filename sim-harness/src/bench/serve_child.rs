//! A `vdpa-emu serve` child process for the benches that measure the device as users run it
//! (the driver in another process), and the CPU time of a process read from /proc.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a `serve` child could not be had, or its CPU time not read.
#[derive(Debug, thiserror::Error)]
pub enum ServeChildError {
    #[error("starting {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serve did not come up: {0}")]
    NoServer(String),
    #[error("reading /proc/{pid}: {source}")]
    Proc {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// A `serve` child in a private directory, killed (and the directory removed) on drop.
#[derive(Debug)]
pub struct ServeChild {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// serve's stderr (`RUST_LOG` as spawned), if kept.
    pub log: Option<PathBuf>,
}

impl ServeChild {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops serve with SIGTERM (it logs its last session's statistics and removes its
    /// socket) and waits up to `wait` for it, then kills it.
    pub fn terminate(&mut self, wait: Duration) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < wait {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How to start `serve`.
#[derive(Clone, Debug)]
pub struct ServeSpawn<'a> {
    /// The `vdpa-emu` binary.
    pub bin: &'a Path,
    /// Names the private directory (`vdpa-emu-bench-TAG-PID` under the temp dir).
    pub tag: &'a str,
    /// Arguments after `serve` (the socket is added).
    pub args: Vec<String>,
    /// Keep serve's stderr in `DIR/serve.log` with this `RUST_LOG` (None: discard, `warn`).
    pub log: Option<&'a str>,
    /// Run serve on this CPU only (sched_setaffinity before exec: every thread inherits it).
    pub cpu: Option<usize>,
}

/// Starts `serve --socket DIR/dev.sock ARGS` and waits for its socket.
pub fn spawn(s: &ServeSpawn<'_>) -> Result<ServeChild, ServeChildError> {
    let dir = std::env::temp_dir().join(format!("vdpa-emu-bench-{}-{}", s.tag, std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| ServeChildError::NoServer(e.to_string()))?;
    let socket = dir.join("dev.sock");
    let log = s.log.map(|_| dir.join("serve.log"));
    let stderr = match &log {
        Some(p) => Stdio::from(
            std::fs::File::create(p).map_err(|e| ServeChildError::NoServer(e.to_string()))?,
        ),
        None => Stdio::null(),
    };
    let mut cmd = Command::new(s.bin);
    cmd.arg("serve")
        .args(&s.args)
        .arg("--socket")
        .arg(&socket)
        .env("RUST_LOG", s.log.unwrap_or("warn"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if let Some(cpu) = s.cpu {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and only calls
        // sched_setaffinity(2) on a set built on its stack: no allocation, no locks.
        unsafe {
            cmd.pre_exec(move || pin_current(cpu));
        }
    }
    let child = cmd.spawn().map_err(|source| ServeChildError::Spawn {
        bin: s.bin.into(),
        source,
    })?;
    let mut c = ServeChild {
        child,
        dir,
        socket,
        log,
    };
    let t0 = Instant::now();
    while !c.socket.exists() {
        if let Ok(Some(st)) = c.child.try_wait() {
            let why = c
                .log
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|l| format!(": {}", l.trim()))
                .unwrap_or_default();
            return Err(ServeChildError::NoServer(format!("exited: {st}{why}")));
        }
        if t0.elapsed() > Duration::from_secs(15) {
            return Err(ServeChildError::NoServer("no socket after 15 s".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(c)
}

/// Restricts the calling thread (and what it later starts) to `cpu`.
pub fn pin_current(cpu: usize) -> std::io::Result<()> {
    set_affinity(&[cpu])
}

/// Restricts the calling thread to `cpus`.
pub fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: CPU_SET writes one bit of `set`, a live local; c is within the set.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs the calling thread may run on.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the kernel writes at most size_of bytes into `set`.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads one bit of `set`, a live local.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// utime + stime of `pid` (/proc/PID/stat fields 14 and 15, clock ticks).
pub fn stat_cpu(pid: u32) -> Result<Duration, ServeChildError> {
    let err = |source| ServeChildError::Proc { pid, source };
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(err)?;
    // The command name (field 2) may hold spaces; fields after its ')' are space-separated.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // rest[0] is field 3 (state): utime is field 14, stime 15.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// Sum of `pid`'s threads' time on CPU (/proc/PID/task/*/schedstat, first field, ns).
pub fn schedstat_cpu(pid: u32) -> Result<Duration, ServeChildError> {
    let err = |source| ServeChildError::Proc { pid, source };
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).map_err(err)? {
        let t = t.map_err(err)?;
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(Duration::from_nanos(ns))
}
