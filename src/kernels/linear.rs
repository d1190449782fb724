//! The CPU's linear layer and embedding table over every weight format, so
//! the model files never know whether a checkpoint was GGUF-quantized or
//! dense safetensors.

use super::bytes::{HalfKind, WeightBytes};
use super::dense::DenseMatrix;
use super::tensor::{widen, RawTensor};
use anyhow::{bail, Result};
use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use std::borrow::Cow;

enum Weight {
    /// r1serve's own kernels (runtime-dispatched SIMD, tiled over the batch).
    Fast(crate::kernels::QMatrix),
    /// Block types r1serve has no kernel for go through candle.
    Quantized(QMatMul),
    /// bf16/f16 weights as stored, on r1serve's dense kernels.
    Half(DenseMatrix),
    /// f32 weights (and everything under `R1SERVE_DEQUANTIZE_ALL`).
    Dense(Tensor),
}

/// `R1SERVE_DEQUANTIZE_ALL=1` dequantizes GGUF weights to f32 at load time:
/// slower and bigger, but free of 8-bit activation quantization, which makes
/// exact comparisons with reference implementations possible.
fn dequantize_all() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| {
        std::env::var("R1SERVE_DEQUANTIZE_ALL").is_ok_and(|v| !v.is_empty() && v != "0")
    })
}

/// `y = x·Wᵀ (+ b)` over row-major f32 activations.
pub struct Linear {
    weight: Weight,
    bias: Option<Vec<f32>>,
    out_features: usize,
    in_features: usize,
}

impl Linear {
    /// Wraps a `(out_features, in_features)` weight and an optional bias.
    /// A bad `R1SERVE_ISA` is an error here, when the first weight loads,
    /// whatever the weight's format.
    pub fn new(weight: RawTensor, bias: Option<Vec<f32>>) -> Result<Self> {
        super::isa::limit()?;
        let dims = weight.dims();
        let [out_features, in_features] = dims[..] else {
            bail!("linear weight must be 2-D, got {dims:?}");
        };
        if let Some(b) = &bias {
            if b.len() != out_features {
                bail!("bias has {} entries, expected {out_features}", b.len());
            }
        }
        let weight = match weight {
            RawTensor::Quantized(q) if dequantize_all() => {
                Weight::Dense(q.dequantize(&Device::Cpu)?)
            }
            RawTensor::Quantized(q) if crate::kernels::QMatrix::supported(q.dtype()) => {
                Weight::Fast(crate::kernels::QMatrix::from_qtensor(&q)?)
            }
            RawTensor::Quantized(q) => Weight::Quantized(QMatMul::from_qtensor(q)?),
            RawTensor::Half { kind, bytes, .. } => {
                Weight::Half(DenseMatrix::new(kind, out_features, in_features, bytes)?)
            }
            RawTensor::Dense(t) => Weight::Dense(t),
        };
        Ok(Self {
            weight,
            bias,
            out_features,
            in_features,
        })
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Computes `m` rows of output from `m` rows of input.
    pub fn forward(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        debug_assert_eq!(x.len(), m * self.in_features);
        let mut y = match &self.weight {
            Weight::Fast(q) => {
                let mut y = vec![0f32; m * self.out_features];
                q.matmul(x, m, &mut y);
                y
            }
            Weight::Half(d) => {
                let mut y = vec![0f32; m * self.out_features];
                d.matmul(x, m, &mut y);
                y
            }
            Weight::Quantized(q) => {
                let xs = Tensor::from_slice(x, (m, self.in_features), &Device::Cpu)?;
                q.forward(&xs)?.flatten_all()?.to_vec1::<f32>()?
            }
            Weight::Dense(w) => {
                let xs = Tensor::from_slice(x, (m, self.in_features), &Device::Cpu)?;
                xs.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?
            }
        };
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(self.out_features) {
                for (o, b) in row.iter_mut().zip(b) {
                    *o += b;
                }
            }
        }
        Ok(y)
    }
}

