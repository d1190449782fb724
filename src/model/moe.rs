//! DeepSeek's mixture-of-experts layer: the router (sigmoid or softmax
//! scores, the correction bias used only to choose, group-limited top-k, as
//! transformers' `DeepseekV3TopkRouter` / `DeepseekV2MoEGate`), the routed
//! experts and the shared ones.
//!
//! Execution groups a step's tokens by expert: each chosen expert runs once
//! over all of its tokens, so a batch of decodes reads each active expert's
//! weights once, whatever the batch size.

use super::deepseek_config::{DeepseekConfig, Scoring, TopK};
use crate::kernels::linear::Linear;
use crate::kernels::ops;
use anyhow::{bail, Result};

/// A SwiGLU MLP: `down(silu(gate(x)) · up(x))`. One expert, the shared
/// experts, or a dense layer's MLP.
pub struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    /// An MLP of `gate`, `up` (`inner × hidden`) and `down` (`hidden × inner`).
    pub fn new(gate: Linear, up: Linear, down: Linear) -> Self {
        Self { gate, up, down }
    }

    /// `rows` outputs of `rows` inputs.
    pub fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let mut g = self.gate.forward(x, rows)?;
        ops::silu_mul(&mut g, &self.up.forward(x, rows)?);
        self.down.forward(&g, rows)
    }
}

/// One MoE layer.
pub struct Moe {
    /// Router weight, `n_routed_experts × hidden`, f32 as transformers
    /// computes the router.
    router: Vec<f32>,
    /// `e_score_correction_bias` (noaux_tc routing).
    bias: Option<Vec<f32>>,
    experts: Vec<Mlp>,
    shared: Option<Mlp>,
}

impl Moe {
    /// A layer of `experts` chosen by `router` (`experts × hidden`, row-major)
    /// and `bias`, plus the `shared` experts run as one MLP.
    pub fn new(
        router: Vec<f32>,
        bias: Option<Vec<f32>>,
        experts: Vec<Mlp>,
        shared: Option<Mlp>,
    ) -> Result<Self> {
        let n = experts.len();
        if n == 0 || !router.len().is_multiple_of(n) {
            bail!("a router of {} values for {n} experts", router.len());
        }
        if bias.as_ref().is_some_and(|b| b.len() != n) {
            bail!("a correction bias of the wrong length for {n} experts");
        }
        Ok(Self {
            router,
            bias,
            experts,
            shared,
        })
    }

    /// The layer's output for `rows` tokens `h`: routed experts, each run
    /// once over the tokens routed to it, plus the shared experts.
    pub fn forward(&self, ds: &DeepseekConfig, h: &[f32], rows: usize) -> Result<Vec<f32>> {
        let routed = routing(ds, &self.router, self.bias.as_deref(), h);
        let mut out = run_experts(
            self.experts.iter().zip(routed.iter().map(Vec::as_slice)),
            h,
            rows,
        )?;
        if let Some(shared) = &self.shared {
            ops::add(&mut out, &shared.forward(h, rows)?);
        }
        Ok(out)
    }
}

/// For each of the router's experts (`router`: `experts × hidden`), the
/// tokens of `h` (`rows × hidden`) routed to it and their weights.
pub fn routing(
    ds: &DeepseekConfig,
    router: &[f32],
    bias: Option<&[f32]>,
    h: &[f32],
) -> Vec<Vec<(usize, f32)>> {
    let n = ds.n_routed_experts;
    let hidden = router.len() / n;
    let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n];
    for (t, x) in h.chunks_exact(hidden).enumerate() {
        let logits: Vec<f32> = router
            .chunks_exact(hidden)
            .map(|w| w.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect();
        for (e, w) in route(ds, bias, &logits) {
            routed[e].push((t, w));
        }
    }
    routed
}

/// The weighted sum of the routed experts' outputs for `rows` tokens `h`:
/// each expert runs once, over the rows of the tokens routed to it (given
/// with their weights); experts with no tokens cost nothing.
pub fn run_experts<'a>(
    experts: impl IntoIterator<Item = (&'a Mlp, &'a [(usize, f32)])>,
    h: &[f32],
    rows: usize,
) -> Result<Vec<f32>> {
    let hidden = h.len() / rows.max(1);
    let mut out = vec![0f32; rows * hidden];
    for (expert, tokens) in experts {
        if tokens.is_empty() {
            continue;
        }
        let x: Vec<f32> = tokens
            .iter()
            .flat_map(|&(t, _)| &h[t * hidden..(t + 1) * hidden])
            .copied()
            .collect();
        let y = expert.forward(&x, tokens.len())?;
        for (&(t, w), y) in tokens.iter().zip(y.chunks_exact(hidden)) {
            for (o, v) in out[t * hidden..(t + 1) * hidden].iter_mut().zip(y) {
                *o += w * v;
            }
        }
    }
    Ok(out)
}

