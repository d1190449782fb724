//! The CUDA backend: weights, activations and the paged KV cache in GPU
//! memory; r1serve's own kernels (`rowwise.cu`, `attention.cu`) for every
//! op but the matrix products, which are cuBLAS 16-bit GEMMs accumulating in
//! f32. Only token ids go up and, per step, only what the sampler needs of
//! the logits comes back (`logits.cu`: an argmax, a draw's candidates, or
//! whole rows).
//!
//! Weights: bf16 and f16 checkpoints are kept as stored; GGUF-quantized and
//! f32 tensors are widened on the host and rounded once to bf16 at load.
//! Activations are f32 between ops and rounded to the weight's 16-bit type
//! as a GEMM's input (what vLLM does for bf16 models).

mod logits;
mod runtime;

pub use runtime::{device_count, Gpu, Half16};

use super::attention::{AttnSeq, AttnShape};
use super::backend::{self, Backend, RopeStyle};
use super::bytes::HalfKind;
use super::logits::{LogitsRow, RowNeed};
use super::ops;
use super::tensor::RawTensor;
use crate::kv_cache::spec::{KvSpec, LayerKvSpec};
use crate::kv_cache::storage::KvDtype;
use crate::types::TokenId;
use anyhow::{bail, Context, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PinnedHostSlice, PushKernelArg};
use half::bf16;
use runtime::{elementwise, per_row};
use std::sync::{Arc, Mutex};

/// GPU memory kept free of the KV cache for activations, cuBLAS's
/// workspace and the attention partials of a full batch.
const ACTIVATION_RESERVE: usize = 2 << 30;

/// Query heads per KV head the attention kernel serves: its CTA holds 16
/// threads per head of 128 and is bounded at 256 threads.
const MAX_GROUP: usize = 16;

/// Keys per attention partition at most (`MAX_PART` in `attention.cu`).
const MAX_PART: usize = 512;

/// A CUDA GPU as a [`Backend`].
#[derive(Clone)]
pub struct Cuda {
    gpu: Arc<Gpu>,
    ordinal: usize,
    memory_utilization: f64,
    meta: Arc<Mutex<StepMeta>>,
    /// Page-locked host buffer the logits come back through: a copy from
    /// pageable memory is staged and synchronous, several times slower.
    /// Grows to the largest step's logits and stays.
    pinned: Arc<Mutex<Option<PinnedHostSlice<f32>>>>,
}

impl Cuda {
    /// Opens GPU `ordinal`; r1serve may use `memory_utilization` of its
    /// memory in all.
    pub fn new(ordinal: usize, memory_utilization: f64) -> Result<Self> {
        Ok(Self {
            gpu: Arc::new(Gpu::open(ordinal)?),
            ordinal,
            memory_utilization,
            meta: Arc::new(Mutex::new(StepMeta::default())),
            pinned: Arc::new(Mutex::new(None)),
        })
    }

    /// The device, for tests and benchmarks that time or fill it directly.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Copies an activation buffer to the host.
    pub fn to_host(&self, x: &CudaAct) -> Result<Vec<f32>> {
        Ok(self.gpu.stream.clone_dtoh(&x.data)?)
    }

    /// Copies host rows to the device.
    pub fn from_host(&self, data: &[f32], width: usize) -> Result<CudaAct> {
        Ok(CudaAct {
            data: self.gpu.upload(data)?,
            width,
        })
    }

    /// A `(out, in)` linear layer of pseudo-random bf16 weights uniform in
    /// `±scale`, generated on the device (synthetic models for benchmarks).
    pub fn random_linear(
        &self,
        out: usize,
        inp: usize,
        seed: u64,
        scale: f32,
    ) -> Result<CudaLinear> {
        // SAFETY: the fill writes every value.
        let mut w = unsafe { self.gpu.stream.alloc::<u16>(out * inp)? };
        self.fill_random("fill_random_bf16", &mut w, seed, scale)?;
        Ok(CudaLinear {
            w,
            kind: Half16::Bf16,
            bias: None,
            out,
            inp,
        })
    }