/// Token embedding table; quantized and 16-bit tables stay as stored and only
/// the rows a batch needs are widened (a Qwen2 table is 0.5 GB in f32, and a
/// 7B's 2 GB).
pub enum Embedding {
    /// Quantized rows, `row_bytes` each.
    Quantized {
        /// The raw GGML blocks of the whole table.
        data: Vec<u8>,
        /// GGML dtype of the blocks.
        dtype: candle_core::quantized::GgmlDType,
        /// Bytes of one row.
        row_bytes: usize,
        /// Row width.
        dim: usize,
    },
    /// Dense bf16 or f16 rows, as stored (mapped from a safetensors shard).
    Half {
        /// Element type.
        kind: HalfKind,
        /// `vocab × dim` little-endian elements.
        bytes: WeightBytes,
        /// Row width.
        dim: usize,
    },
    /// Dense f32 rows.
    Dense {
        /// `vocab × dim` values.
        data: Vec<f32>,
        /// Row width.
        dim: usize,
    },
}

impl Embedding {
    /// Builds the table from a `(vocab, dim)` tensor.
    pub fn new(t: &RawTensor) -> Result<Self> {
        let dims = t.dims();
        let [_, dim] = dims[..] else {
            bail!("embedding must be 2-D, got {dims:?}");
        };
        Ok(match t {
            RawTensor::Quantized(q) => {
                let dtype = q.dtype();
                Embedding::Quantized {
                    data: q.data()?.into_owned(),
                    dtype,
                    row_bytes: dim / dtype.block_size() * dtype.type_size(),
                    dim,
                }
            }
            RawTensor::Half { kind, bytes, .. } => Embedding::Half {
                kind: *kind,
                bytes: bytes.clone(),
                dim,
            },
            RawTensor::Dense(d) => Embedding::Dense {
                data: d.flatten_all()?.to_vec1()?,
                dim,
            },
        })
    }

    /// Row width.
    pub fn dim(&self) -> usize {
        match self {
            Embedding::Quantized { dim, .. }
            | Embedding::Half { dim, .. }
            | Embedding::Dense { dim, .. } => *dim,
        }
    }

    /// Number of rows.
    pub fn vocab(&self) -> usize {
        match self {
            Embedding::Quantized {
                data, row_bytes, ..
            } => data.len() / row_bytes,
            Embedding::Half { bytes, dim, .. } => bytes.len() / (2 * dim),
            Embedding::Dense { data, dim } => data.len() / dim,
        }
    }

    /// Gathers the rows of `ids` into a `ids.len() × dim` buffer.
    pub fn forward(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let vocab = self.vocab();
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        match self {
            Embedding::Dense { data, dim } => Ok(ids
                .iter()
                .flat_map(|&i| &data[i as usize * dim..(i as usize + 1) * dim])
                .copied()
                .collect()),
            Embedding::Half { kind, bytes, dim } => {
                let row_bytes = 2 * dim;
                let table = bytes.as_slice();
                let mut out = Vec::with_capacity(ids.len() * dim);
                for &i in ids {
                    let start = i as usize * row_bytes;
                    widen(*kind, &table[start..start + row_bytes], &mut out);
                }
                Ok(out)
            }
            Embedding::Quantized {
                data,
                dtype,
                row_bytes,
                dim,
            } => {
                let mut out = Vec::with_capacity(ids.len() * dim);
                for &i in ids {
                    let row = &data[i as usize * row_bytes..(i as usize + 1) * row_bytes];
                    let storage = QStorage::from_data(Cow::Borrowed(row), &Device::Cpu, *dtype)?;
                    let q = QTensor::new(storage, (1, *dim))?;
                    out.extend(
                        q.dequantize(&Device::Cpu)?
                            .flatten_all()?
                            .to_vec1::<f32>()?,
                    );
                }
                Ok(out)
            }
        }
    }
}
