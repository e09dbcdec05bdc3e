//! Device profiles with real guest drivers (docs/profiles.md): `serve --profile ifcvf` offers
//! exactly what the real IFC VF drivers accept, and Linux's ifcvf (through virtio_vdpa) and
//! virtio_net (virtio-pci) both bind, negotiate exactly that set and carry traffic to and from
//! a host TAP.

use super::*;

fn ifcvf_profile_with(test: &str, driver: &str, tap_name: &str, subnet: u8, mac: &str) {
    require_root(test);
    let e2e = e2e();
    let dir = Scratch::new(test);
    let args = [
        "--mac",
        mac,
        "--queue-pairs",
        "1",
        "--port",
        &format!("tap:{tap_name}"),
        "--profile",
        "ifcvf",
    ]
    .map(String::from);
    let mut serve = Serve::start(&dir, "dev", &args);
    let tap = Tap::adopt(tap_name, subnet, &mut serve);
    let peer = HostPeer::new(&tap);
    let vars = nic_vars("host-peer", driver, mac, &tap.guest_addr(), &tap.host_ip);
    let mut vm = Vm::boot(
        &e2e,
        &dir,
        VmSpec::new("guest", nic_script(&vars))
            .arg("-device")
            .arg(serve.device_arg()),
    );
    peer.round(&mut vm, 1, test);
    let s = stats(&serve);
    // What the driver negotiated comes from serve's log: the guest may already have reset the
    // device (it does before it powers off), and then `stats` reads 0.
    let negotiated = serve.last_negotiated(test);
    let ifcvf = bar_registers::Profile::ifcvf().features;
    println!(
        "E2E-PROFILE {test}: profile {} offered {:#x} negotiated {negotiated:#x}",
        s.profile, s.offered_features
    );
    assert_eq!(s.profile, "ifcvf", "{test}\n{}", serve.diag());
    assert_eq!(s.offered_features, ifcvf, "{test}\n{}", serve.diag());
    assert_eq!(
        negotiated,
        ifcvf,
        "{test}: {driver} negotiates the whole ifcvf set\n{}",
        vm.diag()
    );
    let b = vm.finish(Duration::from_secs(60));
    assert_nic(&b, &vm, mac, driver);
    assert!(serve.is_running(), "vdpa-emu serve died\n{}", serve.diag());
    drop(tap);
}

/// Linux's ifcvf (drivers/vdpa/ifcvf, bound through driver_override, virtio_vdpa on top) on the
/// `ifcvf` profile: it requires VERSION_1 and ACCESS_PLATFORM, which the profile has.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn device_ifcvf_profile_linux_ifcvf() {
    ifcvf_profile_with(
        "device_ifcvf_profile_linux_ifcvf",
        "ifcvf",
        "vdpaepf",
        41,
        "02:00:00:e2:e0:41",
    );
}

/// Linux's virtio_net over virtio-pci on the `ifcvf` profile: one queue pair, split ring, no
/// control queue.
#[test]
#[ignore = "needs QEMU: make e2e"]
fn device_ifcvf_profile_linux_virtio_net() {
    ifcvf_profile_with(
        "device_ifcvf_profile_linux_virtio_net",
        "virtio-pci",
        "vdpaepg",
        42,
        "02:00:00:e2:e0:42",
    );
}
