//! Which device runs the forward pass (`--device`): the CPU, or a CUDA GPU
//! when the binary is built with the `cuda` feature.

use anyhow::{bail, Result};

use super::dense::Precision;

/// A device named on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A CUDA GPU if this build has CUDA and one is present, else the CPU.
    #[default]
    Auto,
    /// The host CPU.
    Cpu,
    /// CUDA GPU number `N` (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    format!("unknown device `{s}` (expected auto, cpu, cuda or cuda:N)")
                }),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How the chosen device is set up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceOptions {
    /// The device.
    pub device: DeviceSpec,
    /// Fraction of a GPU's memory r1serve may use in all (weights,
    /// activations and the KV cache), vLLM's `--gpu-memory-utilization`;
    /// default 0.9.
    pub gpu_memory_utilization: f64,
    /// What the CPU's dense kernels multiply bf16 weights against
    /// (`--dtype`); default [`Precision::Auto`].
    pub precision: Precision,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            device: DeviceSpec::Auto,
            gpu_memory_utilization: 0.9,
            precision: Precision::Auto,
        }
    }
}

impl DeviceOptions {
    /// The device `Auto` stands for in this build on this machine.
    pub fn resolve(&self) -> Result<DeviceSpec> {
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            bail!(
                "--gpu-memory-utilization must be in (0, 1], got {}",
                self.gpu_memory_utilization
            );
        }
        Ok(match self.device {
            DeviceSpec::Auto if cuda_present() => DeviceSpec::Cuda(0),
            DeviceSpec::Auto => DeviceSpec::Cpu,
            DeviceSpec::Cuda(_) if !cfg!(feature = "cuda") => {
                bail!("this r1serve was built without CUDA; rebuild with `--features cuda`")
            }
            d => d,
        })
    }
}

#[cfg(feature = "cuda")]
fn cuda_present() -> bool {
    super::cuda::device_count() > 0
}

#[cfg(not(feature = "cuda"))]
fn cuda_present() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "CUDA"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn resolves_against_this_build() {
        let opts = |device, gpu_memory_utilization| DeviceOptions {
            device,
            gpu_memory_utilization,
            precision: Precision::Auto,
        };
        assert_eq!(
            opts(DeviceSpec::Cpu, 0.9).resolve().unwrap(),
            DeviceSpec::Cpu
        );
        for bad in [0.0, -0.5, 1.5, f64::NAN] {
            assert!(opts(DeviceSpec::Cpu, bad).resolve().is_err(), "{bad}");
        }
        let cuda = opts(DeviceSpec::Cuda(0), 0.9).resolve();
        if cfg!(feature = "cuda") {
            assert_eq!(cuda.unwrap(), DeviceSpec::Cuda(0));
        } else {
            let e = cuda.unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
            assert_eq!(
                opts(DeviceSpec::Auto, 0.9).resolve().unwrap(),
                DeviceSpec::Cpu
            );
        }
    }
}
