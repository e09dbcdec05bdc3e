#[test]
fn probe() {
    let dev = device::Device::new(device::DeviceConfig::with_queue_pairs(1)).unwrap();
    let mut drv = sim_harness::driver::NetDriver::in_process(&dev, sim_harness::driver::DriverOptions { queue_size: 64, memory: 8 << 20, ..Default::default() }).unwrap();
    drv.start().unwrap();
    let t = std::time::Instant::now();
    let s = drv.mem.shm().snapshot();
    eprintln!("snapshot {} bytes in {:?}", s.len(), t.elapsed());
    let t = std::time::Instant::now();
    for _ in 0..100 { drv.start().unwrap_or(()); }
    eprintln!("100 starts in {:?}", t.elapsed());
}
