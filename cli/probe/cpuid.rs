//! Live cpuid (raw-cpuid) and the Linux AMX permission check. A feature counts only when
//! the CPU has it and the OS has enabled its register state (XCR0, checked by std's
//! detection), since the engine can use nothing else.

use super::cpu::CpuidData;

/// Reads cpuid on the running CPU; `None` on other architectures.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub fn read_live() -> Option<CpuidData> {
    use hy_planner::hardware::CpuFeatures;
    use raw_cpuid::CpuId;

    let cpuid = CpuId::new();
    let ext = cpuid.get_extended_feature_info();
    let basic = cpuid.get_feature_info();
    // XCR0 state enabled by the OS: YMM for the AVX family, opmask/ZMM for AVX-512.
    let os_avx = std::arch::is_x86_feature_detected!("avx");
    let os_avx512 = std::arch::is_x86_feature_detected!("avx512f");
    let e = |f: fn(&raw_cpuid::ExtendedFeatures) -> bool| ext.as_ref().is_some_and(f);
    let mut features = CpuFeatures {
        avx2: os_avx && e(|x| x.has_avx2()),
        fma: os_avx && basic.as_ref().is_some_and(|b| b.has_fma()),
        f16c: os_avx && basic.as_ref().is_some_and(|b| b.has_f16c()),
        avx512f: os_avx512 && e(|x| x.has_avx512f()),
        avx512bw: os_avx512 && e(|x| x.has_avx512bw()),
        avx512vl: os_avx512 && e(|x| x.has_avx512vl()),
        avx512_vnni: os_avx512 && e(|x| x.has_avx512vnni()),
        avx512_bf16: os_avx512 && e(|x| x.has_avx512_bf16()),
        avx_vnni: os_avx && e(|x| x.has_avx_vnni()),
        amx_tile: e(|x| x.has_amx_tile()),
        amx_int8: e(|x| x.has_amx_int8()),
        amx_bf16: e(|x| x.has_amx_bf16()),
        amx_permitted: None,
    };
    if features.amx_tile {
        features.amx_permitted = amx_permitted();
    }
    let freq = cpuid.get_processor_frequency_info();
    let mhz = |v: u16| (v > 0).then_some(f64::from(v));
    Some(CpuidData {
        vendor: cpuid.get_vendor_info().map(|v| v.as_str().to_string()).unwrap_or_default(),
        brand: cpuid.get_processor_brand_string().map(|b| b.as_str().trim().to_string()).unwrap_or_default(),
        features,
        caches: caches(&cpuid),
        base_mhz: freq.as_ref().and_then(|f| mhz(f.processor_base_frequency())),
        max_mhz: freq.as_ref().and_then(|f| mhz(f.processor_max_frequency())),
    })
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
pub fn read_live() -> Option<CpuidData> {
    None
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn caches(cpuid: &raw_cpuid::CpuId<raw_cpuid::CpuIdReaderNative>) -> Vec<hy_planner::hardware::CacheInfo> {
    use raw_cpuid::CacheType;
    let Some(params) = cpuid.get_cache_parameters() else {
        return Vec::new();
    };
    params
        .filter_map(|c| {
            let kind = match c.cache_type() {
                CacheType::Data => "data",
                CacheType::Instruction => "instruction",
                CacheType::Unified => "unified",
                _ => return None,
            };
            let size = c.associativity() * c.physical_line_partitions() * c.coherency_line_size() * c.sets();
            Some(hy_planner::hardware::CacheInfo {
                level: c.level(),
                kind: kind.into(),
                size_bytes: size as u64,
                shared_by_cpus: Some(c.max_cores_for_cache() as u32),
            })
        })
        .collect()
}

/// Whether Linux lets this process use AMX tile data: the kernel must support the
/// XTILEDATA state component (ARCH_GET_XCOMP_SUPP, Linux 5.16+) and grant the request
/// (ARCH_REQ_XCOMP_PERM). The grant only affects the probing process.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn amx_permitted() -> Option<bool> {
    const ARCH_GET_XCOMP_SUPP: libc::c_long = 0x1021;
    const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    let mut supported: u64 = 0;
    // SAFETY: ARCH_GET_XCOMP_SUPP writes one u64 through the pointer, which points to a
    // live, aligned u64 on this stack frame.
    let rc = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_SUPP, &mut supported as *mut u64) };
    if rc != 0 || supported & (1 << XFEATURE_XTILEDATA) == 0 {
        return Some(false);
    }
    // SAFETY: ARCH_REQ_XCOMP_PERM takes the feature number by value and touches no memory.
    let rc = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
    if rc != 0 {
        return Some(false);
    }
    let mut permitted: u64 = 0;
    // SAFETY: as for ARCH_GET_XCOMP_SUPP: one u64 written through a valid pointer.
    let rc = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mut permitted as *mut u64) };
    Some(rc == 0 && permitted & (1 << XFEATURE_XTILEDATA) != 0)
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn amx_permitted() -> Option<bool> {
    None
}