    /// A `(rows, width)` embedding table of pseudo-random f32 values.
    pub fn random_embedding(
        &self,
        rows: usize,
        width: usize,
        seed: u64,
        scale: f32,
    ) -> Result<CudaEmbedding> {
        let mut table = self.gpu.alloc_f32(rows * width)?;
        self.fill_random("fill_random_f32", &mut table, seed, scale)?;
        Ok(CudaEmbedding { table, rows, width })
    }

    /// Fills `buf` with kernel `name` of `rowwise.cu`.
    fn fill_random<T>(
        &self,
        name: &str,
        buf: &mut CudaSlice<T>,
        seed: u64,
        scale: f32,
    ) -> Result<()> {
        let n = buf.len();
        let n64 = n as i64;
        let mut l = self.gpu.launch(name)?;
        l.arg(buf).arg(&n64).arg(&seed).arg(&scale);
        unsafe { l.launch(elementwise(n))? };
        Ok(())
    }

    fn new_act(&self, rows: usize, width: usize) -> Result<CudaAct> {
        Ok(CudaAct {
            data: self.gpu.alloc_f32(rows * width)?,
            width,
        })
    }
}

/// Activations: `rows × width` f32 values in GPU memory.
pub struct CudaAct {
    data: CudaSlice<f32>,
    width: usize,
}

impl CudaAct {
    fn rows(&self) -> usize {
        self.data.len() / self.width.max(1)
    }
}

/// A linear layer's 16-bit weight (and f32 bias) in GPU memory.
pub struct CudaLinear {
    w: CudaSlice<u16>,
    kind: Half16,
    bias: Option<CudaSlice<f32>>,
    out: usize,
    inp: usize,
}

/// An f32 embedding table in GPU memory: the gather is exact, whatever the
/// checkpoint's format.
pub struct CudaEmbedding {
    table: CudaSlice<f32>,
    rows: usize,
    width: usize,
}

/// The paged KV cache: per layer, keys and values as
/// `[block][kv_head][slot][head_dim]` in the cache's element type.
pub struct CudaCache {
    layers: Vec<(CudaSlice<u8>, CudaSlice<u8>)>,
    dtype: KvDtype,
    block_size: usize,
    num_blocks: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// One step's rotation angles.
pub struct CudaRope {
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    pairs: usize,
    tokens: usize,
}

/// The attention metadata of one step, uploaded by the first layer that
/// needs it and reused by the rest (every layer sees the same sequences).
#[derive(Default)]
struct StepMeta {
    /// Host copy: block size, then each row's slot, sequence and position,
    /// then each sequence's table offset and table.
    key: Vec<i32>,
    device: Option<DeviceMeta>,
}

struct DeviceMeta {
    slot_of_row: CudaSlice<i32>,
    row_seq: CudaSlice<i32>,
    row_pos: CudaSlice<i32>,
    table_off: CudaSlice<i32>,
    tables: CudaSlice<i32>,
    /// The most partitions any row has (not the last row's count:
    /// `n.div_ceil(partition_size(n))` falls where the size doubles).
    max_parts: usize,
}

/// Keys per partition of a row with `n_keys` keys (`partition_size` in
/// `attention.cu`).
fn partition_size(n_keys: usize) -> usize {
    let mut p = 32;
    while p < MAX_PART && p * 64 < n_keys {
        p <<= 1;
    }
    p
}

/// The attention CTA's shape (`attention_partial` in `attention.cu`):
/// `head_dim / 8` threads along a head row, the group's query heads
/// (rounded up to whole warps), and key subsets to make at least 128
/// threads; and its shared memory: two stages of key and value chunks,
/// then the subsets' partial results.
fn attention_launch(head_dim: usize, group: usize, dtype: KvDtype) -> (u32, u32, u32, u32) {
    let bdx = head_dim / 8;
    let xy = (bdx * group).div_ceil(32) * 32;
    let (bdy, bdz) = (xy / bdx, (128 / xy).max(1));
    let chunk = if dtype.size() == 4 { 16 } else { 32 };
    let smem = 4 * chunk * head_dim * dtype.size() + bdz * bdy * (head_dim + 2) * 4;
    (bdx as u32, bdy as u32, bdz as u32, smem as u32)
}

fn kv_suffix(dtype: KvDtype) -> &'static str {
    match dtype {
        KvDtype::F16 => "f16",
        KvDtype::Bf16 => "bf16",
        KvDtype::Fp8E4m3 => "fp8",
        KvDtype::F32 => "f32",
    }
}

