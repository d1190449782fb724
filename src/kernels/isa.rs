//! `R1SERVE_ISA`: an upper bound on the instruction sets every kernel family
//! (quantized matmul, dense matmul, attention) dispatches to, so that a CPU
//! with AVX-512 or AMX can also run its lower paths (and CI can test each
//! path the machine has); and the stderr line with which every kernel test
//! names the paths it ran and, by name, those it could not.

use std::sync::OnceLock;

use anyhow::{bail, Result};

/// The environment variable that caps kernel dispatch, read once per process.
pub const ENV: &str = "R1SERVE_ISA";

/// Instruction-set levels in the order the kernels prefer them. A kernel
/// path runs only when this CPU has it and its level is at most [`limit`]
/// (so `avx512` on a CPU without AVX-VNNI leaves the quantized matmul on
/// AVX2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Portable Rust.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-VNNI on 256-bit registers.
    AvxVnni,
    /// AVX-512F.
    Avx512,
    /// AVX-512 VNNI.
    Avx512Vnni,
    /// AVX512_BF16.
    Avx512Bf16,
    /// AMX (INT8 and BF16 tiles): no cap.
    Amx,
}

/// The accepted values of [`ENV`] and their levels.
const VALUES: [(&str, Level); 8] = [
    ("scalar", Level::Scalar),
    ("portable", Level::Scalar),
    ("avx2", Level::Avx2),
    ("avxvnni", Level::AvxVnni),
    ("avx512", Level::Avx512),
    ("avx512vnni", Level::Avx512Vnni),
    ("avx512bf16", Level::Avx512Bf16),
    ("amx", Level::Amx),
];

/// The cap a value of [`ENV`] sets (`None`: unset, no cap). Case and
/// surrounding spaces are ignored; anything else unknown is an error naming
/// the variable and the accepted values.
pub fn parse(value: Option<&str>) -> Result<Level> {
    let Some(value) = value else {
        return Ok(Level::Amx);
    };
    let wanted = value.trim().to_ascii_lowercase();
    match VALUES.iter().find(|(name, _)| *name == wanted) {
        Some(&(_, level)) => Ok(level),
        None => {
            let names: Vec<_> = VALUES.iter().map(|(name, _)| *name).collect();
            bail!("{ENV}={value:?} is not one of {}", names.join(", "))
        }
    }
}

/// The cap of this process's [`ENV`] (read once), or the error of
/// [`parse`]; loading a weight matrix fails with it, so a bad value stops
/// the server at startup.
pub fn limit() -> Result<Level> {
    static LIMIT: OnceLock<std::result::Result<Level, String>> = OnceLock::new();
    let limit = LIMIT.get_or_init(|| {
        let raw = std::env::var_os(ENV);
        match raw.as_ref().map(|v| v.to_str()) {
            Some(None) => Err(format!("{ENV} is not valid UTF-8")),
            Some(Some(v)) => parse(Some(v)).map_err(|e| format!("{e:#}")),
            None => Ok(Level::Amx),
        }
    });
    limit.clone().map_err(anyhow::Error::msg)
}

/// [`limit`] for dispatch code that cannot fail: weight loading has already
/// reported a bad value as an error before any kernel runs.
pub(crate) fn cap() -> Level {
    limit().unwrap_or_else(|e| panic!("{e:#}"))
}

/// Whether a kernel path of `level` that this CPU has (`on_cpu`) may run.
pub(crate) fn allowed(level: Level, on_cpu: bool) -> bool {
    on_cpu && level <= cap()
}

/// The instruction sets of this CPU that the kernel families dispatch on,
/// probed once per process (asking Linux for the AMX tile state is a
/// syscall). Each field includes the ones it builds on.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    /// AVX2, FMA and F16C.
    pub avx2: bool,
    /// AVX-VNNI (256-bit), with `avx2`.
    pub avx_vnni: bool,
    /// AVX-512F, with `avx2`.
    pub avx512: bool,
    /// AVX512_VNNI with AVX-512BW and VL, with `avx512`.
    pub avx512vnni: bool,
    /// AVX512_BF16, with `avx512`.
    pub avx512bf16: bool,
    /// AMX-TILE and AMX-INT8 with the tile state granted, with `avx512vnni`.
    pub amx_int8: bool,
    /// AMX-BF16 with the tile state granted, with `avx512bf16` and
    /// AVX-512BW/VL.
    pub amx_bf16: bool,
}