/// The experts one token is routed to and their weights, from its router
/// logits, as transformers' `DeepseekV3TopkRouter` / `DeepseekV2MoEGate`.
pub fn route(ds: &DeepseekConfig, bias: Option<&[f32]>, logits: &[f32]) -> Vec<(usize, f32)> {
    let n = logits.len();
    let scores: Vec<f32> = match ds.scoring {
        Scoring::Sigmoid => logits.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect(),
        Scoring::Softmax => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
            let z: f32 = e.iter().sum();
            e.iter().map(|x| x / z).collect()
        }
    };
    // The bias only chooses; the weights come from the plain scores.
    let mut choice: Vec<f32> = match (bias, ds.topk) {
        (Some(b), TopK::NoauxTc) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        _ => scores.clone(),
    };
    let group = n / ds.n_group;
    if ds.topk != TopK::Greedy && ds.topk_group < ds.n_group {
        let group_score = |g: &[f32]| match ds.topk {
            TopK::NoauxTc => {
                let mut v = g.to_vec();
                v.sort_by(|a, b| b.total_cmp(a));
                v[0] + v[1]
            }
            _ => g.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        };
        let mut groups: Vec<(usize, f32)> = choice
            .chunks_exact(group)
            .map(group_score)
            .enumerate()
            .collect();
        groups.sort_by(|a, b| b.1.total_cmp(&a.1));
        // transformers masks the dropped groups with 0, not -inf.
        for &(g, _) in &groups[ds.topk_group..] {
            choice[g * group..(g + 1) * group].fill(0.0);
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| choice[b].total_cmp(&choice[a]));
    let mut chosen: Vec<(usize, f32)> = order[..ds.num_experts_per_tok]
        .iter()
        .map(|&e| (e, scores[e]))
        .collect();
    if ds.norm_topk_prob {
        let sum: f32 = chosen.iter().map(|c| c.1).sum::<f32>() + 1e-20;
        for c in &mut chosen {
            c.1 /= sum;
        }
    }
    for c in &mut chosen {
        c.1 *= ds.routed_scaling_factor;
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Arch;

    fn config(fields: serde_json::Value, arch: Arch) -> DeepseekConfig {
        let mut j = serde_json::json!({
            "kv_lora_rank": 8, "qk_nope_head_dim": 4, "qk_rope_head_dim": 4, "v_head_dim": 4,
            "moe_intermediate_size": 8,
        });
        j.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        DeepseekConfig::from_hf_json(&j, arch, std::path::Path::new("config.json")).unwrap()
    }

    fn sorted(mut v: Vec<(usize, f32)>) -> Vec<(usize, f32)> {
        v.sort_by_key(|c| c.0);
        v
    }

    /// noaux_tc: groups are ranked by the sum of their two best biased
    /// scores, so the single best expert is dropped with its weak group;
    /// the bias changes which experts win but not their weights.
    #[test]
    fn noaux_tc_limits_groups_and_uses_the_bias_only_to_choose() {
        let ds = config(
            serde_json::json!({"n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 4,
                "topk_group": 2, "norm_topk_prob": true, "routed_scaling_factor": 2.0}),
            Arch::DeepseekV3,
        );
        // Sigmoid scores: group 0 {0.953, 0.002}, 1 {0.731, 0.711}, 2 {0.622, 0.622}, 3 low.
        let logits = [3.0, -6.0, 1.0, 0.9, 0.5, 0.5, -1.0, -1.0];
        let plain = sorted(route(&ds, Some(&[0.0; 8]), &logits));
        assert_eq!(plain.iter().map(|c| c.0).collect::<Vec<_>>(), [2, 3]);
        let total: f32 = plain.iter().map(|c| c.1).sum();
        assert!((total - 2.0).abs() < 1e-6, "{plain:?}");

        let mut bias = [0.0; 8];
        bias[4] = 0.3;
        let biased = sorted(route(&ds, Some(&bias), &logits));
        assert_eq!(biased.iter().map(|c| c.0).collect::<Vec<_>>(), [2, 4]);
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        // Weights in the ratio of the unbiased scores, summing to the scale.
        let ratio = biased[1].1 / biased[0].1;
        assert!((ratio - sig(0.5) / sig(1.0)).abs() < 1e-6, "{biased:?}");
        assert!((biased[0].1 + biased[1].1 - 2.0).abs() < 1e-6);
    }

    /// V2-Lite: softmax over all experts, the best `top_k`, weights not
    /// renormalised.
    #[test]
    fn greedy_softmax_keeps_probabilities() {
        let ds = config(
            serde_json::json!({"n_routed_experts": 4, "num_experts_per_tok": 2,
                "norm_topk_prob": false}),
            Arch::DeepseekV2,
        );
        let logits = [0.0, 2f32.ln(), 4f32.ln(), 0.0];
        let chosen = sorted(route(&ds, None, &logits));
        assert_eq!(chosen.len(), 2);
        assert_eq!((chosen[0].0, chosen[1].0), (1, 2));
        assert!((chosen[0].1 - 0.25).abs() < 1e-6 && (chosen[1].1 - 0.5).abs() < 1e-6);
    }

    /// V2's group-limited greedy ranks groups by their best score.
    #[test]
    fn group_limited_greedy_ranks_groups_by_their_best() {
        let ds = config(
            serde_json::json!({"n_routed_experts": 4, "num_experts_per_tok": 1, "n_group": 2,
                "topk_group": 1, "topk_method": "group_limited_greedy"}),
            Arch::DeepseekV2,
        );
        // Group 0's best (expert 0) beats group 1's best; group 1 has the larger sum.
        let chosen = route(&ds, None, &[2.0, -5.0, 1.5, 1.5]);
        assert_eq!(chosen[0].0, 0);
    }
}
