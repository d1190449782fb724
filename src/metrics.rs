//! Prometheus metrics, named like vLLM's (`r1serve:` instead of `vllm:`) and
//! labelled with `model_name` as vLLM's are, so existing dashboards and
//! alerts carry over, plus reasoning-specific ones.
//!
//! Request metrics are recorded in exactly one place, a [`RequestRecorder`]
//! that the handlers feed as outputs flow and that reports in `Drop`, so an
//! aborted or disconnected request is counted as surely as a finished one.
//! Engine-wide gauges and counters, token counts included, are copied from
//! [`EngineStats`] at scrape time rather than pushed by the engine, so the
//! engine loop never touches the metrics registry; the engine keeps those
//! counts per step, so throughput graphs follow the work as it is done.
//!
//! Every metric is present from the first scrape after the model loads,
//! counters at 0 and histograms empty, so rates and alerts work before the
//! first request (and the llm-d endpoint picker, which reads the queue and
//! cache gauges, sees an idle replica rather than a broken one).

mod vllm;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use metrics::{counter, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::engine::types::EngineStats;
use crate::reasoning::ReasoningEnd;

/// Metric names, shared by the recorder, the scrape refresh and the tests.
pub mod names {
    /// Requests the engine is running.
    pub const NUM_REQUESTS_RUNNING: &str = "r1serve:num_requests_running";
    /// Requests waiting for admission.
    pub const NUM_REQUESTS_WAITING: &str = "r1serve:num_requests_waiting";
    /// Fraction of KV-cache blocks in use.
    pub const KV_CACHE_USAGE_PERC: &str = "r1serve:kv_cache_usage_perc";
    /// Prompt tokens looked up in the prefix cache.
    pub const PREFIX_CACHE_QUERIES: &str = "r1serve:prefix_cache_queries_total";
    /// Prompt tokens found in the prefix cache.
    pub const PREFIX_CACHE_HITS: &str = "r1serve:prefix_cache_hits_total";
    /// Requests preempted to free KV blocks.
    pub const NUM_PREEMPTIONS: &str = "r1serve:num_preemptions_total";
    /// Model steps the engine ran.
    pub const ENGINE_STEPS: &str = "r1serve:engine_steps_total";
    /// Tokens computed in those steps.
    pub const ENGINE_STEP_TOKENS: &str = "r1serve:engine_step_tokens_total";
    /// The KV cache's configuration as labels, value 1.
    pub const CACHE_CONFIG_INFO: &str = "r1serve:cache_config_info";
    /// Prompt tokens prefilled, a cached prefix included.
    pub const PROMPT_TOKENS: &str = "r1serve:prompt_tokens_total";
    /// Generated tokens, counted as they are sampled.
    pub const GENERATION_TOKENS: &str = "r1serve:generation_tokens_total";
    /// Finished requests, by `finished_reason`.
    pub const REQUEST_SUCCESS: &str = "r1serve:request_success_total";
    /// Arrival to first generated token.
    pub const TIME_TO_FIRST_TOKEN: &str = "r1serve:time_to_first_token_seconds";
    /// Gap between consecutive outputs of a request.
    pub const INTER_TOKEN_LATENCY: &str = "r1serve:inter_token_latency_seconds";
    /// Arrival to last output.
    pub const E2E_REQUEST_LATENCY: &str = "r1serve:e2e_request_latency_seconds";
    /// Engine submission to first output.
    pub const REQUEST_QUEUE_TIME: &str = "r1serve:request_queue_time_seconds";
    /// Generated tokens that were reasoning.
    pub const REASONING_TOKENS: &str = "r1serve:reasoning_tokens_total";
    /// Reasoning tokens per request.
    pub const REQUEST_REASONING_TOKENS: &str = "r1serve:request_reasoning_tokens";
    /// Arrival to the first answer (non-reasoning) text.
    pub const TIME_TO_FIRST_ANSWER_TOKEN: &str = "r1serve:time_to_first_answer_token_seconds";
    /// Requests whose output ended inside the reasoning block.
    pub const FINISHED_IN_REASONING: &str = "r1serve:finished_in_reasoning_total";
    /// Tool calls the model wrote inside its reasoning, which are not
    /// executed.
    pub const TOOL_CALLS_IN_REASONING: &str = "r1serve:tool_calls_in_reasoning_total";
    /// Choices by how their reasoning ended (`state` label).
    pub const REASONING_END: &str = "r1serve:reasoning_end_total";
    /// Per request, the share of the reasoning's words written in the
    /// question's script (1 = no language mixing).
    pub const REASONING_LANGUAGE_CONSISTENCY: &str = "r1serve:reasoning_language_consistency";
    /// KV-cache events dropped because their publisher fell behind.
    pub const KV_EVENTS_DROPPED: &str = "r1serve:kv_events_dropped_total";
}

/// Latency buckets in seconds: 1 ms to 10 min, dense below a second where
/// token latencies live.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 320.0, 640.0,
];

