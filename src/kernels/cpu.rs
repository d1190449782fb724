//! The CPU backend: activations in host memory, weights in the formats
//! [`super::linear`] multiplies (r1serve's SIMD/AMX kernels), the paged KV
//! cache of [`crate::kv_cache::storage`] and the attention kernel of
//! [`super::attention`].

use super::attention::{paged_attention, write_kv, AttnSeq, AttnShape};
use super::backend::{self, Backend, RopeStyle};
use super::isa;
use super::linear::{Embedding, Linear};
use super::ops;
use super::tensor::RawTensor;
use crate::kv_cache::spec::KvSpec;
use crate::kv_cache::storage::{KvCache, KvDtype};
use crate::types::TokenId;
use anyhow::{bail, Result};

/// Activations in host memory: `data.len() / width` rows.
#[derive(Clone, Debug, Default)]
pub struct HostAct {
    /// Row-major values.
    pub data: Vec<f32>,
    /// Values per row.
    pub width: usize,
}

impl HostAct {
    fn new(data: Vec<f32>, width: usize) -> Self {
        Self { data, width }
    }

    fn rows(&self) -> usize {
        self.data.len() / self.width.max(1)
    }
}

fn same_shape(x: &HostAct, y: &HostAct) -> Result<()> {
    backend::same_shape((x.data.len(), x.width), (y.data.len(), y.width))
}

/// Tokens per engine step on this CPU unless configured: the fewest rows at
/// which its batched kernels run at their rate. Steps of thousands of tokens
/// push the activations (an MLP's are tokens × intermediate × 4 bytes: 40 MB
/// at 2048 tokens for Qwen2.5-0.5B) out of the caches, and every running
/// stream waits for the whole step. AMX tiles want 256 rows (a long prompt
/// prefills up to 8% slower in steps of 128); the VNNI and AVX2 kernels
/// reach their rate by 128, where 16 concurrent chats get their first token
/// 10–15% sooner and decoding streams stall 35–50% less while a long prompt
/// arrives (docs/performance.md, "Steps of 128 tokens without AMX").
pub fn cpu_step_tokens() -> usize {
    let cpu = isa::cpu();
    // A bad `R1SERVE_ISA` is reported by weight loading; no panic here.
    let amx_allowed = isa::limit().is_ok_and(|cap| cap >= isa::Level::Amx);
    if amx_allowed && (cpu.amx_int8 || cpu.amx_bf16) {
        256
    } else {
        128
    }
}

