//! The loop guard's behaviour on scripted token streams: where loops are
//! reported, what is never one, and that memory stays fixed.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn guard() -> LoopGuard {
    LoopGuard::new(LoopGuardConfig::default()).unwrap()
}

/// Feeds `tokens`; returns (0-based position, loop) of every report.
fn reports(guard: &mut LoopGuard, tokens: impl IntoIterator<Item = TokenId>) -> Vec<(usize, Loop)> {
    tokens
        .into_iter()
        .enumerate()
        .filter_map(|(i, token)| guard.push(token).map(|found| (i, found)))
        .collect()
}

/// Distinct random ids from a vocabulary the size of Qwen's.
fn random_tokens(rng: &mut StdRng, n: usize) -> Vec<TokenId> {
    (0..n).map(|_| rng.random_range(0..152_000)).collect()
}

#[test]
fn span_repeated_forever_is_reported_as_its_third_copy_completes() {
    let mut rng = StdRng::seed_from_u64(1);
    let span = random_tokens(&mut rng, 40);
    let mut g = guard();
    let found = reports(&mut g, span.iter().copied().cycle().take(400));
    // Copies [0, 40), [40, 80), [80, 120): the 120th token (position
    // 119) completes the third. The guard then starts afresh, so the
    // loop is reported again 120 tokens later, and at 359.
    let loop40 = Loop {
        span: 40,
        extent: 120,
    };
    assert_eq!(found, [(119, loop40), (239, loop40), (359, loop40)]);
}

#[test]
fn loop_after_normal_text_is_reported_at_its_third_copy() {
    let mut rng = StdRng::seed_from_u64(2);
    let prefix = random_tokens(&mut rng, 300);
    let span = random_tokens(&mut rng, 57);
    let tokens = prefix
        .iter()
        .chain(span.iter().cycle().take(3 * 57))
        .copied();
    assert_eq!(
        reports(&mut guard(), tokens),
        [(
            300 + 3 * 57 - 1,
            Loop {
                span: 57,
                extent: 171
            }
        )]
    );
}

#[test]
fn random_text_is_never_a_loop() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut g = guard();
    assert_eq!(reports(&mut g, random_tokens(&mut rng, 200_000)), []);
    // A small vocabulary repeats short phrases all the time, but a
    // 32-token span only with probability 8^-32 per pair.
    let small = (0..200_000).map(|_| rng.random_range(0..8));
    assert_eq!(reports(&mut g, small), []);
}

#[test]
fn a_long_span_seen_twice_is_not_a_loop() {
    let mut rng = StdRng::seed_from_u64(4);
    let span = random_tokens(&mut rng, 300);
    let between = random_tokens(&mut rng, 50);
    let tokens = span.iter().chain(&between).chain(&span).copied();
    assert_eq!(reports(&mut guard(), tokens), []);
}

#[test]
fn short_phrases_recurring_often_are_not_a_loop() {
    // "Wait, let me check" (6 tokens) before every step of varied work:
    // the phrase recurs 100 times, no 32-token span does.
    let mut rng = StdRng::seed_from_u64(5);
    let phrase = [101, 102, 103, 104, 105, 106];
    let mut tokens = Vec::new();
    for _ in 0..100 {
        tokens.extend(phrase);
        tokens.extend(random_tokens(&mut rng, 20));
    }
    assert_eq!(reports(&mut guard(), tokens), []);
}

#[test]
fn copies_with_text_between_them_are_a_loop() {
    let mut rng = StdRng::seed_from_u64(6);
    let span = random_tokens(&mut rng, 35);
    let mut tokens = Vec::new();
    for gap in [10, 20] {
        tokens.extend(&span);
        tokens.extend(random_tokens(&mut rng, gap));
    }
    tokens.extend(&span);
    let third_ends = tokens.len() - 1;
    tokens.extend(random_tokens(&mut rng, 10));
    // The third copy ends at `third_ends`; the next token differs from
    // what followed the others, and reports the copies.
    assert_eq!(
        reports(&mut guard(), tokens),
        [(
            third_ends + 1,
            Loop {
                span: 35,
                extent: 35 * 3 + 30
            }
        )]
    );
}