fn same_shape(x: &CudaAct, y: &CudaAct) -> Result<()> {
    backend::same_shape((x.data.len(), x.width), (y.data.len(), y.width))
}

impl Cuda {
    /// Uploads (or reuses) the step's row and block-table metadata.
    fn step_meta<'m>(
        &self,
        meta: &'m mut StepMeta,
        seqs: &[AttnSeq],
        rows: usize,
        block_size: usize,
    ) -> Result<&'m DeviceMeta> {
        let mut slot = vec![-1i32; rows];
        let mut row_seq = vec![0i32; rows];
        let mut row_pos = vec![0i32; rows];
        let mut table_off = Vec::with_capacity(seqs.len());
        let mut tables = Vec::new();
        let mut max_parts = 1;
        for (i, s) in seqs.iter().enumerate() {
            if s.q_len == 0 || s.q_len > s.ctx_len || s.q_start + s.q_len > rows {
                bail!(
                    "sequence of {} queries at row {} for a context of {} in a batch of {rows}",
                    s.q_len,
                    s.q_start,
                    s.ctx_len
                );
            }
            if s.block_table.len() * block_size < s.ctx_len {
                bail!(
                    "block table of {} blocks for a context of {}",
                    s.block_table.len(),
                    s.ctx_len
                );
            }
            table_off.push(tables.len() as i32);
            let used = s.ctx_len.div_ceil(block_size);
            tables.extend(s.block_table[..used].iter().map(|b| b.0 as i32));
            for j in 0..s.q_len {
                let (r, pos) = (s.q_start + j, s.ctx_len - s.q_len + j);
                slot[r] = (s.block_table[pos / block_size].index() * block_size + pos % block_size)
                    as i32;
                row_seq[r] = i as i32;
                row_pos[r] = pos as i32;
                max_parts = max_parts.max((pos + 1).div_ceil(partition_size(pos + 1)));
            }
        }
        if slot.contains(&-1) {
            bail!("a batch row belongs to no sequence");
        }
        let mut key = Vec::with_capacity(1 + 3 * rows + table_off.len() + tables.len());
        key.push(block_size as i32);
        key.extend_from_slice(&slot);
        key.extend_from_slice(&row_seq);
        key.extend_from_slice(&row_pos);
        key.extend_from_slice(&table_off);
        key.extend_from_slice(&tables);
        if meta.device.is_none() || meta.key != key {
            let g = &self.gpu;
            meta.device = Some(DeviceMeta {
                slot_of_row: g.upload(&slot)?,
                row_seq: g.upload(&row_seq)?,
                row_pos: g.upload(&row_pos)?,
                table_off: g.upload(&table_off)?,
                tables: g.upload(&tables)?,
                max_parts,
            });
            meta.key = key;
        }
        Ok(meta.device.as_ref().expect("set above"))
    }
}

impl Backend for Cuda {
    type Act = CudaAct;
    type Linear = CudaLinear;
    type Embedding = CudaEmbedding;
    type Vector = CudaSlice<f32>;
    type Cache = CudaCache;
    type RopeTables = CudaRope;

    fn name(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }

    /// vLLM's chunked-prefill default: a GPU's matmuls want hundreds of
    /// rows, and a step of 2048 tokens still takes tens of milliseconds.
    fn step_tokens(&self) -> usize {
        2048
    }

