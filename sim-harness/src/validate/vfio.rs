//! `vdpa-emu validate --vfio DDDD:BB:DD.F`: the device is a PCI function bound to Linux's
//! vfio-pci (a board after tape-out, or the served model inside a guest behind a vIOMMU), and
//! the validator drives it through VFIO, the way DPDK's ifc driver does
//! (drivers/vdpa/ifc/ifcvf_vdpa.c ifcvf_vfio_setup and ifcvf_dma_map).
//!
//! The VFIO backend of pci-driver 0.1.4 (`pci_driver::backends::vfio::VfioPciDevice`) does
//! the work: it opens the IOMMU group and a type1v2 container, gives config space and BARs
//! (pread/pwrite on the device fd), `iommu().map()` with an IOVA of our choosing,
//! `interrupts().msi_x().enable()` with eventfds (VFIO_DEVICE_SET_IRQS) and `reset()`
//! (VFIO_DEVICE_RESET). What it lacks is written here: the pre-flight checks with errors that
//! say what to do (the crate answers "TODO" for most of them), the mmap of the driver's memfd
//! that is then mapped into the IOMMU, and the MSI-X eventfd pump.
//!
//! This is one more implementation of the device-access traits ([`device::RegionAccess`],
//! [`device::DmaMapper`]); the checks are the same code as in-process and over vfio-user.

use super::{Session, Target, ValidateError};
use device::{AccessError, DmaMapper, InterruptRecorder, RegionAccess};
use dma::{Backing, MapError, Perms};
use parking_lot::Mutex;
use pci_driver::backends::vfio::VfioPciDevice;
use pci_driver::device::PciDevice;
use pci_driver::regions::{OwningPciRegion, PciRegion, Permissions};
use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a VFIO device could not be opened; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("`{0}` is not a PCI address: expected DDDD:BB:DD.F (e.g. 0000:00:03.0) or BB:DD.F")]
    BadAddress(String),
    #[error("{bdf}: no such PCI function ({path} does not exist; see lspci -D)")]
    NoDevice { bdf: Bdf, path: PathBuf },
    #[error(
        "{bdf} is bound to {driver}, not vfio-pci: unbind it and bind vfio-pci \
         (echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override; \
         echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind; \
         echo {bdf} > /sys/bus/pci/drivers_probe)"
    )]
    NotVfioPci { bdf: Bdf, driver: String },
    #[error(
        "{bdf} has no IOMMU group ({path} missing): the kernel runs without an IOMMU \
         (boot with intel_iommu=on or amd_iommu=on; VFIO needs one)"
    )]
    NoIommuGroup { bdf: Bdf, path: PathBuf },
    #[error("{path} does not exist: load vfio-pci (modprobe vfio-pci) and bind {bdf} to it")]
    NoGroupDevice { bdf: Bdf, path: PathBuf },
    #[error("opening {bdf} through VFIO (IOMMU group {group}): {source} (every device of the group must be bound to vfio-pci or unbound; no other process may hold the group)")]
    Open {
        bdf: Bdf,
        group: u32,
        source: std::io::Error,
    },
    #[error(
        "{bdf}: enabling {vectors} MSI-X vectors with eventfds (VFIO_DEVICE_SET_IRQS): {source}"
    )]
    Interrupts {
        bdf: Bdf,
        vectors: usize,
        source: std::io::Error,
    },
}

