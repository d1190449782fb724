//! The engine's scheduling, preemption, prefix cache, chunked prefill, abort
//! and n > 1 paths on a scripted model (`common::scripted`): no weights, so
//! each case runs in milliseconds, and any block-table or cache mix-up
//! changes the tokens, which are checked against the script computed
//! directly. The real-weight versions of these tests stay in `engine.rs`.

mod common;

use common::engine::{abort_frees_every_block, greedy, run, wait_idle};
use common::scripted::{reference, Counters, Scripted, BASE, SPAN};
use futures::future::join_all;
use r1serve::engine::reasoning_control::{LoopGuardMode, DEFAULT_CLOSE_TEXT};
use r1serve::engine::types::{FinishReason, ReasoningParams};
use r1serve::engine::{Engine, EngineConfig, EngineHandle};
use r1serve::kv_cache::storage::KvDtype;
use r1serve::reasoning::{ReasoningEnd, ReasoningParser};
use r1serve::tokenizer::Tokenizer;
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// SmolLM2's tokenizer: the engine detokenizes what the script emits.
fn tokenizer() -> Arc<Tokenizer> {
    Arc::new(common::gguf_tokenizer(&common::smollm2()))
}

/// An engine over the scripted model with a pool of `blocks` 16-token
/// blocks (f32 cache: 8 bytes per token).
fn start(blocks: u64, tweak: impl FnOnce(&mut EngineConfig)) -> (EngineHandle, Arc<Counters>) {
    let tok = tokenizer();
    let (model, counters) = Scripted::new(tok.vocab_size(), 4096);
    (start_model(model, tok, blocks, tweak), counters)
}

/// An engine over `model` with a pool of `blocks` 16-token blocks.
fn start_model(
    model: Scripted,
    tok: Arc<Tokenizer>,
    blocks: u64,
    tweak: impl FnOnce(&mut EngineConfig),
) -> EngineHandle {
    let mut config = EngineConfig {
        kv_cache_memory: Some(blocks * 16 * 8),
        kv_dtype: KvDtype::F32,
        max_model_len: Some(1024),
        ..Default::default()
    };
    tweak(&mut config);
    Engine::start(Box::new(model), tok, config).unwrap()
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| BASE + (i * 7 + salt * 13) % SPAN)
        .collect()
}

#[test]
fn the_pool_is_sized_in_bytes_from_the_models_spec() {
    let (h, _) = start(40, |_| {});
    assert_eq!(h.stats().total_blocks, 40);
    h.shutdown();
    let (h, _) = start(40, |c| c.kv_dtype = KvDtype::F16);
    assert_eq!(h.stats().total_blocks, 80, "f16 halves the bytes per token");
    h.shutdown();
}

/// Without a budget, the pool holds `max_num_seqs` whole contexts, a
/// context's last partial block included (`generate` starts one sequence
/// of a few dozen tokens this way).
#[test]
fn the_default_pool_holds_whole_contexts() {
    let tok = tokenizer();
    let (model, _) = Scripted::new(tok.vocab_size(), 4096);
    let config = EngineConfig {
        max_num_seqs: 1,
        max_model_len: Some(30),
        ..Default::default()
    };
    let h = Engine::start(Box::new(model), tok, config).unwrap();
    assert_eq!(h.stats().total_blocks, 2);
    h.shutdown();
}

#[test]
fn concurrent_requests_follow_the_script() {
    rt().block_on(async {
        let (h, _) = start(512, |_| {});
        let lens = [1usize, 5, 16, 17, 31, 64, 100, 200];
        let prompts: Vec<Vec<u32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| prompt(n, i as u32))
            .collect();
        let got = join_all(prompts.iter().map(|p| run(&h, p.clone(), greedy(24)))).await;
        for (p, g) in prompts.iter().zip(&got) {
            assert_eq!(g.tokens[0], reference(p, 24), "prompt of {}", p.len());
        }
        let s = wait_idle(&h).await;
        assert_eq!(s.free_blocks, s.total_blocks);
        h.shutdown();
    });
}

#[test]
fn preemption_recomputes_exactly() {
    rt().block_on(async {
        // Eight sequences of 40 + 60 tokens need 7 blocks each; 24 blocks
        // hold three at a time, so the scheduler must preempt.
        let (h, _) = start(24, |c| c.enable_prefix_caching = false);
        let prompts: Vec<Vec<u32>> = (0..8).map(|i| prompt(40, i)).collect();
        let got = join_all(prompts.iter().map(|p| run(&h, p.clone(), greedy(60)))).await;
        for (p, g) in prompts.iter().zip(&got) {
            assert_eq!(g.tokens[0], reference(p, 60));
        }
        let s = wait_idle(&h).await;
        assert!(s.preemptions > 0, "no preemption happened: {s:?}");
        assert_eq!(s.free_blocks, s.total_blocks);
        h.shutdown();
    });
}