    fn linear(&self, weight: RawTensor, bias: Option<Vec<f32>>) -> Result<CudaLinear> {
        let dims = weight.dims();
        let [out, inp] = dims[..] else {
            bail!("a linear weight must be 2-D, got {dims:?}");
        };
        let (kind, bits): (Half16, Vec<u16>) = match &weight {
            RawTensor::Half { kind, bytes, .. } => (
                match kind {
                    HalfKind::Bf16 => Half16::Bf16,
                    HalfKind::F16 => Half16::F16,
                },
                bytes
                    .as_slice()
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            _ => (
                Half16::Bf16,
                weight
                    .to_f32_vec()?
                    .into_iter()
                    .map(|v| bf16::from_f32(v).to_bits())
                    .collect(),
            ),
        };
        if bits.len() != out * inp {
            bail!("weight of shape {dims:?} holds {} values", bits.len());
        }
        if bias.as_ref().is_some_and(|b| b.len() != out) {
            bail!("bias length differs from the {out} outputs");
        }
        Ok(CudaLinear {
            w: self.gpu.upload(&bits)?,
            kind,
            bias: bias.map(|b| self.gpu.upload(&b)).transpose()?,
            out,
            inp,
        })
    }

    fn embedding(&self, table: &RawTensor) -> Result<CudaEmbedding> {
        let dims = table.dims();
        let [rows, width] = dims[..] else {
            bail!("an embedding table must be 2-D, got {dims:?}");
        };
        Ok(CudaEmbedding {
            table: self.gpu.upload(&table.to_f32_vec()?)?,
            rows,
            width,
        })
    }

    fn vector(&self, values: Vec<f32>) -> Result<CudaSlice<f32>> {
        self.gpu.upload(&values)
    }

    fn alloc_cache(
        &self,
        spec: &KvSpec,
        block_size: usize,
        num_blocks: usize,
        dtype: KvDtype,
    ) -> Result<CudaCache> {
        let Some(&LayerKvSpec::Full {
            num_kv_heads,
            k_dim,
            v_dim,
        }) = spec.layers.first()
        else {
            bail!(
                "the CUDA backend caches per-head keys and values only (no MLA latent cache yet)"
            );
        };
        if spec.layers.iter().any(|l| *l != spec.layers[0]) || k_dim != v_dim {
            bail!("the CUDA backend needs every layer to cache equal-width keys and values");
        }
        if !matches!(k_dim, 64 | 128) {
            bail!("the CUDA attention kernels support head_dim 64 and 128, not {k_dim}");
        }
        let bytes = num_blocks * block_size * num_kv_heads * k_dim * dtype.size();
        let layers = spec
            .layers
            .iter()
            .map(|_| -> Result<_> {
                let s = &self.gpu.stream;
                Ok((s.alloc_zeros::<u8>(bytes)?, s.alloc_zeros::<u8>(bytes)?))
            })
            .collect::<Result<_>>()
            .with_context(|| {
                format!(
                    "cannot allocate a KV cache of {num_blocks} blocks ({} MiB per layer)",
                    (2 * bytes) >> 20
                )
            })?;
        Ok(CudaCache {
            layers,
            dtype,
            block_size,
            num_blocks,
            kv_heads: num_kv_heads,
            head_dim: k_dim,
        })
    }

    fn kv_memory_budget(&self) -> Option<u64> {
        let (free, total) = self.gpu.memory().ok()?;
        let allowed = (total as f64 * self.memory_utilization) as usize;
        let used = total - free;
        Some(
            allowed
                .saturating_sub(used)
                .saturating_sub(ACTIVATION_RESERVE) as u64,
        )
    }

    fn rows(&self, x: &CudaAct) -> usize {
        x.rows()
    }

    fn embed(&self, table: &CudaEmbedding, ids: &[TokenId]) -> Result<CudaAct> {
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= table.rows) {
            bail!("token id {bad} outside the vocabulary of {}", table.rows);
        }
        let d_ids = self.gpu.upload(ids)?;
        let mut out = self.new_act(ids.len(), table.width)?;
        let w = table.width as i32;
        let mut l = self.gpu.launch("embed")?;
        l.arg(&table.table).arg(&d_ids).arg(&mut out.data).arg(&w);
        unsafe { l.launch(per_row(ids.len()))? };
        Ok(out)
    }

