//! Token-exact parity of r1serve's model core with candle-transformers'
//! `quantized_llama` and `quantized_qwen2` on the same GGUF files.

mod common;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use common::{argmax, greedy, rel_diff};
use r1serve::kv_cache::storage::KvDtype;
use r1serve::model::{build, open_weights, source};
use std::path::Path;

trait Reference {
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Vec<f32>;
}

struct Llama(candle_transformers::models::quantized_llama::ModelWeights);
struct Qwen2(candle_transformers::models::quantized_qwen2::ModelWeights);

fn input(tokens: &[u32]) -> Tensor {
    Tensor::new(tokens, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

impl Reference for Llama {
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Vec<f32> {
        let t = self.0.forward(&input(tokens), pos).unwrap();
        t.flatten_all().unwrap().to_vec1().unwrap()
    }
}

impl Reference for Qwen2 {
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Vec<f32> {
        let t = self.0.forward(&input(tokens), pos).unwrap();
        t.flatten_all().unwrap().to_vec1().unwrap()
    }
}

fn reference_greedy(r: &mut dyn Reference, prompt: &[u32], steps: usize) -> (Vec<f32>, Vec<u32>) {
    let first = r.forward(prompt, 0);
    let mut out = vec![argmax(&first)];
    let mut pos = prompt.len();
    while out.len() < steps {
        let l = r.forward(&[*out.last().unwrap()], pos);
        pos += 1;
        out.push(argmax(&l));
    }
    (first, out)
}

fn load_reference(path: &Path, qwen: bool) -> Box<dyn Reference> {
    let mut f = std::fs::File::open(path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    if qwen {
        Box::new(Qwen2(
            candle_transformers::models::quantized_qwen2::ModelWeights::from_gguf(ct, &mut f, &Device::Cpu)
                .unwrap(),
        ))
    } else {
        Box::new(Llama(
            candle_transformers::models::quantized_llama::ModelWeights::from_gguf(ct, &mut f, &Device::Cpu)
                .unwrap(),
        ))
    }
}

fn prompts(path: &Path) -> Vec<Vec<u32>> {
    common::chat_prompts(path)
}

fn check(path: &Path, qwen: bool) {
    let src = source::resolve(path.to_str().unwrap(), None).unwrap();
    let (weights, config) = open_weights(&src).unwrap();
    let model = build(&weights, config).unwrap();
    for prompt in prompts(path) {
        let mut reference = load_reference(path, qwen);
        let (ref_logits, ref_tokens) = reference_greedy(reference.as_mut(), &prompt, 32);
        let (logits, tokens) = greedy(&model, &prompt, 32, KvDtype::F32);
        let d = rel_diff(&logits, &ref_logits);
        let l2 = (logits.iter().zip(&ref_logits).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / ref_logits.iter().map(|b| b * b).sum::<f32>()).sqrt();
        let same = tokens.iter().zip(&ref_tokens).take_while(|(a, b)| a == b).count();
        println!("len {} maxrel {d} l2rel {l2} same {same}", prompt.len());
        let (_, tokens16) = greedy(&model, &prompt, 32, KvDtype::F16);
        let same = tokens16.iter().zip(&tokens).take_while(|(a, b)| a == b).count();
        assert!(same >= 16, "f16 KV diverged after {same} tokens");
    }
}

#[test]
fn smollm2_matches_candle_quantized_llama() {
    check(&common::smollm2(), false);
}

#[test]
fn qwen2_matches_candle_quantized_qwen2() {
    check(&common::qwen05(), true);
}
