//! Parity of the quantized path with candle-transformers' quantized models
//! within the drift that 8-bit activation quantization causes (see
//! `model_parity.rs` for the exact, token-for-token comparison).

mod common;

use common::parity::check;

#[test]
fn quantized_smollm2_tracks_candle_quantized_llama() {
    check(&common::smollm2(), false, false);
}

#[test]
fn quantized_qwen2_tracks_candle_quantized_qwen2() {
    check(&common::qwen05(), true, false);
}