/// Reasoning-length buckets in tokens: R1 traces run from a few dozen to
/// tens of thousands of tokens.
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
    32768.0,
];

/// Language-consistency buckets: a share of words, finest near 1 where a
/// model that mixes languages a little shows up.
const SHARE_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0];

/// The label every metric carries: the served model's name.
pub const MODEL_NAME_LABEL: &str = "model_name";

/// How often histogram samples are folded into their buckets when nobody
/// scrapes: until then each sample is buffered, so an unscraped server's
/// memory would grow with every token it serves.
pub const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Extra names the metrics are exported under (`--metrics-compat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsCompat {
    /// vLLM's `vllm:` names, for every metric that has one.
    Vllm,
}

impl std::str::FromStr for MetricsCompat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "vllm" => Ok(Self::Vllm),
            other => Err(format!(
                "unknown metrics compatibility '{other}' (known: vllm)"
            )),
        }
    }
}

/// The installed Prometheus recorder.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// Installs the process-wide recorder that the `metrics` macros write
    /// to. Fails if one is already installed.
    pub fn install() -> Result<Self> {
        Self::install_with(None)
    }

    /// [`install`](Self::install), also exporting under the names of
    /// `compat`.
    pub fn install_with(compat: Option<MetricsCompat>) -> Result<Self> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(names::REQUEST_REASONING_TOKENS.into()),
                    TOKEN_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(names::REASONING_LANGUAGE_CONSISTENCY.into()),
                    SHARE_BUCKETS,
                )
            })
            .context("configuring histogram buckets")?
            .build_recorder();
        let handle = recorder.handle();
        let installed = match compat {
            None => metrics::set_global_recorder(recorder).is_ok(),
            Some(MetricsCompat::Vllm) => {
                metrics::set_global_recorder(vllm::VllmAliases::new(recorder)).is_ok()
            }
        };
        anyhow::ensure!(
            installed,
            "installing the Prometheus recorder: one is already installed"
        );
        describe();
        Ok(Self { handle })
    }

    /// Renders the Prometheus text exposition, first copying the engine's
    /// current state (when a model is loaded, with the name it is served
    /// under) into the engine-wide metrics.
    pub fn render(&self, engine: Option<(&str, EngineStats)>) -> String {
        if let Some((model_name, stats)) = engine {
            record_engine_stats(model_name, &stats);
        }
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// Starts the periodic upkeep of this recorder on the current Tokio
    /// runtime; see [`spawn_upkeep`].
    pub fn spawn_upkeep(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        spawn_upkeep(self.handle.clone(), period)
    }
}

/// Folds buffered histogram samples into their buckets every `period`, the
/// job the exporter's own HTTP listener would do if this server used it.
pub fn spawn_upkeep(handle: PrometheusHandle, period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            handle.run_upkeep();
        }
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        names::NUM_REQUESTS_RUNNING,
        "Requests being prefilled or decoded"
    );
    describe_gauge!(
        names::NUM_REQUESTS_WAITING,
        "Requests waiting for admission"
    );
    describe_gauge!(
        names::KV_CACHE_USAGE_PERC,
        Unit::Percent,
        "Fraction of KV-cache blocks in use (1 = full)"
    );
    describe_counter!(
        names::PREFIX_CACHE_QUERIES,
        "Prompt tokens looked up in the prefix cache"
    );
    describe_counter!(
        names::PREFIX_CACHE_HITS,
        "Prompt tokens served from the prefix cache"
    );
    describe_counter!(
        names::NUM_PREEMPTIONS,
        "Requests preempted to free KV-cache blocks"
    );
    describe_counter!(names::ENGINE_STEPS, "Model steps run by the engine");
    describe_counter!(
        names::KV_EVENTS_DROPPED,
        "KV-cache events dropped because their publisher fell behind"
    );
    describe_counter!(
        names::ENGINE_STEP_TOKENS,
        "Tokens computed in engine steps (prompt chunks and decodes); over steps, tokens per step"
    );
    describe_gauge!(
        names::CACHE_CONFIG_INFO,
        "KV cache configuration (block_size, cache_dtype, enable_prefix_caching, num_blocks) as labels"
    );
    describe_counter!(
        names::PROMPT_TOKENS,
        "Prompt tokens prefilled (a cached prefix included), counted per engine step"
    );
    describe_counter!(
        names::GENERATION_TOKENS,
        "Generated tokens, counted per engine step"
    );
    describe_counter!(
        names::REQUEST_SUCCESS,
        "Finished requests by finished_reason"
    );
    describe_histogram!(
        names::TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "Arrival to first generated token"
    );
    describe_histogram!(
        names::INTER_TOKEN_LATENCY,
        Unit::Seconds,
        "Time between consecutive outputs"
    );
    describe_histogram!(
        names::E2E_REQUEST_LATENCY,
        Unit::Seconds,
        "Arrival to last output"
    );
    describe_histogram!(
        names::REQUEST_QUEUE_TIME,
        Unit::Seconds,
        "Engine submission to first output (queueing and prefill)"
    );
    describe_counter!(
        names::REASONING_TOKENS,
        "Generated tokens inside reasoning blocks"
    );
    describe_histogram!(
        names::REQUEST_REASONING_TOKENS,
        "Reasoning tokens per finished request"
    );
    describe_histogram!(
        names::TIME_TO_FIRST_ANSWER_TOKEN,
        Unit::Seconds,
        "Arrival to the first answer token after the reasoning"
    );
    describe_counter!(
        names::FINISHED_IN_REASONING,
        "Requests whose output ended before the reasoning block closed"
    );
    describe_counter!(
        names::TOOL_CALLS_IN_REASONING,
        "Tool calls written inside reasoning blocks, which are not executed"
    );
    describe_counter!(
        names::REASONING_END,
        "Finished choices by how their reasoning ended (state: closed, budget, loop, length, none)"
    );
    describe_histogram!(
        names::REASONING_LANGUAGE_CONSISTENCY,
        "Per request, the share of the reasoning's words written in the script of the question \
         (its last user message); requests without words on either side are not counted"
    );
}

fn record_engine_stats(model_name: &str, stats: &EngineStats) {
    let model = || {
        vec![metrics::Label::new(
            MODEL_NAME_LABEL,
            model_name.to_string(),
        )]
    };
    gauge!(names::NUM_REQUESTS_RUNNING, model()).set(stats.running as f64);
    gauge!(names::NUM_REQUESTS_WAITING, model()).set(stats.waiting as f64);
    gauge!(names::KV_CACHE_USAGE_PERC, model()).set(stats.kv_usage);
    // The engine keeps these as running totals; `absolute` republishes them
    // as counters without a second copy of the arithmetic here.
    counter!(names::PREFIX_CACHE_QUERIES, model()).absolute(stats.prefix_queries);
    counter!(names::PREFIX_CACHE_HITS, model()).absolute(stats.prefix_hits);
    counter!(names::NUM_PREEMPTIONS, model()).absolute(stats.preemptions);
    counter!(names::ENGINE_STEPS, model()).absolute(stats.steps);
    counter!(names::ENGINE_STEP_TOKENS, model()).absolute(stats.step_tokens);
    counter!(names::PROMPT_TOKENS, model()).absolute(stats.prompt_tokens);
    counter!(names::GENERATION_TOKENS, model()).absolute(stats.generation_tokens);
    counter!(names::KV_EVENTS_DROPPED, model()).absolute(stats.kv_events_dropped);
    register_request_metrics(model_name);
    // An engine always has blocks; without one there is no cache to describe.
    if stats.total_blocks > 0 {
        gauge!(
            names::CACHE_CONFIG_INFO,
            MODEL_NAME_LABEL => model_name.to_string(),
            "block_size" => stats.block_size.to_string(),
            "cache_dtype" => stats.kv_dtype.to_string(),
            "enable_prefix_caching" => stats.prefix_caching.to_string(),
            "num_blocks" => stats.total_blocks.to_string(),
            // vLLM's name for the same count, which the llm-d picker reads.
            "num_gpu_blocks" => stats.total_blocks.to_string(),
        )
        .set(1.0);
    }
}

/// Registers the per-request metrics of `model_name` that
/// [`RequestRecorder`] writes, so they are exported (at 0, or empty) before
/// the first request ends. Registering an existing metric changes nothing.
fn register_request_metrics(model_name: &str) {
    let model = || {
        vec![metrics::Label::new(
            MODEL_NAME_LABEL,
            model_name.to_string(),
        )]
    };
    for reason in ["stop", "length", "abort"] {
        counter!(
            names::REQUEST_SUCCESS,
            MODEL_NAME_LABEL => model_name.to_string(),
            "finished_reason" => reason
        )
        .increment(0);
    }
    for counter in [
        names::REASONING_TOKENS,
        names::FINISHED_IN_REASONING,
        names::TOOL_CALLS_IN_REASONING,
    ] {
        counter!(counter, model()).increment(0);
    }
    for state in ReasoningEnd::ALL {
        counter!(
            names::REASONING_END,
            MODEL_NAME_LABEL => model_name.to_string(),
            "state" => state.as_str()
        )
        .increment(0);
    }
    for histogram in [
        names::TIME_TO_FIRST_TOKEN,
        names::INTER_TOKEN_LATENCY,
        names::E2E_REQUEST_LATENCY,
        names::REQUEST_QUEUE_TIME,
        names::REQUEST_REASONING_TOKENS,
        names::TIME_TO_FIRST_ANSWER_TOKEN,
        names::REASONING_LANGUAGE_CONSISTENCY,
    ] {
        let _registered = histogram!(histogram, model());
    }
}

/// How a request's generation ended, as the handler saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// `finished_reason` label: `stop` or `length`.
    pub finished_reason: &'static str,
    /// Generated tokens counted as reasoning, all choices.
    pub reasoning_tokens: usize,
    /// Whether any choice ended inside its reasoning block.
    pub ended_in_reasoning: bool,
    /// Tool calls written inside reasoning blocks, all choices.
    pub tool_calls_in_reasoning: usize,
    /// Choices per reasoning end state, in [`ReasoningEnd::ALL`] order.
    pub reasoning_ends: [usize; ReasoningEnd::ALL.len()],
}

/// Collects one request's timings and token counts and records them once,
/// when dropped. A request dropped before [`finish`](Self::finish) — client
/// gone, engine stopped — is recorded with `finished_reason="abort"`.
///
/// Token counts are not recorded here: the engine counts them per step.
#[derive(Debug)]
pub struct RequestRecorder {
    model_name: Arc<str>,
    arrived: Instant,
    submitted: Instant,
    last_output: Option<Instant>,
    answer_started: bool,
    completion: Option<Completion>,
}

impl RequestRecorder {
    /// Starts timing a request for `model_name` that arrived at `arrived`
    /// and was accepted by the engine just now.
    pub fn new(model_name: Arc<str>, arrived: Instant) -> Self {
        Self {
            model_name,
            arrived,
            submitted: Instant::now(),
            last_output: None,
            answer_started: false,
            completion: None,
        }
    }

    /// The `model_name` label of this request's metrics.
    fn model(&self) -> [(&'static str, Arc<str>); 1] {
        [(MODEL_NAME_LABEL, Arc::clone(&self.model_name))]
    }

    /// Notes an engine output carrying `new_tokens` generated tokens.
    pub fn on_output(&mut self, new_tokens: usize) {
        if new_tokens == 0 {
            return;
        }
        let now = Instant::now();
        match self.last_output {
            None => {
                histogram!(names::TIME_TO_FIRST_TOKEN, &self.model())
                    .record(now.duration_since(self.arrived).as_secs_f64());
                histogram!(names::REQUEST_QUEUE_TIME, &self.model())
                    .record(now.duration_since(self.submitted).as_secs_f64());
            }
            Some(last) => {
                histogram!(names::INTER_TOKEN_LATENCY, &self.model())
                    .record(now.duration_since(last).as_secs_f64());
            }
        }
        self.last_output = Some(now);
    }

    /// Notes that answer (non-reasoning) text has been produced; only the
    /// first call per request is recorded.
    pub fn on_answer_text(&mut self) {
        if !self.answer_started {
            self.answer_started = true;
            histogram!(names::TIME_TO_FIRST_ANSWER_TOKEN, &self.model())
                .record(self.arrived.elapsed().as_secs_f64());
        }
    }

    /// Records the share of the request's reasoning written in the
    /// question's script.
    pub fn on_reasoning_language(&self, share: f64) {
        histogram!(names::REASONING_LANGUAGE_CONSISTENCY, &self.model()).record(share);
    }

    /// Marks the request as finished normally; the metrics are written when
    /// the recorder is dropped.
    pub fn finish(&mut self, completion: Completion) {
        self.completion = Some(completion);
    }
}

impl Drop for RequestRecorder {
    fn drop(&mut self) {
        let end = self.last_output.unwrap_or_else(Instant::now);
        histogram!(names::E2E_REQUEST_LATENCY, &self.model())
            .record(end.duration_since(self.arrived).as_secs_f64());
        let Some(completion) = self.completion else {
            counter!(
                names::REQUEST_SUCCESS,
                MODEL_NAME_LABEL => Arc::clone(&self.model_name),
                "finished_reason" => "abort"
            )
            .increment(1);
            return;
        };
        counter!(
            names::REQUEST_SUCCESS,
            MODEL_NAME_LABEL => Arc::clone(&self.model_name),
            "finished_reason" => completion.finished_reason
        )
        .increment(1);
        counter!(names::REASONING_TOKENS, &self.model())
            .increment(completion.reasoning_tokens as u64);
        histogram!(names::REQUEST_REASONING_TOKENS, &self.model())
            .record(completion.reasoning_tokens as f64);
        if completion.ended_in_reasoning {
            counter!(names::FINISHED_IN_REASONING, &self.model()).increment(1);
        }
        counter!(names::TOOL_CALLS_IN_REASONING, &self.model())
            .increment(completion.tool_calls_in_reasoning as u64);
        for (state, &count) in ReasoningEnd::ALL.iter().zip(&completion.reasoning_ends) {
            if count > 0 {
                counter!(
                    names::REASONING_END,
                    MODEL_NAME_LABEL => Arc::clone(&self.model_name),
                    "state" => state.as_str()
                )
                .increment(count as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    /// Runs `f` against a private recorder and returns the rendered text, so
    /// tests do not depend on (or fight over) the global recorder.
    fn rendered(f: impl FnOnce()) -> String {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, f);
        handle.render()
    }

    #[test]
    fn dropped_request_counts_as_abort() {
        let text = rendered(|| {
            let mut recorder = RequestRecorder::new(Arc::from("m"), Instant::now());
            recorder.on_output(1);
        });
        assert!(
            text.contains(
                "r1serve:request_success_total{model_name=\"m\",finished_reason=\"abort\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("r1serve:time_to_first_token_seconds_count{model_name=\"m\"} 1"),
            "{text}"
        );
        // Token counts are the engine's, not the recorder's.
        assert!(!text.contains("r1serve:prompt_tokens_total"), "{text}");
    }

    #[test]
    fn finished_request_records_reasoning() {
        let text = rendered(|| {
            let mut recorder = RequestRecorder::new(Arc::from("m"), Instant::now());
            recorder.on_output(1);
            recorder.on_output(1);
            recorder.on_answer_text();
            recorder.on_answer_text();
            recorder.finish(Completion {
                finished_reason: "length",
                reasoning_tokens: 7,
                ended_in_reasoning: true,
                tool_calls_in_reasoning: 2,
                reasoning_ends: [0, 2, 0, 1, 0],
            });
        });
        for line in [
            "r1serve:request_success_total{model_name=\"m\",finished_reason=\"length\"} 1",
            "r1serve:reasoning_tokens_total{model_name=\"m\"} 7",
            "r1serve:finished_in_reasoning_total{model_name=\"m\"} 1",
            "r1serve:tool_calls_in_reasoning_total{model_name=\"m\"} 2",
            "r1serve:reasoning_end_total{model_name=\"m\",state=\"budget\"} 2",
            "r1serve:reasoning_end_total{model_name=\"m\",state=\"length\"} 1",
            "r1serve:inter_token_latency_seconds_count{model_name=\"m\"} 1",
            "r1serve:time_to_first_answer_token_seconds_count{model_name=\"m\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn engine_stats_become_gauges_and_counters() {
        let text = rendered(|| {
            record_engine_stats(
                "m",
                &EngineStats {
                    running: 3,
                    waiting: 2,
                    kv_usage: 0.5,
                    prefix_queries: 10,
                    prefix_hits: 4,
                    preemptions: 1,
                    steps: 6,
                    step_tokens: 40,
                    prompt_tokens: 30,
                    generation_tokens: 9,
                    total_blocks: 100,
                    block_size: 32,
                    kv_dtype: crate::kv_cache::storage::KvDtype::Fp8E4m3,
                    prefix_caching: true,
                    ..EngineStats::default()
                },
            )
        });
        for line in [
            "r1serve:num_requests_running{model_name=\"m\"} 3",
            "r1serve:num_requests_waiting{model_name=\"m\"} 2",
            "r1serve:kv_cache_usage_perc{model_name=\"m\"} 0.5",
            "r1serve:prefix_cache_hits_total{model_name=\"m\"} 4",
            "r1serve:num_preemptions_total{model_name=\"m\"} 1",
            "r1serve:engine_steps_total{model_name=\"m\"} 6",
            "r1serve:engine_step_tokens_total{model_name=\"m\"} 40",
            "r1serve:prompt_tokens_total{model_name=\"m\"} 30",
            "r1serve:generation_tokens_total{model_name=\"m\"} 9",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        let info = text
            .lines()
            .find(|l| l.starts_with("r1serve:cache_config_info{"))
            .unwrap_or_else(|| panic!("{text}"));
        for label in [
            "model_name=\"m\"",
            "block_size=\"32\"",
            "cache_dtype=\"fp8\"",
            "enable_prefix_caching=\"true\"",
            "num_blocks=\"100\"",
            "num_gpu_blocks=\"100\"",
        ] {
            assert!(info.contains(label), "{info}");
        }
        assert!(info.ends_with("} 1"), "{info}");
        // Per-request metrics exist before any request has ended.
        for line in [
            "r1serve:request_success_total{model_name=\"m\",finished_reason=\"stop\"} 0",
            "r1serve:request_success_total{model_name=\"m\",finished_reason=\"abort\"} 0",
            "r1serve:reasoning_end_total{model_name=\"m\",state=\"closed\"} 0",
            "r1serve:time_to_first_token_seconds_count{model_name=\"m\"} 0",
            "r1serve:e2e_request_latency_seconds_count{model_name=\"m\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