    fn matmul(&self, w: &CudaLinear, x: &CudaAct) -> Result<CudaAct> {
        if x.width != w.inp {
            bail!(
                "matmul of rows of {} by a weight of {} inputs",
                x.width,
                w.inp
            );
        }
        let (rows, n) = (x.rows(), x.data.len());
        // SAFETY: the conversion kernel writes all n values.
        let mut x16 = unsafe { self.gpu.stream.alloc::<u16>(n.max(1))? };
        let n64 = n as i64;
        let conv = match w.kind {
            Half16::Bf16 => "to_bf16",
            Half16::F16 => "to_f16",
        };
        let mut l = self.gpu.launch(conv)?;
        l.arg(&x.data).arg(&mut x16).arg(&n64);
        unsafe { l.launch(elementwise(n))? };
        let mut y = self.new_act(rows, w.out)?;
        self.gpu
            .gemm(w.kind, &w.w, &x16, &mut y.data, rows, w.out, w.inp)?;
        if let Some(b) = &w.bias {
            let (width, total) = (w.out as i32, (rows * w.out) as i64);
            let mut l = self.gpu.launch("add_bias")?;
            l.arg(&mut y.data).arg(b).arg(&width).arg(&total);
            unsafe { l.launch(elementwise(rows * w.out))? };
        }
        Ok(y)
    }

    fn rms_norm(&self, x: &CudaAct, w: &CudaSlice<f32>, eps: f32) -> Result<CudaAct> {
        if x.width != w.len() {
            bail!("norm of width {} over rows of {}", w.len(), x.width);
        }
        let mut out = self.new_act(x.rows(), x.width)?;
        let width = x.width as i32;
        let mut l = self.gpu.launch("rms_norm")?;
        l.arg(&x.data)
            .arg(w)
            .arg(&mut out.data)
            .arg(&width)
            .arg(&eps);
        unsafe { l.launch(per_row(x.rows()))? };
        Ok(out)
    }

    fn add_rms_norm(
        &self,
        x: &mut CudaAct,
        y: &CudaAct,
        w: &CudaSlice<f32>,
        eps: f32,
    ) -> Result<CudaAct> {
        same_shape(x, y)?;
        if x.width != w.len() {
            bail!("norm of width {} over rows of {}", w.len(), x.width);
        }
        let mut out = self.new_act(x.rows(), x.width)?;
        let (width, rows) = (x.width as i32, x.rows());
        let mut l = self.gpu.launch("add_rms_norm")?;
        l.arg(&mut x.data)
            .arg(&y.data)
            .arg(w)
            .arg(&mut out.data)
            .arg(&width)
            .arg(&eps);
        unsafe { l.launch(per_row(rows))? };
        Ok(out)
    }

    fn add(&self, x: &mut CudaAct, y: &CudaAct) -> Result<()> {
        same_shape(x, y)?;
        let n = x.data.len() as i64;
        let mut l = self.gpu.launch("add")?;
        l.arg(&mut x.data).arg(&y.data).arg(&n);
        unsafe { l.launch(elementwise(n as usize))? };
        Ok(())
    }

    fn rope_tables(&self, inv_freq: &[f32], positions: &[usize]) -> Result<CudaRope> {
        let t = ops::rope_tables(inv_freq, positions);
        Ok(CudaRope {
            cos: self.gpu.upload(&t.cos)?,
            sin: self.gpu.upload(&t.sin)?,
            pairs: t.pairs,
            tokens: positions.len(),
        })
    }

