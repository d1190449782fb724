//! The engine on real checkpoints: batch invariance, preemption, prefix
//! caching, chunked prefill, sampling reproducibility, n > 1 block sharing,
//! aborts returning every block.

mod common;

use common::engine::{abort_frees_every_block, greedy, run, start, text_prompt, wait_idle};
use futures::future::join_all;
use futures::StreamExt;
use r1serve::engine::stop::StopStrings;
use r1serve::engine::types::{EngineRequest, FinishReason, SamplingParams};
use r1serve::engine::EngineConfig;
use std::path::Path;
use std::time::Instant;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn config(blocks_mib: u64) -> EngineConfig {
    EngineConfig {
        kv_cache_memory: Some(blocks_mib << 20),
        max_model_len: Some(4096),
        // Whole prompts of several sequences in one step (the CPU's default
        // would chunk them); the chunked-prefill test sets its own.
        max_num_batched_tokens: Some(2048),
        ..Default::default()
    }
}

fn batch_invariance(path: &Path) {
    rt().block_on(async {
        let (h, tok) = start(path, config(256));
        let lens = [5usize, 17, 33, 64, 100, 150, 200, 280, 350, 420, 550, 700];
        let prompts: Vec<Vec<u32>> = lens
            .iter()
            .enumerate()
            .map(|(i, &n)| text_prompt(&tok, n, i))
            .collect();
        let mut alone = Vec::new();
        for p in &prompts {
            alone.push(run(&h, p.clone(), greedy(48)).await.tokens[0].clone());
        }
        // Forget cached prefixes so the batched run recomputes everything.
        let (h2, _) = start(path, config(256));
        h.shutdown();
        let together = join_all(prompts.iter().map(|p| run(&h2, p.clone(), greedy(48)))).await;
        for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(
                a, &t.tokens[0],
                "prompt {i} ({} tokens) differs in a batch",
                lens[i]
            );
        }
        let s = wait_idle(&h2).await;
        assert_eq!(s.free_blocks, s.total_blocks);
        h2.shutdown();
    });
}

#[test]
fn batch_invariance_smollm2() {
    batch_invariance(&common::smollm2());
}

#[test]
fn batch_invariance_qwen2() {
    batch_invariance(&common::qwen05());
}

#[test]
fn preemption_resumes_with_identical_tokens_and_frees_everything() {
    rt().block_on(async {
        let path = common::smollm2();
        let (free, tok) = start(&path, config(256));
        let prompts: Vec<Vec<u32>> = (0..8).map(|i| text_prompt(&tok, 40 + 9 * i, i)).collect();
        let expected = join_all(prompts.iter().map(|p| run(&free, p.clone(), greedy(40)))).await;
        free.shutdown();
        // Blocks for exactly two sequences of 40+63+40 tokens (16-token blocks).
        let mc_bytes_per_block = {
            let m =
                r1serve::model::load::load(path.to_str().unwrap(), &Default::default()).unwrap();
            m.model
                .info()
                .kv
                .block_bytes(16, r1serve::kv_cache::storage::KvDtype::F16)
        };
        let cfg = EngineConfig {
            kv_cache_memory: Some((2 * 10 * mc_bytes_per_block) as u64),
            max_model_len: 160.into(),
            enable_prefix_caching: false,
            ..Default::default()
        };
        let (tight, _) = start(&path, cfg);
        let got = join_all(prompts.iter().map(|p| run(&tight, p.clone(), greedy(40)))).await;
        for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
            assert_eq!(e.tokens, g.tokens, "request {i} changed under preemption");
        }
        let s = wait_idle(&tight).await;
        assert!(s.preemptions >= 1, "no preemption happened: {s:?}");
        assert_eq!(s.free_blocks, s.total_blocks);
        tight.shutdown();
    });
}

