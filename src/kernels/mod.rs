//! The device seam ([`backend`]: every op of a forward pass over device
//! buffers) and its CPU implementation ([`cpu`]): row-wise ops ([`ops`]),
//! the reductions of logits rows to what the sampler needs ([`logits`]),
//! linear layers over every weight format ([`linear`]), and compute kernels,
//! each with a slow reference the tests compare against: paged attention
//! ([`attention`], its SIMD body in `attention_simd` over the vector types
//! of `simd`), the quantized matrix multiplication used by every linear
//! layer of a GGUF checkpoint
//! ([`qmatmul`]; SIMD inner loops on ggml's rows in `qmatmul_simd`, the
//! repacked-weight kernels of `qmatmul_tiled` (AVX-512 VNNI and AMX; its
//! AVX2 reading in `qmatmul_tiled_avx2`) and `qmatmul_tiled_k` over the
//! tile plumbing of `amx`, and the activations' quantization in
//! `quantize`), and the dense bf16/f16 matmul ([`dense`]; SIMD bodies in
//! `dense_simd`, AMX-BF16 tiles in `dense_amx`). Every
//! family's runtime dispatch is capped by `R1SERVE_ISA` ([`isa`]).
//! MLA's attention over one shared latent row per token is
//! [`latent_attention`] (f32 SIMD bodies in `latent_simd`, AMX-BF16 tiles
//! in `latent_amx`).

#[cfg(target_arch = "x86_64")]
mod amx;
pub mod attention;
mod attention_simd;
pub mod backend;
pub mod bytes;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dense;
#[cfg(target_arch = "x86_64")]
mod dense_amx;
#[cfg(target_arch = "x86_64")]
mod dense_batch;
mod dense_simd;
pub mod device;
pub mod isa;
#[cfg(target_arch = "x86_64")]
mod latent_amx;
pub mod latent_attention;
mod latent_simd;
pub mod linear;
pub mod logits;
pub mod ops;
pub mod qmatmul;
mod qmatmul_simd;
#[cfg(target_arch = "x86_64")]
mod qmatmul_tiled;
#[cfg(target_arch = "x86_64")]
mod qmatmul_tiled_avx2;
#[cfg(target_arch = "x86_64")]
mod qmatmul_tiled_k;
mod quantize;
mod simd;
pub mod tensor;

pub use dense::{dense_matmul_reference, DenseIsa, DenseMatrix};
pub use qmatmul::{matmul_reference, Isa, QMatrix};
