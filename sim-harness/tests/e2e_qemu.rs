//! End-to-end tests: a real QEMU (>= 10.1, with the vfio-user client) boots a Linux guest under TCG and
//! drives either QEMU's own virtio-net-pci (the baseline) or our device, served by `vdpa-emu serve` over
//! vfio-user, with the guest's built-in virtio_pci or with the Linux ifcvf vDPA driver.
//!
//! Every test is `#[ignore]`d: they need the environment `scripts/e2e-provision.sh` builds (QEMU from
//! trixie-backports, a Debian kernel, an initramfs with ifcvf.ko) and root (TAP devices). Run them with
//! `make e2e` (provisions, then `cargo test -p sim-harness --test e2e_qemu -- --ignored --test-threads=1`).
//! A missing environment is a panic that says how to provision it, never a silent skip.
//! docs/e2e.md describes what each test proves and how long it takes.
//!
//! Environment: VDPA_E2E_DIR (default <repo>/.cache/e2e), VDPA_E2E_MIB (transfer size, default 32),
//! VDPA_E2E_PINGS (default 100), VDPA_E2E_KERNEL (vmlinux | vmlinuz), VDPA_E2E_TMP (scratch parent dir),
//! VDPA_EMU_BIN (the vdpa-emu binary; default the one cargo built for this test), VDPA_E2E_SERVE_LOG
//! (RUST_LOG for serve, e.g. `info,device=debug`), VDPA_E2E_SERVE_ARGS (more serve arguments for
//! every device, e.g. `--doorbell trap`), VDPA_E2E_KEEP=1 (keep the
//! scratch directory with serial logs, QEMU command lines and serve logs even when the test passes).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const GUEST_LIB: &str = include_str!("../../scripts/guest/lib.sh");
const GUEST_NIC: &str = include_str!("../../scripts/guest/nic.sh");
const GUEST_BOOT_CHECK: &str = include_str!("../../scripts/guest/boot-check.sh");

/// Modules the initramfs loads, in order (scripts/e2e-provision.sh).
const MODULES: &[&str] = &[
    "failover",
    "net_failover",
    "virtio_net",
    "irqbypass",
    "vhost_iotlb",
    "vhost",
    "vdpa",
    "virtio_vdpa",
    "vhost_vdpa",
    "ifcvf",
];
/// Our device's PCI identity (IFC VF / N3000 net; docs/registers.md).
const OUR_PCI_ID: &str = "1af4:1041";
const TX_PORT: u16 = 5001;
const RX_PORT: u16 = 5002;

// ------------------------------------------------------------------------------------------------
// environment

struct E2e {
    dir: PathBuf,
    qemu: PathBuf,
    kernel: PathBuf,
    initramfs: Vec<u8>,
}

fn e2e() -> E2e {
    let dir = std::env::var_os("VDPA_E2E_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/e2e"));
    let dir = dir.canonicalize().unwrap_or(dir);
    let kernel_name = std::env::var("VDPA_E2E_KERNEL").unwrap_or_else(|_| "vmlinux".into());
    let need = [
        "STAMP",
        "qemu",
        &format!("guest/{kernel_name}"),
        "guest/initramfs.cpio.gz",
    ];
    for f in need {
        if !dir.join(f).exists() {
            panic!(
                "the e2e environment is not provisioned: {} is missing.\n\
                 Run `make e2e-provision` (scripts/e2e-provision.sh, a few minutes, needs root and the Debian \
                 archive) or point VDPA_E2E_DIR at a provisioned directory.",
                dir.join(f).display()
            );
        }
    }
    let initramfs = fs::read(dir.join("guest/initramfs.cpio.gz")).expect("read initramfs");
    E2e {
        qemu: dir.join("qemu"),
        kernel: dir.join("guest").join(kernel_name),
        initramfs,
        dir,
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
fn blob_mib() -> u64 {
    env_num("VDPA_E2E_MIB", 32)
}
fn pings() -> u64 {
    env_num("VDPA_E2E_PINGS", 100)
}

/// Throughputs (MB/s) QEMU's own virtio-net-pci reached in the baseline tests of this run
/// (`make e2e` runs every test in one process, the baselines first): the device's tests print
/// their ratio to it (issue #12: every e2e figure next to the anchor of the same run).
static BASELINE: std::sync::Mutex<Vec<(&'static str, f64)>> = std::sync::Mutex::new(Vec::new());

/// Records a baseline figure (`what`: "tap guest->host", "tap host->guest", "two guests A->B").
fn record_baseline(what: &'static str, mbps: f64) {
    BASELINE.lock().unwrap().push((what, mbps));
}

/// "ratio R (X MB/s here, Y MB/s QEMU's virtio-net-pci)" for `what`, or why there is none.
fn vs_baseline(what: &str, mbps: f64) -> String {
    match BASELINE.lock().unwrap().iter().rev().find(|(w, _)| *w == what) {
        Some((_, base)) if *base > 0.0 => format!(
            "{what}: ratio {:.2} ({mbps:.1} MB/s here, {base:.1} MB/s QEMU's virtio-net-pci in this run)",
            mbps / base
        ),
        _ => format!("{what}: {mbps:.1} MB/s here, no QEMU baseline in this run (run the baseline_qemu_* tests with it)"),
    }
}

fn vdpa_emu_bin() -> PathBuf {
    std::env::var_os("VDPA_EMU_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vdpa-emu")))
}

fn require_root(what: &str) {
    let uid = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
    });
    assert_eq!(uid.as_deref(), Some("0"), "{what} needs root (TAP devices)");
}

/// A scratch directory for one test: removed when the test passes, kept (and named) when it fails.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(test: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = std::env::var_os("VDPA_E2E_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let path = base.join(format!(
            "vdpa-e2e-{test}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create scratch dir");
        Scratch { path }
    }
    fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("VDPA_E2E_KEEP").is_some() {
            eprintln!("e2e: logs kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    let start = v.len().saturating_sub(lines);
    v[start..].join("\n")
}

fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------------
// initramfs: the provisioned archive + a second (uncompressed) cpio holding /extra.sh

fn cpio_newc(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    let mut out = Vec::new();
    for (i, (name, mode, data)) in files.iter().enumerate() {
        entry(&mut out, i as u32 + 1, name, *mode, data);
    }
    entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// The guest's /extra.sh: shell variables, scripts/guest/lib.sh, then the role script.
fn guest_script(vars: &[(&str, String)], body: &str) -> String {
    let mut s = String::from("#!/bin/sh\n# generated by sim-harness/tests/e2e_qemu.rs\n");
    for (k, v) in vars {
        assert!(!v.contains('\''), "shell value {v:?}");
        s.push_str(&format!("{k}='{v}'\n"));
    }
    s.push_str(GUEST_LIB);
    s.push('\n');
    s.push_str(body);
    s
}

// ------------------------------------------------------------------------------------------------
// serial log markers

#[derive(Debug, Clone)]
#[allow(dead_code)]
struct PciFn {
    bdf: String,
    id: String,
    drv: String,
    sub: String,
}

/// What one boot of the guest printed (a log holds several boots after a reset).
#[derive(Debug, Default)]
struct Boot {
    results: BTreeMap<String, String>,
    modules: BTreeMap<String, bool>,
    pci: Vec<PciFn>,
    fails: Vec<String>,
    extra_exit: Option<i32>,
    done: bool,
}

impl Boot {
    fn get(&self, key: &str) -> Option<&str> {
        self.results.get(key).map(|s| s.as_str())
    }
    fn num(&self, key: &str) -> u64 {
        self.get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "guest result {key} missing or not a number: {:?}",
                    self.results
                )
            })
    }
}

fn parse_boots(log: &str) -> Vec<Boot> {
    let mut boots: Vec<Boot> = Vec::new();
    for raw in log.lines() {
        let line = raw.trim_end_matches('\r');
        if line.contains("GUEST-MARKER: init started") {
            boots.push(Boot::default());
            continue;
        }
        let Some(b) = boots.last_mut() else { continue };
        if let Some(i) = line.find("E2E-RESULT ") {
            for kv in line[i + 11..].split_whitespace() {
                if let Some((k, v)) = kv.split_once('=') {
                    b.results.insert(k.to_string(), v.to_string());
                }
            }
        } else if let Some(i) = line.find("E2E-MODULE ") {
            let mut name = None;
            let mut ok = false;
            for kv in line[i + 11..].split_whitespace() {
                match kv.split_once('=') {
                    Some(("name", v)) => name = Some(v.to_string()),
                    Some(("ok", v)) => ok = v == "1",
                    _ => {}
                }
            }
            if let Some(n) = name {
                b.modules.insert(n, ok);
            }
        } else if let Some(i) = line.find("E2E-FAIL ") {
            b.fails.push(line[i + 9..].to_string());
        } else if let Some(i) = line.find("GUEST-MARKER: extra.sh exit=") {
            b.extra_exit = line[i + 28..].trim().parse().ok();
        } else if line.contains("GUEST-MARKER: done") {
            b.done = true;
        } else if let Some(rest) = line.strip_prefix("pci ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() >= 4 && f[2] == "drv" {
                let sub = if f.get(4) == Some(&"sub") {
                    f.get(5).copied().unwrap_or("")
                } else {
                    ""
                };
                b.pci.push(PciFn {
                    bdf: f[0].into(),
                    id: f[1].into(),
                    drv: f[3].into(),
                    sub: sub.into(),
                });
            }
        }
    }
    boots
}

// ------------------------------------------------------------------------------------------------
// one QEMU

