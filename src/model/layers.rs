//! Building blocks shared by the architecture files: RMSNorm, rotary
//! embeddings (with Llama 3 scaling) and the gated MLP activation. They work
//! on row-major f32 slices, one row per token, so every op is independent of
//! how tokens are grouped into a batch.

use super::config::{Llama3Scaling, RopeStyle};

/// RMSNorm with a learned scale.
pub struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    /// A norm over rows of `weight.len()` values.
    pub fn new(weight: Vec<f32>, eps: f32) -> Self {
        Self { weight, eps }
    }

    /// Normalizes each row of `x` into a new buffer.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let dim = self.weight.len();
        let mut out = vec![0f32; x.len()];
        for (row, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
            let scale = 1.0 / (ss + self.eps).sqrt();
            for ((o, v), w) in o.iter_mut().zip(row).zip(&self.weight) {
                *o = v * scale * w;
            }
        }
        out
    }
}

/// Rotary position embedding: per-dimension inverse frequencies, applied to
/// q and k at each token's own position.
pub struct Rope {
    inv_freq: Vec<f32>,
    style: RopeStyle,
}

impl Rope {
    /// Frequencies `1 / theta^(2i/d)`, optionally rescaled by Llama 3's rule
    /// or divided by llama.cpp's per-frequency factors (`rope_freqs.weight`).
    pub fn new(
        head_dim: usize,
        theta: f32,
        style: RopeStyle,
        scaling: Option<Llama3Scaling>,
        freq_factors: Option<&[f32]>,
    ) -> Self {
        let mut inv_freq: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1f32 / theta.powf(i as f32 / head_dim as f32))
            .collect();
        if let Some(s) = scaling {
            let old = s.original_max_position_embeddings as f32;
            let low_wavelen = old / s.low_freq_factor;
            let high_wavelen = old / s.high_freq_factor;
            for f in &mut inv_freq {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                *f = if wavelen < high_wavelen {
                    *f
                } else if wavelen > low_wavelen {
                    *f / s.factor
                } else {
                    let smooth = (old / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * *f / s.factor + smooth * *f
                };
            }
        }
        if let Some(factors) = freq_factors {
            for (f, d) in inv_freq.iter_mut().zip(factors) {
                *f /= d;
            }
        }
        Self { inv_freq, style }
    }

    /// `(cos, sin)` tables, `positions.len() × head_dim/2` each.
    pub fn tables(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for f in &self.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        (cos, sin)
    }

    /// Rotates every head of every token in place; `x` is `tokens × heads × head_dim`.
    pub fn apply(&self, x: &mut [f32], heads: usize, cos: &[f32], sin: &[f32]) {
        let half = self.inv_freq.len();
        let hd = 2 * half;
        for (t, tok) in x.chunks_exact_mut(heads * hd).enumerate() {
            let c = &cos[t * half..(t + 1) * half];
            let s = &sin[t * half..(t + 1) * half];
            for head in tok.chunks_exact_mut(hd) {
                for i in 0..half {
                    let (i1, i2) = match self.style {
                        RopeStyle::Half => (i, i + half),
                        RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    };
                    let (a, b) = (head[i1], head[i2]);
                    head[i1] = a * c[i] - b * s[i];
                    head[i2] = a * s[i] + b * c[i];
                }
            }
        }
    }
}

/// `silu(gate) * up`, elementwise, written into `gate`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_at_position_zero_is_identity() {
        let rope = Rope::new(8, 10_000.0, RopeStyle::Half, None, None);
        let (c, s) = rope.tables(&[0]);
        let mut x: Vec<f32> = (0..8).map(|i| i as f32).collect();
        rope.apply(&mut x, 1, &c, &s);
        assert_eq!(x, (0..8).map(|i| i as f32).collect::<Vec<_>>());
    }

    #[test]
    fn rope_preserves_pair_norms() {
        for style in [RopeStyle::Half, RopeStyle::Interleaved] {
            let rope = Rope::new(4, 10_000.0, style, None, None);
            let (c, s) = rope.tables(&[17]);
            let mut x = vec![1.0, 2.0, 3.0, 4.0];
            rope.apply(&mut x, 1, &c, &s);
            let n: f32 = x.iter().map(|v| v * v).sum();
            assert!((n - 30.0).abs() < 1e-4);
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let s = Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = Rope::new(128, 500_000.0, RopeStyle::Half, None, None);
        let scaled = Rope::new(128, 500_000.0, RopeStyle::Half, Some(s), None);
        assert_eq!(plain.inv_freq[0], scaled.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        assert!((plain.inv_freq[last] / 8.0 - scaled.inv_freq[last]).abs() < 1e-12);
    }
}