#[test]
fn prefix_cache_serves_shared_prefix_with_same_output() {
    rt().block_on(async {
        let path = common::smollm2();
        let (h, tok) = start(&path, config(256));
        let shared = text_prompt(&tok, 256, 42);
        let mut a = shared.clone();
        a.extend(text_prompt(&tok, 20, 1));
        let mut b = shared.clone();
        b.extend(text_prompt(&tok, 24, 2));
        run(&h, a, greedy(8)).await;
        let cached = run(&h, b.clone(), greedy(16)).await;
        assert!(cached.usage.cached_tokens >= 240, "{:?}", cached.usage);
        h.shutdown();
        let (nc, _) = start(
            &path,
            EngineConfig {
                enable_prefix_caching: false,
                ..config(256)
            },
        );
        let uncached = run(&nc, b, greedy(16)).await;
        assert_eq!(uncached.usage.cached_tokens, 0);
        assert_eq!(cached.tokens, uncached.tokens);
        nc.shutdown();
    });
}

#[test]
fn chunked_prefill_matches_and_running_stream_keeps_decoding() {
    rt().block_on(async {
        let path = common::smollm2();
        let (whole, tok) = start(&path, config(256));
        // Past 2,048 tokens, so the attention op's second chunk of keys is
        // reached by some prefill chunks and not others.
        let long = text_prompt(&tok, 2300, 9);
        let expected = run(&whole, long.clone(), greedy(8)).await;
        whole.shutdown();
        let (h, _) = start(
            &path,
            EngineConfig {
                max_num_batched_tokens: Some(256),
                enable_prefix_caching: false,
                ..config(256)
            },
        );
        let short = text_prompt(&tok, 10, 3);
        let mut stream = h
            .add_request(EngineRequest {
                prompt: short,
                params: greedy(200),
            })
            .unwrap();
        stream.next().await.unwrap(); // decoding now
        let mut long_stream = h
            .add_request(EngineRequest {
                prompt: long,
                params: greedy(8),
            })
            .unwrap();
        // When the long prompt's prefill ends (its first token arrives), and
        // its tokens.
        let long_req = async {
            let mut first = None;
            let mut tokens = Vec::new();
            while let Some(o) = long_stream.next().await {
                for s in &o.samples {
                    if !s.token_ids.is_empty() {
                        first.get_or_insert_with(Instant::now);
                    }
                    tokens.extend_from_slice(&s.token_ids);
                }
                if o.finished {
                    break;
                }
            }
            (first.expect("the long request produced tokens"), tokens)
        };
        // When each of the short stream's tokens arrived.
        let drain = async {
            let mut arrivals = Vec::new();
            while let Some(o) = stream.next().await {
                for s in &o.samples {
                    arrivals.extend(s.token_ids.iter().map(|_| Instant::now()));
                }
                if o.finished {
                    break;
                }
            }
            arrivals
        };
        let ((prefilled, chunked), arrivals) = futures::join!(long_req, drain);
        assert_eq!(vec![chunked], expected.tokens);
        assert_eq!(arrivals.len(), 199);
        // 2300 prompt tokens in steps of 256 less the decode's one take ten
        // steps, and the short stream decodes in each of them: at least the
        // nine before the last one had arrived before the prefill ended.
        let during = arrivals.iter().filter(|t| **t < prefilled).count();
        assert!(
            during >= 9,
            "only {during} tokens decoded during the long prefill"
        );
        h.shutdown();
    });
}

#[test]
fn seeded_sampling_is_reproducible_across_batch_compositions() {
    rt().block_on(async {
        let path = common::smollm2();
        let (h, tok) = start(&path, config(256));
        let p = text_prompt(&tok, 30, 5);
        let params = SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            seed: Some(1234),
            max_tokens: 24,
            ignore_eos: true,
            ..Default::default()
        };
        let alone = run(&h, p.clone(), params.clone()).await;
        let others: Vec<_> = (0..5)
            .map(|i| {
                let mut q = params.clone();
                q.seed = Some(i);
                run(
                    &h,
                    text_prompt(&tok, 20 + i as usize * 30, 10 + i as usize),
                    q,
                )
            })
            .collect();
        let (mixed, _) = futures::join!(run(&h, p.clone(), params.clone()), join_all(others));
        assert_eq!(alone.tokens, mixed.tokens);
        let mut other_seed = params.clone();
        other_seed.seed = Some(99);
        assert_ne!(run(&h, p, other_seed).await.tokens, alone.tokens);
        h.shutdown();
    });
}

