//! Detecting reasoning that repeats itself, one token id at a time.
//!
//! Reasoning models sometimes fall into a loop, writing the same "Wait, let
//! me re-check…" paragraph again and again until the token limit. The
//! [`LoopGuard`] watches a sequence's reasoning tokens and reports a loop
//! when one span of at least [`LoopGuardConfig::min_span`] tokens has
//! occurred [`LoopGuardConfig::repeats`] times, the copies not overlapping,
//! all within the last [`LoopGuardConfig::window`] tokens. The engine decides
//! what a report does (close the reasoning, or stop the choice).
//!
//! # How
//!
//! Every position gets a rolling hash of the `min_span` tokens ending there
//! (a polynomial hash modulo the Mersenne prime 2^61 − 1, updated in O(1)).
//! A map from hash to the latest position with that hash links each
//! position to the previous occurrence of its n-gram that it does not
//! overlap, so `repeats` non-overlapping copies are a walk of `repeats − 1`
//! links back. A hash match alone is never trusted: the copies are compared
//! token by token before anything is reported, so a collision costs one
//! comparison and never a false report. The map only holds positions inside
//! the window and the token ring is the window's size, so memory is fixed by
//! the configuration whatever the length of the reasoning.
//!
//! Once three copies of a `min_span`-gram are found, they are grown token by
//! token while every copy agrees, up to the gap between two copies' starts,
//! and the loop is reported when they stop growing. So a loop that repeats a
//! 40-token paragraph is reported as the third copy of the whole paragraph
//! completes (the 120th token), not when the third copy of its first 32
//! tokens does, and a copy never overlaps the next.
//!
//! # What counts as a loop
//!
//! * A span of `min_span` or more tokens seen `repeats` times, contiguous or
//!   with other text between the copies, all inside the window.
//! * A cycle shorter than `min_span` repeated long enough: its copies are
//!   whole numbers of cycles, so a cycle of `p` tokens is reported after
//!   `repeats · ⌈min_span / p⌉ · p` tokens, e.g. 105 tokens for a 5-token
//!   cycle, 96 for one token repeated (with the defaults). Such text is
//!   degenerate however short its cycle.
//! * Not a phrase shorter than `min_span`, however often it recurs (normal
//!   reasoning repeats "Let me check" or the numbers it works with), nor a
//!   long passage quoted twice.
//!
//! After a report the guard starts afresh, so an unbroken loop is reported
//! again only once it has repeated another `repeats` times.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::types::TokenId;

/// When [`LoopGuard`] reports a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopGuardConfig {
    /// Fewest tokens in a repeated span; shorter repeats are normal text.
    /// Default 32, about two sentences.
    pub min_span: usize,
    /// Copies of the span that make a loop, the first included. Default 3:
    /// a span and two more copies.
    pub repeats: usize,
    /// Tokens looked back over; copies further apart are not counted.
    /// Default 1024, which catches spans of up to 341 tokens with 3 copies;
    /// memory is about 20 bytes per window token plus the map.
    pub window: usize,
}

impl Default for LoopGuardConfig {
    fn default() -> Self {
        Self {
            min_span: 32,
            repeats: 3,
            window: 1024,
        }
    }
}

/// Largest accepted [`LoopGuardConfig::window`]: the guard allocates its
/// ring up front, and a window beyond a million tokens is no longer "recent".
pub const MAX_LOOP_GUARD_WINDOW: usize = 1 << 20;

/// A configuration under which no loop could ever be reported, or too large
/// to allocate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid loop guard configuration: {0}")]
pub struct InvalidLoopGuardConfig(String);

impl LoopGuardConfig {
    /// Checks that a loop is possible: `min_span` ≥ 1, `repeats` ≥ 2, and
    /// `repeats · min_span` ≤ `window` ≤ [`MAX_LOOP_GUARD_WINDOW`].
    pub fn validate(&self) -> Result<(), InvalidLoopGuardConfig> {
        let fail = |why: String| Err(InvalidLoopGuardConfig(why));
        if self.min_span == 0 {
            return fail("min_span must be at least 1".into());
        }
        if self.repeats < 2 {
            return fail(format!("repeats must be at least 2, got {}", self.repeats));
        }
        if self.window > MAX_LOOP_GUARD_WINDOW {
            return fail(format!(
                "window must be at most {MAX_LOOP_GUARD_WINDOW}, got {}",
                self.window
            ));
        }
        match self.repeats.checked_mul(self.min_span) {
            Some(needed) if needed <= self.window => Ok(()),
            _ => fail(format!(
                "window ({}) must hold repeats ({}) copies of min_span ({}) tokens",
                self.window, self.repeats, self.min_span
            )),
        }
    }
}

