//! The safetensors shards of a Hugging Face directory, memory-mapped
//! read-only by r1serve and parsed with the `safetensors` crate. A 16-bit
//! tensor is handed out as a range of its shard's map, so a bf16 checkpoint
//! costs its size on disk once (in the page cache) and is never copied.
//!
//! Every header is read and checked when the shards are opened, before any
//! weight is touched: a shard missing from disk, a truncated or garbled file,
//! or a tensor in a quantized float format (F8, F6, F4) that would need
//! scales r1serve does not implement is reported there, naming the file.
//! The exception is block-scaled FP8 ([`Fp8Blocks`], named by the
//! checkpoint's config): its E4M3 weights are dequantized with their
//! `_scale_inv` tensors when fetched ([`super::fp8`]).

use super::config::Fp8Blocks;
use super::weights::RawTensor;
use crate::kernels::bytes::{HalfKind, WeightBytes};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes before the JSON header: its length as a little-endian u64.
const LEN_PREFIX: usize = 8;

/// One mapped shard.
struct Shard {
    path: PathBuf,
    map: Arc<memmap2::Mmap>,
}

/// Where one tensor lives.
struct Entry {
    shard: usize,
    dtype: Dtype,
    dims: Vec<usize>,
    /// Byte range in the shard's map.
    start: usize,
    end: usize,
}

/// All shards of a checkpoint and the tensors they hold, by Hugging Face name.
pub struct Shards {
    dir: PathBuf,
    shards: Vec<Shard>,
    index: HashMap<String, Entry>,
    fp8: Option<Fp8Blocks>,
}

/// Float formats narrower than 16 bits only appear in quantized checkpoints,
/// where they mean nothing without the method's scales.
fn is_quantized_float(dtype: Dtype) -> bool {
    matches!(
        dtype,
        Dtype::F8_E4M3
            | Dtype::F8_E5M2
            | Dtype::F8_E8M0
            | Dtype::F6_E2M3
            | Dtype::F6_E3M2
            | Dtype::F4
    )
}

/// The shard files of `dir`: those `model.safetensors.index.json` names, or
/// the single `model.safetensors`.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.exists() {
        let single = dir.join("model.safetensors");
        if !single.exists() {
            bail!(
                "{}: neither model.safetensors nor model.safetensors.index.json found",
                dir.display()
            );
        }
        return Ok(vec![single]);
    }
    let text = std::fs::read_to_string(&index_path)
        .with_context(|| format!("{}: cannot read", index_path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid JSON", index_path.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: no `weight_map` object", index_path.display()))?;
    let mut files: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    files.sort_unstable();
    files.dedup();
    let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
    if let Some(missing) = files.iter().find(|p| !p.is_file()) {
        bail!(
            "{}: shard listed in {} is missing",
            missing.display(),
            index_path.display()
        );
    }
    Ok(files)
}

/// Explains why a shard's header could not be read, in terms of the file.
fn header_error(path: &Path, map: &[u8], e: SafeTensorError) -> anyhow::Error {
    let len = map.len();
    let declared_header = map
        .get(..LEN_PREFIX)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes);
    match e {
        SafeTensorError::HeaderTooSmall => anyhow!(
            "{}: file is truncated: it has {len} bytes, fewer than the {LEN_PREFIX} that give the \
             header's length",
            path.display()
        ),
        SafeTensorError::InvalidHeaderLength => anyhow!(
            "{}: file is truncated: its header should end at byte {} but the file has {len} bytes",
            path.display(),
            declared_header.map_or(0, |n| n.saturating_add(LEN_PREFIX as u64))
        ),
        SafeTensorError::MetadataIncompleteBuffer => {
            // The header parsed, so its tensors' extent can be reported.
            let n = declared_header.unwrap_or(0) as usize;
            let declared = map
                .get(LEN_PREFIX..LEN_PREFIX + n)
                .and_then(|h| serde_json::from_slice::<Metadata>(h).ok())
                .map(|m| LEN_PREFIX + n + m.data_len());
            match declared {
                Some(d) if d > len => anyhow!(
                    "{}: file is truncated: its header describes {d} bytes but the file has {len}",
                    path.display()
                ),
                Some(d) => anyhow!(
                    "{}: {} bytes follow the last tensor ({d} bytes described, {len} in the file)",
                    path.display(),
                    len - d
                ),
                None => anyhow!("{}: not a valid safetensors file: {e}", path.display()),
            }
        }
        e => anyhow!("{}: not a valid safetensors file: {e}", path.display()),
    }
}

