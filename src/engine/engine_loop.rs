//! The engine thread: drain commands, schedule, run the model, sample,
//! stream outputs. The logic lives in the scheduler, sampler and stop
//! matcher; this loop only wires them together.

use super::logits::{LogitsContext, LogitsProcessor};
use super::prompt_logprobs;
use super::reasoning_control::{ReasoningConfig, ReasoningTokens};
use super::sampler::{logprob_entry, row_need, sample};
use super::scheduler::{Scheduler, SchedulerConfig};
use super::sequence::{GenerationSetup, Sequence};
use super::types::{
    EngineRequest, EngineStats, FinishReason, PromptLogprob, RequestOutput, RequestUsage,
    SampleOutput, SamplingParams, StopReason,
};
use super::{Admission, Command, EngineHandle, PanicWatch, Shared};
use crate::kv_cache::manager::KvCacheManager;
use crate::kv_cache::storage::KvDtype;
use crate::kv_events::KvEventSender;
use crate::model::{BatchSeq, ForwardBatch, LogitsRow, Model};
use crate::reasoning::ReasoningPhase;
use crate::tokenizer::Tokenizer;
use crate::types::{RequestId, SeqId, TokenId};
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::mpsc::UnboundedSender;

/// Engine settings; every default is documented here once.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Tokens per KV block (default 16).
    pub block_size: usize,
    /// KV pool budget in bytes; default: 40% of available memory, capped
    /// at what `max_num_seqs` full-length sequences need.
    pub kv_cache_memory: Option<u64>,
    /// Element type of the KV cache (default f16).
    pub kv_dtype: KvDtype,
    /// Most sequences running at once (default 64).
    pub max_num_seqs: usize,
    /// Most tokens through the model per step (every running sequence's
    /// decode runs even past it); default: the device's
    /// ([`crate::model::ModelInfo::step_tokens`]: 128 or 256 on the CPU, 2048 on a
    /// GPU), or `max_num_seqs` if that is more.
    pub max_num_batched_tokens: Option<usize>,
    /// Context limit; default: the model's own.
    pub max_model_len: Option<usize>,
    /// Requests allowed to wait before new ones are refused (default 256).
    pub max_waiting_requests: usize,
    /// Reuse KV blocks of shared prefixes (default on).
    pub enable_prefix_caching: bool,
    /// Thinking close text and loop guard (defaults: [`ReasoningConfig`]).
    pub reasoning: ReasoningConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            kv_cache_memory: None,
            kv_dtype: KvDtype::F16,
            max_num_seqs: 64,
            max_num_batched_tokens: None,
            max_model_len: None,
            max_waiting_requests: 256,
            enable_prefix_caching: true,
            reasoning: ReasoningConfig::default(),
        }
    }
}

fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(4 << 30, |kb| kb * 1024)
}

struct RequestState {
    tx: UnboundedSender<RequestOutput>,
    seqs: Vec<SeqId>,
    usage: RequestUsage,
    admitted: bool,
    remaining: usize,
    /// Prompt tokens already added to `EngineLoop::prompt_tokens`.
    prompt_counted: usize,
    /// Prompt logprobs collected so far, when asked for and not yet sent.
    prompt_logprobs: Option<Vec<PromptLogprob>>,
}

/// Starts engines.
pub struct Engine;

impl Engine {
    /// Sizes the KV pool, starts the engine thread and returns its handle.
    pub fn start(
        model: Box<dyn Model>,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
    ) -> Result<EngineHandle> {
        Self::start_publishing(model, tokenizer, config, None)
    }