    fn rope(
        &self,
        x: &mut CudaAct,
        head_dim: usize,
        style: RopeStyle,
        tables: &CudaRope,
    ) -> Result<()> {
        if x.rows() != tables.tokens
            || head_dim == 0
            || !x.width.is_multiple_of(head_dim)
            || 2 * tables.pairs > head_dim
        {
            bail!(
                "rope over {} rows of {} with {} angle rows of {} pairs",
                x.rows(),
                x.width,
                tables.tokens,
                tables.pairs
            );
        }
        let (width, hd, pairs) = (x.width as i32, head_dim as i32, tables.pairs as i32);
        let inter = i32::from(style == RopeStyle::Interleaved);
        let rows = x.rows();
        let mut l = self.gpu.launch("rope")?;
        l.arg(&mut x.data)
            .arg(&tables.cos)
            .arg(&tables.sin)
            .arg(&width)
            .arg(&hd)
            .arg(&pairs)
            .arg(&inter);
        unsafe { l.launch(per_row(rows))? };
        Ok(())
    }

    fn silu_mul(&self, gate: &mut CudaAct, up: &CudaAct) -> Result<()> {
        same_shape(gate, up)?;
        let n = gate.data.len() as i64;
        let mut l = self.gpu.launch("silu_mul")?;
        l.arg(&mut gate.data).arg(&up.data).arg(&n);
        unsafe { l.launch(elementwise(n as usize))? };
        Ok(())
    }

