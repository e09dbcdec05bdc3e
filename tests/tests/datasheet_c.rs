//! The C-header datasheet compiles, and in C, every offset, bit and identity the real drivers
//! hard-code equals the model's (tests/c/driver_offsets.c, each assertion cited there).

use bar_registers::render::Datasheet;
use bar_registers::LmLayout;
use std::path::Path;
use std::process::Command;

fn compile(ds: &Datasheet, name: &str) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("vdpa-datasheet-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let header = dir.join("vdpa_emu_regs.h");
    std::fs::write(&header, ds.c_header().unwrap()).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c/driver_offsets.c");
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(dir.join("driver_offsets"))
        .arg(format!("-DVDPA_EMU_HEADER=\"{}\"", header.display()))
        .arg(&src)
        .output()
        .expect("run the C compiler (cc)");
    let _ = std::fs::remove_dir_all(&dir);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn c_header_matches_what_the_drivers_hard_code() {
    // 4 pairs: queue 8 (the control queue) exists in both LM layouts.
    for lm in [
        vec![LmLayout::Dpdk, LmLayout::Linux],
        vec![LmLayout::Dpdk],
        vec![LmLayout::Linux],
    ] {
        let ds = Datasheet {
            queue_pairs: 4,
            lm_layouts: lm.clone(),
        };
        if let Err(e) = compile(&ds, &format!("{}", lm.len())) {
            panic!("{lm:?}: the header disagrees with the drivers:\n{e}");
        }
    }
}

#[test]
fn the_c_check_catches_a_wrong_offset() {
    // The assertions bite: a header with one ring state moved by a dword fails to compile.
    let ds = Datasheet {
        queue_pairs: 4,
        lm_layouts: vec![LmLayout::Dpdk],
    };
    let good = ds.c_header().unwrap();
    let bad = good.replace(
        "#define VDPA_EMU_LM_DPDK_RING_STATE_2 0x060",
        "#define VDPA_EMU_LM_DPDK_RING_STATE_2 0x064",
    );
    assert_ne!(good, bad, "the line to corrupt exists");
    let dir = std::env::temp_dir().join(format!("vdpa-datasheet-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let header = dir.join("bad.h");
    std::fs::write(&header, bad).unwrap();
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-fsyntax-only"])
        .arg(format!("-DVDPA_EMU_HEADER=\"{}\"", header.display()))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("c/driver_offsets.c"))
        .output()
        .expect("run cc");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("RING_STATE_2"),
        "{err}"
    );
}