    /// [`start`](Self::start), handing the prefix cache's events to
    /// `kv_events` after every step when given.
    pub fn start_publishing(
        mut model: Box<dyn Model>,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
        kv_events: Option<KvEventSender>,
    ) -> Result<EngineHandle> {
        let info = model.info().clone();
        let max_model_len = config.max_model_len.unwrap_or(info.max_position_embeddings);
        if config.block_size == 0 || max_model_len == 0 {
            bail!("block size and max model length must be positive");
        }
        // Every running sequence decodes in every step, so a budget below
        // `max_num_seqs` would leave prefills no room while the slots are
        // full; the device's default is raised to fit them.
        let step_tokens = config
            .max_num_batched_tokens
            .unwrap_or(info.step_tokens.max(config.max_num_seqs));
        if step_tokens == 0 {
            bail!("the most tokens per step must be positive");
        }
        if step_tokens < config.max_num_seqs {
            tracing::warn!(
                "--max-num-batched-tokens ({step_tokens}) is below --max-num-seqs ({}): \
                 while more than {step_tokens} sequences decode, prompts wait",
                config.max_num_seqs
            );
        }
        let block_bytes = info.kv.block_bytes(config.block_size, config.kv_dtype) as u64;
        if block_bytes == 0 {
            bail!("the model declares no KV cache");
        }
        let budget = config.kv_cache_memory.unwrap_or_else(|| {
            // Whole blocks: a context that ends inside a block still needs it.
            let want = (config.max_num_seqs * max_model_len).div_ceil(config.block_size) as u64
                * block_bytes;
            let room = info.kv_memory.unwrap_or_else(|| available_memory() * 2 / 5);
            room.min(want)
        });
        let num_blocks = info
            .kv
            .blocks_in(budget, config.block_size, config.kv_dtype);
        let min_blocks = max_model_len.div_ceil(config.block_size).min(2);
        if num_blocks < min_blocks {
            bail!(
                "a KV cache of {budget} bytes holds {num_blocks} blocks; at least {min_blocks} are needed"
            );
        }
        let token_bytes = info.kv.bytes_per_token(config.kv_dtype);
        tracing::info!(
            "KV cache: {num_blocks} blocks x {} tokens = {} tokens, {:.1} MiB ({}, {} bytes per token, {} tokens per GiB) on {}",
            config.block_size,
            num_blocks * config.block_size,
            (num_blocks as u64 * block_bytes) as f64 / (1 << 20) as f64,
            config.kv_dtype,
            token_bytes,
            (1u64 << 30) / token_bytes as u64,
            info.device,
        );
        tracing::info!(
            "at most {step_tokens} tokens per step{}",
            if config.max_num_batched_tokens.is_none() {
                " (the device's default)"
            } else {
                ""
            }
        );
        // The loop runs on a worker of its own pool: the kernels' parallel
        // loops then start from inside the pool, where the calling thread
        // takes part and the other workers are still spinning from the last
        // call, rather than handing each matmul to sleeping threads and
        // blocking until one of them wakes this thread again.
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("r1serve-worker-{i}"))
            .build()?;
        let started = std::time::Instant::now();
        pool.install(|| model.allocate_cache(config.block_size, num_blocks, config.kv_dtype))?;
        tracing::info!(
            "KV cache committed in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            tx: Mutex::new(tx),
            stats: Mutex::new(EngineStats {
                free_blocks: num_blocks,
                total_blocks: num_blocks,
                block_size: config.block_size,
                kv_dtype: config.kv_dtype,
                prefix_caching: config.enable_prefix_caching,
                ..Default::default()
            }),
            waiting: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            admission: Admission {
                max_model_len,
                max_waiting: config.max_waiting_requests,
                num_blocks,
                block_size: config.block_size,
            },
            thread: Mutex::new(None),
            failure: Mutex::new(None),
        });
        let mut eos: Vec<TokenId> = tokenizer.eos_ids().to_vec();
        eos.sort_unstable();
        eos.dedup();
        let reasoning = ReasoningTokens::new(&tokenizer, &config.reasoning)?;
        tracing::info!(
            "reasoning control: a close of {} tokens, loop guard {}",
            reasoning.close_len(),
            config.reasoning.loop_guard
        );
        let mut kv =
            KvCacheManager::new(num_blocks, config.block_size, config.enable_prefix_caching);
        if kv_events.is_some() {
            kv.enable_events();
        }
        let looper = EngineLoop {
            _watch: PanicWatch(shared.clone()),
            kv,
            kv_events,
            sched: Scheduler::new(SchedulerConfig {
                max_num_seqs: config.max_num_seqs,
                max_num_batched_tokens: step_tokens,
                max_seqs_per_request: (config.max_num_seqs / 4).max(1),
            }),
            model,
            tokenizer,
            requests: HashMap::new(),
            rx,
            shared: shared.clone(),
            setup: GenerationSetup {
                eos,
                reasoning: Some(Arc::new(reasoning)),
            },
            next_seq: 0,
            max_model_len,
            prefix_caching: config.enable_prefix_caching,
            steps: 0,
            step_tokens: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
        };
        let thread = std::thread::Builder::new()
            .name("r1serve-engine".into())
            .spawn(move || pool.install(|| looper.run()))?;
        if let Ok(mut t) = shared.thread.lock() {
            *t = Some(thread);
        }
        Ok(EngineHandle { shared })
    }
}

