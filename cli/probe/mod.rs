//! Machine probing: sysfs, cpuid, SMBIOS, NVML, bandwidth.