#[test]
fn prefix_cache_reuses_whole_blocks_and_stays_exact() {
    rt().block_on(async {
        let (h, counters) = start(256, |_| {});
        let a = prompt(64, 1);
        run(&h, a.clone(), greedy(4)).await;
        let before = counters.tokens.load(Ordering::Relaxed);
        // Shares 48 tokens (three blocks) with `a`, then differs.
        let mut b = a[..48].to_vec();
        b.extend(prompt(20, 9));
        let got = run(&h, b.clone(), greedy(8)).await;
        assert_eq!(got.tokens[0], reference(&b, 8));
        let computed = counters.tokens.load(Ordering::Relaxed) - before;
        // The 20 new prompt tokens and 7 decode steps (the last token is
        // never fed back).
        assert_eq!(computed, 20 + 7, "prefix blocks were recomputed");
        assert_eq!(got.usage.cached_tokens, 48);
        h.shutdown();
    });
}

#[test]
fn chunked_prefill_matches_the_script() {
    rt().block_on(async {
        let (h, counters) = start(256, |c| c.max_num_batched_tokens = Some(32));
        let p = prompt(300, 4);
        let got = run(&h, p.clone(), greedy(10)).await;
        assert_eq!(got.tokens[0], reference(&p, 10));
        // 300 prompt tokens in chunks of 32 take ten steps, then 9 decodes.
        assert_eq!(counters.steps.load(Ordering::Relaxed), 10 + 9);
        h.shutdown();
    });
}

#[test]
fn the_step_budget_defaults_to_the_devices() {
    rt().block_on(async {
        let p = prompt(300, 5);
        // 300 prompt tokens in the model's steps of 40 take eight steps; in
        // configured steps of 100, or with 100 sequences' decodes to fit in
        // a step, three. The first token comes from the last.
        for (configured, seqs, steps) in [(None, 8, 8), (Some(100), 8, 3), (None, 100, 3)] {
            let tok = tokenizer();
            let (model, counters) = Scripted::new(tok.vocab_size(), 4096);
            let h = start_model(model.with_step_tokens(40), tok, 256, |c| {
                c.max_num_batched_tokens = configured;
                c.max_num_seqs = seqs;
            });
            let got = run(&h, p.clone(), greedy(1)).await;
            assert_eq!(got.tokens[0], reference(&p, 1));
            let ran = counters.steps.load(Ordering::Relaxed);
            assert_eq!(ran, steps, "{configured:?} tokens, {seqs} sequences");
            h.shutdown();
        }
    });
}

#[test]
fn n_samples_share_one_prefill() {
    rt().block_on(async {
        let (h, counters) = start(256, |_| {});
        let p = prompt(64, 2);
        let mut params = greedy(6);
        params.n = 4;
        let got = run(&h, p.clone(), params).await;
        for t in &got.tokens {
            assert_eq!(t, &reference(&p, 6));
        }
        // The prompt is computed once; each later sample shares its first
        // three blocks and recomputes the last one (a fully cached prompt
        // would leave no token to take logits from, and blocks are the unit
        // of sharing), then every sample decodes 5 tokens.
        let computed = counters.tokens.load(Ordering::Relaxed);
        assert_eq!(computed, 64 + 3 * 16 + 4 * 5);
        let s = wait_idle(&h).await;
        assert_eq!(s.free_blocks, s.total_blocks);
        h.shutdown();
    });
}

#[test]
fn abort_returns_every_block() {
    rt().block_on(async {
        let (h, _) = start(256, |_| {});
        abort_frees_every_block(&h, prompt(100, 3)).await;
        h.shutdown();
    });
}

/// A model whose reasoning repeats a 40-token span forever is caught when
/// the third copy is complete (120 tokens): `close` feeds the close
/// sequence right there and the choice goes on to answer; `stop` ends it.
#[test]
fn the_loop_guard_catches_a_repeating_span_after_its_third_copy() {
    rt().block_on(async {
        let tok = tokenizer();
        let close = tok.encode(DEFAULT_CLOSE_TEXT, false).unwrap();
        let span: Vec<u32> = (1000..1040).collect();
        for mode in [LoopGuardMode::Close, LoopGuardMode::Stop] {
            let model = Scripted::looping(tok.vocab_size(), 4096, span.clone());
            let h = start_model(model, tok.clone(), 64, |c| c.reasoning.loop_guard = mode);
            let mut params = greedy(300);
            params.reasoning = ReasoningParams {
                parser: ReasoningParser::DeepSeekR1,
                starts_inside: true,
                ..Default::default()
            };
            let got = run(&h, prompt(8, 1), params).await;
            assert_eq!(got.reasoning_end[0], Some(ReasoningEnd::Loop), "{mode}");
            let tokens = &got.tokens[0];
            assert_eq!(
                &tokens[..40],
                &span[8..]
                    .iter()
                    .chain(&span[..8])
                    .copied()
                    .collect::<Vec<_>>()[..]
            );
            match mode {
                LoopGuardMode::Stop => {
                    assert_eq!(tokens.len(), 120);
                    assert_eq!(got.finish[0], Some(FinishReason::Stop));
                    assert_eq!(got.reasoning_tokens[0], 120);
                    assert!(got.text[0].is_empty());
                }
                _ => {
                    assert_eq!(&tokens[120..120 + close.len()], &close[..]);
                    assert_eq!(got.reasoning_tokens[0], 120 + close.len());
                    assert_eq!(got.finish[0], Some(FinishReason::Length));
                    assert!(!got.text[0].is_empty(), "the answer follows the close");
                }
            }
            let s = wait_idle(&h).await;
            assert_eq!(s.free_blocks, s.total_blocks);
            h.shutdown();
        }
    });
}
