//! `vdpa-emu validate` against devices that are not ours, and against no device at all.
//!
//! The foreign device is the gpio example server of rust-vmm's `vfio_user` crate (a
//! dev-dependency): a single-connection, non-virtio vfio-user device (vendor 494f, device
//! 0dc8, class ff). The test builds the crate's own example from its registry source with
//! cargo (into this build's target directory) and serves it on a temporary socket. Its
//! `Server::run` serves one connection and returns, so a validator that reconnected would
//! find nobody listening.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn vdpa_emu() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vdpa-emu"))
}

/// This build's target directory (the binary is TARGET/PROFILE/vdpa-emu).
fn target_dir() -> PathBuf {
    vdpa_emu()
        .parent()
        .and_then(Path::parent)
        .expect("TARGET/PROFILE/vdpa-emu")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // The nested build must not inherit this build's target directory lock or flags.
    c.env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    c
}

/// The registry source of the `vfio_user` dev-dependency, as cargo resolved it.
fn vfio_user_source() -> PathBuf {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let pkg = v["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "vfio_user")
        .expect("vfio_user is a dev-dependency of sim-harness");
    Path::new(pkg["manifest_path"].as_str().expect("manifest_path"))
        .parent()
        .expect("crate directory")
        .to_path_buf()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// Builds the crate's gpio example (a copy of the registry source, so that the registry is not
/// written to); returns the binary.
fn build_gpio_example() -> PathBuf {
    let src = vfio_user_source();
    let base = target_dir().join("foreign");
    let copy = base.join(src.file_name().expect("vfio_user-VERSION"));
    if !copy.join("Cargo.toml").exists() {
        copy_dir(&src, &copy);
        // The copy may sit inside this workspace (target/ is): an empty [workspace] table
        // makes it its own workspace root instead of an unlisted member.
        let manifest = copy.join("Cargo.toml");
        let mut text = std::fs::read_to_string(&manifest).unwrap();
        if !text.contains("\n[workspace]") {
            text.push_str("\n[workspace]\n");
            std::fs::write(&manifest, text).unwrap();
        }
    }
    let tdir = base.join("target");
    let out = cargo()
        .current_dir(&copy)
        .args(["build", "--quiet", "--example", "gpio", "--target-dir"])
        .arg(&tdir)
        .output()
        .expect("cargo build runs");
    assert!(
        out.status.success(),
        "building vfio_user's gpio example from {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = tdir.join("debug/examples/gpio");
    assert!(bin.exists(), "{} built", bin.display());
    bin
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vdpa-foreign-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_foreign_single_connection_device_fails_pci_structure_and_nothing_else_runs() {
    let gpio = build_gpio_example();
    let dir = temp_dir("gpio");
    let sock = dir.join("gpio.sock");
    let mut server = Command::new(&gpio)
        .arg("--socket-path")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gpio example starts");
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the gpio server never bound {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let t0 = Instant::now();
    let out = Command::new(vdpa_emu())
        .args(["validate", "--format", "json", "--socket"])
        .arg(&sock)
        .env("RUST_LOG", "sim_harness::validate=info")
        .output()
        .expect("vdpa-emu runs");
    let took = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);

    // The server served exactly one connection (ours) and ended by itself; nobody listens now.
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        if t1.elapsed() > Duration::from_secs(5) {
            let _ = server.kill();
            panic!("the gpio server still runs after the validator left\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut server_log = String::new();
    use std::io::Read;
    let _ = server
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut server_log);
    assert!(
        status.success(),
        "gpio server: {status}, {server_log}\nvalidator: {stderr}"
    );
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_err());

    assert_eq!(
        out.status.code(),
        Some(1),
        "a device that fails a MUST exits 1\n{stdout}\n{stderr}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(
        stderr.matches("connected").count(),
        1,
        "one connection, no retries:\n{stderr}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(v["exit_code"], 1, "{stdout}");
    assert!(v["aborted"].is_null(), "{stdout}");
    let groups = v["checks"].as_array().expect("checks");
    assert_eq!(
        groups.len(),
        sim_harness::validate::GROUPS.len(),
        "{stdout}"
    );
    let pci = &groups[0];
    assert_eq!(pci["id"], "pci-structure");
    assert_eq!(pci["verdict"], "FAIL", "{stdout}");
    let identity = pci["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "identity the IFC VF drivers match")
        .expect("the identity finding");
    assert_eq!(identity["verdict"], "FAIL");
    let seen = identity["observed"].as_str().unwrap();
    assert!(
        seen.contains("494f:0dc8") && seen.contains("class ff"),
        "identity found: {seen}"
    );
    assert!(
        pci["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["verdict"] == "FAIL"
                && f["observed"].as_str().unwrap().contains("common cfg")),
        "the missing virtio capability is named: {stdout}"
    );
    for g in &groups[1..] {
        assert_eq!(g["verdict"], "NOT RUN", "{}: {stdout}", g["id"]);
        let why = g["findings"][0]["observed"].as_str().unwrap();
        assert!(
            why.contains("virtio-net") && why.contains("494f:0dc8"),
            "{}: reason {why}",
            g["id"]
        );
    }
    assert_eq!(
        v["counts"]["groups"]["not_run"],
        sim_harness::validate::GROUPS.len() - 1,
        "{stdout}"
    );
    assert_eq!(v["counts"]["groups"]["fail"], 1, "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_socket_exits_2_at_once() {
    let dir = temp_dir("missing");
    let t0 = Instant::now();
    let out = Command::new(vdpa_emu())
        .args(["validate", "--socket"])
        .arg(dir.join("nobody.sock"))
        .output()
        .expect("vdpa-emu runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(
        stderr.contains("could not open") && stderr.contains("nobody.sock"),
        "{stderr}"
    );
    // Nothing on stdout: there is no report of a device that was never reached.
    assert!(out.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_absent_vfio_function_exits_2_with_the_reason() {
    for (bdf, want) in [
        ("00ff:ff:1f.7", "no such PCI function"),
        ("not-a-bdf", "not a PCI address"),
    ] {
        let out = Command::new(vdpa_emu())
            .args(["validate", "--vfio", bdf])
            .output()
            .expect("vdpa-emu runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bdf}: {stderr}");
        assert!(stderr.contains(want), "{bdf}: {stderr}");
    }
}
