//! The CUDA device under [`super::Cuda`]: one context and one stream, the
//! kernels of `*.cu` (compiled by `build.rs` into fatbins this binary embeds
//! and the driver loads, so no CUDA library is linked), their launches, and
//! cuBLAS's 16-bit GEMM. `libcuda` and `libcublas` are opened at run time.

use anyhow::{bail, Context, Result};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    LaunchArgs, LaunchConfig,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::Arc;

const FATBINS: [(&str, &[u8]); 4] = [
    (
        "rowwise",
        include_bytes!(concat!(env!("OUT_DIR"), "/rowwise.fatbin")),
    ),
    (
        "attention",
        include_bytes!(concat!(env!("OUT_DIR"), "/attention.fatbin")),
    ),
    (
        "attention_mma",
        include_bytes!(concat!(env!("OUT_DIR"), "/attention_mma.fatbin")),
    ),
    (
        "logits",
        include_bytes!(concat!(env!("OUT_DIR"), "/logits.fatbin")),
    ),
];

/// CUDA GPUs visible to this process; 0 when the driver library is absent.
pub fn device_count() -> usize {
    // SAFETY: only checks whether the library can be opened.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return 0;
    }
    cudarc::driver::result::init()
        .and_then(|()| cudarc::driver::result::device::get_count())
        .map_or(0, |n| n.max(0) as usize)
}

/// One GPU: its context, the stream every op runs on, the loaded kernels
/// and a cuBLAS handle bound to that stream.
pub struct Gpu {
    /// The device's primary context.
    pub ctx: Arc<CudaContext>,
    /// The stream every op is queued on, in order.
    pub stream: Arc<CudaStream>,
    blas: CudaBlas,
    functions: HashMap<String, CudaFunction>,
}

/// The element type of a 16-bit matrix operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half16 {
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl Gpu {
    /// Opens GPU `ordinal` and loads every kernel.
    pub fn open(ordinal: usize) -> Result<Self> {
        let count = device_count();
        if ordinal >= count {
            bail!("cuda:{ordinal} requested, but {count} CUDA device(s) are visible (is libcuda.so.1 on the library path?)");
        }
        // SAFETY: only the checks for cublas's presence; it is then opened.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            bail!("libcublas (CUDA 13) not found: add its directory to LD_LIBRARY_PATH");
        }
        let ctx =
            CudaContext::new(ordinal).with_context(|| format!("cannot open cuda:{ordinal}"))?;
        // One stream orders every op, so the per-buffer events cudarc keeps
        // for multi-stream use are pure overhead.
        // SAFETY: nothing here uses a second stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).context("cuBLAS handle")?;
        let mut functions = HashMap::new();
        for (module, image) in FATBINS {
            let m = ctx
                .load_module(Ptx::from_binary(image.to_vec()))
                .with_context(|| format!("cannot load the {module} kernels on cuda:{ordinal}"))?;
            for name in kernel_names(module) {
                let f = m
                    .load_function(&name)
                    .with_context(|| format!("kernel {name} missing from {module}.cu"))?;
                functions.insert(name, f);
            }
        }
        Ok(Self {
            ctx,
            stream,
            blas,
            functions,
        })
    }

    /// A kernel by name; every name is loaded at open, so a miss is a bug.
    pub fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions
            .get(name)
            .with_context(|| format!("no CUDA kernel {name}"))
    }

    /// Starts a launch of kernel `name`.
    pub fn launch<'a>(&'a self, name: &str) -> Result<LaunchArgs<'a>> {
        Ok(self.stream.launch_builder(self.function(name)?))
    }

    /// Copies host values to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, values: &[T]) -> Result<CudaSlice<T>> {
        if values.is_empty() {
            // A zero-length allocation is an error in the driver.
            return Ok(unsafe { self.stream.alloc::<T>(1)? });
        }
        Ok(self.stream.clone_htod(values)?)
    }

    /// A new device buffer of `len` f32 values (uninitialised: every caller
    /// writes all of it before reading).
    pub fn alloc_f32(&self, len: usize) -> Result<CudaSlice<f32>> {
        // SAFETY: see above; f32 has no invalid bit patterns.
        Ok(unsafe { self.stream.alloc::<f32>(len.max(1))? })
    }

    /// `y (rows × out, f32) = x (rows × in, 16-bit) · wᵀ` where `w` is
    /// `out × in`, row-major, accumulated in f32 by cuBLAS.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        kind: Half16,
        w: &CudaSlice<u16>,
        x: &CudaSlice<u16>,
        y: &mut CudaSlice<f32>,
        rows: usize,
        out: usize,
        inp: usize,
    ) -> Result<()> {
        let dt = match kind {
            Half16::Bf16 => blas_sys::cudaDataType_t::CUDA_R_16BF,
            Half16::F16 => blas_sys::cudaDataType_t::CUDA_R_16F,
        };
        let (alpha, beta) = (1f32, 0f32);
        let (wp, _w) = w.device_ptr(&self.stream);
        let (xp, _x) = x.device_ptr(&self.stream);
        let (yp, _y) = y.device_ptr_mut(&self.stream);
        // Column-major view: yᵀ (out × rows) = w (in × out)ᵀ · xᵀ (in × rows).
        // SAFETY: the three buffers hold out·in, rows·in and rows·out values.
        unsafe {
            blas::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                out as i32,
                rows as i32,
                inp as i32,
                (&alpha as *const f32).cast(),
                wp as *const _,
                dt,
                inp as i32,
                xp as *const _,
                dt,
                inp as i32,
                (&beta as *const f32).cast(),
                yp as *mut _,
                blas_sys::cudaDataType_t::CUDA_R_32F,
                out as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )?;
        }
        Ok(())
    }

    /// Free and total device memory, in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        Ok(self.ctx.mem_get_info()?)
    }

    /// Mean milliseconds per call of `f`, over `iters` calls queued after
    /// `warmup` untimed ones, between two events on the stream.
    pub fn time_ms(
        &self,
        warmup: usize,
        iters: usize,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<f64> {
        for _ in 0..warmup {
            f()?;
        }
        let timed = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.stream.record_event(timed)?;
        for _ in 0..iters {
            f()?;
        }
        let end = self.stream.record_event(timed)?;
        end.synchronize()?;
        Ok(f64::from(start.elapsed_ms(&end)?) / iters.max(1) as f64)
    }

    /// Waits for every queued op.
    pub fn sync(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }
}

/// The `extern "C"` kernels each `.cu` file defines.
fn kernel_names(module: &str) -> Vec<String> {
    match module {
        "rowwise" => [
            "rms_norm",
            "add_rms_norm",
            "add",
            "silu_mul",
            "rope",
            "embed",
            "gather_rows",
            "add_bias",
            "to_bf16",
            "to_f16",
            "fill_random_bf16",
            "fill_random_f32",
        ]
        .map(String::from)
        .to_vec(),
        "logits" => vec!["reduce_logits".to_string()],
        "attention_mma" => ["f16", "bf16"]
            .iter()
            .flat_map(|t| [64, 128].map(|hd| format!("attention_mma_{t}_{hd}")))
            .collect(),
        _ => {
            let mut v = vec!["attention_merge_f32".to_string()];
            for t in ["f16", "bf16", "fp8", "f32"] {
                v.push(format!("write_kv_{t}"));
                for hd in [64, 128] {
                    v.push(format!("attention_partial_{t}_{hd}"));
                }
            }
            v
        }
    }
}

/// A grid-stride launch over `n` elements.
pub fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of 256 threads per row.
pub fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}