struct EngineLoop {
    /// First field, so dropped first: a panic marks the engine failed
    /// before the request streams below close.
    _watch: PanicWatch,
    model: Box<dyn Model>,
    tokenizer: Arc<Tokenizer>,
    kv: KvCacheManager,
    /// Where each step's prefix-cache events go, when published.
    kv_events: Option<KvEventSender>,
    sched: Scheduler,
    requests: HashMap<RequestId, RequestState>,
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    setup: GenerationSetup,
    next_seq: u64,
    max_model_len: usize,
    prefix_caching: bool,
    steps: u64,
    step_tokens: u64,
    prompt_tokens: u64,
    generation_tokens: u64,
}

impl EngineLoop {
    fn run(mut self) {
        loop {
            if !self.sched.has_work() {
                match self.rx.recv() {
                    Ok(cmd) => {
                        if !self.handle(cmd) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            let mut stop = false;
            while let Ok(cmd) = self.rx.try_recv() {
                if !self.handle(cmd) {
                    stop = true;
                    break;
                }
            }
            if stop {
                break;
            }
            if self.sched.has_work() {
                self.step();
            }
            if let Some(events) = &self.kv_events {
                events.send(self.kv.take_events());
            }
            self.publish_stats();
        }
        let ids: Vec<RequestId> = self.requests.keys().copied().collect();
        for id in ids {
            self.finish_request(id, FinishReason::Abort);
        }
        self.publish_stats();
    }

    /// Applies a command; false means shut down.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Add(id, req, tx) => self.add(id, *req, tx),
            Command::Abort(id) => self.finish_request(id, FinishReason::Abort),
            Command::Shutdown => return false,
        }
        true
    }

    fn add(&mut self, id: RequestId, req: EngineRequest, tx: UnboundedSender<RequestOutput>) {
        let n = req.params.n.max(1);
        let params = Arc::new(req.params);
        let mut seqs = Vec::with_capacity(n);
        for index in 0..n {
            let sid = SeqId(self.next_seq);
            self.next_seq += 1;
            let mut seq = Sequence::new(
                sid,
                id,
                index,
                req.prompt.clone(),
                params.clone(),
                &self.setup,
            );
            if index > 0 && self.prefix_caching {
                seq.wait_for = seqs.first().copied();
            }
            seqs.push(sid);
            self.sched.add(seq);
        }
        self.requests.insert(
            id,
            RequestState {
                tx,
                seqs,
                usage: RequestUsage {
                    prompt_tokens: req.prompt.len(),
                    ..Default::default()
                },
                admitted: false,
                remaining: n,
                prompt_counted: 0,
                prompt_logprobs: params.prompt_logprobs.map(|_| Vec::new()),
            },
        );
    }

    /// Ends a whole request (abort or shutdown), freeing all its blocks.
    fn finish_request(&mut self, id: RequestId, reason: FinishReason) {
        let Some(req) = self.requests.remove(&id) else {
            return;
        };
        if !req.admitted {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        let mut samples = Vec::new();
        for sid in &req.seqs {
            if let Some(seq) = self.sched.remove(*sid, &mut self.kv) {
                samples.push(SampleOutput {
                    index: seq.index,
                    token_ids: Vec::new(),
                    text: String::new(),
                    reasoning: String::new(),
                    reasoning_tokens: seq.reasoning.reasoning_tokens(),
                    in_reasoning: false,
                    reasoning_end: None,
                    logprobs: Vec::new(),
                    finish_reason: Some(reason),
                    stop_reason: None,
                });
            }
        }
        let _ = req.tx.send(RequestOutput {
            samples,
            usage: req.usage,
            finished: true,
            prompt_logprobs: None,
        });
    }

    fn step(&mut self) {
        let plan = self.sched.schedule(&mut self.kv);
        if plan.scheduled.is_empty() {
            return;
        }
        // A step can take a while; the figures a scrape sees meanwhile should
        // describe the batch being computed, not the queue before it.
        self.publish_stats();
        let mut batch = ForwardBatch::default();
        for &(sid, n) in &plan.scheduled {
            let seq = self
                .sched
                .seqs
                .get_mut(&sid)
                .expect("scheduled sequences exist");
            if let Some(req) = self.requests.get_mut(&seq.request) {
                if !req.admitted {
                    req.admitted = true;
                    self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                }
                if seq.index == 0 && seq.cached_prompt.is_some() {
                    req.usage.cached_tokens = seq.cached_prompt.unwrap_or(0);
                }
                // Counted as the prefill advances, once per request however
                // many choices or recomputations cover the same positions.
                let covered = (seq.num_computed + n).min(req.usage.prompt_tokens);
                if covered > req.prompt_counted {
                    self.prompt_tokens += (covered - req.prompt_counted) as u64;
                    req.prompt_counted = covered;
                }
            }
            let start = seq.num_computed;
            let want_logits = start + n == seq.tokens.len();
            let ctx = logits_context(seq);
            let processed = !seq.processors.is_empty()
                || (want_logits && seq.control.as_mut().is_some_and(|c| !c.leaves_logits(&ctx)));
            batch
                .tokens
                .extend_from_slice(&seq.tokens[start..start + n]);
            batch.seqs.push(BatchSeq {
                num_tokens: n,
                ctx_len: start + n,
                block_table: self.kv.block_table(sid).to_vec(),
                want_logits,
                all_logits: seq.wants_prompt_logits(),
                need: row_need(&seq.params, processed),
            });
        }
        self.steps += 1;
        super::fault::at_step(self.steps);
        self.step_tokens += batch.tokens.len() as u64;
        let logits = match self.model.forward(&batch) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("model step failed: {e:#}");
                let reqs: Vec<RequestId> = plan
                    .scheduled
                    .iter()
                    .filter_map(|(s, _)| self.sched.seqs.get(s).map(|q| q.request))
                    .collect();
                for r in reqs {
                    self.finish_request(r, FinishReason::Abort);
                }
                return;
            }
        };
        let mut logits = logits.into_iter();
        let mut outputs: HashMap<RequestId, Vec<SampleOutput>> = HashMap::new();
        for (&(sid, n), bs) in plan.scheduled.iter().zip(&batch.seqs) {
            let Some(seq) = self.sched.seqs.get_mut(&sid) else {
                continue;
            };
            seq.num_computed += n;
            self.kv.commit(sid, &seq.tokens, seq.num_computed);
            let mut rows: Vec<Vec<f32>> = Vec::new();
            if bs.all_logits {
                // Asked for whole (`BatchSeq::need` covers only the last row
                // of other sequences), so every row is `Full`.
                rows.extend(logits.by_ref().take(n).filter_map(LogitsRow::into_full));
                let k = seq.params.prompt_logprobs.unwrap_or(0);
                let prompt = &seq.tokens[..seq.prompt_len];
                if let Some(entries) = self
                    .requests
                    .get_mut(&seq.request)
                    .and_then(|r| r.prompt_logprobs.as_mut())
                {
                    prompt_logprobs::collect(entries, prompt, seq.num_computed - n, &rows, k);
                }
            }
            if !bs.want_logits {
                continue;
            }
            let row = if bs.all_logits {
                rows.pop().map(LogitsRow::Full)
            } else {
                logits.next()
            };
            let Some(row) = row else {
                continue;
            };
            let out = sample_and_advance(seq, row, &self.tokenizer, self.max_model_len);
            let request = seq.request;
            if out.finish_reason.is_some() {
                self.sched.remove(sid, &mut self.kv);
            }
            outputs.entry(request).or_default().push(out);
        }
        for (rid, samples) in outputs {
            let Some(req) = self.requests.get_mut(&rid) else {
                continue;
            };
            let sampled = samples.iter().map(|s| s.token_ids.len()).sum::<usize>();
            req.usage.completion_tokens += sampled;
            self.generation_tokens += sampled as u64;
            req.remaining -= samples.iter().filter(|s| s.finish_reason.is_some()).count();
            let finished = req.remaining == 0;
            let prompt_len = req.usage.prompt_tokens;
            let _ = req.tx.send(RequestOutput {
                samples,
                usage: req.usage,
                finished,
                prompt_logprobs: req
                    .prompt_logprobs
                    .take_if(|entries| entries.len() + 1 >= prompt_len),
            });
            if finished {
                self.requests.remove(&rid);
            }
        }
    }