struct VmSpec {
    name: String,
    script: String,
    args: Vec<String>,
    smp: u32,
    mem_mb: u32,
    qmp: bool,
    /// `-no-reboot`: a reset request (the guest's reboot, QMP system_reset) ends QEMU instead.
    no_reboot: bool,
    /// Extra `-machine` options (e.g. `kernel-irqchip=split` for intel-iommu's intremap).
    machine_opts: String,
    /// Extra kernel command line (e.g. `intel_iommu=on iommu.strict=1`).
    append: String,
    /// Extra files for the second initramfs archive (path in the guest, mode, contents).
    files: Vec<(String, u32, Vec<u8>)>,
}

impl VmSpec {
    fn new(name: &str, script: String) -> VmSpec {
        VmSpec {
            name: name.into(),
            script,
            args: Vec::new(),
            smp: 1,
            mem_mb: 512,
            qmp: false,
            no_reboot: true,
            machine_opts: String::new(),
            append: String::new(),
            files: Vec::new(),
        }
    }
    fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
}

struct Vm {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    err: PathBuf,
    qmp: Option<PathBuf>,
    started: Instant,
}

impl Vm {
    fn boot(e2e: &E2e, dir: &Scratch, spec: VmSpec) -> Vm {
        let name = spec.name.clone();
        // second archive: /extra.sh; the kernel wants each archive 4-byte aligned
        let mut initrd = e2e.initramfs.clone();
        initrd.resize(initrd.len().next_multiple_of(4), 0);
        let mut files: Vec<(&str, u32, &[u8])> =
            vec![("extra.sh", 0o100755, spec.script.as_bytes())];
        files.extend(
            spec.files
                .iter()
                .map(|(p, m, d)| (p.as_str(), *m, d.as_slice())),
        );
        initrd.extend_from_slice(&cpio_newc(&files));
        let initrd_path = dir.join(&format!("{name}-initrd.img"));
        fs::write(&initrd_path, &initrd).expect("write initrd");
        fs::write(dir.join(&format!("{name}-extra.sh")), &spec.script)
            .expect("write extra.sh copy");
        let log = dir.join(&format!("{name}-serial.log"));
        let err = dir.join(&format!("{name}-qemu.stderr"));
        let mem = spec.mem_mb;
        let mut args: Vec<String> = vec![
            "-accel".into(),
            "tcg".into(),
            "-m".into(),
            format!("{mem}"),
            "-smp".into(),
            format!("{}", spec.smp),
            "-machine".into(),
            format!("q35,memory-backend=mem{}", spec.machine_opts),
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            "-nographic".into(),
            "-nodefaults".into(),
            "-serial".into(),
            "stdio".into(),
            "-kernel".into(),
            e2e.kernel.display().to_string(),
            "-initrd".into(),
            initrd_path.display().to_string(),
            "-append".into(),
            // no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check
            // (arch/x86/kernel/apic/io_apic.c check_timer) can miss its ticks and panic with
            // "timer doesn't work through Interrupt-remapped IO-APIC" (seen with intremap=on).
            format!(
                "console=ttyS0 panic=-1 quiet no_timer_check {}",
                spec.append
            ),
        ];
        if spec.no_reboot {
            args.push("-no-reboot".into());
        }
        let qmp = spec.qmp.then(|| dir.join(&format!("{name}-qmp.sock")));
        if let Some(q) = &qmp {
            args.push("-qmp".into());
            args.push(format!("unix:{},server=on,wait=off", q.display()));
        }
        args.extend(spec.args);
        let cmdline = format!(
            "{} {}",
            e2e.qemu.display(),
            args.iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        fs::write(dir.join(&format!("{name}-cmdline.txt")), &cmdline).expect("write cmdline");
        let child = Command::new(&e2e.qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).expect("create serial log"))
            .stderr(fs::File::create(&err).expect("create qemu stderr"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", e2e.qemu.display()));
        eprintln!(
            "e2e: {name}: QEMU pid {} started ({})",
            child.id(),
            e2e.dir.display()
        );
        Vm {
            name,
            child: Some(child),
            log,
            err,
            qmp,
            started: Instant::now(),
        }
    }

    fn log(&self) -> String {
        read_lossy(&self.log)
    }

    fn boots(&self) -> Vec<Boot> {
        parse_boots(&self.log())
    }

    fn last_boot(&self) -> Boot {
        self.boots().pop().unwrap_or_else(|| {
            panic!(
                "{}: the guest never reached init\n{}",
                self.name,
                self.diag()
            )
        })
    }

    fn diag(&self) -> String {
        format!(
            "---- {} serial log ({}) ----\n{}\n---- {} QEMU stderr ----\n{}\n----",
            self.name,
            self.log.display(),
            tail(&self.log(), 150),
            self.name,
            tail(&read_lossy(&self.err), 40)
        )
    }

    fn count(&self, pat: &str) -> usize {
        self.log().matches(pat).count()
    }

    /// Fails the test when the guest reported a failure or QEMU is gone.
    fn check_alive(&mut self, waiting_for: &str) {
        let log = self.log();
        if let Some(l) = log.lines().find(|l| l.contains("E2E-FAIL ")) {
            let l = l.to_string();
            self.kill();
            panic!(
                "{}: the guest failed ({l}) while the host waited for {waiting_for}\n{}",
                self.name,
                self.diag()
            );
        }
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                panic!(
                    "{}: QEMU exited ({st}) while the host waited for {waiting_for}\n{}",
                    self.name,
                    self.diag()
                );
            }
        }
    }

    /// Polls `cond` every `every` until it holds, while the guest stays alive; panics with the
    /// guest's log after `timeout`.
    fn poll_until(
        &mut self,
        what: &str,
        timeout: Duration,
        every: Duration,
        mut cond: impl FnMut() -> bool,
    ) {
        let t0 = Instant::now();
        while !cond() {
            self.check_alive(what);
            assert!(
                t0.elapsed() < timeout,
                "{}: no {what} after {timeout:?}\n{}",
                self.name,
                self.diag()
            );
            std::thread::sleep(every);
        }
    }

