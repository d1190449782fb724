//! The iteration-level scheduler. Every step, each scheduled sequence's
//! computed tokens catch up with its tokens within the step's token budget
//! (vLLM v1's rule): a decode is a catch-up of one token, a prefill chunk a
//! catch-up of many, so chunked prefill and recompute after preemption need
//! no special mode.
//!
//! Running sequences that decode go first, all of them even past the
//! budget (a decode left out would wait for the ones admitted before it to
//! finish), then running prefills, then new admissions, in what the budget
//! has left. When blocks run out, the most recently admitted running
//! sequence is preempted: its blocks are freed and it goes back to the head
//! of the queue, to be recomputed (through the prefix cache when possible).
//!
//! Fairness between requests: a request runs at most
//! `max_seqs_per_request` of its `n` samples at once (the engine sets a
//! quarter of `max_num_seqs`), so an `n = 128` request leaves most slots to
//! others, and its remaining samples queue behind its own. Admission takes
//! the waiting sequence whose request has the fewest running samples, in
//! queue order among equals: a newly arrived request (none running) has its
//! prefill admitted ahead of the next sample of a request already running,
//! and free slots go round-robin between requests with samples waiting.
//! The cost is that a lone large-`n` request runs in waves even when the
//! engine has idle slots; in exchange no request waits for another's samples
//! to finish before it starts.

use super::prompt_logprobs::MAX_PROMPT_LOGIT_ROWS;
use super::sequence::{SeqStatus, Sequence};
use crate::kv_cache::manager::KvCacheManager;
use crate::types::{RequestId, SeqId};
use std::collections::{HashMap, VecDeque};

/// Limits of one step.
#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Most tokens through the model in one step, save that every running
    /// sequence's decode runs in every step even past it.
    pub max_num_batched_tokens: usize,
    /// Most samples of one request running at once.
    pub max_seqs_per_request: usize,
}

/// What to run this step: sequence ids with their number of new tokens.
#[derive(Debug, Default)]
pub struct SchedulerOutput {
    /// `(sequence, tokens to compute)` in batch order.
    pub scheduled: Vec<(SeqId, usize)>,
    /// Sequences preempted to make room.
    pub preempted: Vec<SeqId>,
}

