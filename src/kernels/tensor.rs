//! A tensor as a checkpoint stores it, handed from the loader to a
//! backend, which decides how its device holds and multiplies it.

use super::bytes::{HalfKind, WeightBytes};
use anyhow::Result;
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

/// A tensor as stored: quantized, dense 16-bit, or dense f32.
pub enum RawTensor {
    /// A GGML-quantized (or GGUF F32) tensor.
    Quantized(QTensor),
    /// A dense bf16 or f16 tensor kept as stored: a range of a safetensors
    /// shard's memory map, or the bytes of a GGUF F16/BF16 tensor.
    Half {
        /// Element type.
        kind: HalfKind,
        /// Shape, outermost dimension first.
        dims: Vec<usize>,
        /// Little-endian elements, row-major.
        bytes: WeightBytes,
    },
    /// A dense f32 tensor from safetensors.
    Dense(Tensor),
}

impl RawTensor {
    /// The tensor's shape, outermost dimension first.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            RawTensor::Quantized(q) => q.shape().dims().to_vec(),
            RawTensor::Half { dims, .. } => dims.clone(),
            RawTensor::Dense(t) => t.dims().to_vec(),
        }
    }

    /// Dense f32 copy, for small tensors such as norms and biases.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let t = match self {
            RawTensor::Quantized(q) => q.dequantize(&Device::Cpu)?,
            RawTensor::Half { kind, bytes, .. } => {
                let mut out = Vec::with_capacity(bytes.len() / 2);
                widen(*kind, bytes.as_slice(), &mut out);
                return Ok(out);
            }
            RawTensor::Dense(t) => t.clone(),
        };
        Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
    }
}

/// Appends the values of little-endian 16-bit `bytes` to `out` as f32
/// (exact: both formats are subsets of f32).
pub fn widen(kind: HalfKind, bytes: &[u8], out: &mut Vec<f32>) {
    let pairs = bytes.chunks_exact(2).map(|b| [b[0], b[1]]);
    match kind {
        HalfKind::Bf16 => out.extend(pairs.map(|b| bf16::from_le_bytes(b).to_f32())),
        HalfKind::F16 => out.extend(pairs.map(|b| f16::from_le_bytes(b).to_f32())),
    }
}
