//! One sequence's walk through its grammar: the mask of allowed tokens at
//! each step, computed while the model runs.
//!
//! After a token is consumed, the next mask is computed on the rayon pool
//! ([`GrammarState::consume`] starts it); the engine thread meanwhile runs
//! the next forward pass, and collects the mask when it samples. Only when
//! the mask is not ready yet does the engine wait for it.

use std::sync::{mpsc, Arc};

use llguidance::toktrie::SimpleVob;
use llguidance::Matcher;

use super::grammar::CompiledGrammar;
use super::vocab::GrammarVocab;
use crate::types::TokenId;

type MaskResult = Result<SimpleVob, String>;

enum Slot {
    /// The matcher, with the mask for its state if it was computed.
    Here(Box<Matcher>, Option<MaskResult>),
    /// The matcher is computing its next mask on the pool.
    Computing(mpsc::Receiver<(Box<Matcher>, MaskResult)>),
    /// The computation was lost (its task panicked).
    Lost,
}

/// A sequence's grammar state.
pub struct GrammarState {
    slot: Slot,
    vocab: Arc<GrammarVocab>,
}

fn compute(matcher: &mut Matcher) -> MaskResult {
    matcher.compute_mask_or_eos().map_err(|e| e.to_string())
}

impl GrammarState {
    /// The start state of `grammar`; its first mask starts computing now.
    pub fn new(grammar: &CompiledGrammar) -> Self {
        let mut state = Self {
            slot: Slot::Here(Box::new(grammar.matcher()), None),
            vocab: Arc::clone(grammar.vocab()),
        };
        state.prefetch();
        state
    }

    fn prefetch(&mut self) {
        let Slot::Here(matcher, None) = std::mem::replace(&mut self.slot, Slot::Lost) else {
            return;
        };
        let (tx, rx) = mpsc::channel();
        rayon::spawn(move || {
            let mut matcher = matcher;
            let mask = compute(&mut matcher);
            let _ = tx.send((matcher, mask));
        });
        self.slot = Slot::Computing(rx);
    }

    /// Waits for a computation in flight, leaving the matcher here. The
    /// engine thread is itself a worker of the pool the computation runs
    /// on, so it runs pool work while it waits: with one worker, nobody
    /// else would.
    fn settle(&mut self) {
        let Slot::Computing(rx) = &self.slot else {
            return;
        };
        let done = loop {
            match rx.try_recv() {
                Ok(done) => break Some(done),
                Err(mpsc::TryRecvError::Disconnected) => break None,
                Err(mpsc::TryRecvError::Empty) => {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::thread::yield_now();
                    }
                }
            }
        };
        self.slot = match done {
            Some((matcher, mask)) => Slot::Here(matcher, Some(mask)),
            None => Slot::Lost,
        };
    }

    /// Masks in `logits` every token the grammar does not allow next. An
    /// error in the grammar engine, or a complete answer, leaves only the
    /// end of sequence (possible even where another processor masked it),
    /// so the answer ends rather than runs on unchecked.
    pub fn apply(&mut self, logits: &mut [f32]) -> Result<(), String> {
        self.settle();
        let (result, complete) = match &mut self.slot {
            Slot::Here(matcher, mask) => {
                let mask = mask.get_or_insert_with(|| compute(matcher));
                let result = mask.as_ref().map_err(Clone::clone).map(|m| {
                    mask_logits(m, &self.vocab, logits);
                });
                (result, matcher.is_stopped())
            }
            Slot::Computing(_) | Slot::Lost => {
                (Err("the grammar engine stopped".to_string()), false)
            }
        };
        if result.is_err() || complete {
            only_eos(&self.vocab, logits);
        }
        result
    }

    /// Advances past `token` and starts computing the next mask.
    pub fn consume(&mut self, token: TokenId) -> Result<(), String> {
        self.settle();
        let Slot::Here(matcher, mask) = &mut self.slot else {
            return Err("the grammar engine stopped".into());
        };
        *mask = None;
        if self.vocab.eos().contains(&token) {
            return Ok(());
        }
        matcher
            .consume_token(token)
            .map_err(|e| format!("token {token} does not fit the grammar: {e}"))?;
        self.prefetch();
        Ok(())
    }
}

/// Sets the logits of disallowed tokens to −∞, a 32-token word at a time.
/// The grammar's single end token stands for every end-of-sequence id.
fn mask_logits(mask: &SimpleVob, vocab: &GrammarVocab, logits: &mut [f32]) {
    let eos = vocab.eos();
    let end_allowed = eos.first().is_some_and(|&first| mask.is_allowed(first));
    let saved: Vec<(usize, f32)> = if end_allowed {
        eos.iter()
            .filter_map(|&id| logits.get(id as usize).map(|&l| (id as usize, l)))
            .collect()
    } else {
        Vec::new()
    };
    let words = mask.as_slice();
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let bits = words.get(w).copied().unwrap_or(0);
        if bits == u32::MAX {
            continue;
        }
        for (i, l) in chunk.iter_mut().enumerate() {
            if bits & (1 << i) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    for (id, l) in saved {
        logits[id] = l;
    }
}

/// Leaves only the end-of-sequence ids possible.
fn only_eos(vocab: &GrammarVocab, logits: &mut [f32]) {
    let keep: Vec<(usize, f32)> = vocab
        .eos()
        .iter()
        .filter_map(|&id| logits.get(id as usize).map(|&l| (id as usize, l)))
        .collect();
    logits.fill(f32::NEG_INFINITY);
    for (id, l) in keep {
        logits[id] = if l.is_finite() { l } else { 0.0 };
    }
}