/// The host CPU, with every core of the calling rayon pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    type Act = HostAct;
    type Linear = Linear;
    type Embedding = Embedding;
    type Vector = Vec<f32>;
    type Cache = KvCache;
    type RopeTables = ops::RopeTables;

    fn name(&self) -> String {
        "cpu".into()
    }

    fn step_tokens(&self) -> usize {
        cpu_step_tokens()
    }

    fn linear(&self, weight: RawTensor, bias: Option<Vec<f32>>) -> Result<Linear> {
        Linear::new(weight, bias)
    }

    fn embedding(&self, table: &RawTensor) -> Result<Embedding> {
        Embedding::new(table)
    }

    fn vector(&self, values: Vec<f32>) -> Result<Vec<f32>> {
        Ok(values)
    }

    fn alloc_cache(
        &self,
        spec: &KvSpec,
        block_size: usize,
        num_blocks: usize,
        dtype: KvDtype,
    ) -> Result<KvCache> {
        let mut cache = KvCache::new(spec, block_size, num_blocks, dtype)?;
        cache.commit();
        Ok(cache)
    }

    fn rows(&self, x: &HostAct) -> usize {
        x.rows()
    }

    fn embed(&self, table: &Embedding, ids: &[TokenId]) -> Result<HostAct> {
        Ok(HostAct::new(table.forward(ids)?, table.dim()))
    }

    fn matmul(&self, w: &Linear, x: &HostAct) -> Result<HostAct> {
        if x.width != w.in_features() {
            bail!(
                "matmul of rows of {} by a weight of {} inputs",
                x.width,
                w.in_features()
            );
        }
        Ok(HostAct::new(
            w.forward(&x.data, x.rows())?,
            w.out_features(),
        ))
    }

    fn rms_norm(&self, x: &HostAct, w: &Vec<f32>, eps: f32) -> Result<HostAct> {
        if x.width != w.len() {
            bail!("norm of width {} over rows of {}", w.len(), x.width);
        }
        Ok(HostAct::new(ops::rms_norm(&x.data, w, eps), x.width))
    }

    fn add_rms_norm(
        &self,
        x: &mut HostAct,
        y: &HostAct,
        w: &Vec<f32>,
        eps: f32,
    ) -> Result<HostAct> {
        same_shape(x, y)?;
        if x.width != w.len() {
            bail!("norm of width {} over rows of {}", w.len(), x.width);
        }
        let out = ops::add_rms_norm(&mut x.data, &y.data, w, eps);
        Ok(HostAct::new(out, x.width))
    }

    fn add(&self, x: &mut HostAct, y: &HostAct) -> Result<()> {
        same_shape(x, y)?;
        ops::add(&mut x.data, &y.data);
        Ok(())
    }

    fn rope_tables(&self, inv_freq: &[f32], positions: &[usize]) -> Result<ops::RopeTables> {
        Ok(ops::rope_tables(inv_freq, positions))
    }

    fn rope(
        &self,
        x: &mut HostAct,
        head_dim: usize,
        style: RopeStyle,
        tables: &ops::RopeTables,
    ) -> Result<()> {
        let tokens = tables.cos.len() / tables.pairs.max(1);
        if x.rows() != tokens || !x.width.is_multiple_of(head_dim) || 2 * tables.pairs > head_dim {
            bail!(
                "rope over {} rows of {} with {} angle rows of {} pairs",
                x.rows(),
                x.width,
                tokens,
                tables.pairs
            );
        }
        ops::rope(&mut x.data, head_dim, style, tables);
        Ok(())
    }

    fn silu_mul(&self, gate: &mut HostAct, up: &HostAct) -> Result<()> {
        same_shape(gate, up)?;
        ops::silu_mul(&mut gate.data, &up.data);
        Ok(())
    }

    fn write_kv(
        &self,
        cache: &mut KvCache,
        layer: usize,
        seqs: &[AttnSeq],
        k: &HostAct,
        v: &HostAct,
    ) -> Result<()> {
        let (Some(kv), Some(geom)) = (cache.layers.get_mut(layer), cache.geometries.get(layer))
        else {
            bail!("the cache has no layer {layer}");
        };
        for s in seqs {
            let (kr, vr) = (
                s.q_start * k.width..(s.q_start + s.q_len) * k.width,
                s.q_start * v.width..(s.q_start + s.q_len) * v.width,
            );
            if kr.end > k.data.len() || vr.end > v.data.len() {
                bail!("sequence rows exceed the batch");
            }
            let start = s.ctx_len - s.q_len;
            write_kv(kv, geom, s.block_table, start, &k.data[kr], &v.data[vr])?;
        }
        Ok(())
    }

    fn paged_attention(
        &self,
        cache: &KvCache,
        layer: usize,
        seqs: &[AttnSeq],
        shape: &AttnShape,
        q: &HostAct,
    ) -> Result<HostAct> {
        let (Some(kv), Some(geom)) = (cache.layers.get(layer), cache.geometries.get(layer)) else {
            bail!("the cache has no layer {layer}");
        };
        let width = shape.num_heads * geom.v_dim;
        let mut out = vec![0f32; q.rows() * width];
        paged_attention(&q.data, &mut out, kv, geom, seqs, shape)?;
        Ok(HostAct::new(out, width))
    }

    fn gather_rows(&self, x: &HostAct, rows: &[usize]) -> Result<HostAct> {
        let w = x.width;
        let mut out = Vec::with_capacity(rows.len() * w);
        for &r in rows {
            let Some(row) = x.data.get(r * w..(r + 1) * w) else {
                bail!("row {r} of {}", x.rows());
            };
            out.extend_from_slice(row);
        }
        Ok(HostAct::new(out, w))
    }

    fn logits_to_host(&self, x: HostAct) -> Result<Vec<f32>> {
        Ok(x.data)
    }
}