/// [`Cpu`] for this process.
pub(crate) fn cpu() -> Cpu {
    static CPU: OnceLock<Cpu> = OnceLock::new();
    *CPU.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            let avx512 = avx2 && is_x86_feature_detected!("avx512f");
            let avx512bw = avx512
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl");
            let avx512vnni = avx512bw && is_x86_feature_detected!("avx512vnni");
            let avx512bf16 = avx512 && is_x86_feature_detected!("avx512bf16");
            Cpu {
                avx2,
                avx_vnni: avx2 && is_x86_feature_detected!("avxvnni"),
                avx512,
                avx512vnni,
                avx512bf16,
                amx_int8: avx512vnni && super::amx::available(),
                amx_bf16: avx512bf16 && avx512bw && super::amx::bf16_available(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Cpu::default()
    })
}

/// A kernel family's instruction-set variants. Each names the [`Level`] it
/// needs, probes this CPU, and has a name for reports; choosing the best
/// one under `R1SERVE_ISA`, listing the usable ones and reporting them to
/// tests are written once here for every family.
pub trait KernelIsa: Copy + 'static {
    /// Every variant, least preferred first; the first runs on any CPU.
    const ALL: &'static [Self];

    /// The [`Level`] a CPU needs for `self`.
    fn level(self) -> Level;

    /// Whether this CPU can run the kernels of `self`.
    fn is_supported(self) -> bool;

    /// A name for test and bench output.
    fn name(self) -> &'static str;

    /// The best variant this CPU supports at or below `limit`.
    fn best_under(limit: Level) -> Self {
        Self::ALL
            .iter()
            .rev()
            .copied()
            .find(|isa| isa.level() <= limit && isa.is_supported())
            .unwrap_or(Self::ALL[0])
    }

    /// The best variant this CPU supports within `R1SERVE_ISA`.
    fn detect() -> Self {
        Self::best_under(cap())
    }

    /// Every variant usable on this CPU within `R1SERVE_ISA`, least
    /// preferred first.
    fn available() -> Vec<Self> {
        Self::ALL
            .iter()
            .copied()
            .filter(|isa| allowed(isa.level(), isa.is_supported()))
            .collect()
    }

    /// [`KernelIsa::available`], after reporting on stderr for `test` which
    /// variants it runs and which it cannot, by name.
    fn to_test(test: &str) -> Vec<Self> {
        let paths: Vec<_> = Self::ALL
            .iter()
            .map(|isa| (isa.name(), path_run(isa.level(), isa.is_supported())))
            .collect();
        report(test, &paths);
        Self::available()
    }
}

/// Where one kernel path stands in a test run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRun {
    /// The test ran it.
    Ran,
    /// This CPU lacks it.
    NotOnCpu,
    /// [`ENV`] caps dispatch below it.
    AboveLimit,
    /// The CPU has it but the test only runs the dispatched path.
    NotDispatched,
}

/// How `path` (of `level`, on this CPU or not) stands for a test that runs
/// every allowed path.
pub fn path_run(level: Level, on_cpu: bool) -> PathRun {
    if !on_cpu {
        PathRun::NotOnCpu
    } else if level > cap() {
        PathRun::AboveLimit
    } else {
        PathRun::Ran
    }
}

/// Prints on stderr, for `test`, the kernel paths it ran and, by name, the
/// ones it did not and why, so that a run on a smaller CPU (or under a cap)
/// never passes silently for them.
pub fn report(test: &str, paths: &[(&str, PathRun)]) {
    let ran: Vec<_> = paths
        .iter()
        .filter(|(_, run)| *run == PathRun::Ran)
        .map(|(name, _)| *name)
        .collect();
    let ran = if ran.is_empty() {
        "nothing".to_string()
    } else {
        ran.join(", ")
    };
    let mut line = format!("{test}: ran {ran}");
    for (name, run) in paths {
        let why = match run {
            PathRun::Ran => continue,
            PathRun::NotOnCpu => "not on this CPU",
            PathRun::AboveLimit => "above the cap of R1SERVE_ISA",
            PathRun::NotDispatched => "not the dispatched path",
        };
        line.push_str(&format!("; {name}: {why}, not run"));
    }
    eprintln!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_to_their_levels_and_unknown_ones_are_errors() {
        assert_eq!(parse(None).unwrap(), Level::Amx);
        assert_eq!(parse(Some("scalar")).unwrap(), Level::Scalar);
        assert_eq!(parse(Some("portable")).unwrap(), Level::Scalar);
        assert_eq!(parse(Some(" AVX2 ")).unwrap(), Level::Avx2);
        assert_eq!(parse(Some("avx512vnni")).unwrap(), Level::Avx512Vnni);
        for bad in ["", "sse4", "avx-512", "amx2"] {
            let e = format!("{:#}", parse(Some(bad)).unwrap_err());
            assert!(e.contains("R1SERVE_ISA") && e.contains("avx512bf16"), "{e}");
        }
    }

    #[test]
    fn limit_of_this_process_is_its_environment() {
        let env = std::env::var(ENV).ok();
        assert_eq!(limit().unwrap(), parse(env.as_deref()).unwrap());
    }
}
