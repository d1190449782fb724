//! Compute kernels for the CPU path.
//!
//! [`qmatmul`] holds the quantized matrix multiplication used by every linear
//! layer of a GGUF checkpoint; its SIMD inner loops live in `qmatmul_simd`.

pub mod qmatmul;
mod qmatmul_simd;

pub use qmatmul::{matmul_reference, Isa, QMatrix};
