//! The narrower KV element types on a real model: Qwen2.5-0.5B and
//! SmolLM2-135M with their GGUF weights dequantized to f32, teacher-forced
//! along the f32 cache's greedy continuation of chat prompts, must keep the
//! f32 cache's logits within a bound set by the type's rounding, and its
//! choices wherever they are not near-ties.

mod common;

use common::{argmax, rel_diff, SoloRun};
use r1serve::kv_cache::storage::KvDtype;
use r1serve::model::{build, open_weights, source, Model};
use std::path::Path;

/// Logits after the prompt and after each of `forced` fed one at a time.
fn forced_logits(
    model: &mut dyn Model,
    prompt: &[u32],
    forced: &[u32],
    dtype: KvDtype,
) -> Vec<Vec<f32>> {
    let mut run = SoloRun::new(model, prompt.len() + forced.len(), dtype);
    let mut out = vec![run.feed(prompt)];
    out.extend(forced.iter().map(|t| run.feed(&[*t])));
    out
}

/// Unit roundoff of a KV element type: the largest relative error of
/// rounding a normal number to nearest, half the spacing of values near 1.
/// f16 keeps 11 significant bits, bf16 8, E4M3 4.
fn unit_roundoff(dtype: KvDtype) -> f32 {
    match dtype {
        KvDtype::F32 => f32::EPSILON / 2.0,
        KvDtype::F16 => 2f32.powi(-11),
        KvDtype::Bf16 => 2f32.powi(-8),
        KvDtype::Fp8E4m3 => 2f32.powi(-4),
    }
}

/// With dense f32 weights the KV element type is the only difference
/// between two runs, and to first order the logits move linearly in the
/// rounding errors of the cached K and V, each at most u relative: the
/// worst relative logit difference is A·u for the model's amplification A.
/// Measured A: 1.8–4.1 over both models and all three types (f16 8.8e-4,
/// bf16 1.6e-2, E4M3 0.14 at most). The bound allows A = 8, a factor of 2
/// for other prompts; a conversion that lost one more bit doubles u and
/// lands near it, a wrong exponent or widening errs by order 1.
const AMPLIFICATION: f32 = 8.0;

/// For each narrower type: the worst relative logit difference against
/// the f32 cache stays within `AMPLIFICATION` units of roundoff, and the
/// argmax may change only where the f32 logits' top two are closer than
/// twice that step's largest logit change (a smaller perturbation cannot
/// reorder them).
fn check(path: &Path, dtypes: &[KvDtype]) {
    // Dense f32 weights: no activation quantization whose last-bit changes
    // would mix into the KV rounding being measured. Every test of this
    // file sets the same value before any model loads.
    std::env::set_var("R1SERVE_DEQUANTIZE_ALL", "1");
    let src = source::resolve(path.to_str().unwrap(), None).unwrap();
    let (weights, config) = open_weights(&src).unwrap();
    let mut model = build(&weights, config).unwrap();
    for prompt in common::chat_prompts(path).into_iter().take(2) {
        let (_, greedy) = common::greedy(model.as_mut(), &prompt, 40, KvDtype::F32);
        let forced = &greedy[..greedy.len() - 1];
        let want = forced_logits(model.as_mut(), &prompt, forced, KvDtype::F32);
        for &dtype in dtypes {
            let got = forced_logits(model.as_mut(), &prompt, forced, dtype);
            let mut worst = 0f32;
            for (step, (g, w)) in got.iter().zip(&want).enumerate() {
                let diff = rel_diff(g, w);
                worst = worst.max(diff);
                if argmax(g) != argmax(w) {
                    let scale = w.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let mut sorted = w.clone();
                    sorted.sort_by(|a, b| b.total_cmp(a));
                    let gap = (sorted[0] - sorted[1]) / scale;
                    assert!(
                        gap <= 2.0 * diff,
                        "{dtype:?} step {step}: argmax flipped across a gap of {gap} with logits moved by {diff}"
                    );
                }
            }
            let u = unit_roundoff(dtype);
            println!(
                "{} {dtype:?}: worst logit difference {worst:e} = {:.2} u",
                path.display(),
                worst / u
            );
            assert!(
                worst <= AMPLIFICATION * u,
                "{dtype:?}: logits differ by {worst} > {AMPLIFICATION} x {u}"
            );
        }
    }
}

#[test]
fn narrow_caches_track_f32_on_qwen2() {
    check(
        &common::qwen05(),
        &[KvDtype::F16, KvDtype::Bf16, KvDtype::Fp8E4m3],
    );
}

#[test]
fn narrow_caches_track_f32_on_smollm2() {
    check(
        &common::smollm2(),
        &[KvDtype::F16, KvDtype::Bf16, KvDtype::Fp8E4m3],
    );
}
