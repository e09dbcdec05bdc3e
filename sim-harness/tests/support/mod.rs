//! What the vfio-user test files share: a served loopback device on a temp socket.
#![allow(dead_code)] // each test file uses a different part

use device::{Device, DeviceConfig, MsixOwner};
use sim_harness::serve::{DeviceBackend, DeviceServer};
use sim_harness::vfio_user::client::Client;
use sim_harness::vfio_user::{Server, ServerOptions};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A fresh directory under the system temp dir.
pub fn temp_dir(prefix: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A device as `serve` builds it: QEMU (the VMM) owns the MSI-X table.
pub fn vmm_device(pairs: u16) -> Arc<Device> {
    let mut cfg = DeviceConfig::with_queue_pairs(pairs);
    cfg.msix_owner = MsixOwner::Vmm;
    Device::new(cfg).unwrap()
}

/// A server on a temp socket, served by a thread; stopped and cleaned up on drop.
pub struct TestServer {
    pub server: Arc<DeviceServer>,
    /// Message handlers the test makes panic on purpose (checked when the server is dropped).
    pub expected_handler_panics: u64,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
}

impl TestServer {
    /// A loopback device with `pairs` queue pairs.
    pub fn start(pairs: u16) -> Self {
        let dev = vmm_device(pairs);
        dev.set_loopback();
        Self::with_device(dev)
    }

    pub fn with_device(dev: Arc<Device>) -> Self {
        Self::with_options(dev, ServerOptions::default())
    }

    pub fn with_options(dev: Arc<Device>, opts: ServerOptions) -> Self {
        Self::with_backend(DeviceBackend::new(dev), opts)
    }

    /// Serves `backend` (e.g. one with shared-memory doorbells).
    pub fn with_backend(backend: DeviceBackend, opts: ServerOptions) -> Self {
        let dir = temp_dir("vdpa-emu-vu");
        let server = Arc::new(Server::bind(&dir.join("dev.sock"), backend, opts).unwrap());
        let s = server.clone();
        let thread = std::thread::spawn(move || s.serve().unwrap());
        TestServer {
            server,
            expected_handler_panics: 0,
            thread: Some(thread),
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.server.path()
    }

    pub fn dev(&self) -> &Arc<Device> {
        self.server.device().device()
    }

    pub fn connect(&self) -> UnixStream {
        UnixStream::connect(self.path()).unwrap()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.path()).unwrap()
    }

    /// Waits until `f(stats)` holds (10 s at most).
    pub fn wait_stats(&self, what: &str, f: impl Fn(&sim_harness::vfio_user::ServerStats) -> bool) {
        let t0 = Instant::now();
        while !f(&self.server.stats()) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{what}: {:?}",
                self.server.stats()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until `n` connections have been cleaned up by the server.
    pub fn wait_ended(&self, n: u64) {
        let t0 = Instant::now();
        while self.server.stats().ended < n {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "server did not finish connection {n}: {:?}",
                self.server.stats()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.stop_handle().trigger();
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if !std::thread::panicking() {
                r.expect("server thread panicked");
                // The server contains a message handler's panic (EIO, the device failed) and
                // goes on: still a bug, unless the test caused it on purpose.
                assert_eq!(
                    self.server.stats().handler_panics,
                    self.expected_handler_panics,
                    "a message's handler panicked"
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `vdpa-emu serve` (one queue pair, plus `extra` arguments) as a child process with its
/// stderr in a file, RUST_LOG unset so it logs at its default level; killed on drop.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub sock: PathBuf,
    pub log: PathBuf,
    dir: PathBuf,
}

impl ServeProcess {
    pub fn start(prefix: &str, extra: &[&str]) -> Self {
        let dir = temp_dir(prefix);
        let sock = dir.join("dev.sock");
        let log = dir.join("serve.log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_vdpa-emu"))
            .args([
                "serve",
                "--socket",
                sock.to_str().unwrap(),
                "--queue-pairs",
                "1",
            ])
            .args(extra)
            .env_remove("RUST_LOG")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while !sock.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "serve did not come up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        ServeProcess {
            child,
            sock,
            log,
            dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn proc_file(&self, f: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{f}", self.pid()))
    }

    /// Open descriptors of the server.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(self.proc_file("fd")).unwrap().count()
    }

    /// Resident set size of the server.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(self.proc_file("status")).unwrap();
        let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            // serve contains a panic (the device fails, the server goes on) and the panic hook
            // and serve log it: still a bug, which no test here may pass over. The directory
            // (and the log) stay for a look.
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            assert!(
                !log.contains("panicked"),
                "serve panicked (contained, still a bug); its log {}:\n{log}",
                self.log.display()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
