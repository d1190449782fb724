//! Rotary embedding frequencies as each architecture defines them (plain,
//! Llama 3 scaling, llama.cpp's per-frequency factors). The rotation itself
//! is a backend op; this file only decides the angles' frequencies.

use super::config::{Llama3Scaling, RopeStyle};

/// Rotary position embedding: per-pair inverse frequencies and how pairs
/// are formed.
pub struct Rope {
    /// `head_dim / 2` inverse frequencies.
    pub inv_freq: Vec<f32>,
    /// Dimension pairing.
    pub style: RopeStyle,
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