#[test]
fn copies_further_apart_than_the_window_are_not_a_loop() {
    let mut rng = StdRng::seed_from_u64(7);
    let span = random_tokens(&mut rng, 32);
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.extend(&span);
        tokens.extend(random_tokens(&mut rng, 500));
    }
    assert_eq!(reports(&mut guard(), tokens.clone()), []);
    let wide = LoopGuardConfig {
        window: 2048,
        ..LoopGuardConfig::default()
    };
    let found = reports(&mut LoopGuard::new(wide).unwrap(), tokens);
    assert_eq!(found.len(), 1, "{found:?}");
}

#[test]
fn short_cycles_are_loops_once_they_fill_three_spans() {
    // A p-token cycle's copies are whole cycles of at least 32 tokens:
    // ⌈32 / p⌉ · p tokens each, reported when three are complete.
    for period in [1usize, 2, 5, 7, 16, 31, 32, 33] {
        let cycle: Vec<TokenId> = (0..period as TokenId).map(|i| 1000 + i).collect();
        let copy = 32usize.div_ceil(period) * period;
        let found = reports(&mut guard(), cycle.iter().copied().cycle().take(3 * copy));
        assert_eq!(
            found,
            [(
                3 * copy - 1,
                Loop {
                    span: copy,
                    extent: 3 * copy
                }
            )],
            "period {period}"
        );
    }
}

#[test]
fn memory_stays_bounded() {
    let mut rng = StdRng::seed_from_u64(8);
    let mut g = guard();
    let ring = g.tokens.len();
    let capacity = g.latest.capacity();
    for i in 0..1_000_000u32 {
        // Mostly random, with loops and repeated phrases mixed in.
        let token = if i % 3000 < 200 {
            i % 40
        } else {
            rng.random_range(0..152_000)
        };
        g.push(token);
        assert!(g.latest.len() <= g.config.window);
    }
    assert_eq!(g.tokens.len(), ring);
    assert_eq!(g.latest.capacity(), capacity, "the map never grew");
}

#[test]
fn hash_collisions_are_not_reported() {
    // Links as colliding hashes would make them: position 199's n-gram
    // "occurred" at 150 and 100, over unrelated random text.
    let mut rng = StdRng::seed_from_u64(9);
    let mut g = guard();
    for token in random_tokens(&mut rng, 200) {
        assert_eq!(g.push(token), None);
    }
    let (at_199, at_150) = (g.slot(199), g.slot(150));
    g.links[at_199] = 150;
    g.links[at_150] = 100;
    assert!(g.candidate(199).is_none(), "unequal copies are refused");
    // The same links over three equal copies are a candidate.
    let span = random_tokens(&mut rng, 32);
    let mut g = guard();
    let mut text = random_tokens(&mut rng, 200);
    for end in [100, 150, 199] {
        text[end - 31..=end].copy_from_slice(&span);
    }
    for token in text {
        g.push(token);
    }
    assert!(g.candidate(199).is_some());
}

#[test]
fn configurations_that_cannot_fire_are_refused() {
    for (min_span, repeats, window) in [
        (0, 3, 1024),
        (32, 1, 1024),
        (32, 3, 95),
        (usize::MAX, 3, 1024),
        (1, 2, MAX_LOOP_GUARD_WINDOW + 1),
    ] {
        let config = LoopGuardConfig {
            min_span,
            repeats,
            window,
        };
        assert!(LoopGuard::new(config).is_err(), "{config:?}");
    }
    let tight = LoopGuardConfig {
        min_span: 32,
        repeats: 3,
        window: 96,
    };
    let mut g = LoopGuard::new(tight).unwrap();
    let found = reports(&mut g, (0..96).map(|i| i % 32));
    assert_eq!(found.len(), 1, "three abutting copies fill the window");
}
