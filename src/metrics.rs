//! Prometheus metrics, named like vLLM's (`r1serve:` instead of `vllm:`) so
//! existing dashboards and alerts carry over, plus reasoning-specific ones.
//!
//! Request metrics are recorded in exactly one place, a [`RequestRecorder`]
//! that the handlers feed as outputs flow and that reports in `Drop`, so an
//! aborted or disconnected request is counted as surely as a finished one.
//! Engine-wide gauges and counters are copied from [`EngineStats`] at scrape
//! time rather than pushed by the engine, so the engine loop never touches
//! the metrics registry.

use std::time::Instant;

use anyhow::{Context, Result};
use metrics::{counter, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::engine::types::{EngineStats, RequestUsage};

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
    /// Prompt tokens of finished requests.
    pub const PROMPT_TOKENS: &str = "r1serve:prompt_tokens_total";
    /// Generated tokens of finished requests.
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

/// The installed Prometheus recorder.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// Installs the process-wide recorder that the `metrics` macros write
    /// to. Fails if one is already installed.
    pub fn install() -> Result<Self> {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(names::REQUEST_REASONING_TOKENS.into()),
                    TOKEN_BUCKETS,
                )
            })
            .context("configuring histogram buckets")?
            .install_recorder()
            .context("installing the Prometheus recorder")?;
        describe();
        Ok(Self { handle })
    }

    /// Renders the Prometheus text exposition, first copying the engine's
    /// current state (when a model is loaded) into the engine-wide metrics.
    pub fn render(&self, stats: Option<EngineStats>) -> String {
        if let Some(stats) = stats {
            record_engine_stats(&stats);
        }
        // Without the exporter's HTTP listener nothing drains histogram
        // buffers in the background, so do it on every scrape.
        self.handle.run_upkeep();
        self.handle.render()
    }
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
        names::ENGINE_STEP_TOKENS,
        "Tokens computed in engine steps (prompt chunks and decodes); over steps, tokens per step"
    );
    describe_gauge!(
        names::CACHE_CONFIG_INFO,
        "KV cache configuration (block_size, cache_dtype, enable_prefix_caching, num_blocks) as labels"
    );
    describe_counter!(names::PROMPT_TOKENS, "Prompt tokens of finished requests");
    describe_counter!(
        names::GENERATION_TOKENS,
        "Generated tokens of finished requests"
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
}