/// A loop reported by [`LoopGuard::push`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loop {
    /// Tokens in each copy of the repeated span, at least `min_span`.
    pub span: usize,
    /// Tokens from the start of the first copy to the end of the last: the
    /// copies and whatever lies between them.
    pub extent: usize,
}

/// The Mersenne prime 2^61 − 1, the rolling hash's modulus.
const MODULUS: u64 = (1 << 61) - 1;
/// The hash's base: any large residue works; this one is the golden ratio's
/// bits reduced modulo [`MODULUS`].
const BASE: u64 = 0x9E37_79B9_7F4A_7C15 % MODULUS;
/// Marks "no position" in the link ring.
const NONE: u64 = u64::MAX;

fn mul_mod(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    let folded = (product as u64 & MODULUS) + (product >> 61) as u64;
    let folded = (folded & MODULUS) + (folded >> 61);
    if folded >= MODULUS {
        folded - MODULUS
    } else {
        folded
    }
}

fn add_mod(a: u64, b: u64) -> u64 {
    let sum = a + b;
    if sum >= MODULUS {
        sum - MODULUS
    } else {
        sum
    }
}

/// A token's digit in the rolling hash: never 0, so that token 0 still
/// changes the hash.
fn digit(token: TokenId) -> u64 {
    u64::from(token) + 1
}

/// The map's keys are already uniform hashes below 2^61: one multiplication
/// spreads them over the 64 bits whose top the hash table reads, where
/// SipHash would hash them again for nothing.
#[derive(Default)]
struct SpreadHasher(u64);