impl Shards {
    /// Maps every shard of `dir` and indexes its tensors; `fp8` admits
    /// E4M3 weights with block scales.
    pub fn open(dir: &Path, fp8: Option<Fp8Blocks>) -> Result<Self> {
        let mut shards: Vec<Shard> = Vec::new();
        let mut index = HashMap::new();
        for path in shard_files(dir)? {
            let file =
                File::open(&path).with_context(|| format!("{}: cannot open", path.display()))?;
            // SAFETY: the map is read-only; like every inference server,
            // r1serve relies on checkpoints not being modified while served.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .with_context(|| format!("{}: cannot map", path.display()))?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&map).map_err(|e| header_error(&path, &map, e))?;
            let data_start = LEN_PREFIX + header_len;
            let mut tensors: Vec<_> = metadata.tensors().into_iter().collect();
            tensors.sort_by_key(|(_, info)| info.data_offsets);
            for (name, info) in tensors {
                let scaled = fp8.is_some() && info.dtype == Dtype::F8_E4M3;
                if is_quantized_float(info.dtype) && !scaled {
                    bail!(
                        "{}: tensor `{name}` is {}, a quantized format whose values mean nothing \
                         without its method's scales, and {} names no quantization method \
                         r1serve implements",
                        path.display(),
                        info.dtype,
                        dir.join("config.json").display()
                    );
                }
                let entry = Entry {
                    shard: shards.len(),
                    dtype: info.dtype,
                    dims: info.shape.clone(),
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                };
                if let Some(other) = index.insert(name.clone(), entry) {
                    bail!(
                        "{}: tensor `{name}` is also in {}",
                        path.display(),
                        shards[other.shard].path.display()
                    );
                }
            }
            shards.push(Shard {
                path,
                map: Arc::new(map),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            index,
            fp8,
        })
    }

    /// Whether a tensor (Hugging Face name) exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// A tensor by Hugging Face name, with the shard it came from: 16-bit
    /// tensors as ranges of the shard's map, f32 tensors copied out.
    pub fn get(&self, name: &str) -> Result<(RawTensor, &Path)> {
        let e = self
            .index
            .get(name)
            .with_context(|| format!("{}: tensor `{name}` is missing", self.dir.display()))?;
        let shard = &self.shards[e.shard];
        let half = |kind| RawTensor::Half {
            kind,
            dims: e.dims.clone(),
            bytes: WeightBytes::Mapped {
                map: shard.map.clone(),
                offset: e.start,
                len: e.end - e.start,
            },
        };
        let t = match e.dtype {
            Dtype::BF16 => half(HalfKind::Bf16),
            Dtype::F16 => half(HalfKind::F16),
            Dtype::F32 => RawTensor::Dense(
                Tensor::from_raw_buffer(
                    &shard.map[e.start..e.end],
                    DType::F32,
                    &e.dims,
                    &Device::Cpu,
                )
                .map_err(|err| {
                    anyhow!(
                        "{}: cannot read tensor `{name}`: {err}",
                        shard.path.display()
                    )
                })?,
            ),
            Dtype::F8_E4M3 => RawTensor::Half {
                kind: HalfKind::Bf16,
                dims: e.dims.clone(),
                bytes: WeightBytes::Owned(Arc::new(self.dequantize_fp8(name, e)?)),
            },
            other => bail!(
                "{}: tensor `{name}` has dtype {other}, which r1serve cannot use as a weight \
                 (it reads BF16, F16 and F32)",
                shard.path.display()
            ),
        };
        Ok((t, &shard.path))
    }

    /// An E4M3 weight times its `{name}_scale_inv` block scales, as bf16.
    fn dequantize_fp8(&self, name: &str, e: &Entry) -> Result<Vec<u8>> {
        let path = &self.shards[e.shard].path;
        let Some(blocks) = self.fp8 else {
            bail!(
                "{}: tensor `{name}` is E4M3 without block scales",
                path.display()
            );
        };
        let &[rows, cols] = &e.dims[..] else {
            bail!(
                "{}: E4M3 tensor `{name}` has shape {:?}; block scales apply to matrices",
                path.display(),
                e.dims
            );
        };
        let scale_name = format!("{name}_scale_inv");
        let s = self.index.get(&scale_name).with_context(|| {
            format!(
                "{}: tensor `{scale_name}` (the block scales of E4M3 `{name}`) is missing",
                self.dir.display()
            )
        })?;
        let want = [rows.div_ceil(blocks.rows), cols.div_ceil(blocks.cols)];
        if s.dtype != Dtype::F32 || s.dims != want {
            bail!(
                "{}: tensor `{scale_name}` is {} {:?}, expected F32 {want:?} ({rows}×{cols} in \
                 blocks of {}×{})",
                self.shards[s.shard].path.display(),
                s.dtype,
                s.dims,
                blocks.rows,
                blocks.cols
            );
        }
        let scales: Vec<f32> = self.shards[s.shard].map[s.start..s.end]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let values = &self.shards[e.shard].map[e.start..e.end];
        super::fp8::dequantize(values, rows, cols, &scales, blocks, name)
            .with_context(|| format!("{}", path.display()))
    }
}
