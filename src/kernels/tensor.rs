//! A tensor as a checkpoint stores it, handed from the loader to a
//! backend, which decides how its device holds and multiplies it.

use anyhow::Result;
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

/// A tensor as stored: still quantized, or dense (upcast to f32).
pub enum RawTensor {
    /// A GGML-quantized (or GGUF F16/F32/BF16) tensor.
    Quantized(QTensor),
    /// A dense f32 tensor from safetensors.
    Dense(Tensor),
}

impl RawTensor {
    /// The tensor's shape, outermost dimension first.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            RawTensor::Quantized(q) => q.shape().dims().to_vec(),
            RawTensor::Dense(t) => t.dims().to_vec(),
        }
    }

    /// Dense f32 copy, for small tensors such as norms and biases.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let t = match self {
            RawTensor::Quantized(q) => q.dequantize(&Device::Cpu)?,
            RawTensor::Dense(t) => t.clone(),
        };
        Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
    }
}