#[test]
fn n_samples_share_prompt_blocks_and_differ() {
    rt().block_on(async {
        let path = common::smollm2();
        let (h, tok) = start(&path, config(64));
        let p = text_prompt(&tok, 160, 6);
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            n: 4,
            max_tokens: 30,
            ignore_eos: true,
            ..Default::default()
        };
        let mut stream = h
            .add_request(EngineRequest {
                prompt: p.clone(),
                params: params.clone(),
            })
            .unwrap();
        let mut max_used = 0;
        let mut tokens = vec![Vec::new(); 4];
        while let Some(o) = stream.next().await {
            let s = h.stats();
            max_used = max_used.max(s.total_blocks - s.free_blocks);
            for x in o.samples {
                tokens[x.index].extend(x.token_ids);
            }
            if o.finished {
                break;
            }
        }
        // 160 prompt tokens = 10 full blocks shared; each sample adds at most
        // 3 blocks of its own (30 tokens plus its last prompt block).
        assert!(
            max_used <= 10 + 4 * 3,
            "prompt blocks not shared: {max_used} in use"
        );
        assert!(tokens.iter().all(|t| t.len() == 30));
        assert!(
            tokens[0] != tokens[1] || tokens[1] != tokens[2],
            "samples identical"
        );
        let s = wait_idle(&h).await;
        assert_eq!(s.free_blocks, s.total_blocks);
        h.shutdown();
    });
}

#[test]
fn abort_returns_every_block_within_a_step() {
    rt().block_on(async {
        let path = common::smollm2();
        let (h, tok) = start(&path, config(64));
        abort_frees_every_block(&h, text_prompt(&tok, 300, 8)).await;
        h.shutdown();
    });
}

#[test]
fn stop_strings_max_tokens_and_eos() {
    rt().block_on(async {
        let path = common::smollm2();
        let (h, _) = start(&path, config(64));
        let p = common::chat_prompts(&path)[2].clone();
        let free = run(&h, p.clone(), greedy(30)).await;
        assert_eq!(free.finish[0], Some(FinishReason::Length));
        assert_eq!(free.tokens[0].len(), 30);
        // Stop on a piece of the text the model is known to produce.
        let text = &free.text[0];
        let mid = text
            .char_indices()
            .map(|(i, _)| i)
            .nth(text.chars().count() / 2)
            .unwrap();
        let stop: String = text[mid..].chars().take(3).collect();
        let mut params = greedy(30);
        params.stop = StopStrings::new(vec![stop.clone()]).unwrap();
        let stopped = run(&h, p.clone(), params.clone()).await;
        assert_eq!(stopped.finish[0], Some(FinishReason::Stop));
        assert!(!stopped.text[0].contains(&stop));
        assert!(text.starts_with(&stopped.text[0]));
        // min_tokens: the stop string is not looked for before then, so the
        // text runs past its first occurrence to the full 30 tokens.
        params.min_tokens = 30;
        let held_on = run(&h, p.clone(), params).await;
        assert_eq!(held_on.tokens[0].len(), 30, "{:?}", held_on.text[0]);
        assert!(held_on.text[0].contains(&stop), "{:?}", held_on.text[0]);
        // Stop token: generation ends right after its first occurrence.
        let t = &free.tokens[0];
        let k = (1..t.len()).find(|&k| !t[..k].contains(&t[k])).unwrap();
        let mut params = greedy(30);
        params.stop_token_ids = vec![t[k]];
        let by_token = run(&h, p, params).await;
        assert_eq!(by_token.tokens[0].len(), k + 1);
        assert_eq!(by_token.finish[0], Some(FinishReason::Stop));
        h.shutdown();
    });
}

#[test]
fn queue_limit_and_context_limit_are_enforced() {
    let path = common::smollm2();
    let (h, tok) = start(
        &path,
        EngineConfig {
            max_waiting_requests: 0,
            ..config(64)
        },
    );
    let err = h
        .add_request(EngineRequest {
            prompt: text_prompt(&tok, 5, 0),
            params: greedy(4),
        })
        .err()
        .unwrap();
    assert!(matches!(
        err,
        r1serve::engine::types::EngineError::QueueFull(_)
    ));
    let err = h
        .add_request(EngineRequest {
            prompt: text_prompt(&tok, 100, 0),
            params: greedy(4090),
        })
        .err()
        .unwrap();
    assert!(err.to_string().contains("4096"), "{err}");
    h.shutdown();
}
