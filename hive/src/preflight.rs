//! Preflight: before a worker starts (and again just before it is spawned) the hive checks that the
//! requested backend exists here, that the device is valid and cool enough, and that the model fits
//! in RAM or VRAM. The decision logic is pure, over an [`Inventory`]; the inventory is read from the
//! kernel (RAM) and NVML (NVIDIA GPUs, when a driver is present).

use rbee_bus::Code;

use crate::error::Refusal;
use crate::resources;

/// One GPU as NVML reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub vram_total_bytes: u64,
    pub vram_free_bytes: u64,
    pub temperature_c: u32,
}

/// What this machine offers a worker right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub ram_available_bytes: u64,
    pub gpus: Vec<Gpu>,
    /// Whether this is macOS (Metal).
    pub macos: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A model needs its estimated memory times this (percent; 100 = the estimate as is).
    pub ram_factor_percent: u64,
    /// GPUs at or above this temperature take no new worker.
    pub max_gpu_temperature_c: u32,
}

/// Where a worker will run, and why there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub backend: &'static str,
    pub device: Option<u32>,
    pub reason: String,
}

fn mb(bytes: u64) -> u64 {
    bytes / (1 << 20)
}

impl Inventory {
    /// The backends this machine can run.
    pub fn backends(&self) -> Vec<&'static str> {
        let mut available = vec!["cpu"];
        if !self.gpus.is_empty() {
            available.push("cuda");
        }
        if self.macos {
            available.push("metal");
        }
        available
    }
}

/// Decides where a worker for a model needing `memory_bytes` runs, or why it cannot.
pub fn place(
    inv: &Inventory,
    backend: &str,
    device: Option<u32>,
    memory_bytes: u64,
    limits: &Limits,
) -> Result<Placement, Refusal> {
    let requested: Vec<&str> = backend.split([',', '+']).map(str::trim).filter(|b| !b.is_empty()).collect();
    if requested.contains(&"cuda") && requested.contains(&"metal") {
        return Err(Refusal::new(
            Code::IncompatibleFeatures,
            "cuda and metal cannot be used together: cuda runs on NVIDIA GPUs (Linux, Windows), metal on Apple GPUs (macOS); ask for one",
        ));
    }
    let backend = match requested.as_slice() {
        [one] => *one,
        [] => "auto",
        _ => return Err(Refusal::new(Code::IncompatibleFeatures, format!("one backend per worker, got {backend:?}"))),
    };
    let available = inv.backends();
    let chosen: &'static str = match backend {
        "auto" => available.iter().copied().find(|b| *b != "cpu").unwrap_or("cpu"),
        "cpu" => "cpu",
        "cuda" => "cuda",
        "metal" => "metal",
        other => {
            return Err(Refusal::new(
                Code::InvalidBackend,
                format!(
                    "unknown backend {:?}; use cpu, cuda, metal or auto",
                    other.chars().take(32).collect::<String>()
                ),
            ));
        }
    };
    if !available.contains(&chosen) {
        return Err(Refusal::new(
            Code::BackendUnavailable,
            format!("backend {chosen} is not available on this machine; available: {}", available.join(", ")),
        ));
    }
    let needed = memory_bytes.saturating_mul(limits.ram_factor_percent) / 100;
    match chosen {
        "cuda" => place_on_gpu(inv, device, needed, limits),
        _ => {
            if device.is_some_and(|d| d > 0) {
                return Err(Refusal::new(
                    Code::InvalidDevice,
                    format!("backend {chosen} has one device, 0; got {}", device.unwrap_or(0)),
                ));
            }
            if needed > inv.ram_available_bytes {
                return Err(Refusal::new(
                    Code::InsufficientRam,
                    format!(
                        "the model needs {} MB of RAM, {} MB are available; try a smaller quantisation of the model, stop idle workers (rbee workers), or start it on another node",
                        mb(needed),
                        mb(inv.ram_available_bytes)
                    ),
                ));
            }
            Ok(Placement {
                backend: chosen,
                device: None,
                reason: format!("{} MB of {} MB available RAM", mb(needed), mb(inv.ram_available_bytes)),
            })
        }
    }
}

