//! The reasoning loop guard's cost per token, which the engine pays for
//! every reasoning token of every sequence: nanoseconds per
//! [`LoopGuard::push`] with the default configuration, over random text (a
//! new n-gram at nearly every position, so the map churns), text that
//! repeats short phrases, and an endless 40-token loop (reported and reset
//! every 120 tokens, the growth and verification path). Target: well under
//! 1 µs per token, three orders of magnitude below a decode step.
//!
//! `cargo bench --bench loop_guard`.

use std::hint::black_box;
use std::time::Instant;

use r1serve::reasoning::{LoopGuard, LoopGuardConfig};
use r1serve::types::TokenId;

/// Tokens per workload.
const TOKENS: usize = 4_000_000;

/// A deterministic pseudo-random stream over a Qwen-sized vocabulary.
fn random(n: usize, seed: u64) -> Vec<TokenId> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) % 152_000) as TokenId
        })
        .collect()
}

/// A 6-token phrase before every 20 random tokens.
fn phrases(n: usize) -> Vec<TokenId> {
    let noise = random(n, 7);
    let mut out = Vec::with_capacity(n);
    for chunk in noise.chunks(20) {
        out.extend([101, 102, 103, 104, 105, 106]);
        out.extend(chunk);
    }
    out.truncate(n);
    out
}

/// Pushes `tokens` through a fresh guard; returns ns per token and reports.
fn run(tokens: &[TokenId]) -> (f64, usize) {
    let mut guard = LoopGuard::new(LoopGuardConfig::default()).expect("default config");
    let start = Instant::now();
    let mut reports = 0;
    for &token in tokens {
        reports += usize::from(black_box(guard.push(token)).is_some());
    }
    (
        start.elapsed().as_nanos() as f64 / tokens.len() as f64,
        reports,
    )
}

fn main() {
    let span = random(40, 3);
    let workloads = [
        ("random text", random(TOKENS, 1)),
        ("recurring phrases", phrases(TOKENS)),
        (
            "40-token loop",
            span.iter().copied().cycle().take(TOKENS).collect(),
        ),
    ];
    println!("| workload | ns/token | loops reported |");
    println!("|---|---:|---:|");
    for (name, tokens) in &workloads {
        run(&tokens[..TOKENS / 10]);
        let (ns, reports) = run(tokens);
        println!("| {name} | {ns:.1} | {reports} |");
    }
}
