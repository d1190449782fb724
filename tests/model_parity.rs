//! Parity of r1serve's model core with candle-transformers'
//! `quantized_llama` and `quantized_qwen2` on the same GGUF files, for five
//! chat prompts per model.
//!
//! Both engines quantize activations to 8 bits before every quantized
//! matmul, which turns the last-bit differences of any two attention
//! implementations into ~1% logit differences (r1serve's own f64 reference
//! attention drifts from its f32 kernel just as much). So token-exact parity
//! is checked with the weights dequantized to f32 in both engines
//! (`CANDLE_DEQUANTIZE_ALL` for candle, `R1SERVE_DEQUANTIZE_ALL` for r1serve), where the
//! arithmetic is deterministic enough to compare logits to 1e-3; the
//! quantized path is checked against candle within the drift bound.

mod common;

use common::parity::check;

#[test]
fn exact_smollm2_matches_candle_quantized_llama() {
    check(&common::smollm2(), false, true);
}

#[test]
fn exact_qwen2_matches_candle_quantized_qwen2() {
    check(&common::qwen05(), true, true);
}