fn record_engine_stats(stats: &EngineStats) {
    gauge!(names::NUM_REQUESTS_RUNNING).set(stats.running as f64);
    gauge!(names::NUM_REQUESTS_WAITING).set(stats.waiting as f64);
    gauge!(names::KV_CACHE_USAGE_PERC).set(stats.kv_usage);
    // The engine keeps these as running totals; `absolute` republishes them
    // as counters without a second copy of the arithmetic here.
    counter!(names::PREFIX_CACHE_QUERIES).absolute(stats.prefix_queries);
    counter!(names::PREFIX_CACHE_HITS).absolute(stats.prefix_hits);
    counter!(names::NUM_PREEMPTIONS).absolute(stats.preemptions);
    counter!(names::ENGINE_STEPS).absolute(stats.steps);
    counter!(names::ENGINE_STEP_TOKENS).absolute(stats.step_tokens);
    // An engine always has blocks; without one there is no cache to describe.
    if stats.total_blocks > 0 {
        gauge!(
            names::CACHE_CONFIG_INFO,
            "block_size" => stats.block_size.to_string(),
            "cache_dtype" => stats.kv_dtype.to_string(),
            "enable_prefix_caching" => stats.prefix_caching.to_string(),
            "num_blocks" => stats.total_blocks.to_string(),
        )
        .set(1.0);
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
}

/// Collects one request's timings and token counts and records them once,
/// when dropped. A request dropped before [`finish`](Self::finish) — client
/// gone, engine stopped — is recorded with `finished_reason="abort"`.
#[derive(Debug)]
pub struct RequestRecorder {
    arrived: Instant,
    submitted: Instant,
    last_output: Option<Instant>,
    answer_started: bool,
    usage: RequestUsage,
    completion: Option<Completion>,
}

impl RequestRecorder {
    /// Starts timing a request that arrived at `arrived` and was accepted by
    /// the engine just now.
    pub fn new(arrived: Instant) -> Self {
        Self {
            arrived,
            submitted: Instant::now(),
            last_output: None,
            answer_started: false,
            usage: RequestUsage::default(),
            completion: None,
        }
    }

    /// Notes an engine output carrying `new_tokens` generated tokens and the
    /// request's usage so far.
    pub fn on_output(&mut self, new_tokens: usize, usage: RequestUsage) {
        self.usage = usage;
        if new_tokens == 0 {
            return;
        }
        let now = Instant::now();
        match self.last_output {
            None => {
                histogram!(names::TIME_TO_FIRST_TOKEN)
                    .record(now.duration_since(self.arrived).as_secs_f64());
                histogram!(names::REQUEST_QUEUE_TIME)
                    .record(now.duration_since(self.submitted).as_secs_f64());
            }
            Some(last) => {
                histogram!(names::INTER_TOKEN_LATENCY)
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
            histogram!(names::TIME_TO_FIRST_ANSWER_TOKEN)
                .record(self.arrived.elapsed().as_secs_f64());
        }
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
        histogram!(names::E2E_REQUEST_LATENCY)
            .record(end.duration_since(self.arrived).as_secs_f64());
        counter!(names::PROMPT_TOKENS).increment(self.usage.prompt_tokens as u64);
        counter!(names::GENERATION_TOKENS).increment(self.usage.completion_tokens as u64);
        let Some(completion) = self.completion else {
            counter!(names::REQUEST_SUCCESS, "finished_reason" => "abort").increment(1);
            return;
        };
        counter!(names::REQUEST_SUCCESS, "finished_reason" => completion.finished_reason)
            .increment(1);
        counter!(names::REASONING_TOKENS).increment(completion.reasoning_tokens as u64);
        histogram!(names::REQUEST_REASONING_TOKENS).record(completion.reasoning_tokens as f64);
        if completion.ended_in_reasoning {
            counter!(names::FINISHED_IN_REASONING).increment(1);
        }
        counter!(names::TOOL_CALLS_IN_REASONING)
            .increment(completion.tool_calls_in_reasoning as u64);
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
            let mut recorder = RequestRecorder::new(Instant::now());
            recorder.on_output(
                1,
                RequestUsage {
                    prompt_tokens: 5,
                    cached_tokens: 0,
                    completion_tokens: 1,
                },
            );
        });
        assert!(
            text.contains("r1serve:request_success_total{finished_reason=\"abort\"} 1"),
            "{text}"
        );
        assert!(text.contains("r1serve:prompt_tokens_total 5"), "{text}");
        assert!(
            text.contains("r1serve:time_to_first_token_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    fn finished_request_records_reasoning() {
        let text = rendered(|| {
            let mut recorder = RequestRecorder::new(Instant::now());
            recorder.on_output(1, RequestUsage::default());
            recorder.on_output(1, RequestUsage::default());
            recorder.on_answer_text();
            recorder.on_answer_text();
            recorder.finish(Completion {
                finished_reason: "length",
                reasoning_tokens: 7,
                ended_in_reasoning: true,
                tool_calls_in_reasoning: 2,
            });
        });
        assert!(
            text.contains("r1serve:request_success_total{finished_reason=\"length\"} 1"),
            "{text}"
        );
        assert!(text.contains("r1serve:reasoning_tokens_total 7"), "{text}");
        assert!(
            text.contains("r1serve:finished_in_reasoning_total 1"),
            "{text}"
        );
        assert!(
            text.contains("r1serve:tool_calls_in_reasoning_total 2"),
            "{text}"
        );
        assert!(
            text.contains("r1serve:inter_token_latency_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("r1serve:time_to_first_answer_token_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    fn engine_stats_become_gauges_and_counters() {
        let text = rendered(|| {
            record_engine_stats(&EngineStats {
                running: 3,
                waiting: 2,
                kv_usage: 0.5,
                prefix_queries: 10,
                prefix_hits: 4,
                preemptions: 1,
                steps: 6,
                step_tokens: 40,
                total_blocks: 100,
                block_size: 32,
                kv_dtype: crate::kv_cache::storage::KvDtype::Fp8E4m3,
                prefix_caching: true,
                ..EngineStats::default()
            })
        });
        assert!(text.contains("r1serve:num_requests_running 3"), "{text}");
        assert!(text.contains("r1serve:num_requests_waiting 2"), "{text}");
        assert!(text.contains("r1serve:kv_cache_usage_perc 0.5"), "{text}");
        assert!(text.contains("r1serve:prefix_cache_hits_total 4"), "{text}");
        assert!(text.contains("r1serve:num_preemptions_total 1"), "{text}");
        assert!(text.contains("r1serve:engine_steps_total 6"), "{text}");
        assert!(
            text.contains("r1serve:engine_step_tokens_total 40"),
            "{text}"
        );
        let info = text
            .lines()
            .find(|l| l.starts_with("r1serve:cache_config_info{"))
            .unwrap_or_else(|| panic!("{text}"));
        for label in [
            "block_size=\"32\"",
            "cache_dtype=\"fp8\"",
            "enable_prefix_caching=\"true\"",
            "num_blocks=\"100\"",
        ] {
            assert!(info.contains(label), "{info}");
        }
        assert!(info.ends_with("} 1"), "{info}");
    }
}