fn place_on_gpu(inv: &Inventory, device: Option<u32>, needed: u64, limits: &Limits) -> Result<Placement, Refusal> {
    let valid = || inv.gpus.iter().map(|g| g.index.to_string()).collect::<Vec<_>>().join(", ");
    let check = |g: &Gpu| -> Result<(), Refusal> {
        if g.temperature_c >= limits.max_gpu_temperature_c {
            return Err(Refusal::new(
                Code::GpuTooHot,
                format!(
                    "GPU {} ({}) is at {} C, the limit is {} C",
                    g.index, g.name, g.temperature_c, limits.max_gpu_temperature_c
                ),
            ));
        }
        if g.vram_free_bytes < needed {
            return Err(Refusal::new(
                Code::InsufficientVram,
                format!(
                    "GPU {} has {} MB of VRAM free, the model needs {} MB",
                    g.index,
                    mb(g.vram_free_bytes),
                    mb(needed)
                ),
            ));
        }
        Ok(())
    };
    if let Some(d) = device {
        let gpu = inv.gpus.iter().find(|g| g.index == d).ok_or_else(|| {
            Refusal::new(Code::InvalidDevice, format!("GPU {d} does not exist; valid devices: {}", valid()))
        })?;
        check(gpu)?;
        return Ok(Placement {
            backend: "cuda",
            device: Some(d),
            reason: format!("GPU {d} as requested ({} MB free)", mb(gpu.vram_free_bytes)),
        });
    }
    let cool: Vec<&Gpu> = inv.gpus.iter().filter(|g| g.temperature_c < limits.max_gpu_temperature_c).collect();
    if cool.is_empty() {
        let hottest =
            inv.gpus.iter().map(|g| format!("GPU {} at {} C", g.index, g.temperature_c)).collect::<Vec<_>>().join(", ");
        return Err(Refusal::new(
            Code::GpuTooHot,
            format!("every GPU is at or above {} C: {hottest}", limits.max_gpu_temperature_c),
        ));
    }
    let best = cool.iter().max_by_key(|g| (g.vram_free_bytes, std::cmp::Reverse(g.index))).expect("not empty");
    if best.vram_free_bytes < needed {
        let total_free: u64 = cool.iter().map(|g| g.vram_free_bytes).sum();
        if total_free >= needed {
            return Err(Refusal::new(
                Code::VramFragmented,
                format!(
                    "the GPUs have {} MB free together but at most {} MB on one; the model needs {} MB on one GPU",
                    mb(total_free),
                    mb(best.vram_free_bytes),
                    mb(needed)
                ),
            ));
        }
        return Err(Refusal::new(
            Code::InsufficientVram,
            format!(
                "the most free VRAM on a GPU is {} MB (GPU {}); the model needs {} MB",
                mb(best.vram_free_bytes),
                best.index,
                mb(needed)
            ),
        ));
    }
    Ok(Placement {
        backend: "cuda",
        device: Some(best.index),
        reason: format!(
            "GPU {} has the most free VRAM ({} MB of {} MB, {} C)",
            best.index,
            mb(best.vram_free_bytes),
            mb(best.vram_total_bytes),
            best.temperature_c
        ),
    })
}

/// Reads this machine's inventory now: RAM from the kernel, GPUs from NVML if a driver is present,
/// or from `gpu_inventory` (a JSON list of GPUs: a stand-in for machines without one, for tests).
pub fn read(data_dir: &std::path::Path, gpu_inventory: Option<&std::path::Path>) -> Inventory {
    let r = resources::read(data_dir);
    let gpus = match gpu_inventory {
        Some(file) => {
            std::fs::read_to_string(file).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_else(|| {
                tracing::error!(file = %file.display(), "unreadable GPU inventory file; no GPUs");
                Vec::new()
            })
        }
        None => nvml_gpus(),
    };
    Inventory { ram_available_bytes: r.ram_available_bytes, gpus, macos: cfg!(target_os = "macos") }
}