/// Queue and running set over a sequence table the scheduler owns.
pub struct Scheduler {
    config: SchedulerConfig,
    /// Every live sequence.
    pub seqs: HashMap<SeqId, Sequence>,
    waiting: VecDeque<SeqId>,
    /// In admission order; the last is the first preempted.
    running: Vec<SeqId>,
    preemptions: u64,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions: 0,
        }
    }

    /// Queues a new sequence at the tail.
    pub fn add(&mut self, seq: Sequence) {
        self.waiting.push_back(seq.id);
        self.seqs.insert(seq.id, seq);
    }

    /// Removes a sequence wherever it is and frees its blocks.
    pub fn remove(&mut self, id: SeqId, kv: &mut KvCacheManager) -> Option<Sequence> {
        self.waiting.retain(|s| *s != id);
        self.running.retain(|s| *s != id);
        kv.free(id);
        self.seqs.remove(&id)
    }

    /// Sequences running.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Sequences waiting.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Preemptions since start.
    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// Whether there is anything to do.
    pub fn has_work(&self) -> bool {
        !self.seqs.is_empty()
    }

    fn preempt_last(&mut self, kv: &mut KvCacheManager) -> Option<SeqId> {
        let victim = self.running.pop()?;
        kv.free(victim);
        if let Some(s) = self.seqs.get_mut(&victim) {
            s.num_computed = 0;
            s.status = SeqStatus::Waiting;
        }
        self.waiting.push_front(victim);
        self.preemptions += 1;
        Some(victim)
    }

    /// Plans one step.
    pub fn schedule(&mut self, kv: &mut KvCacheManager) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.config.max_num_batched_tokens;
        // Prompt tokens whose logits are all kept (prompt logprobs), for the
        // whole step: each costs a vocabulary-sized row of logits.
        let mut logit_rows = MAX_PROMPT_LOGIT_ROWS;

        // Decodes first, so a long prefill never stalls running streams,
        // and all of them even past the budget: a decode left out would wait
        // for the ones admitted before it to finish. Then prefill chunks of
        // running sequences, in admission order, in what the budget has left.
        let mut order: Vec<SeqId> = self.running.clone();
        order.sort_by_key(|id| self.seqs[id].num_uncomputed() > 1);
        for id in order {
            if !self.running.contains(&id) {
                continue; // preempted earlier in this loop
            }
            let seq = &self.seqs[&id];
            let rows = seq.wants_prompt_logits();
            let room = if seq.num_uncomputed() == 1 { 1 } else { budget };
            let n = seq
                .num_uncomputed()
                .min(room)
                .min(if rows { logit_rows } else { usize::MAX });
            if n == 0 {
                continue;
            }
            let target = seq.num_computed + n;
            let mut ok = kv.allocate(id, &[], target);
            while !ok {
                let Some(victim) = self.preempt_last(kv) else {
                    break;
                };
                out.preempted.push(victim);
                out.scheduled.retain(|(s, _)| *s != victim);
                if victim == id {
                    break;
                }
                ok = kv.allocate(id, &[], target);
            }
            if ok {
                out.scheduled.push((id, n));
                budget = budget.saturating_sub(n);
                if rows {
                    logit_rows -= n;
                }
            }
        }
        // After a preemption nothing new is admitted this step: the pool is
        // short, and admitting would only thrash.
        if out.preempted.is_empty() {
            self.admit(kv, &mut budget, &mut logit_rows, &mut out);
        }
        out
    }

    fn admit(
        &mut self,
        kv: &mut KvCacheManager,
        budget: &mut usize,
        logit_rows: &mut usize,
        out: &mut SchedulerOutput,
    ) {
        if self.waiting.is_empty() || self.running.len() >= self.config.max_num_seqs {
            return;
        }
        let mut running: HashMap<RequestId, usize> = HashMap::new();
        for id in &self.running {
            *running.entry(self.seqs[id].request).or_default() += 1;
        }
        // Admitting in order of (samples its request would then have
        // running, queue position) is what repeatedly taking the request
        // with the fewest running samples does, computed in one sort.
        let mut ahead: HashMap<RequestId, usize> = HashMap::new();
        let mut order: Vec<(usize, usize)> = self
            .waiting
            .iter()
            .enumerate()
            .map(|(pos, id)| {
                let req = self.seqs[id].request;
                let queued = ahead.entry(req).or_default();
                *queued += 1;
                (running.get(&req).copied().unwrap_or(0) + *queued - 1, pos)
            })
            .filter(|&(rank, _)| rank < self.config.max_seqs_per_request)
            .collect();
        order.sort_unstable();
        let mut admitted = Vec::new();
        for (_, pos) in order {
            if *budget == 0 || self.running.len() >= self.config.max_num_seqs {
                break;
            }
            let id = self.waiting[pos];
            let seq = &self.seqs[&id];
            if let Some(parent) = seq.wait_for {
                if self.seqs.get(&parent).is_some_and(|p| p.in_prefill()) {
                    continue;
                }
            }
            // Cached positions would have no logits for prompt logprobs.
            let rows = seq.wants_prompt_logits();
            let prefix = if rows {
                Vec::new()
            } else {
                kv.cached_prefix(&seq.tokens)
            };
            let computed = prefix.len() * kv.block_size();
            let n = (seq.tokens.len() - computed).min(*budget).min(if rows {
                *logit_rows
            } else {
                usize::MAX
            });
            if n == 0 {
                continue;
            }
            if rows {
                *logit_rows -= n;
            }
            if !kv.allocate(id, &prefix, computed + n) {
                break;
            }
            let seq = self.seqs.get_mut(&id).expect("waiting sequence exists");
            if seq.cached_prompt.is_none() {
                seq.cached_prompt = Some(computed.min(seq.prompt_len));
                kv.record_lookup(seq.prompt_len, computed.min(seq.prompt_len));
            }
            seq.num_computed = computed;
            seq.status = SeqStatus::Running;
            admitted.push(pos);
            self.running.push(id);
            out.scheduled.push((id, n));
            *budget -= n;
        }
        admitted.sort_unstable();
        for pos in admitted.into_iter().rev() {
            self.waiting.remove(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::types::SamplingParams;
    use std::sync::Arc;

    fn seq(id: u64, prompt: usize) -> Sequence {
        Sequence::new(
            SeqId(id),
            RequestId(id),
            0,
            (0..prompt as u32).map(|t| t + 1000 * id as u32).collect(),
            Arc::new(SamplingParams::default()),
            &Default::default(),
        )
    }

    /// Applies a step as the engine would: computed tokens catch up, and a
    /// sequence whose prompt is done gets one new token.
    fn run_step(s: &mut Scheduler, kv: &mut KvCacheManager, out: &SchedulerOutput) {
        for &(id, n) in &out.scheduled {
            let seq = s.seqs.get_mut(&id).unwrap();
            seq.num_computed += n;
            kv.commit(id, &seq.tokens, seq.num_computed);
            if seq.num_computed == seq.tokens.len() {
                seq.tokens.push(7);
            }
        }
    }

    fn cfg(seqs: usize, tokens: usize) -> SchedulerConfig {
        SchedulerConfig {
            max_num_seqs: seqs,
            max_num_batched_tokens: tokens,
            max_seqs_per_request: seqs,
        }
    }

    #[test]
    fn long_prompt_is_chunked_while_decodes_continue() {
        let mut kv = KvCacheManager::new(100, 16, true);
        let mut s = Scheduler::new(cfg(8, 64));
        s.add(seq(1, 10));
        let o = s.schedule(&mut kv);
        run_step(&mut s, &mut kv, &o);
        s.add(seq(2, 300));
        for _ in 0..5 {
            let o = s.schedule(&mut kv);
            assert_eq!(o.scheduled[0], (SeqId(1), 1), "decode first");
            let total: usize = o.scheduled.iter().map(|x| x.1).sum();
            assert!(total <= 64);
            run_step(&mut s, &mut kv, &o);
        }
    }

    #[test]
    fn every_decode_runs_even_past_the_budget() {
        let mut kv = KvCacheManager::new(100, 16, true);
        let mut s = Scheduler::new(cfg(8, 12));
        for i in 1..=6 {
            s.add(seq(i, 2));
        }
        let o = s.schedule(&mut kv);
        assert_eq!(o.scheduled.len(), 6);
        run_step(&mut s, &mut kv, &o);
        // Six sequences decoding against a budget of three: all six run in
        // every step, none waits for the others to finish.
        s.config.max_num_batched_tokens = 3;
        for _ in 0..3 {
            let o = s.schedule(&mut kv);
            let mut ids: Vec<u64> = o
                .scheduled
                .iter()
                .map(|(id, n)| {
                    assert_eq!(*n, 1);
                    id.0
                })
                .collect();
            ids.sort_unstable();
            assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
            run_step(&mut s, &mut kv, &o);
        }
        // A prompt arriving now waits: the decodes used the budget up.
        s.add(seq(7, 2));
        let o = s.schedule(&mut kv);
        assert_eq!(o.scheduled.len(), 6);
        assert_eq!(s.num_waiting(), 1);
    }

    #[test]
    fn prompt_logprob_rows_are_bounded_per_step_and_skip_the_prefix_cache() {
        let mut kv = KvCacheManager::new(100, 16, true);
        let mut s = Scheduler::new(cfg(8, 2048));
        let prompt: Vec<u32> = (0..100).collect();
        let with_params = |id: u64, params: SamplingParams| {
            Sequence::new(
                SeqId(id),
                RequestId(id),
                0,
                prompt.clone(),
                Arc::new(params),
                &Default::default(),
            )
        };
        s.add(with_params(1, SamplingParams::default()));
        let o = s.schedule(&mut kv);
        run_step(&mut s, &mut kv, &o);
        let logprobs = || SamplingParams {
            prompt_logprobs: Some(1),
            ..Default::default()
        };
        s.add(with_params(2, logprobs()));
        s.add(with_params(3, logprobs()));
        s.add(with_params(4, SamplingParams::default()));
        let mut steps = 0;
        while s.seqs[&SeqId(2)].num_generated() == 0 || s.seqs[&SeqId(3)].num_generated() == 0 {
            let o = s.schedule(&mut kv);
            let rows: usize = o
                .scheduled
                .iter()
                .filter(|(id, _)| s.seqs[id].wants_prompt_logits())
                .map(|x| x.1)
                .sum();
            assert!(rows <= MAX_PROMPT_LOGIT_ROWS, "{rows} rows in one step");
            run_step(&mut s, &mut kv, &o);
            steps += 1;
        }
        assert!(steps >= 200 / MAX_PROMPT_LOGIT_ROWS, "{steps} steps");
        // Whole prompts computed, while the plain one took the cached blocks.
        assert_eq!(s.seqs[&SeqId(2)].cached_prompt, Some(0));
        assert_eq!(s.seqs[&SeqId(3)].cached_prompt, Some(0));
        assert_eq!(s.seqs[&SeqId(4)].cached_prompt, Some(96));
    }

    #[test]
    fn out_of_blocks_preempts_the_newest_and_resumes_it() {
        let mut kv = KvCacheManager::new(4, 4, false);
        let mut s = Scheduler::new(cfg(8, 100));
        s.add(seq(1, 7));
        s.add(seq(2, 7));
        let o = s.schedule(&mut kv);
        assert_eq!(o.scheduled.len(), 2);
        run_step(&mut s, &mut kv, &o);
        // Both need a third block at 9 tokens; only the oldest can have it.
        let mut preempted = false;
        for _ in 0..3 {
            let o = s.schedule(&mut kv);
            preempted |= o.preempted.contains(&SeqId(2));
            run_step(&mut s, &mut kv, &o);
        }
        assert!(preempted);
        assert_eq!(s.seqs[&SeqId(2)].status, SeqStatus::Waiting);
        assert_eq!(s.preemptions(), 1);
        s.remove(SeqId(1), &mut kv);
        let all = s.seqs[&SeqId(2)].tokens.len();
        assert!(all > 7, "it had generated before being preempted");
        let o = s.schedule(&mut kv);
        assert_eq!(
            o.scheduled,
            vec![(SeqId(2), all)],
            "recomputes prompt and output"
        );
    }

    #[test]
    fn max_num_seqs_bounds_admission() {
        let mut kv = KvCacheManager::new(100, 16, true);
        let mut s = Scheduler::new(cfg(2, 1000));
        for i in 1..=3 {
            s.add(seq(i, 5));
        }
        let o = s.schedule(&mut kv);
        assert_eq!(o.scheduled.len(), 2);
        assert_eq!(s.num_waiting(), 1);
    }

    #[test]
    fn removal_returns_every_block() {
        let mut kv = KvCacheManager::new(10, 4, true);
        let mut s = Scheduler::new(cfg(4, 100));
        s.add(seq(1, 9));
        s.add(seq(2, 5));
        let o = s.schedule(&mut kv);
        run_step(&mut s, &mut kv, &o);
        s.remove(SeqId(1), &mut kv);
        s.remove(SeqId(2), &mut kv);
        assert_eq!(kv.num_free_blocks(), 10);
    }

    fn sample(id: u64, request: u64, index: usize) -> Sequence {
        Sequence::new(
            SeqId(id),
            RequestId(request),
            index,
            vec![1, 2, 3],
            Arc::new(SamplingParams::default()),
            &Default::default(),
        )
    }

    #[test]
    fn a_large_n_request_leaves_slots_and_the_queue_to_others() {
        let mut kv = KvCacheManager::new(1000, 16, false);
        let mut s = Scheduler::new(SchedulerConfig {
            max_seqs_per_request: 4,
            ..cfg(8, 1000)
        });
        for i in 0..32 {
            s.add(sample(i, 1, i as usize));
        }
        let o = s.schedule(&mut kv);
        assert_eq!(o.scheduled.len(), 4, "capped at 4 samples");
        run_step(&mut s, &mut kv, &o);
        // Two requests arrive behind 28 waiting samples of the first.
        s.add(sample(100, 2, 0));
        for i in 0..3 {
            s.add(sample(200 + i, 3, i as usize));
        }
        let o = s.schedule(&mut kv);
        let admitted: Vec<SeqId> = o.scheduled.iter().skip(4).map(|x| x.0).collect();
        assert_eq!(
            admitted,
            [SeqId(100), SeqId(200), SeqId(201), SeqId(202)],
            "newcomers first, fewest running first, queue order among equals"
        );
        assert_eq!(s.num_running(), 8);
    }

    #[test]
    fn freed_slots_go_round_robin_between_waiting_requests() {
        let mut kv = KvCacheManager::new(1000, 16, false);
        let mut s = Scheduler::new(cfg(2, 1000));
        for i in 0..4 {
            s.add(sample(i, 1, i as usize));
        }
        for i in 0..4 {
            s.add(sample(10 + i, 2, i as usize));
        }
        let o = s.schedule(&mut kv);
        let first: Vec<SeqId> = o.scheduled.iter().map(|x| x.0).collect();
        assert_eq!(first, [SeqId(0), SeqId(10)]);
    }
}
