//! A tensor as a checkpoint stores it, handed from the loader to a
//! backend, which decides how its device holds and multiplies it.

use super::bytes::{HalfKind, WeightBytes};
use anyhow::{bail, Result};
use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use std::borrow::Cow;
use std::sync::Arc;

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

impl RawTensor {
    /// Splits a 3-D tensor into its `dims[0]` 2-D slices (GGUF stores the
    /// experts of a layer as one `experts × rows × cols` tensor), each in
    /// the stored format.
    pub fn split_outer(self) -> Result<Vec<RawTensor>> {
        let dims = self.dims();
        let [n, rows, cols] = dims[..] else {
            bail!("expected a 3-D tensor, got shape {dims:?}");
        };
        Ok(match self {
            RawTensor::Quantized(q) => {
                let dtype = q.dtype();
                let data = q.data()?;
                let each = data.len() / n.max(1);
                data.chunks_exact(each)
                    .map(|d| {
                        let storage = QStorage::from_data(Cow::Borrowed(d), &Device::Cpu, dtype)?;
                        Ok(RawTensor::Quantized(QTensor::new(storage, (rows, cols))?))
                    })
                    .collect::<Result<_>>()?
            }
            RawTensor::Half { kind, bytes, .. } => bytes
                .as_slice()
                .chunks_exact(rows * cols * 2)
                .map(|b| RawTensor::Half {
                    kind,
                    dims: vec![rows, cols],
                    bytes: WeightBytes::Owned(Arc::new(b.to_vec())),
                })
                .collect(),
            RawTensor::Dense(t) => (0..n)
                .map(|i| Ok(RawTensor::Dense(t.get(i)?)))
                .collect::<Result<_>>()?,
        })
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