impl Hasher for SpreadHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(self.0 ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Copies found and being grown: their starts, oldest first, and length.
#[derive(Debug)]
struct Copies {
    starts: Vec<u64>,
    len: usize,
    /// Smallest gap between two consecutive starts: a copy may not grow
    /// into the next.
    max_len: usize,
}

/// Watches one sequence's tokens for a loop; see the module documentation.
#[derive(Debug)]
pub struct LoopGuard {
    config: LoopGuardConfig,
    /// `ring.len() - 1`; the ring's length is the window rounded up to a
    /// power of two, so positions map to slots with a mask.
    mask: u64,
    /// Token at each position.
    tokens: Vec<TokenId>,
    /// Hash of the `min_span`-gram ending at each position.
    hashes: Vec<u64>,
    /// Per position, the end of the previous occurrence of its n-gram that
    /// it does not overlap ([`NONE`] when it has none or overlaps the
    /// latest one, which then stays the anchor).
    links: Vec<u64>,
    /// Hash → the latest position anchored for it, inside the window only.
    latest: HashMap<u64, u64, BuildHasherDefault<SpreadHasher>>,
    /// Tokens pushed since the last reset; the next token's position.
    len: u64,
    /// Hash of the last `min_span` tokens.
    hash: u64,
    /// BASE^(min_span − 1), the weight of the token leaving the hash.
    top_weight: u64,
    found: Option<Copies>,
}

impl LoopGuard {
    /// A guard with nothing seen yet; its memory is allocated here, once.
    pub fn new(config: LoopGuardConfig) -> Result<Self, InvalidLoopGuardConfig> {
        config.validate()?;
        let ring = config.window.next_power_of_two();
        let top_weight = (1..config.min_span).fold(1, |w, _| mul_mod(w, BASE));
        Ok(Self {
            config,
            mask: ring as u64 - 1,
            tokens: vec![0; ring],
            hashes: vec![0; ring],
            links: vec![NONE; ring],
            latest: HashMap::with_capacity_and_hasher(config.window, Default::default()),
            len: 0,
            hash: 0,
            top_weight,
            found: None,
        })
    }

    /// Forgets everything seen, keeping the memory.
    pub fn reset(&mut self) {
        self.latest.clear();
        self.len = 0;
        self.hash = 0;
        self.found = None;
    }

    /// Feeds the next token; returns the loop it completes, if any, and then
    /// starts afresh. O(`repeats`) per token, plus one token-by-token check
    /// of `repeats · min_span` tokens when a candidate loop is found.
    pub fn push(&mut self, token: TokenId) -> Option<Loop> {
        let m = self.config.min_span as u64;
        let window = self.config.window as u64;
        let t = self.len;
        self.len += 1;
        // The occurrence ending here starts `window` tokens back: leaving.
        if let Some(leaving) = (t + m).checked_sub(window + 1).filter(|&e| e + 1 >= m) {
            if let Entry::Occupied(anchor) = self.latest.entry(self.hashes[self.slot(leaving)]) {
                if *anchor.get() == leaving {
                    anchor.remove();
                }
            }
        }
        let slot = self.slot(t);
        self.tokens[slot] = token;
        self.links[slot] = NONE;
        if t >= m {
            let old = digit(self.tokens[self.slot(t - m)]);
            self.hash = add_mod(self.hash, MODULUS - mul_mod(old, self.top_weight));
        }
        self.hash = add_mod(mul_mod(self.hash, BASE), digit(token));
        if t + 1 < m {
            return None;
        }
        self.hashes[slot] = self.hash;
        match self.latest.entry(self.hash) {
            Entry::Occupied(anchor) if *anchor.get() + m > t => {}
            Entry::Occupied(mut anchor) => self.links[slot] = anchor.insert(t),
            Entry::Vacant(anchor) => {
                anchor.insert(t);
            }
        }
        let found = match self.found.take() {
            Some(copies) => self.grow(copies, token),
            None => self.candidate(t).and_then(|copies| self.grow_full(copies)),
        };
        if found.is_some() {
            self.reset();
        }
        found
    }

    fn slot(&self, position: u64) -> usize {
        (position & self.mask) as usize
    }

    /// Whether an occurrence of the n-gram ending at `end` lies inside the
    /// window that ends at position `t`.
    fn in_window(&self, end: u64, t: u64) -> bool {
        end != NONE && end + self.config.window as u64 >= t + self.config.min_span as u64
    }

    /// `repeats` copies of the n-gram ending at `t`, verified, if its links
    /// reach back that far inside the window. The walk allocates nothing;
    /// only a complete chain is collected and compared.
    fn candidate(&self, t: u64) -> Option<Copies> {
        let repeats = self.config.repeats;
        let mut oldest = t;
        for _ in 1..repeats {
            oldest = self.links[self.slot(oldest)];
            if !self.in_window(oldest, t) {
                return None;
            }
        }
        let m = self.config.min_span as u64;
        let mut starts = vec![0; repeats];
        let mut end = t;
        for start in starts.iter_mut().rev() {
            *start = end + 1 - m;
            end = self.links[self.slot(end)];
        }
        let latest = starts[repeats - 1];
        let same = (0..m).all(|i| {
            let want = self.tokens[self.slot(latest + i)];
            starts
                .iter()
                .all(|&s| self.tokens[self.slot(s + i)] == want)
        });
        let max_len = starts.windows(2).map(|w| w[1] - w[0]).min()? as usize;
        same.then_some(Copies {
            starts,
            len: self.config.min_span,
            max_len,
        })
    }

    /// Reports `copies` if they cannot grow any more, else keeps them.
    fn grow_full(&mut self, copies: Copies) -> Option<Loop> {
        if copies.len == copies.max_len {
            return Some(Self::report(&copies));
        }
        self.found = Some(copies);
        None
    }

    /// Grows `copies` by the token just pushed if every earlier copy has
    /// the same token next; reports them when they stop growing, reach the
    /// next copy, or their first copy starts to leave the window.
    fn grow(&mut self, mut copies: Copies, token: TokenId) -> Option<Loop> {
        let offset = copies.len as u64;
        let earlier = &copies.starts[..copies.starts.len() - 1];
        let agree = earlier
            .iter()
            .all(|&s| self.tokens[self.slot(s + offset)] == token);
        let first = copies.starts[0];
        let fits = first + self.config.window as u64 > self.len - 1;
        if !(agree && fits) {
            return Some(Self::report(&copies));
        }
        copies.len += 1;
        self.grow_full(copies)
    }

    fn report(copies: &Copies) -> Loop {
        let last = copies.starts[copies.starts.len() - 1];
        Loop {
            span: copies.len,
            extent: (last - copies.starts[0]) as usize + copies.len,
        }
    }
}

#[cfg(test)]
mod tests;