/// A PCI function address, domain:bus:device.function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bdf {
    pub domain: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl std::str::FromStr for Bdf {
    type Err = VfioError;

    /// `DDDD:BB:DD.F` or `BB:DD.F` (domain 0), hexadecimal, as lspci -D prints them.
    fn from_str(s: &str) -> Result<Bdf, VfioError> {
        let bad = || VfioError::BadAddress(s.into());
        let (rest, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts[..] {
            [d, b, dev] if d.len() == 4 => (d, b, dev),
            [b, dev] => ("0000", b, dev),
            _ => return Err(bad()),
        };
        let hex = |t: &str, max_len: usize| {
            if t.is_empty() || t.len() > max_len || !t.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(t, 16).map_err(|_| bad())
        };
        let (domain, bus, device, function) = (
            hex(domain, 4)?,
            hex(bus, 2)?,
            hex(device, 2)?,
            hex(function, 1)?,
        );
        if device > 0x1f || function > 7 {
            return Err(bad());
        }
        Ok(Bdf {
            domain: domain as u16,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

/// The Linux sysfs and devfs roots (tests point them at a fake tree).
#[derive(Clone, Debug)]
pub struct HostPaths {
    /// `/sys/bus/pci/devices`
    pub pci_devices: PathBuf,
    /// `/dev/vfio`
    pub dev_vfio: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            pci_devices: "/sys/bus/pci/devices".into(),
            dev_vfio: "/dev/vfio".into(),
        }
    }
}

fn link_name(p: &Path) -> Option<String> {
    std::fs::read_link(p)
        .ok()?
        .file_name()?
        .to_str()
        .map(String::from)
}

/// Checks that `bdf` exists, is bound to vfio-pci and has an IOMMU group whose VFIO device
/// node exists; returns the sysfs path and the group number.
pub fn preflight(paths: &HostPaths, bdf: Bdf) -> Result<(PathBuf, u32), VfioError> {
    let dev = paths.pci_devices.join(bdf.to_string());
    if !dev.exists() {
        return Err(VfioError::NoDevice { bdf, path: dev });
    }
    match link_name(&dev.join("driver")) {
        Some(d) if d == "vfio-pci" => {}
        other => {
            return Err(VfioError::NotVfioPci {
                bdf,
                driver: other.map_or("no driver".into(), |d| format!("driver {d}")),
            })
        }
    }
    let g = dev.join("iommu_group");
    let group = link_name(&g)
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or(VfioError::NoIommuGroup { bdf, path: g })?;
    let node = paths.dev_vfio.join(group.to_string());
    if !node.exists() {
        return Err(VfioError::NoGroupDevice { bdf, path: node });
    }
    Ok((dev, group))
}

/// A PCI function bound to vfio-pci, validated through VFIO.
pub struct OverVfio {
    pub bdf: Bdf,
    pub paths: HostPaths,
}

impl OverVfio {
    pub fn new(bdf: Bdf) -> Self {
        OverVfio {
            bdf,
            paths: HostPaths::default(),
        }
    }
}

impl Target for OverVfio {
    fn open(&self) -> Result<Session, ValidateError> {
        let bdf = self.bdf;
        let (sysfs, group) = preflight(&self.paths, bdf)?;
        let dev =
            VfioPciDevice::open(&sysfs).map_err(|source| VfioError::Open { bdf, group, source })?;
        tracing::info!(%bdf, group, "opened through VFIO");
        let bars = (0..6).map(|i| dev.bar(i)).collect();
        let handle = Arc::new(VfioHandle {
            dev,
            bars,
            maps: Mutex::new(BTreeMap::new()),
            notify: std::sync::OnceLock::new(),
        });
        // The notify window, for flushing doorbells (see VfioHandle::notify); a function
        // without one is not virtio and fails pci-structure.
        let notify = crate::driver::probe::probe(handle.as_ref())
            .ok()
            .map(|p| Doorbells {
                bar: u32::from(p.notify.bar),
                window: p.notify.offset..p.notify.offset + p.notify.len,
                flush_bar: u32::from(p.common.bar),
                flush_off: p.common.offset + bar_registers::virtio::common::DEVICE_STATUS,
            });
        let _ = handle.notify.set(notify);
        // A device-level reset: VFIO_DEVICE_RESET (FLR, or whatever reset the kernel finds
        // for the function; vfio_pci_core.c vfio_pci_ioctl_reset). A function with none
        // answers EINVAL (!reset_works): then the virtio reset alone is what a driver has.
        handle
            .reset_device()
            .map_err(|e| ValidateError::Target(format!("{bdf}: {e}")))?;
        let interrupts = handle.dev.interrupts();
        let msix = interrupts.msi_x();
        let n = msix.max();
        let irq = Arc::new(InterruptRecorder::new(n.min(usize::from(u16::MAX)) as u16));
        let efds = (0..n)
            .map(|_| crate::vfio_user::sock::eventfd())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|source| VfioError::Interrupts {
                bdf,
                vectors: n,
                source,
            })?;
        let raw: Vec<i32> = efds.iter().map(|f| f.as_raw_fd()).collect();
        msix.enable(&raw).map_err(|source| VfioError::Interrupts {
            bdf,
            vectors: n,
            source,
        })?;
        let pump = crate::vfio_user::InterruptPump::spawn(efds, irq.clone()).map_err(|source| {
            VfioError::Interrupts {
                bdf,
                vectors: n,
                source,
            }
        })?;
        let pump = Arc::new(pump);
        let drain = pump.clone();
        let h2 = handle.clone();
        Ok(Session {
            handle,
            irq,
            announce: None,
            // Kernel interrupt handler -> eventfd -> pump thread; under a vIOMMU in an
            // emulated guest this takes longer than a socket round trip.
            irq_latency: std::time::Duration::from_millis(50),
            device_reset: Some(Box::new(move || h2.reset_device())),
            keep: Some(Box::new(pump)),
            // The kernel signals the eventfd from its interrupt handler, after the write that
            // caused it: a drain counts what has arrived, `irq_latency` covers the rest.
            irq_sync: Some(Box::new(move || drain.drain())),
        })
    }

    fn describe(&self) -> String {
        format!("PCI function {} through Linux VFIO", self.bdf)
    }
}

/// One DMA mapping: the driver's memory mmapped here, mapped into the IOMMU at `iova`.
struct Mapping {
    addr: *mut libc::c_void,
    size: u64,
}

// SAFETY: the pointer is only an address to munmap; nothing dereferences it here.
unsafe impl Send for Mapping {}

/// Region access, DMA maps and reset of a VFIO device.
struct VfioHandle {
    dev: VfioPciDevice,
    bars: Vec<Option<OwningPciRegion>>,
    maps: Mutex<BTreeMap<u64, Mapping>>,
    /// Where doorbells are, and what to read after one.
    notify: std::sync::OnceLock<Option<Doorbells>>,
}

/// A doorbell is a posted write: it may still be on its way when pwrite returns (through
/// QEMU's vfio-user client it is sent without waiting for a reply, hw/vfio-user/device.c).
/// Each doorbell is followed by a read of device_status from the common config, a memory read
/// of the same function that PCIe ordering does not let pass the posted write (PCIe base spec
/// 2.4.1, table 2-40; the same path through QEMU: one socket, in order), so the device has the
/// doorbell before the checks look at memory. device_status reads have no side effects.
struct Doorbells {
    bar: u32,
    window: std::ops::Range<u64>,
    flush_bar: u32,
    flush_off: u64,
}

impl VfioHandle {
    fn reset_device(&self) -> Result<(), String> {
        match self.dev.reset() {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!("VFIO_DEVICE_RESET: the function offers no reset (EINVAL)");
                Ok(())
            }
            Err(e) => Err(format!("VFIO_DEVICE_RESET: {e}")),
        }
    }

    fn access(
        &self,
        region: u32,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(&dyn PciRegion, u64, usize) -> std::io::Result<()>,
    ) -> Result<(), AccessError> {
        if !matches!(len, 1 | 2 | 4 | 8) {
            return Err(AccessError::BadWidth(len));
        }
        let config;
        let r: &dyn PciRegion = if region == bar_registers::REGION_CONFIG {
            config = self.dev.config();
            &config
        } else {
            match self.bars.get(region as usize) {
                Some(Some(b)) => b,
                _ => return Err(AccessError::NoSuchRegion(region)),
            }
        };
        if offset.checked_add(len as u64).is_none_or(|e| e > r.len()) {
            return Err(AccessError::OutOfRange {
                region,
                offset,
                len,
                size: r.len(),
            });
        }
        // pci-driver's VFIO regions take 1, 2 and 4-byte accesses (pread/pwrite of that
        // width on the device fd, which vfio-pci turns into ioread/iowrite of that width);
        // an 8-byte register is accessed as two dwords, low first, as DPDK's
        // io_write64_twopart (drivers/vdpa/ifc/base/ifcvf.c) does on real boards.
        let mut go = |o, w| f(r, o, w);
        let res = if len == 8 {
            go(offset, 4).and_then(|()| go(offset + 4, 4))
        } else {
            go(offset, len)
        };
        res.map_err(|e| AccessError::Transport(format!("VFIO region {region} +{offset:#x}: {e}")))
    }
}

impl RegionAccess for VfioHandle {
    fn region_read(&self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), AccessError> {
        let base = offset;
        self.access(region, offset, data.len(), &mut |r, o, w| {
            let at = (o - base) as usize;
            let b = &mut data[at..at + w];
            match w {
                1 => b[0] = r.read_u8(o)?,
                2 => b.copy_from_slice(&r.read_le_u16(o)?.to_le_bytes()),
                _ => b.copy_from_slice(&r.read_le_u32(o)?.to_le_bytes()),
            }
            Ok(())
        })
    }

    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<(), AccessError> {
        let base = offset;
        self.access(region, offset, data.len(), &mut |r, o, w| {
            let at = (o - base) as usize;
            let b = &data[at..at + w];
            match w {
                1 => r.write_u8(o, b[0]),
                2 => r.write_le_u16(o, u16::from_le_bytes([b[0], b[1]])),
                _ => r.write_le_u32(o, u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            }
        })?;
        if let Some(Some(n)) = self.notify.get() {
            if region == n.bar && n.window.contains(&offset) {
                let mut st = [0u8; 1];
                self.region_read(n.flush_bar, n.flush_off, &mut st)?;
            }
        }
        Ok(())
    }
}

impl DmaMapper for VfioHandle {
    /// mmaps the driver's memfd here and maps it into the IOMMU container at `iova`
    /// (VFIO_IOMMU_MAP_DMA through pci-driver's `PciIommu::map`): the device then reaches
    /// exactly that memory at exactly the IOVAs the driver model uses.
    fn dma_map(
        &self,
        iova: u64,
        size: u64,
        perms: Perms,
        backing: Backing,
    ) -> Result<(), MapError> {
        if size == 0 {
            return Err(MapError::ZeroSize);
        }
        if iova.checked_add(size - 1).is_none() {
            return Err(MapError::AddressOverflow { iova, size });
        }
        let mmap_err = |source| MapError::Mmap { iova, size, source };
        let Backing::Fd { file, offset } = backing else {
            return Err(mmap_err(std::io::Error::other(
                "VFIO maps process memory: a mapping needs an fd to mmap",
            )));
        };
        let mut maps = self.maps.lock();
        if let Some((&ei, m)) = maps.range(..iova + size).next_back() {
            if ei + m.size > iova {
                return Err(MapError::Overlap {
                    iova,
                    size,
                    existing_iova: ei,
                    existing_size: m.size,
                });
            }
        }
        let len = usize::try_from(size).map_err(|_| mmap_err(std::io::Error::other("size")))?;
        let off =
            libc::off_t::try_from(offset).map_err(|_| mmap_err(std::io::Error::other("offset")))?;
        // SAFETY: a fresh shared mapping of `file` chosen by the kernel (no fixed address), so
        // no existing memory is replaced; it is unmapped in dma_unmap/Drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(mmap_err(std::io::Error::last_os_error()));
        }
        let p = match (perms.read, perms.write) {
            (true, false) => Permissions::Read,
            (false, true) => Permissions::Write,
            _ => Permissions::ReadWrite,
        };
        // SAFETY: [addr, addr+len) is the mapping made above and stays mapped until this IOVA
        // range is unmapped from the IOMMU (dma_unmap and Drop unmap the IOVA first).
        if let Err(e) = unsafe { self.dev.iommu().map(iova, len, addr.cast(), p) } {
            // SAFETY: the mapping made above, not used by anything else.
            unsafe { libc::munmap(addr, len) };
            return Err(mmap_err(e));
        }
        maps.insert(iova, Mapping { addr, size });
        Ok(())
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<u64, MapError> {
        if size == 0 {
            return Err(MapError::ZeroSize);
        }
        let end = iova
            .checked_add(size)
            .ok_or(MapError::AddressOverflow { iova, size })?;
        let mut maps = self.maps.lock();
        // vfio semantics: mappings go whole or not at all.
        if let Some((&ei, m)) = maps.range(..end).next_back() {
            if ei + m.size > end {
                return Err(MapError::PartialUnmap { iova, size });
            }
        }
        if let Some((&ei, m)) = maps.range(..iova).next_back() {
            if ei + m.size > iova {
                return Err(MapError::PartialUnmap { iova, size });
            }
        }
        let keys: Vec<u64> = maps.range(iova..end).map(|(&k, _)| k).collect();
        let mut total = 0;
        for k in keys {
            let m = maps.remove(&k).expect("key just listed");
            total += self.unmap_one(k, m);
        }
        Ok(total)
    }

    fn dma_unmap_all(&self) -> u64 {
        let all = std::mem::take(&mut *self.maps.lock());
        all.into_iter().map(|(k, m)| self.unmap_one(k, m)).sum()
    }
}

impl VfioHandle {
    fn unmap_one(&self, iova: u64, m: Mapping) -> u64 {
        if let Err(e) = self.dev.iommu().unmap(iova, m.size as usize) {
            // The IOMMU may still point at the pages: keep them mapped here (leak) rather
            // than let the device reach freed memory.
            tracing::error!(iova, size = m.size, error = %e, "VFIO_IOMMU_UNMAP_DMA failed");
            return 0;
        }
        // SAFETY: the mapping dma_map made; the IOMMU no longer maps it.
        unsafe { libc::munmap(m.addr, m.size as usize) };
        m.size
    }
}

impl Drop for VfioHandle {
    fn drop(&mut self) {
        self.dma_unmap_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_lspci_prints_them() {
        let b: Bdf = "0000:00:03.0".parse().unwrap();
        assert_eq!(
            b,
            Bdf {
                domain: 0,
                bus: 0,
                device: 3,
                function: 0
            }
        );
        assert_eq!(b.to_string(), "0000:00:03.0");
        let b: Bdf = "3a:1F.7".parse().unwrap();
        assert_eq!(b.to_string(), "0000:3a:1f.7");
        let b: Bdf = "10de:ff:00.1".parse().unwrap();
        assert_eq!((b.domain, b.bus, b.function), (0x10de, 0xff, 1));
        for bad in [
            "",
            "00:03",
            "0000:00:03",
            "00:20.0",
            "00:03.8",
            "000:00:03.0",
            "0000:100:03.0",
            "zz:03.0",
            "0000:00:03.0.1",
            "/dev/vfio/3",
            "00:03.+1",
        ] {
            assert!(
                matches!(bad.parse::<Bdf>(), Err(VfioError::BadAddress(ref s)) if s == bad),
                "{bad:?} accepted"
            );
        }
    }

    /// A fake sysfs/devfs tree: every pre-flight failure names the fix, and a complete tree
    /// yields the IOMMU group.
    #[test]
    fn preflight_names_what_is_missing() {
        let root = std::env::temp_dir().join(format!("vdpa-vfio-preflight-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let paths = HostPaths {
            pci_devices: root.join("sys/bus/pci/devices"),
            dev_vfio: root.join("dev/vfio"),
        };
        let bdf: Bdf = "0000:00:03.0".parse().unwrap();
        let dev = paths.pci_devices.join("0000:00:03.0");
        let e = preflight(&paths, bdf).unwrap_err();
        assert!(matches!(e, VfioError::NoDevice { .. }), "{e}");
        assert!(e.to_string().contains("0000:00:03.0"), "{e}");

        std::fs::create_dir_all(&dev).unwrap();
        let e = preflight(&paths, bdf).unwrap_err();
        assert!(
            matches!(&e, VfioError::NotVfioPci { driver, .. } if driver == "no driver"),
            "{e}"
        );
        let drivers = root.join("sys/bus/pci/drivers");
        std::fs::create_dir_all(drivers.join("virtio-pci")).unwrap();
        std::fs::create_dir_all(drivers.join("vfio-pci")).unwrap();
        std::os::unix::fs::symlink(drivers.join("virtio-pci"), dev.join("driver")).unwrap();
        let e = preflight(&paths, bdf).unwrap_err();
        assert!(
            matches!(&e, VfioError::NotVfioPci { driver, .. } if driver == "driver virtio-pci"),
            "{e}"
        );
        assert!(e.to_string().contains("driver_override"), "{e}");
        std::fs::remove_file(dev.join("driver")).unwrap();
        std::os::unix::fs::symlink(drivers.join("vfio-pci"), dev.join("driver")).unwrap();

        let e = preflight(&paths, bdf).unwrap_err();
        assert!(matches!(e, VfioError::NoIommuGroup { .. }), "{e}");
        assert!(e.to_string().contains("intel_iommu=on"), "{e}");
        let groups = root.join("sys/kernel/iommu_groups/7");
        std::fs::create_dir_all(&groups).unwrap();
        std::os::unix::fs::symlink(&groups, dev.join("iommu_group")).unwrap();

        let e = preflight(&paths, bdf).unwrap_err();
        assert!(
            matches!(&e, VfioError::NoGroupDevice { path, .. } if path.ends_with("dev/vfio/7")),
            "{e}"
        );
        std::fs::create_dir_all(&paths.dev_vfio).unwrap();
        std::fs::write(paths.dev_vfio.join("7"), b"").unwrap();
        let (p, g) = preflight(&paths, bdf).unwrap();
        assert_eq!((p, g), (dev, 7));
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Opening through the real /sys fails fast with an error that names the device, never a
    /// panic or a retry loop (on a machine without that function, or without VFIO).
    #[test]
    fn opening_a_missing_function_is_a_clear_error() {
        let t0 = std::time::Instant::now();
        let t = OverVfio::new("00ff:ff:1f.7".parse().unwrap());
        let e = match t.open() {
            Ok(_) => panic!("00ff:ff:1f.7 exists on this machine"),
            Err(e) => e,
        };
        assert!(
            matches!(e, ValidateError::Vfio(VfioError::NoDevice { .. })),
            "{e}"
        );
        assert!(t0.elapsed() < std::time::Duration::from_secs(1));
    }
}