/// NVIDIA GPUs through NVML; none when no driver (library) is present.
fn nvml_gpus() -> Vec<Gpu> {
    use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
    let Ok(nvml) = nvml_wrapper::Nvml::init() else { return Vec::new() };
    let count = nvml.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|i| {
            let d = nvml.device_by_index(i).ok()?;
            let memory = d.memory_info().ok()?;
            Some(Gpu {
                index: i,
                name: d.name().unwrap_or_default(),
                vram_total_bytes: memory.total,
                vram_free_bytes: memory.free,
                temperature_c: d.temperature(TemperatureSensor::Gpu).unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1 << 30;
    const LIMITS: Limits = Limits { ram_factor_percent: 100, max_gpu_temperature_c: 85 };

    fn gpu(index: u32, free_gb: u64, temperature_c: u32) -> Gpu {
        Gpu {
            index,
            name: format!("gpu{index}"),
            vram_total_bytes: 24 * GB,
            vram_free_bytes: free_gb * GB,
            temperature_c,
        }
    }

    fn machine(gpus: Vec<Gpu>) -> Inventory {
        Inventory { ram_available_bytes: 16 * GB, gpus, macos: false }
    }

    #[test]
    fn cpu_fits_or_is_refused_with_numbers_and_suggestions() {
        let ok = place(&machine(vec![]), "cpu", None, 2 * GB, &LIMITS).unwrap();
        assert_eq!((ok.backend, ok.device), ("cpu", None));
        let short = place(&machine(vec![]), "cpu", None, 20 * GB, &LIMITS).unwrap_err();
        assert_eq!(short.code, Code::InsufficientRam);
        assert!(
            short.message.contains("20480 MB")
                && short.message.contains("16384 MB")
                && short.message.contains("smaller quantisation")
        );
        let factor = Limits { ram_factor_percent: 1000, ..LIMITS };
        assert_eq!(place(&machine(vec![]), "cpu", None, 2 * GB, &factor).unwrap_err().code, Code::InsufficientRam);
    }

    #[test]
    fn backends_the_machine_lacks_are_named_with_what_it_has() {
        let err = place(&machine(vec![]), "metal", None, GB, &LIMITS).unwrap_err();
        assert_eq!(err.code, Code::BackendUnavailable);
        assert!(err.message.ends_with("available: cpu"), "{}", err.message);
        assert_eq!(place(&machine(vec![]), "cuda", None, GB, &LIMITS).unwrap_err().code, Code::BackendUnavailable);
        assert_eq!(
            place(&machine(vec![]), "cuda,metal", None, GB, &LIMITS).unwrap_err().code,
            Code::IncompatibleFeatures
        );
        assert_eq!(
            place(&machine(vec![]), "cpu,cuda", None, GB, &LIMITS).unwrap_err().code,
            Code::IncompatibleFeatures
        );
        assert_eq!(place(&machine(vec![]), "tpu", None, GB, &LIMITS).unwrap_err().code, Code::InvalidBackend);
        assert_eq!(place(&machine(vec![]), "auto", None, GB, &LIMITS).unwrap().backend, "cpu");
    }

    #[test]
    fn the_gpu_with_most_free_vram_is_chosen_and_the_reason_given() {
        let inv = machine(vec![gpu(0, 4, 60), gpu(1, 20, 70), gpu(2, 12, 50)]);
        let p = place(&inv, "cuda", None, 8 * GB, &LIMITS).unwrap();
        assert_eq!(p.device, Some(1));
        assert!(p.reason.contains("most free VRAM"), "{}", p.reason);
        assert_eq!(place(&inv, "auto", None, 8 * GB, &LIMITS).unwrap().device, Some(1));
    }

    #[test]
    fn hot_gpus_are_skipped_or_refused() {
        let inv = machine(vec![gpu(0, 20, 90), gpu(1, 10, 60)]);
        assert_eq!(place(&inv, "cuda", None, 8 * GB, &LIMITS).unwrap().device, Some(1), "the hot one is skipped");
        assert_eq!(place(&inv, "cuda", Some(0), 8 * GB, &LIMITS).unwrap_err().code, Code::GpuTooHot);
        assert_eq!(place(&machine(vec![gpu(0, 20, 95)]), "cuda", None, GB, &LIMITS).unwrap_err().code, Code::GpuTooHot);
    }

    #[test]
    fn vram_shortage_and_fragmentation_are_told_apart() {
        let inv = machine(vec![gpu(0, 6, 50), gpu(1, 6, 50)]);
        assert_eq!(place(&inv, "cuda", None, 10 * GB, &LIMITS).unwrap_err().code, Code::VramFragmented);
        assert_eq!(place(&inv, "cuda", None, 16 * GB, &LIMITS).unwrap_err().code, Code::InsufficientVram);
        assert_eq!(place(&inv, "cuda", Some(1), 8 * GB, &LIMITS).unwrap_err().code, Code::InsufficientVram);
    }

    #[test]
    fn device_numbers_out_of_range_name_the_valid_ones() {
        let inv = machine(vec![gpu(0, 20, 50), gpu(1, 20, 50)]);
        let err = place(&inv, "cuda", Some(7), GB, &LIMITS).unwrap_err();
        assert_eq!(err.code, Code::InvalidDevice);
        assert!(err.message.contains("valid devices: 0, 1"));
        assert_eq!(place(&machine(vec![]), "cpu", Some(3), GB, &LIMITS).unwrap_err().code, Code::InvalidDevice);
    }

    #[test]
    fn this_machine_has_no_nvidia_driver_so_no_gpus() {
        // The real NVML path: on a machine without the driver the library is absent and no GPU is listed.
        let inv = read(std::path::Path::new("/"), None);
        assert!(inv.ram_available_bytes > 0);
        if !std::path::Path::new("/proc/driver/nvidia/version").exists() {
            assert!(inv.gpus.is_empty());
        }
    }
}
