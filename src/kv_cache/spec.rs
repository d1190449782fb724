//! What a model caches per token, declared by the model and nowhere else:
//! the pool's size in bytes, its per-layer storage and the startup log all
//! follow from a [`KvSpec`], so the block pool, manager, prefix cache and
//! scheduler never learn which architecture they serve. Modelled on vLLM's
//! `KVCacheSpec` (`FullAttentionSpec`, `MLAAttentionSpec`).

use super::storage::{KvDtype, KvGeometry};

/// What one layer stores per token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKvSpec {
    /// Per-head keys and values (MHA, GQA, MQA): `num_kv_heads` heads, each
    /// with a key of `k_dim` and a value of `v_dim` elements.
    Full {
        /// Key/value heads.
        num_kv_heads: usize,
        /// Elements of one head's key.
        k_dim: usize,
        /// Elements of one head's value.
        v_dim: usize,
    },
    /// One row per token shared by every head (MLA: the normalised latent
    /// followed by the decoupled RoPE key). Attention reads the whole row as
    /// the key and its first `v_dim` elements as the value, so nothing is
    /// stored twice.
    Latent {
        /// Elements of the row (`kv_lora_rank + qk_rope_head_dim`).
        width: usize,
        /// Leading elements of the row that act as the value (`kv_lora_rank`).
        v_dim: usize,
    },
}

impl LayerKvSpec {
    /// Elements one token occupies in this layer.
    pub fn elems_per_token(&self) -> usize {
        match *self {
            LayerKvSpec::Full {
                num_kv_heads,
                k_dim,
                v_dim,
            } => num_kv_heads * (k_dim + v_dim),
            LayerKvSpec::Latent { width, .. } => width,
        }
    }

    /// The storage geometry of this layer in a pool of `num_blocks` blocks.
    /// A latent layer is one head whose key is the row; it has no separate
    /// value buffer (`v_dim` 0 in the geometry).
    pub fn geometry(&self, block_size: usize, num_blocks: usize) -> KvGeometry {
        match *self {
            LayerKvSpec::Full {
                num_kv_heads,
                k_dim,
                v_dim,
            } => KvGeometry {
                block_size,
                num_blocks,
                num_kv_heads,
                k_dim,
                v_dim,
            },
            LayerKvSpec::Latent { width, .. } => KvGeometry {
                block_size,
                num_blocks,
                num_kv_heads: 1,
                k_dim: width,
                v_dim: 0,
            },
        }
    }
}

/// The cache needs of a whole model, one entry per layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvSpec {
    /// Per layer, in order.
    pub layers: Vec<LayerKvSpec>,
}

impl KvSpec {
    /// `num_layers` identical layers.
    pub fn uniform(layer: LayerKvSpec, num_layers: usize) -> Self {
        Self {
            layers: vec![layer; num_layers],
        }
    }

    /// Bytes one token occupies across all layers.
    pub fn bytes_per_token(&self, dtype: KvDtype) -> usize {
        self.layers
            .iter()
            .map(|l| l.elems_per_token() * dtype.size())
            .sum()
    }

    /// Bytes of one block across all layers: the unit the pool is sized in.
    pub fn block_bytes(&self, block_size: usize, dtype: KvDtype) -> usize {
        block_size * self.bytes_per_token(dtype)
    }

    /// Blocks a budget of `bytes` holds.
    pub fn blocks_in(&self, bytes: u64, block_size: usize, dtype: KvDtype) -> usize {
        let per_block = self.block_bytes(block_size, dtype) as u64;
        bytes.checked_div(per_block).unwrap_or(0) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen2.5-0.5B: 24 layers of 2 KV heads × 64, K and V.
    #[test]
    fn full_attention_bytes_follow_heads_and_widths() {
        let spec = KvSpec::uniform(
            LayerKvSpec::Full {
                num_kv_heads: 2,
                k_dim: 64,
                v_dim: 64,
            },
            24,
        );
        assert_eq!(spec.bytes_per_token(KvDtype::F16), 24 * 2 * 128 * 2);
        assert_eq!(spec.block_bytes(16, KvDtype::Fp8E4m3), 16 * 24 * 2 * 128);
        assert_eq!(
            spec.blocks_in(1 << 20, 16, KvDtype::F16),
            (1 << 20) / (16 * 12288)
        );
    }

    /// DeepSeek-R1: 61 layers of one 576-element latent row (512 + 64),
    /// against 128 heads × (192 + 128) had K and V been materialised.
    #[test]
    fn latent_rows_cost_their_width_once() {
        let mla = LayerKvSpec::Latent {
            width: 576,
            v_dim: 512,
        };
        let spec = KvSpec::uniform(mla, 61);
        assert_eq!(spec.bytes_per_token(KvDtype::Bf16), 61 * 576 * 2);
        let full = LayerKvSpec::Full {
            num_kv_heads: 128,
            k_dim: 192,
            v_dim: 128,
        };
        assert_eq!(full.elems_per_token() / mla.elems_per_token(), 71);
        let g = mla.geometry(16, 10);
        assert_eq!((g.num_kv_heads, g.k_dim, g.v_dim), (1, 576, 0));
    }

    #[test]
    fn mixed_layers_add_up() {
        let spec = KvSpec {
            layers: vec![
                LayerKvSpec::Full {
                    num_kv_heads: 4,
                    k_dim: 192,
                    v_dim: 128,
                },
                LayerKvSpec::Latent {
                    width: 96,
                    v_dim: 64,
                },
            ],
        };
        assert_eq!(spec.bytes_per_token(KvDtype::F32), (4 * 320 + 96) * 4);
    }
}