    fn write_kv(
        &self,
        cache: &mut CudaCache,
        layer: usize,
        seqs: &[AttnSeq],
        k: &CudaAct,
        v: &CudaAct,
    ) -> Result<()> {
        let width = cache.kv_heads * cache.head_dim;
        if k.width != width || v.width != width || k.rows() != v.rows() {
            bail!("keys and values must be rows of {width}");
        }
        let rows = k.rows();
        if let Some(s) = seqs.iter().find(|s| {
            s.block_table
                .iter()
                .take(s.ctx_len.div_ceil(cache.block_size))
                .any(|b| b.index() >= cache.num_blocks)
        }) {
            bail!(
                "a block table of {} blocks points outside the pool of {}",
                s.block_table.len(),
                cache.num_blocks
            );
        }
        let (bs, kvh, hd) = (
            cache.block_size as i32,
            cache.kv_heads as i32,
            cache.head_dim as i32,
        );
        let name = format!("write_kv_{}", kv_suffix(cache.dtype));
        let mut meta = self.meta.lock().expect("metadata lock");
        let m = self.step_meta(&mut meta, seqs, rows, cache.block_size)?;
        let Some((kc, vc)) = cache.layers.get_mut(layer) else {
            bail!("the cache has no layer {layer}");
        };
        let mut l = self.gpu.launch(&name)?;
        l.arg(kc)
            .arg(vc)
            .arg(&k.data)
            .arg(&v.data)
            .arg(&m.slot_of_row)
            .arg(&kvh)
            .arg(&hd)
            .arg(&bs);
        unsafe {
            l.launch(LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            })?
        };
        Ok(())
    }

    fn paged_attention(
        &self,
        cache: &CudaCache,
        layer: usize,
        seqs: &[AttnSeq],
        shape: &AttnShape,
        q: &CudaAct,
    ) -> Result<CudaAct> {
        let (hd, kvh, nh) = (cache.head_dim, cache.kv_heads, shape.num_heads);
        if kvh == 0 || !nh.is_multiple_of(kvh) || nh / kvh > MAX_GROUP {
            bail!("{nh} query heads over {kvh} KV heads: the CUDA kernel serves 1 to {MAX_GROUP} query heads per KV head");
        }
        if q.width != nh * hd {
            bail!("queries of width {} for {nh} heads of {hd}", q.width);
        }
        let Some((kc, vc)) = cache.layers.get(layer) else {
            bail!("the cache has no layer {layer}");
        };
        let rows = q.rows();
        let mut meta = self.meta.lock().expect("metadata lock");
        let m = self.step_meta(&mut meta, seqs, rows, cache.block_size)?;
        let max_parts = m.max_parts;
        // 16-bit caches run on tensor cores (attention_mma.cu: two warps,
        // two stages of 32 padded key and value rows); fp8 and f32 on the
        // CUDA cores.
        let (name, block, smem) = match cache.dtype {
            KvDtype::F16 | KvDtype::Bf16 => (
                format!("attention_mma_{}_{hd}", kv_suffix(cache.dtype)),
                (64, 1, 1),
                (4 * 32 * (hd + 8) * 2) as u32,
            ),
            KvDtype::Fp8E4m3 | KvDtype::F32 => {
                let (bdx, bdy, bdz, smem) = attention_launch(hd, nh / kvh, cache.dtype);
                (
                    format!("attention_partial_{}_{hd}", kv_suffix(cache.dtype)),
                    (bdx, bdy, bdz),
                    smem,
                )
            }
        };
        let partials = rows * nh * max_parts;
        let mut part_max = self.gpu.alloc_f32(partials)?;
        let mut part_sum = self.gpu.alloc_f32(partials)?;
        let mut part_out = self.gpu.alloc_f32(partials * hd)?;
        let (nh32, kvh32, bs, mp, hd32) = (
            nh as i32,
            kvh as i32,
            cache.block_size as i32,
            max_parts as i32,
            hd as i32,
        );
        let mut l = self.gpu.launch(&name)?;
        l.arg(kc)
            .arg(vc)
            .arg(&q.data)
            .arg(&m.row_seq)
            .arg(&m.row_pos)
            .arg(&m.tables)
            .arg(&m.table_off)
            .arg(&mut part_max)
            .arg(&mut part_sum)
            .arg(&mut part_out)
            .arg(&nh32)
            .arg(&kvh32)
            .arg(&bs)
            .arg(&mp)
            .arg(&shape.scale);
        unsafe {
            l.launch(LaunchConfig {
                grid_dim: (kvh as u32, rows as u32, max_parts as u32),
                block_dim: block,
                shared_mem_bytes: smem,
            })?
        };
        let mut out = self.new_act(rows, nh * hd)?;
        let mut l = self.gpu.launch("attention_merge_f32")?;
        l.arg(&m.row_pos)
            .arg(&part_max)
            .arg(&part_sum)
            .arg(&part_out)
            .arg(&mut out.data)
            .arg(&nh32)
            .arg(&hd32)
            .arg(&mp);
        unsafe {
            l.launch(LaunchConfig {
                grid_dim: (rows as u32, nh as u32, 1),
                block_dim: (hd as u32, 1, 1),
                shared_mem_bytes: 0,
            })?
        };
        Ok(out)
    }

    fn gather_rows(&self, x: &CudaAct, rows: &[usize]) -> Result<CudaAct> {
        if let Some(&r) = rows.iter().find(|&&r| r >= x.rows()) {
            bail!("row {r} of {}", x.rows());
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let d_idx = self.gpu.upload(&idx)?;
        let mut out = self.new_act(rows.len(), x.width)?;
        let w = x.width as i32;
        let mut l = self.gpu.launch("gather_rows")?;
        l.arg(&x.data).arg(&d_idx).arg(&mut out.data).arg(&w);
        unsafe { l.launch(per_row(rows.len()))? };
        Ok(out)
    }

    fn logits_to_host(&self, x: CudaAct) -> Result<Vec<f32>> {
        let n = x.data.len();
        let mut pinned = self.pinned.lock().expect("pinned buffer lock");
        if pinned.as_ref().is_none_or(|p| p.len() < n) {
            *pinned = None;
            // SAFETY: f32 has no invalid bit patterns; flags 0 (not
            // write-combined) keeps host reads cached.
            *pinned = Some(unsafe { self.gpu.ctx.alloc_pinned_with_flags::<f32>(n, 0)? });
        }
        let buf = pinned.as_mut().expect("allocated above");
        self.gpu.stream.memcpy_dtoh(&x.data, buf)?;
        self.gpu.sync()?;
        Ok(buf.as_slice()?[..n].to_vec())
    }

    fn logits_out(&self, x: CudaAct, needs: &[RowNeed]) -> Result<Vec<LogitsRow>> {
        logits::logits_out(self, x, needs)
    }
}