    fn publish_stats(&self) {
        let prefix = self.kv.prefix_stats();
        if let Ok(mut s) = self.shared.stats.lock() {
            s.running = self.sched.num_running();
            s.waiting = self.sched.num_waiting();
            s.kv_usage = self.kv.usage();
            s.free_blocks = self.kv.num_free_blocks();
            s.total_blocks = self.kv.num_blocks();
            s.prefix_queries = prefix.queries;
            s.prefix_hits = prefix.hits;
            s.preemptions = self.sched.preemptions();
            s.steps = self.steps;
            s.step_tokens = self.step_tokens;
            s.prompt_tokens = self.prompt_tokens;
            s.generation_tokens = self.generation_tokens;
            s.kv_events_dropped = self.kv_events.as_ref().map_or(0, KvEventSender::dropped);
        }
    }
}

/// What the logits processors of `seq` see of it at its next token.
fn logits_context(seq: &Sequence) -> LogitsContext {
    let num_generated = seq.num_generated();
    LogitsContext {
        num_generated,
        tokens_left: seq.params.max_tokens.saturating_sub(num_generated),
        phase: seq.reasoning.phase(),
        reasoning_tokens: seq.reasoning.reasoning_tokens(),
    }
}

/// Samples the next token of `seq`, appends it, turns it into text and
/// routes the text to reasoning or answer, deciding whether the sequence
/// ends here.
fn sample_and_advance(
    seq: &mut Sequence,
    row: LogitsRow,
    tokenizer: &Tokenizer,
    max_model_len: usize,
) -> SampleOutput {
    let params: Arc<SamplingParams> = seq.params.clone();
    let ctx = logits_context(seq);
    let (processors, control) = (&mut seq.processors, &mut seq.control);
    let (mut token, raw_logprobs) = sample(row, &params, &mut seq.sampler, &seq.tokens, |l| {
        for p in processors.iter_mut() {
            p.process(&ctx, l);
        }
        if let Some(c) = control.as_mut() {
            c.process(&ctx, l);
        }
    });
    // The model's own end (not a stop id the client chose) inside bounded
    // reasoning becomes the close.
    if seq.stop_ids.contains(&token) && !params.stop_token_ids.contains(&token) {
        if let Some(close) = control.as_mut().and_then(|c| c.close_instead_of_stop(&ctx)) {
            token = close;
        }
    }
    let logprob = raw_logprobs.map(|raw| logprob_entry(&raw, token, params.logprobs.unwrap_or(0)));
    let forced = control.as_ref().is_some_and(|c| c.forcing());
    for p in processors.iter_mut() {
        p.observe(&ctx, token);
    }
    if let Some(c) = control.as_mut() {
        c.observe(&ctx, token);
    }
    seq.tokens.push(token);
    seq.sampler.observe(token);

    let ends_by_token = !forced && seq.stop_ids.contains(&token);
    let mut text = String::new();
    let mut stop_reason = None;
    let mut finish = None;
    if ends_by_token {
        finish = Some(FinishReason::Stop);
        if params.stop_token_ids.contains(&token) {
            stop_reason = Some(StopReason::Token(token));
        }
        if params.include_stop_str_in_output {
            // The ending token's text is kept too, after any text held
            // back for a stop string that can no longer complete.
            text = seq.stop.flush();
            text.push_str(&seq.detok.push(tokenizer, token).unwrap_or_default());
            text.push_str(&seq.detok.flush(tokenizer).unwrap_or_default());
        }
    } else {
        let delta = seq.detok.push(tokenizer, token).unwrap_or_default();
        let (emit, hit) = seq.match_stops(&delta);
        text = emit;
        if hit.is_some() {
            finish = Some(FinishReason::Stop);
            stop_reason = hit.map(StopReason::Text);
        }
    }
    let mut split = seq.reasoning.push(1, &text, forced);
    if finish.is_none() && seq.control.as_ref().is_some_and(|c| c.should_stop()) {
        finish = Some(FinishReason::Stop);
    }
    if finish.is_none()
        && (seq.num_generated() >= params.max_tokens || seq.tokens.len() >= max_model_len)
    {
        finish = Some(FinishReason::Length);
    }
    if finish.is_some() && stop_reason.is_none() && !ends_by_token {
        // Length or loop: release text held for a possible stop string or
        // an incomplete character.
        let tail = seq.detok.flush(tokenizer).unwrap_or_default();
        let (mut more, _) = seq.stop.push(&tail);
        more.push_str(&seq.stop.flush());
        let rest = seq.reasoning.push(0, &more, false);
        split.reasoning.push_str(&rest.reasoning);
        split.content.push_str(&rest.content);
    }
    let phase = seq.reasoning.phase();
    if finish.is_some() {
        let tail = seq.reasoning.finish();
        split.reasoning.push_str(&tail.reasoning);
        split.content.push_str(&tail.content);
    }
    let reasoning_end = finish.and_then(|f| seq.control.as_ref().map(|c| c.end_state(phase, f)));
    SampleOutput {
        index: seq.index,
        token_ids: vec![token],
        text: split.content,
        reasoning: split.reasoning,
        reasoning_tokens: seq.reasoning.reasoning_tokens(),
        in_reasoning: phase == ReasoningPhase::Inside,
        reasoning_end,
        logprobs: logprob.into_iter().collect(),
        finish_reason: finish,
        stop_reason,
    }
}