    /// Waits until `pat` appeared `n` times in the serial log.
    fn wait_for(&mut self, pat: &str, n: usize, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            if self.count(pat) >= n {
                return;
            }
            self.check_alive(pat);
            if t0.elapsed() > timeout {
                self.kill();
                panic!(
                    "{}: timeout ({timeout:?}) waiting for {pat:?} x{n}; QEMU killed\n{}",
                    self.name,
                    self.diag()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for QEMU to exit by itself (the guest powers off at the end of init).
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        let child = self.child.as_mut().expect("QEMU already reaped");
        loop {
            if let Some(st) = child.try_wait().expect("wait QEMU") {
                self.child = None;
                eprintln!(
                    "e2e: {}: QEMU exited ({st}) after {:.1} s",
                    self.name,
                    self.started.elapsed().as_secs_f64()
                );
                return st;
            }
            if t0.elapsed() > timeout {
                self.kill();
                panic!(
                    "{}: timeout ({timeout:?}) waiting for the guest to power off; QEMU killed\n{}",
                    self.name,
                    self.diag()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the guest to finish its script and power off; returns the last boot's markers and checks
    /// that the script succeeded.
    fn finish(&mut self, timeout: Duration) -> Boot {
        let st = self.wait_exit(timeout);
        let b = self.last_boot();
        assert!(
            st.success() && b.done && b.fails.is_empty() && b.extra_exit == Some(0),
            "{}: the guest script failed (qemu {st}, fails {:?}, extra.sh exit {:?})\n{}",
            self.name,
            b.fails,
            b.extra_exit,
            self.diag()
        );
        b
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn qmp(&self, command: &str) -> String {
        let path = self.qmp.as_ref().expect("VM started without QMP");
        let s = UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("{}: QMP connect {}: {e}", self.name, path.display()));
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let mut read_reply = |r: &mut BufReader<UnixStream>| -> String {
            loop {
                line.clear();
                let n = r
                    .read_line(&mut line)
                    .unwrap_or_else(|e| panic!("{}: QMP read: {e}", self.name));
                assert!(n > 0, "{}: QMP closed", self.name);
                if line.contains("\"return\"")
                    || line.contains("\"error\"")
                    || line.contains("\"QMP\"")
                {
                    return line.clone();
                }
            }
        };
        read_reply(&mut r); // greeting
        writeln!(w, "{{\"execute\":\"qmp_capabilities\"}}").unwrap();
        read_reply(&mut r);
        writeln!(w, "{{\"execute\":\"{command}\"}}").unwrap();
        let reply = read_reply(&mut r);
        assert!(
            reply.contains("\"return\""),
            "{}: QMP {command} failed: {reply}",
            self.name
        );
        reply
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

// ------------------------------------------------------------------------------------------------
// host networking: TAP devices we create (or that `vdpa-emu serve` creates), and the host's end of the
// transfers

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// A TAP on the host with an address; deleted on drop.
struct Tap {
    name: String,
    host_ip: String,
}

impl Tap {
    /// Creates a persistent TAP (for QEMU's own `-netdev tap`).
    fn create(name: &str, subnet: u8) -> Tap {
        Tap::create_queues(name, subnet, false)
    }

    /// [`Tap::create`], with IFF_MULTI_QUEUE when `multi_queue` (QEMU's `-netdev tap,queues=N`
    /// opens one fd per queue pair and needs it).
    fn create_queues(name: &str, subnet: u8, multi_queue: bool) -> Tap {
        require_root("a host TAP");
        if link_exists(name) {
            let _ = Command::new("ip").args(["link", "del", name]).status(); // left over by a killed run
        }
        let mut args = vec!["tuntap", "add", "dev", name, "mode", "tap"];
        if multi_queue {
            args.push("multi_queue");
        }
        ip(&args);
        Tap::configure(name, subnet)
    }

    /// Waits for a TAP that another process (vdpa-emu serve --port tap:NAME) creates, then configures it.
    fn adopt(name: &str, subnet: u8, serve: &mut Serve) -> Tap {
        Tap::wait_created(name, serve);
        Tap::configure(name, subnet)
    }

    /// Adopts a TAP that serve creates and brings it up without an address (L2 only: the
    /// DPDK tests read and write raw frames on it); `host_ip` stays empty.
    fn adopt_unaddressed(name: &str, serve: &mut Serve) -> Tap {
        Tap::wait_created(name, serve);
        ip(&["link", "set", name, "up"]);
        Tap {
            name: name.into(),
            host_ip: String::new(),
        }
    }

    fn wait_created(name: &str, serve: &mut Serve) {
        let t0 = Instant::now();
        while !link_exists(name) {
            serve.check_alive(&format!("TAP {name} to appear"));
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "vdpa-emu serve did not create TAP {name} in 15 s\n{}",
                serve.diag()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn configure(name: &str, subnet: u8) -> Tap {
        let host_ip = format!("10.77.{subnet}.1");
        let tap = Tap {
            name: name.into(),
            host_ip: host_ip.clone(),
        };
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", name]);
        ip(&["link", "set", name, "up"]);
        tap
    }

    fn guest_addr(&self) -> String {
        let mut parts: Vec<&str> = self.host_ip.split('.').collect();
        parts[3] = "2";
        parts.join(".")
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if link_exists(&self.name) {
            let _ = Command::new("ip")
                .args(["link", "del", &self.name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// md5 with the host's coreutils (the guest uses busybox md5sum).
struct Md5 {
    child: Child,
}

impl Md5 {
    fn new() -> Md5 {
        Md5 {
            child: Command::new("md5sum")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("run md5sum"),
        }
    }
    fn update(&mut self, data: &[u8]) {
        self.child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(data)
            .expect("write to md5sum");
    }
    fn finish(mut self) -> String {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().expect("md5sum");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    }
    fn of(data: &[u8]) -> String {
        let mut m = Md5::new();
        m.update(data);
        m.finish()
    }
}

struct Received {
    bytes: u64,
    md5: String,
    secs: f64,
}

/// The host's end of a host-peer guest: receives its blob on TX_PORT, sends one to its RX_PORT.
struct HostPeer {
    listener: TcpListener,
    guest_ip: String,
    data: Vec<u8>,
    data_md5: String,
    mib: u64,
}

impl HostPeer {
    fn new(tap: &Tap) -> HostPeer {
        HostPeer::with_mib(tap, blob_mib())
    }

    /// A peer whose blobs are `mib` MiB (the guest's BLOB_MIB must say the same).
    fn with_mib(tap: &Tap, mib: u64) -> HostPeer {
        let addr: SocketAddr = format!("{}:{TX_PORT}", tap.host_ip).parse().unwrap();
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let data = pseudo_random((mib << 20) as usize, 0x9e37_79b9_7f4a_7c15);
        let data_md5 = Md5::of(&data);
        HostPeer {
            listener,
            guest_ip: tap.guest_addr(),
            data,
            data_md5,
            mib,
        }
    }

    fn accept(&self, vm: &mut Vm, timeout: Duration) -> TcpStream {
        let t0 = Instant::now();
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    return s;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept: {e}"),
            }
            vm.check_alive("the guest to connect to the host");
            if t0.elapsed() > timeout {
                vm.kill();
                panic!(
                    "{}: the guest did not connect to the host in {timeout:?}\n{}",
                    vm.name,
                    vm.diag()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Reads the guest's blob until it half-closes.
    fn receive(&self, vm: &mut Vm, timeout: Duration) -> Received {
        let mut s = self.accept(vm, timeout);
        let t0 = Instant::now();
        let mut md5 = Md5::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut bytes = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    md5.update(&buf[..n]);
                    bytes += n as u64;
                }
                Err(e) => {
                    vm.kill();
                    panic!(
                        "{}: receiving from the guest after {bytes} bytes: {e}\n{}",
                        vm.name,
                        vm.diag()
                    );
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        drop(s);
        Received {
            bytes,
            md5: md5.finish(),
            secs,
        }
    }

    /// Waits for the guest's `E2E-READY recv` (the `round`-th), sends the host blob, waits for the close.
    fn send(&self, vm: &mut Vm, round: usize, timeout: Duration) -> f64 {
        vm.wait_for("E2E-READY recv", round, timeout);
        let addr: SocketAddr = format!("{}:{RX_PORT}", self.guest_ip).parse().unwrap();
        let t0 = Instant::now();
        let mut s = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => break s,
                Err(e) => {
                    vm.check_alive("the guest's listener");
                    if t0.elapsed() > Duration::from_secs(20) {
                        vm.kill();
                        panic!(
                            "{}: cannot connect to the guest at {addr}: {e}\n{}",
                            vm.name,
                            vm.diag()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        let t1 = Instant::now();
        s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        if let Err(e) = s.write_all(&self.data) {
            vm.kill();
            panic!("{}: sending to the guest: {e}\n{}", vm.name, vm.diag());
        }
        s.shutdown(Shutdown::Write).unwrap();
        let mut sink = [0u8; 256];
        // the guest's nc closes once it has read everything
        while let Ok(n) = s.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
        t1.elapsed().as_secs_f64()
    }

    /// One full round of a `host-peer` guest: guest -> host blob, then host -> guest blob; checks both.
    /// Returns the rates in MB/s (guest -> host, host -> guest) as the host measured them.
    fn round(&self, vm: &mut Vm, round: usize, label: &str) -> (f64, f64) {
        let rx = self.receive(vm, Duration::from_secs(240));
        let tx_secs = self.send(vm, round, Duration::from_secs(120));
        vm.wait_for("E2E-RESULT role_done=", round, Duration::from_secs(120));
        let b = vm.boots().pop().expect("boot markers");
        let mib = self.mib;
        assert_eq!(
            rx.bytes,
            mib << 20,
            "{label}: guest -> host byte count\n{}",
            vm.diag()
        );
        assert_eq!(
            Some(rx.md5.as_str()),
            b.get("blob_md5"),
            "{label}: guest -> host checksum\n{}",
            vm.diag()
        );
        assert_eq!(
            b.num("rx_bytes"),
            mib << 20,
            "{label}: host -> guest byte count\n{}",
            vm.diag()
        );
        assert_eq!(
            b.get("rx_md5"),
            Some(self.data_md5.as_str()),
            "{label}: host -> guest checksum\n{}",
            vm.diag()
        );
        let p = pings();
        assert_eq!(
            (b.num("ping_tx"), b.num("ping_rx")),
            (p, p),
            "{label}: ping loss\n{}",
            vm.diag()
        );
        let mb = (mib << 20) as f64 / 1e6;
        println!(
            "E2E-BENCH {label} guest->host {mib} MiB {:.2} s {:.1} MB/s (guest nc: {} MB/s) | host->guest {:.2} s {:.1} MB/s \
             (guest nc: {} MB/s) | ping rtt min/avg/max {} ms",
            rx.secs,
            mb / rx.secs,
            b.get("tx_mbps").unwrap_or("?"),
            tx_secs,
            mb / tx_secs,
            b.get("rx_mbps").unwrap_or("?"),
            b.get("ping_rtt_min_avg_max").unwrap_or("?")
        );
        (mb / rx.secs, mb / tx_secs)
    }
}

// ------------------------------------------------------------------------------------------------
// vdpa-emu serve

struct Serve {
    name: String,
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl Serve {
    /// `vdpa-emu serve --socket DIR/NAME.sock ARGS...`; returns once the socket exists.
    fn start(dir: &Scratch, name: &str, args: &[String]) -> Serve {
        let socket = dir.join(&format!("{name}.sock"));
        let log = dir.join(&format!("{name}-serve.log"));
        let bin = vdpa_emu_bin();
        let mut full = vec![
            "serve".to_string(),
            "--socket".into(),
            socket.display().to_string(),
        ];
        full.extend_from_slice(args);
        // VDPA_E2E_SERVE_ARGS: more serve arguments for every device, e.g. `--doorbell trap`
        if let Ok(extra) = std::env::var("VDPA_E2E_SERVE_ARGS") {
            full.extend(extra.split_whitespace().map(String::from));
        }
        fs::write(
            dir.join(&format!("{name}-serve-cmdline.txt")),
            format!("{} {}", bin.display(), full.join(" ")),
        )
        .unwrap();
        let out = fs::File::create(&log).expect("create serve log");
        let mut cmd = Command::new(&bin);
        // VDPA_E2E_SERVE_LOG: a RUST_LOG filter for serve (e.g. `info,device=debug`)
        if let Some(filter) = std::env::var_os("VDPA_E2E_SERVE_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        let child = cmd
            .args(&full)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut s = Serve {
            name: name.into(),
            child: Some(child),
            socket,
            log,
        };
        let t0 = Instant::now();
        while !s.socket.exists() {
            s.check_alive("its socket");
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "{}: no socket {} after 15 s\n{}",
                s.name,
                s.socket.display(),
                s.diag()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn diag(&self) -> String {
        format!(
            "---- {} vdpa-emu serve log ({}) ----\n{}\n----",
            self.name,
            self.log.display(),
            tail(&read_lossy(&self.log), 60)
        )
    }

    fn check_alive(&mut self, waiting_for: &str) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                panic!(
                    "{}: vdpa-emu serve exited ({st}) while waiting for {waiting_for}\n{}",
                    self.name,
                    self.diag()
                );
            }
        }
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The `session_stats` JSON serve logs when its (last) client's session ends: frames,
    /// serve's CPU time, doorbells by path, the doorbell engine's CPU time.
    fn session_stats(&mut self) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let log = read_lossy(&self.log);
            if let Some(l) = log.lines().rev().find(|l| l.contains("session_stats=")) {
                let json = l.split("session_stats=").nth(1).unwrap_or("");
                let json = json.split_whitespace().next().unwrap_or("");
                return serde_json::from_str(json).unwrap_or_else(|e| {
                    panic!("bad session_stats {json:?}: {e}\n{}", self.diag())
                });
            }
            self.check_alive("the session statistics line");
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "no session_stats line in the serve log\n{}",
                self.diag()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Prints what serving the guest's session cost (E2E-BENCH): serve's CPU per frame over
    /// the whole session (boot, pings and transfers), and how the doorbells came.
    fn print_cost(&mut self, label: &str) {
        let s = self.session_stats();
        println!(
            "E2E-BENCH {label} serve: {} frames in {} s, cpu {} ms = {} us/frame | doorbells {} ({}: {} through shared memory, {} trapped) | doorbell engine cpu {} ms",
            s["tx_frames"].as_u64().unwrap_or(0) + s["rx_frames"].as_u64().unwrap_or(0),
            s["wall_s"],
            s["cpu_ms"],
            s["cpu_us_per_frame"],
            s["doorbells"],
            s["doorbell_path"].as_str().unwrap_or("?"),
            s["doorbells_mmap"],
            s["doorbells_trapped"],
            s["engine_cpu_ms"],
        );
    }

    /// SIGTERM, then up to 10 s for a clean exit.
    fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("serve not running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let t0 = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "{}: vdpa-emu serve ignored SIGTERM for 10 s\n{}",
                    self.name,
                    self.diag()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `serve --mac MAC --queue-pairs 1 --port tap:TAP`, and that TAP configured on the host.
    fn with_tap(dir: &Scratch, mac: &str, tap: &str, subnet: u8) -> (Serve, Tap) {
        let args = [
            "--mac",
            mac,
            "--queue-pairs",
            "1",
            "--port",
            &format!("tap:{tap}"),
        ]
        .map(String::from);
        let mut serve = Serve::start(dir, "dev", &args);
        let tap = Tap::adopt(tap, subnet, &mut serve);
        (serve, tap)
    }

    /// The features the last driver negotiated, from serve's log ("features negotiated", at
    /// each FEATURES_OK): the guest may have reset the device (and `ctl stats` reads 0) by the
    /// time a test asks.
    fn last_negotiated(&self, test: &str) -> u64 {
        read_lossy(&self.log)
            .lines()
            .rev()
            .filter(|l| l.contains("features negotiated"))
            .find_map(|l| l.split("features=0x").nth(1))
            .and_then(|v| u64::from_str_radix(v.split_whitespace().next().unwrap_or(""), 16).ok())
            .unwrap_or_else(|| panic!("{test}: no `features negotiated` line\n{}", self.diag()))
    }

    fn device_arg(&self) -> String {
        format!(
            r#"{{"driver":"vfio-user-pci","socket":{{"type":"unix","path":"{}"}}}}"#,
            self.socket.display()
        )
    }

    /// [`Serve::device_arg`] at a fixed PCI slot of the guest's root bus (BDF 0000:00:SLOT.0).
    fn device_arg_at(&self, slot: u8) -> String {
        format!(
            r#"{{"driver":"vfio-user-pci","socket":{{"type":"unix","path":"{}"}},"addr":"{slot:x}.0"}}"#,
            self.socket.display()
        )
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diag());
        }
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let t0 = Instant::now();
            let mut exited = false;
            while t0.elapsed() < Duration::from_secs(3) && !exited {
                exited = matches!(c.try_wait(), Ok(Some(_)));
                if !exited {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            if !exited {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // serve contains a panic (the device fails, the server goes on), and the panic hook
        // and serve log it: still a bug, which no test may pass over.
        if !std::thread::panicking() {
            assert!(
                !read_lossy(&self.log).contains("panicked"),
                "{}: vdpa-emu serve panicked (contained, still a bug)\n{}",
                self.name,
                self.diag()
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// guests

/// Shell variables for a guest script.
type Vars = Vec<(&'static str, String)>;

fn nic_vars(role: &str, driver: &str, mac: &str, my_ip: &str, peer_ip: &str) -> Vars {
    vec![
        ("ROLE", role.into()),
        ("NIC_DRIVER", driver.into()),
        ("NIC_MAC", mac.into()),
        ("NIC_PCI", OUR_PCI_ID.into()),
        ("MY_IP", format!("{my_ip}/24")),
        ("PEER_IP", peer_ip.into()),
        ("PINGS", pings().to_string()),
        ("BLOB_MIB", blob_mib().to_string()),
        ("TX_PORT", TX_PORT.to_string()),
        ("RX_PORT", RX_PORT.to_string()),
    ]
}

/// Variables for a sender/receiver pair of guests: the receiver listens on the port the sender sends to.
fn pair_vars(driver: &str, a: (&str, &str), b: (&str, &str)) -> (Vars, Vars) {
    let va = nic_vars("sender", driver, a.0, a.1, b.1);
    let mut vb = nic_vars("receiver", driver, b.0, b.1, a.1);
    for (k, v) in vb.iter_mut() {
        if *k == "RX_PORT" {
            *v = TX_PORT.to_string();
        }
    }
    (va, vb)
}

/// Replaces (or adds) one guest variable.
fn set_var(vars: &mut Vars, key: &'static str, value: String) {
    vars.retain(|(k, _)| *k != key);
    vars.push((key, value));
}

fn nic_script(vars: &[(&'static str, String)]) -> String {
    guest_script(vars, GUEST_NIC)
}

/// A `host-peer` guest on QEMU's own virtio-net-pci with `-netdev tap` on `tap` (the baseline),
/// moving `mib` MiB each way; `device_opts` is appended to the -device options.
fn qemu_nic_guest(name: &str, tap: &Tap, mac: &str, mib: u64, device_opts: &str) -> VmSpec {
    let mut vars = nic_vars(
        "host-peer",
        "virtio-pci",
        mac,
        &tap.guest_addr(),
        &tap.host_ip,
    );
    vars.retain(|(k, _)| *k != "NIC_PCI");
    set_var(&mut vars, "BLOB_MIB", mib.to_string());
    VmSpec::new(name, nic_script(&vars))
        .arg("-netdev")
        .arg(format!(
            "tap,id=n0,ifname={},script=no,downscript=no",
            tap.name
        ))
        .arg("-device")
        .arg(format!(
            "virtio-net-pci,netdev=n0,mac={mac},romfile={device_opts}"
        ))
}

/// A `host-peer` guest on our device served by `serve` (whose port is `tap`).
fn device_nic_guest(name: &str, serve: &Serve, tap: &Tap, mac: &str, mib: u64) -> VmSpec {
    let mut vars = nic_vars(
        "host-peer",
        "virtio-pci",
        mac,
        &tap.guest_addr(),
        &tap.host_ip,
    );
    set_var(&mut vars, "BLOB_MIB", mib.to_string());
    VmSpec::new(name, nic_script(&vars))
        .arg("-device")
        .arg(serve.device_arg())
}

/// Checks the identity the guest reported for the NIC under test.
fn assert_nic(b: &Boot, vm: &Vm, mac: &str, pci_driver: &str) {
    assert_eq!(
        b.get("mac"),
        Some(mac),
        "{}: NIC MAC\n{}",
        vm.name,
        vm.diag()
    );
    assert_eq!(
        b.get("pci_driver"),
        Some(pci_driver),
        "{}: PCI driver\n{}",
        vm.name,
        vm.diag()
    );
    assert_eq!(
        b.get("net_driver"),
        Some("virtio_net"),
        "{}: net driver\n{}",
        vm.name,
        vm.diag()
    );
    assert_eq!(
        b.get("carrier"),
        Some("1"),
        "{}: link\n{}",
        vm.name,
        vm.diag()
    );
}

fn our_pci_fn(b: &Boot, vm: &Vm) -> PciFn {
    b.pci
        .iter()
        .find(|p| p.id == OUR_PCI_ID)
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{}: no {OUR_PCI_ID} PCI function in the guest: {:?}\n{}",
                vm.name,
                b.pci,
                vm.diag()
            )
        })
}

/// A guest on our device with a host TAP as the peer (`--port tap:NAME`), driven by `driver`.
fn device_with_host_tap(test: &str, tap_name: &str, subnet: u8, mac: &str, driver: &str) {
    device_with_host_tap_role(
        test,
        tap_name,
        subnet,
        mac,
        driver,
        "host-peer",
        |vm, peer, _| {
            let (g2h, h2g) = peer.round(vm, 1, test);
            println!(
                "E2E-BENCH {test} vs QEMU: {} | {}",
                vs_baseline("tap guest->host", g2h),
                vs_baseline("tap host->guest", h2g)
            );
        },
    );
}

/// [`device_with_host_tap`] with the guest in `role` (scripts/guest/nic.sh); `exchange` drives the
/// guest's transfers from the host (with the live device at hand) until the role is done; then the
/// guest powers off and the NIC's identity and link settings are checked.
fn device_with_host_tap_role(
    test: &str,
    tap_name: &str,
    subnet: u8,
    mac: &str,
    driver: &str,
    role: &str,
    exchange: impl FnOnce(&mut Vm, &HostPeer, &Serve),
) {
    require_root(test);
    let e2e = e2e();
    let dir = Scratch::new(test);
    let (mut serve, tap) = Serve::with_tap(&dir, mac, tap_name, subnet);
    let peer = HostPeer::new(&tap);
    let vars = nic_vars(role, driver, mac, &tap.guest_addr(), &tap.host_ip);
    let mut vm = Vm::boot(
        &e2e,
        &dir,
        VmSpec::new("guest", nic_script(&vars))
            .arg("-device")
            .arg(serve.device_arg()),
    );
    exchange(&mut vm, &peer, &serve);
    let b = vm.finish(Duration::from_secs(60));
    serve.print_cost(test);
    assert_nic(&b, &vm, mac, driver);
    // VIRTIO_NET_F_SPEED_DUPLEX: the driver reports the speed and duplex config space holds.
    assert_eq!(
        (b.get("speed"), b.get("duplex")),
        (
            Some(bar_registers::virtio::LINK_SPEED_MBPS.to_string().as_str()),
            Some("full")
        ),
        "{test}: link settings\n{}",
        vm.diag()
    );
    let f = our_pci_fn(&b, &vm);
    assert_eq!(
        f.sub,
        "8086:001a",
        "{}: subsystem IDs of our function\n{}",
        vm.name,
        vm.diag()
    );
    if driver == "ifcvf" {
        // one vCPU: ifcvf gets a single MSI-X vector for everything (ifcvf_request_dev_irq)
        let irqs = b.get("ifcvf_irqs").unwrap_or("");
        println!("E2E-BENCH {test}: ifcvf's MSI-X vectors: {irqs}");
        assert!(
            irqs.contains("-dev-irq"),
            "{test}: ifcvf vector mode: {irqs}\n{}",
            vm.diag()
        );
    }
    assert!(serve.is_running(), "vdpa-emu serve died\n{}", serve.diag());
    drop(tap);
}

// ------------------------------------------------------------------------------------------------
// tests that need only QEMU

/// The provisioned QEMU boots the guest kernel under TCG; every module (ifcvf.ko included) loads; /init
/// lists the PCI functions; /extra.sh runs; busybox has what the tests use; a loopback nc transfer inside
/// the guest keeps its checksum.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn qemu_boots_guest() {
    let e2e = e2e();
    let dir = Scratch::new("boot");
    let t0 = Instant::now();
    let mut vm = Vm::boot(
        &e2e,
        &dir,
        VmSpec::new("guest", guest_script(&[], GUEST_BOOT_CHECK)),
    );
    let b = vm.finish(Duration::from_secs(120));
    for m in MODULES {
        assert_eq!(
            b.modules.get(*m),
            Some(&true),
            "module {m} did not load: {:?}\n{}",
            b.modules,
            vm.diag()
        );
    }
    assert!(
        b.pci.iter().any(|p| p.id == "8086:29c0"),
        "no q35 host bridge in the pci lines: {:?}\n{}",
        b.pci,
        vm.diag()
    );
    assert_eq!(b.get("vdpa_tool"), Some("ok"));
    // Debian's ethtool (scripts/e2e-guest-initramfs.sh) runs: "ethtool version 6.14"
    let ethtool = b.get("ethtool_version").unwrap_or("");
    assert!(
        ethtool.split('.').all(|p| p.parse::<u32>().is_ok()),
        "ethtool --version in the guest: {ethtool:?}\n{}",
        vm.diag()
    );
    assert_eq!(b.get("ifcvf_driver"), Some("registered"));
    assert_eq!(b.get("virtio_pci"), Some("builtin"));
    assert_eq!(b.get("boot_check"), Some("done"));
    assert_eq!(
        b.num("rx_bytes"),
        4 << 20,
        "loopback transfer size\n{}",
        vm.diag()
    );
    assert_eq!(
        b.get("rx_md5"),
        b.get("blob_md5"),
        "loopback transfer checksum\n{}",
        vm.diag()
    );
    let log = vm.log();
    let init_at = log
        .lines()
        .find(|l| l.contains("init started"))
        .and_then(|l| l.split("uptime ").nth(1))
        .unwrap_or("?")
        .trim();
    println!("E2E-BENCH qemu_boots_guest: wall {:.1} s from spawn to poweroff; init reached at guest uptime {init_at}", t0.elapsed().as_secs_f64());
}

/// The baseline for our device: QEMU's own virtio-net-pci (userspace virtio-net, `-netdev tap`) with a
/// host TAP as the peer: 100 pings without loss, a 32 MiB blob each way with matching checksums; the
/// throughput is printed (E2E-BENCH), not asserted.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn baseline_qemu_virtio_net_pci() {
    require_root("baseline_qemu_virtio_net_pci");
    let e2e = e2e();
    let dir = Scratch::new("baseline-tap");
    let tap = Tap::create("vdpaeb0", 200);
    let peer = HostPeer::new(&tap);
    let mac = "52:54:00:e2:e0:01";
    let spec = qemu_nic_guest("guest", &tap, mac, blob_mib(), "");
    let mut vm = Vm::boot(&e2e, &dir, spec);
    let (g2h, h2g) = peer.round(&mut vm, 1, "baseline_qemu_virtio_net_pci(tap)");
    record_baseline("tap guest->host", g2h);
    record_baseline("tap host->guest", h2g);
    let b = vm.finish(Duration::from_secs(60));
    assert_nic(&b, &vm, mac, "virtio-pci");
}

/// Two guests, each with QEMU's virtio-net-pci, joined by `-netdev stream` over a unix socket (no host
/// network at all): A pings B 100 times and sends B a 32 MiB blob; B's checksum must match A's.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn baseline_qemu_virtio_net_pci_two_guests() {
    let e2e = e2e();
    let dir = Scratch::new("baseline-2g");
    let link = dir.join("link.sock");
    let (mac_a, mac_b) = ("52:54:00:e2:e0:0a", "52:54:00:e2:e0:0b");
    let (ip_a, ip_b) = ("10.77.201.1", "10.77.201.2");
    let (mut va, mut vb) = pair_vars("virtio-pci", (mac_a, ip_a), (mac_b, ip_b));
    vb.retain(|(k, _)| *k != "NIC_PCI");
    va.retain(|(k, _)| *k != "NIC_PCI");
    let mut b = Vm::boot(
        &e2e,
        &dir,
        VmSpec::new("guest-b", nic_script(&vb))
            .arg("-netdev")
            .arg(format!(
                "stream,id=n0,server=on,addr.type=unix,addr.path={}",
                link.display()
            ))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={mac_b},romfile=")),
    );
    b.poll_until(
        &format!("stream socket {}", link.display()),
        Duration::from_secs(10),
        Duration::from_millis(50),
        || link.exists(),
    );
    let mut a = Vm::boot(
        &e2e,
        &dir,
        VmSpec::new("guest-a", nic_script(&va))
            .arg("-netdev")
            .arg(format!(
                "stream,id=n0,server=off,reconnect-ms=200,addr.type=unix,addr.path={}",
                link.display()
            ))
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,mac={mac_a},romfile=")),
    );
    let ra = a.finish(Duration::from_secs(300));
    let rb = b.finish(Duration::from_secs(60));
    assert_nic(&ra, &a, mac_a, "virtio-pci");
    assert_nic(&rb, &b, mac_b, "virtio-pci");
    let p = pings();
    assert_eq!(
        (ra.num("ping_tx"), ra.num("ping_rx")),
        (p, p),
        "ping loss\n{}",
        a.diag()
    );
    assert_eq!(
        rb.num("rx_bytes"),
        blob_mib() << 20,
        "A -> B byte count\n{}\n{}",
        a.diag(),
        b.diag()
    );
    assert_eq!(
        rb.get("rx_md5"),
        ra.get("blob_md5"),
        "A -> B checksum\n{}\n{}",
        a.diag(),
        b.diag()
    );
    if let Some(mbps) = ra.get("tx_mbps").and_then(|v| v.parse::<f64>().ok()) {
        record_baseline("two guests A->B", mbps);
    }
    println!(
        "E2E-BENCH baseline_qemu_virtio_net_pci(two guests, stream netdev) A->B {} MiB: {} MB/s (sender nc) | ping rtt min/avg/max {} ms",
        blob_mib(),
        ra.get("tx_mbps").unwrap_or("?"),
        ra.get("ping_rtt_min_avg_max").unwrap_or("?")
    );
}

// ------------------------------------------------------------------------------------------------
// tests of our device (vdpa-emu serve)

/// Guest A: the guest's built-in virtio_pci + virtio_net drive our device over vfio-user; the MAC is the
/// one given to serve; 100 pings and a 32 MiB blob each way to the host through `--port tap:vdpae1`.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn device_virtio_pci_host_tap() {
    device_with_host_tap(
        "device_virtio_pci_host_tap",
        "vdpae1",
        1,
        "02:00:00:e2:e0:01",
        "virtio-pci",
    );
}

/// The stats of the live device, through its control socket.
fn stats(serve: &Serve) -> sim_harness::ctl::StatsReport {
    let r: sim_harness::ctl::Response =
        serde_json::from_str(&ctl(serve, &["--json", "stats"])).expect("stats JSON");
    r.stats.expect("stats")
}

/// `vdpa-emu ctl --socket SERVE.sock ARGS...` (the control socket beside serve's); panics with
/// serve's log on failure; returns stdout.
fn ctl(serve: &Serve, args: &[&str]) -> String {
    let out = Command::new(vdpa_emu_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(&serve.socket)
        .args(args)
        .output()
        .expect("run vdpa-emu ctl");
    assert!(
        out.status.success(),
        "vdpa-emu ctl {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        serve.diag()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A counter of the live device, read through its control socket.
fn live_counter(serve: &Serve, name: &str) -> u64 {
    live_counters(serve)[name]
}

/// The control socket on a live Linux guest (virtio_net): `ctl link down` takes the guest's carrier
/// down (and its TX stops: the device counts no frame while the link is down), `ctl link up` brings
/// it back and pings flow again; then a scenario file with the device as a served device (`ctl =`)
/// flaps the link again while the guest pings and asks for an announce, which makes virtio_net send
/// a gratuitous ARP and ack over the control queue; `ctl pcap` captures it all, and tcpdump reads
/// the file: the guest's ICMP echoes and its gratuitous ARP are in it.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn device_ctl_link_flap_announce_and_capture_live_guest() {
    const TEST: &str = "device_ctl_live_guest";
    require_root(TEST);
    let e2e = e2e();
    let dir = Scratch::new(TEST);
    let mac = "02:00:00:e2:e0:09";
    let (mut serve, tap) = Serve::with_tap(&dir, mac, "vdpae9", 9);
    let mut vars = nic_vars("flap", "virtio-pci", mac, &tap.guest_addr(), &tap.host_ip);
    set_var(&mut vars, "FLAP_SECS", "150".into());
    set_var(&mut vars, "FLAP_DOWNS", "2".into());
    let mut vm = Vm::boot(
        &e2e,
        &dir,
        VmSpec::new("guest", nic_script(&vars))
            .arg("-device")
            .arg(serve.device_arg()),
    );
    vm.wait_for("E2E-READY flap", 1, Duration::from_secs(180));
    let pcap = dir.join("live.pcapng");
    ctl(&serve, &["pcap", "start", pcap.to_str().unwrap()]);
    let stats = ctl(&serve, &["stats"]);
    assert!(
        stats.contains("DRIVER_OK") && stats.contains("link up"),
        "{stats}"
    );

    // Link down: the guest sees its carrier go, and sends nothing while it is gone.
    assert!(ctl(&serve, &["link", "down"]).contains("link down"));
    vm.wait_for("E2E-CARRIER 0", 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    let tx_down = live_counter(&serve, "tx_frames");
    std::thread::sleep(Duration::from_secs(3));
    let tx_down_later = live_counter(&serve, "tx_frames");
    assert_eq!(
        tx_down,
        tx_down_later,
        "{TEST}: the guest transmitted while the link was down\n{}",
        vm.diag()
    );

    // Link up: carrier back, pings answered again.
    ctl(&serve, &["link", "up"]);
    vm.wait_for("E2E-CARRIER 1", 1, Duration::from_secs(30));

    // A scenario drives the live guest's device: link down while it pings, up again, announce.
    let ctrl_before = live_counter(&serve, "ctrl_commands");
    let scenario = dir.join("flap.toml");
    fs::write(
        &scenario,
        format!(
            r#"name = "live-flap"
[[device]]
name = "guest"
ctl = "{}"

[[step]]
kind = "link"
device = "guest"
up = false
expect = ["guest:config.link_up == false", "guest:status.driver_ok"]

[[step]]
kind = "wait"
seconds = 3

[[step]]
kind = "link"
device = "guest"
up = true
expect = ["guest:config.link_up == true"]

[[step]]
kind = "wait"
seconds = 1

[[step]]
kind = "announce"
device = "guest"
expect = ["guest:announce.requested == true"]

[end]
expect = ["guest:fault.any == 0", "guest:status.driver_ok", "guest:tx.0.frames > 0"]
"#,
            sim_harness::ctl::default_ctl_path(&serve.socket).display()
        ),
    )
    .unwrap();
    let out = Command::new(vdpa_emu_bin())
        .args(["scenario", "run"])
        .arg(&scenario)
        .output()
        .expect("run vdpa-emu scenario");
    let report = String::from_utf8_lossy(&out.stdout);
    println!("E2E {TEST}: scenario against the live guest:\n{report}");
    assert!(
        out.status.success(),
        "{TEST}: the scenario failed: {report}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.diag()
    );
    vm.wait_for("E2E-CARRIER 1", 2, Duration::from_secs(30));
    // The announce: virtio_net sends a gratuitous ARP and acks over the control queue.
    vm.poll_until(
        "announce ack (ctrl_commands)",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || live_counter(&serve, "ctrl_commands") > ctrl_before,
    );

    let b = vm.finish(Duration::from_secs(180));
    assert_eq!(b.get("carrier_seq"), Some("10101"), "{TEST}\n{}", vm.diag());
    assert!(
        b.num("flap_after") >= 10,
        "{TEST}: pings after link up\n{}",
        vm.diag()
    );
    assert!(
        b.num("flap_lost") >= 1,
        "{TEST}: no ping failed while the link was down\n{}",
        vm.diag()
    );
    let stop = ctl(&serve, &["pcap", "stop"]);
    println!("E2E {TEST}: {}", stop.trim());

    let out = Command::new("tcpdump")
        .args(["-n", "-e", "-r"])
        .arg(&pcap)
        .output()
        .expect("tcpdump (scripts/host-tools.sh installs it)");
    assert!(
        out.status.success(),
        "tcpdump -r: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let guest_ip = tap.guest_addr();
    let echo_requests = text
        .lines()
        .filter(|l| l.contains(&format!("{guest_ip} > {}: ICMP echo request", tap.host_ip)))
        .count();
    let echo_replies = text
        .lines()
        .filter(|l| l.contains(&format!("{} > {guest_ip}: ICMP echo reply", tap.host_ip)))
        .count();
    let garp = text.lines().any(|l| {
        l.contains(&format!("{mac} > ff:ff:ff:ff:ff:ff"))
            && l.contains(&format!("who-has {guest_ip} tell {guest_ip}"))
    });
    println!(
        "E2E {TEST}: capture: {echo_requests} echo requests, {echo_replies} replies, gratuitous ARP {garp}"
    );
    assert!(
        echo_requests >= 10 && echo_replies >= 10,
        "{TEST}: the capture lacks the guest's pings\n{}",
        tail(&text, 40)
    );
    assert!(
        garp,
        "{TEST}: no gratuitous ARP from the guest after announce\n{}",
        tail(&text, 40)
    );
    assert!(serve.is_running(), "vdpa-emu serve died\n{}", serve.diag());
    drop(tap);
}

/// Guest B: the Linux ifcvf vDPA driver takes our function from virtio_pci (driver_override), `vdpa dev
/// add` creates vdpa0 on virtio_vdpa; the same pings and transfers through `--port tap:vdpae2`.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn device_ifcvf_vdpa_host_tap() {
    device_with_host_tap(
        "device_ifcvf_vdpa_host_tap",
        "vdpae2",
        2,
        "02:00:00:e2:e0:02",
        "ifcvf",
    );
}

/// The device's counters, read through its control socket.
fn live_counters(serve: &Serve) -> BTreeMap<String, u64> {
    let r: sim_harness::ctl::Response =
        serde_json::from_str(&ctl(serve, &["--json", "stats"])).expect("stats JSON");
    r.stats.expect("stats").counters
}

/// Offloads with a Linux guest (docs/offloads.md), through its own TAP `vdpaeo`: virtio_net
/// negotiates CSUM, GUEST_CSUM, HOST_TSO4 and HOST_TSO6 from our device, and `ethtool -k` in the
/// guest shows what it made of them: rx-checksumming, tx-checksumming, tx-tcp-segmentation and
/// tx-tcp6-segmentation on. The guest's TCP transfer to the host (the 32 MiB blob, md5 compared end
/// to end) crosses the device as GSO frames handed whole to the TAP (IFF_VNET_HDR): `tx_gso_frames`
/// rises, no header is refused. Then `ethtool -K eth0 tso off`: the blob goes again, and the device
/// sees no GSO frame (`tx_gso_frames` unchanged) but a NEEDS_CSUM header on every data segment
/// (`tx_csum` rises by at least one per MTU of the blob: the kernel segments in software and leaves
/// the checksums to the device); the bytes compare equal again. It negotiates GUEST_TSO4/6 and
/// CTRL_GUEST_OFFLOADS too, and the host's transfer to it arrives as GSO frames from the TAP
/// (TUNSETOFFLOAD following the guest) handed on whole: `rx_gso_frames` rises. (ethtool's
/// large-receive-offload is not asserted either way.)
#[test]
#[ignore = "needs QEMU: make e2e"]
fn device_offloads_virtio_pci_host_tap() {
    const TEST: &str = "device_offloads_virtio_pci_host_tap";
    device_with_host_tap_role(
        TEST,
        "vdpaeo",
        13,
        "02:00:00:e2:e0:0e",
        "virtio-pci",
        "offloads",
        |vm, peer, serve| {
            use bar_registers::virtio::bits;
            let rx_on = peer.receive(vm, Duration::from_secs(240));
            // the guest turned TSO off and waits for the host's blob: nothing of its own moves now
            vm.wait_for("E2E-READY recv", 1, Duration::from_secs(60));
            let on = live_counters(serve);
            peer.send(vm, 1, Duration::from_secs(120));
            let rx_off = peer.receive(vm, Duration::from_secs(240));
            let off = live_counters(serve);
            // then `ethtool -G` (ring reset) and `ethtool -K rx-gro-hw off` (GUEST_OFFLOADS_SET),
            // and the host's blob once more
            peer.send(vm, 2, Duration::from_secs(120));
            vm.wait_for("E2E-RESULT role_done=", 1, Duration::from_secs(120));
            let gro = live_counters(serve);
            let b = vm.boots().pop().expect("boot markers");

            let blob = peer.mib << 20;
            for (label, rx) in [("TSO on", &rx_on), ("TSO off", &rx_off)] {
                assert_eq!(
                    (rx.bytes, Some(rx.md5.as_str())),
                    (blob, b.get("blob_md5")),
                    "{TEST}: guest -> host blob with {label}\n{}",
                    vm.diag()
                );
            }
            assert_eq!(
                (b.num("rx_bytes"), b.get("rx_md5")),
                (blob, Some(peer.data_md5.as_str())),
                "{TEST}: host -> guest blob\n{}",
                vm.diag()
            );
            let p = pings();
            assert_eq!(
                (b.num("ping_tx"), b.num("ping_rx")),
                (p, p),
                "{TEST}: ping loss\n{}",
                vm.diag()
            );

            // ethtool -k: what virtio_net set from the negotiated features (drivers/net/virtio_net.c
            // virtnet_probe: CSUM -> NETIF_F_HW_CSUM | SG, HOST_TSO4/6 -> TSO/TSO6, HOST_ECN ->
            // TSO_ECN; the guest's 6.12 sets NETIF_F_RXCSUM whether or not GUEST_CSUM was negotiated,
            // so GUEST_CSUM is checked from serve's log below)
            for f in [
                "rx_checksumming",
                "tx_checksumming",
                "tx_checksum_ip_generic",
                "scatter_gather",
                "tcp_segmentation_offload",
                "tx_tcp_segmentation",
                "tx_tcp6_segmentation",
                "tx_tcp_ecn_segmentation",
            ] {
                assert_eq!(
                    b.get(&format!("on_{f}")),
                    Some("on"),
                    "{TEST}: ethtool -k {f}\n{}",
                    vm.diag()
                );
            }
            for (f, want) in [
                ("tcp_segmentation_offload", "off"),
                ("tx_tcp_segmentation", "off"),
                ("tx_tcp6_segmentation", "off"),
                ("tx_checksumming", "on"),
                ("rx_checksumming", "on"),
            ] {
                assert_eq!(
                    b.get(&format!("off_{f}")),
                    Some(want),
                    "{TEST}: ethtool -k {f} after `ethtool -K tso off`\n{}",
                    vm.diag()
                );
            }

            // virtio_net's TX watchdog (ethtool -S tx_tx_timeouts) never fired
            assert_eq!(
                b.get("ethtool_tx_timeouts"),
                Some("0"),
                "{TEST}: ethtool -S tx_tx_timeouts\n{}",
                vm.diag()
            );
            let feats = serve.last_negotiated(TEST);
            for (bit, name) in [
                (bits::CSUM, "CSUM"),
                (bits::GUEST_CSUM, "GUEST_CSUM"),
                (bits::HOST_TSO4, "HOST_TSO4"),
                (bits::HOST_TSO6, "HOST_TSO6"),
                (bits::GUEST_TSO4, "GUEST_TSO4"),
                (bits::GUEST_TSO6, "GUEST_TSO6"),
                (bits::CTRL_GUEST_OFFLOADS, "CTRL_GUEST_OFFLOADS"),
            ] {
                assert!(
                    feats & (1 << bit) != 0,
                    "{TEST}: guest did not negotiate {name}: {feats:#x}\n{}",
                    serve.diag()
                );
            }
            let bad = |c: &BTreeMap<String, u64>| -> u64 {
                c.iter()
                    .filter(|(k, _)| k.starts_with("tx_bad_hdr_"))
                    .map(|(_, v)| *v)
                    .sum()
            };
            let delta = |k: &str| off[k] - on[k];
            println!(
                "E2E-BENCH {TEST}: TSO on: tx_gso_frames {} tx_gso_segments {} tx_csum {} tx_frames {} rx_csum_valid {} | \
                 TSO off: +tx_gso_frames {} +tx_csum {} +tx_frames {} | tx_bad_hdr {} | rx_gso_frames {} \
                 rx_gso_segmented {} rx_csum_partial {} rx_csum_completed {} rx_bad_offload {} rx_frames {}",
                on["tx_gso_frames"],
                on["tx_gso_segments"],
                on["tx_csum"],
                on["tx_frames"],
                on["rx_csum_valid"],
                delta("tx_gso_frames"),
                delta("tx_csum"),
                delta("tx_frames"),
                bad(&off),
                off["rx_gso_frames"],
                off["rx_gso_segmented"],
                off["rx_csum_partial"],
                off["rx_csum_completed"],
                off["rx_bad_offload"],
                off["rx_frames"]
            );
            // The host's TCP transfer to the guest: the TAP (TUNSETOFFLOAD following the
            // guest's GUEST_TSO4/6) hands the device 64 KiB GSO frames, which reach the guest whole.
            assert!(
                off["rx_gso_frames"] > 0,
                "{TEST}: no GSO frame reached the guest from the host's TCP transfer\n{}",
                serve.diag()
            );
            assert_eq!(off["rx_bad_offload"], 0, "{TEST}: TAP headers refused");
            // ethtool -G rx 128 tx 128: virtio_net resized both rings through queue_reset
            // (VIRTIO_F_RING_RESET), and traffic went on.
            assert_eq!(
                b.get("ring_rx"),
                Some("128"),
                "{TEST}: ethtool -g\n{}",
                vm.diag()
            );
            assert!(
                gro["queue_resets"] >= off["queue_resets"] + 2,
                "{TEST}: ethtool -G reset no queue: queue_resets {} -> {}\n{}",
                off["queue_resets"],
                gro["queue_resets"],
                serve.diag()
            );
            // ethtool -K rx-gro-hw off: GUEST_OFFLOADS_SET without GUEST_TSO4/6, the TAP's
            // TUNSETOFFLOAD follows, and the host's next blob reaches the guest without a GSO frame.
            assert_eq!(
                b.get("gro_hw"),
                Some("off"),
                "{TEST}: ethtool -k rx-gro-hw\n{}",
                vm.diag()
            );
            assert_eq!(
                (b.num("gro_off_rx_bytes"), b.get("gro_off_rx_md5")),
                (blob, Some(peer.data_md5.as_str())),
                "{TEST}: host -> guest blob with rx-gro-hw off\n{}",
                vm.diag()
            );
            println!(
                "E2E-BENCH {TEST}: after ethtool -G and rx-gro-hw off: +queue_resets {} +rx_gso_frames {} \
                 +rx_gso_segmented {} +rx_frames {} +ctrl_commands {}",
                gro["queue_resets"] - off["queue_resets"],
                gro["rx_gso_frames"] - off["rx_gso_frames"],
                gro["rx_gso_segmented"] - off["rx_gso_segmented"],
                gro["rx_frames"] - off["rx_frames"],
                gro["ctrl_commands"] - off["ctrl_commands"]
            );
            assert_eq!(
                gro["rx_gso_frames"],
                off["rx_gso_frames"],
                "{TEST}: GSO frames after the guest turned rx-gro-hw off\n{}",
                serve.diag()
            );
            assert_eq!(
                off["rx_gso_segmented"], 0,
                "{TEST}: the guest takes GSO frames"
            );
            assert!(
                on["tx_gso_frames"] > 0,
                "{TEST}: no GSO frame from the guest's TCP transfer with TSO on\n{}",
                serve.diag()
            );
            assert_eq!(
                off["tx_gso_frames"],
                on["tx_gso_frames"],
                "{TEST}: GSO frames from the guest after `ethtool -K tso off`\n{}",
                serve.diag()
            );
            // 1500-byte MTU: at least one checksummed data segment per 1500 bytes of the blob
            assert!(
                delta("tx_csum") >= blob / 1500,
                "{TEST}: with TSO off the {blob}-byte transfer completed only {} checksums\n{}",
                delta("tx_csum"),
                serve.diag()
            );
            assert_eq!(
                off["tx_gso_segments"], 0,
                "{TEST}: the TAP takes GSO frames whole"
            );
            assert_eq!(bad(&off), 0, "{TEST}: headers refused");
        },
    );
}

/// Two guests, each on its own `vdpa-emu serve`, the two devices linked by `--port unix:PATH` (both serve
/// processes get the same PATH): A pings B 100 times and sends B a 32 MiB blob.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn device_two_guests_unix_port() {
    let e2e = e2e();
    let dir = Scratch::new("dev-2g");
    let link = dir.join("port.sock").display().to_string();
    let (mac_a, mac_b) = ("02:00:00:e2:e0:0a", "02:00:00:e2:e0:0b");
    let (ip_a, ip_b) = ("10.77.202.1", "10.77.202.2");
    // The TAP tests run the packed ring (Linux negotiates it when offered); this one the split
    // ring: the devices do not offer VIRTIO_F_RING_PACKED.
    let mut serve_a = Serve::start(
        &dir,
        "dev-a",
        &[
            "--mac".into(),
            mac_a.into(),
            "--port".into(),
            format!("unix:{link}"),
            "--no-packed".into(),
        ],
    );
    let mut serve_b = Serve::start(
        &dir,
        "dev-b",
        &[
            "--mac".into(),
            mac_b.into(),
            "--port".into(),
            format!("unix:{link}"),
            "--no-packed".into(),
        ],
    );
    let (va, vb) = pair_vars("virtio-pci", (mac_a, ip_a), (mac_b, ip_b));
    let mut b = Vm::boot(
        &e2e,
        &dir,
        VmSpec::new("guest-b", nic_script(&vb))
            .arg("-device")
            .arg(serve_b.device_arg()),
    );
    let mut a = Vm::boot(
        &e2e,
        &dir,
        VmSpec::new("guest-a", nic_script(&va))
            .arg("-device")
            .arg(serve_a.device_arg()),
    );
    let ra = a.finish(Duration::from_secs(300));
    let rb = b.finish(Duration::from_secs(60));
    serve_a.print_cost("device_two_guests_unix_port(A)");
    serve_b.print_cost("device_two_guests_unix_port(B)");
    assert_nic(&ra, &a, mac_a, "virtio-pci");
    assert_nic(&rb, &b, mac_b, "virtio-pci");
    let p = pings();
    assert_eq!(
        (ra.num("ping_tx"), ra.num("ping_rx")),
        (p, p),
        "ping loss\n{}",
        a.diag()
    );
    assert_eq!(
        rb.num("rx_bytes"),
        blob_mib() << 20,
        "A -> B byte count\n{}\n{}",
        a.diag(),
        b.diag()
    );
    assert_eq!(
        rb.get("rx_md5"),
        ra.get("blob_md5"),
        "A -> B checksum\n{}\n{}",
        a.diag(),
        b.diag()
    );
    // Device-side segmentation (docs/offloads.md): guest A's virtio_net negotiated HOST_TSO4,
    // its TCP transfer leaves as GSO frames, and serve A cuts them into segments for the unix
    // link, which takes wire frames only (the md5 above compares the bytes end to end).
    let (gso, segs) = (
        live_counter(&serve_a, "tx_gso_frames"),
        live_counter(&serve_a, "tx_gso_segments"),
    );
    println!(
        "E2E-BENCH device_two_guests_unix_port(A): tx_gso_frames {gso} tx_gso_segments {segs}"
    );
    assert!(
        gso > 0 && segs > gso,
        "device A segmented no GSO frame: tx_gso_frames {gso}, tx_gso_segments {segs}\n{}",
        serve_a.diag()
    );
    // And device B coalesces them again for guest B, whose virtio_net negotiated GUEST_TSO4
    // (docs/offloads.md "Coalescing"): the segments of one GSO frame reach B's receive FIFO
    // together, and guest B's stack takes the rebuilt GSO frames (the md5 above).
    let (cf, cs, rg) = (
        live_counter(&serve_b, "rx_coalesced_frames"),
        live_counter(&serve_b, "rx_coalesced_segments"),
        live_counter(&serve_b, "rx_gso_frames"),
    );
    println!(
        "E2E-BENCH device_two_guests_unix_port(B): rx_coalesced_frames {cf} rx_coalesced_segments {cs} rx_gso_frames {rg}"
    );
    assert!(
        cf > 0 && cs > cf && rg >= cf,
        "device B coalesced nothing: rx_coalesced_frames {cf}, rx_coalesced_segments {cs}, rx_gso_frames {rg}\n{}",
        serve_b.diag()
    );
    println!(
        "E2E-BENCH device_two_guests_unix_port A->B {} MiB: {} MB/s (sender nc) | ping rtt min/avg/max {} ms",
        blob_mib(),
        ra.get("tx_mbps").unwrap_or("?"),
        ra.get("ping_rtt_min_avg_max").unwrap_or("?")
    );
    if let Some(mbps) = ra.get("tx_mbps").and_then(|v| v.parse::<f64>().ok()) {
        println!(
            "E2E-BENCH device_two_guests_unix_port vs QEMU: {}",
            vs_baseline("two guests A->B", mbps)
        );
    }
    drop((serve_a, serve_b));
}

/// Lifecycle 1: `system_reset` over QMP (QEMU sends DEVICE_RESET, the guest re-probes and re-inits the
/// device) and traffic works again in the second boot, on the same serve process.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn device_survives_guest_reset() {
    require_root("device_survives_guest_reset");
    let e2e = e2e();
    let dir = Scratch::new("dev-reset");
    let mac = "02:00:00:e2:e0:03";
    let mut serve = Serve::start(
        &dir,
        "dev",
        &[
            "--mac".into(),
            mac.into(),
            "--port".into(),
            "tap:vdpae3".into(),
        ],
    );
    let tap = Tap::adopt("vdpae3", 3, &mut serve);
    let peer = HostPeer::new(&tap);
    let mut vars = nic_vars(
        "host-peer",
        "virtio-pci",
        mac,
        &tap.guest_addr(),
        &tap.host_ip,
    );
    vars.push(("HOLD", "1".into()));
    let mut spec = VmSpec::new("guest", nic_script(&vars))
        .arg("-device")
        .arg(serve.device_arg());
    spec.qmp = true;
    spec.no_reboot = false; // with -no-reboot, system_reset would end QEMU
    let mut vm = Vm::boot(&e2e, &dir, spec);
    peer.round(&mut vm, 1, "device_survives_guest_reset(boot 1)");
    vm.wait_for("E2E-HOLD", 1, Duration::from_secs(30));
    vm.qmp("system_reset");
    vm.wait_for("GUEST-MARKER: init started", 2, Duration::from_secs(60));
    peer.round(&mut vm, 2, "device_survives_guest_reset(boot 2)");
    vm.wait_for("E2E-HOLD", 2, Duration::from_secs(30));
    let boots = vm.boots();
    assert_eq!(boots.len(), 2, "two boots\n{}", vm.diag());
    for b in &boots {
        assert_nic(b, &vm, mac, "virtio-pci");
        assert!(
            b.fails.is_empty(),
            "guest failures {:?}\n{}",
            b.fails,
            vm.diag()
        );
    }
    vm.qmp("quit");
    vm.wait_exit(Duration::from_secs(20));
    assert!(serve.is_running(), "vdpa-emu serve died\n{}", serve.diag());
}

/// Lifecycle 2: QEMU is SIGKILLed in the middle of a transfer (no DMA_UNMAP, no reset, the socket just
/// closes); the same serve process keeps running, a NEW QEMU attaches to it and pings + transfers work;
/// then SIGTERM stops serve cleanly and removes its socket.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn device_survives_qemu_kill_and_reattach() {
    require_root("device_survives_qemu_kill_and_reattach");
    let e2e = e2e();
    let dir = Scratch::new("dev-kill");
    let mac = "02:00:00:e2:e0:04";
    let mut serve = Serve::start(
        &dir,
        "dev",
        &[
            "--mac".into(),
            mac.into(),
            "--port".into(),
            "tap:vdpae4".into(),
        ],
    );
    let tap = Tap::adopt("vdpae4", 4, &mut serve);
    let peer = HostPeer::new(&tap);

    // first QEMU: streams zeros to the host; killed once 8 MiB have arrived
    let vars = nic_vars("stream", "virtio-pci", mac, &tap.guest_addr(), &tap.host_ip);
    let mut vm1 = Vm::boot(
        &e2e,
        &dir,
        VmSpec::new("guest-1", nic_script(&vars))
            .arg("-device")
            .arg(serve.device_arg()),
    );
    let mut s = peer.accept(&mut vm1, Duration::from_secs(120));
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0usize;
    while got < 8 << 20 {
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "guest-1 closed the stream after {got} bytes\n{}",
                vm1.diag()
            ),
            Ok(n) => got += n,
            Err(e) => panic!("stream from guest-1: {e} after {got} bytes\n{}", vm1.diag()),
        }
    }
    vm1.kill();
    eprintln!("e2e: guest-1 SIGKILLed after {got} bytes of its stream");
    drop(s);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        serve.is_running(),
        "vdpa-emu serve died when QEMU was killed\n{}",
        serve.diag()
    );

    // second QEMU on the same socket
    let vars = nic_vars(
        "host-peer",
        "virtio-pci",
        mac,
        &tap.guest_addr(),
        &tap.host_ip,
    );
    let mut vm2 = Vm::boot(
        &e2e,
        &dir,
        VmSpec::new("guest-2", nic_script(&vars))
            .arg("-device")
            .arg(serve.device_arg()),
    );
    peer.round(
        &mut vm2,
        1,
        "device_survives_qemu_kill_and_reattach(new QEMU)",
    );
    let b = vm2.finish(Duration::from_secs(60));
    assert_nic(&b, &vm2, mac, "virtio-pci");

    let st = serve.stop();
    assert!(
        st.success(),
        "vdpa-emu serve exit status after SIGTERM: {st}\n{}",
        serve.diag()
    );
    assert!(
        !serve.socket.exists(),
        "vdpa-emu serve left its socket {}",
        serve.socket.display()
    );
    drop(tap);
}

#[path = "e2e_qemu/dpdk.rs"]
mod dpdk;
#[path = "e2e_qemu/matrix.rs"]
mod matrix;
#[path = "e2e_qemu/profiles.rs"]
mod profiles;
#[path = "e2e_qemu/rss.rs"]
mod rss;
#[path = "e2e_qemu/viommu.rs"]
mod viommu;

// ------------------------------------------------------------------------------------------------
// the harness's own pieces (run without QEMU)

#[test]
fn harness_cpio_and_markers() {
    let c = cpio_newc(&[("extra.sh", 0o100755, b"echo hi\n")]);
    assert!(c.starts_with(b"070701"));
    assert_eq!(c.len() % 4, 0);
    assert!(c.windows(10).any(|w| w == b"TRAILER!!!"));
    let log = "junk\r\nGUEST-MARKER: init started, kernel x\r\nE2E-MODULE name=ifcvf ok=1\n\
               pci 0000:00:02.0 1af4:1041 drv virtio-pci sub 8086:001a class 0x020000\n\
               [ 1.0] printk E2E-RESULT a=1 b=two\nE2E-FAIL oops\nGUEST-MARKER: extra.sh exit=1\nGUEST-MARKER: done\n\
               GUEST-MARKER: init started\nE2E-RESULT a=2\n";
    let b = parse_boots(log);
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].get("a"), Some("1"));
    assert_eq!(b[0].get("b"), Some("two"));
    assert_eq!(b[0].modules.get("ifcvf"), Some(&true));
    assert_eq!(b[0].pci[0].drv, "virtio-pci");
    assert_eq!(b[0].pci[0].sub, "8086:001a");
    assert_eq!(b[0].fails, vec!["oops".to_string()]);
    assert_eq!(b[0].extra_exit, Some(1));
    assert!(b[0].done && !b[1].done);
    assert_eq!(b[1].get("a"), Some("2"));
    let tap = Tap {
        name: "none-such-tap".into(),
        host_ip: "10.77.9.1".into(),
    };
    assert_eq!(tap.guest_addr(), "10.77.9.2");
}
