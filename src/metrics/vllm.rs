//! `--metrics-compat vllm`: every metric that has a vLLM equivalent is
//! also exported under vLLM's `vllm:` name, with the same labels, so the
//! llm-d endpoint picker's default vLLM configuration, vLLM's Grafana
//! dashboards and existing alerts read r1serve unchanged.
//!
//! This is a [`Recorder`] wrapped around the Prometheus one: registering a
//! metric with an alias registers both names and hands back one handle that
//! writes to both, so the code that records metrics stays unaware of the
//! aliases and the two names can never disagree.

use std::sync::Arc;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

use super::names;

/// r1serve metrics and their vLLM names (vLLM's `prometheus_client`
/// counters are exposed with `_total`). The inter-token latency also goes
/// out as `time_per_output_token_seconds`, vLLM's older name for the same
/// histogram, which dashboards still query. r1serve's queue time runs to
/// the first output, prefill included, so it is not vLLM's
/// `request_queue_time_seconds` and has no alias.
pub const ALIASES: &[(&str, &str)] = &[
    (names::NUM_REQUESTS_RUNNING, "vllm:num_requests_running"),
    (names::NUM_REQUESTS_WAITING, "vllm:num_requests_waiting"),
    (names::KV_CACHE_USAGE_PERC, "vllm:kv_cache_usage_perc"),
    (
        names::PREFIX_CACHE_QUERIES,
        "vllm:prefix_cache_queries_total",
    ),
    (names::PREFIX_CACHE_HITS, "vllm:prefix_cache_hits_total"),
    (names::NUM_PREEMPTIONS, "vllm:num_preemptions_total"),
    (names::CACHE_CONFIG_INFO, "vllm:cache_config_info"),
    (names::PROMPT_TOKENS, "vllm:prompt_tokens_total"),
    (names::GENERATION_TOKENS, "vllm:generation_tokens_total"),
    (names::REQUEST_SUCCESS, "vllm:request_success_total"),
    (
        names::TIME_TO_FIRST_TOKEN,
        "vllm:time_to_first_token_seconds",
    ),
    (
        names::INTER_TOKEN_LATENCY,
        "vllm:inter_token_latency_seconds",
    ),
    (
        names::INTER_TOKEN_LATENCY,
        "vllm:time_per_output_token_seconds",
    ),
    (
        names::E2E_REQUEST_LATENCY,
        "vllm:e2e_request_latency_seconds",
    ),
];

/// The vLLM names of r1serve metric `name`.
fn aliases(name: &str) -> impl Iterator<Item = &'static str> + '_ {
    ALIASES
        .iter()
        .filter(move |(own, _)| *own == name)
        .map(|&(_, alias)| alias)
}

/// A recorder that also records each aliased metric under its vLLM names.
pub struct VllmAliases<R> {
    inner: R,
}

impl<R> VllmAliases<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self { inner }
    }
}

/// The key of `alias` with `key`'s labels.
fn alias_key(alias: &'static str, key: &Key) -> Key {
    Key::from_parts(alias, key.labels().cloned().collect::<Vec<_>>())
}

impl<R: Recorder> VllmAliases<R> {
    /// Registers `key` and its aliases with `register`, and joins the
    /// handles into one when there are aliases.
    fn register_all<H>(
        &self,
        key: &Key,
        register: impl Fn(&Key) -> H,
        join: impl FnOnce(Vec<H>) -> H,
    ) -> H {
        let own = register(key);
        let mut all: Vec<H> = aliases(key.name())
            .map(|alias| register(&alias_key(alias, key)))
            .collect();
        if all.is_empty() {
            return own;
        }
        all.push(own);
        join(all)
    }
}

impl<R: Recorder> Recorder for VllmAliases<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        for alias in aliases(key.as_str()) {
            self.inner
                .describe_counter(alias.into(), unit, description.clone());
        }
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        for alias in aliases(key.as_str()) {
            self.inner
                .describe_gauge(alias.into(), unit, description.clone());
        }
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        for alias in aliases(key.as_str()) {
            self.inner
                .describe_histogram(alias.into(), unit, description.clone());
        }
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.register_all(
            key,
            |k| self.inner.register_counter(k, metadata),
            |all| Counter::from_arc(Arc::new(FanOut(all))),
        )
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.register_all(
            key,
            |k| self.inner.register_gauge(k, metadata),
            |all| Gauge::from_arc(Arc::new(FanOut(all))),
        )
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.register_all(
            key,
            |k| self.inner.register_histogram(k, metadata),
            |all| Histogram::from_arc(Arc::new(FanOut(all))),
        )
    }
}

/// One handle writing to several metrics.
struct FanOut<H>(Vec<H>);

impl CounterFn for FanOut<Counter> {
    fn increment(&self, value: u64) {
        self.0.iter().for_each(|c| c.increment(value));
    }

    fn absolute(&self, value: u64) {
        self.0.iter().for_each(|c| c.absolute(value));
    }
}

impl GaugeFn for FanOut<Gauge> {
    fn increment(&self, value: f64) {
        self.0.iter().for_each(|g| g.increment(value));
    }

    fn decrement(&self, value: f64) {
        self.0.iter().for_each(|g| g.decrement(value));
    }

    fn set(&self, value: f64) {
        self.0.iter().for_each(|g| g.set(value));
    }
}

impl HistogramFn for FanOut<Histogram> {
    fn record(&self, value: f64) {
        self.0.iter().for_each(|h| h.record(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn aliased_metrics_are_recorded_under_both_names() {
        let prometheus = PrometheusBuilder::new().build_recorder();
        let handle = prometheus.handle();
        let recorder = VllmAliases::new(prometheus);
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!(names::PROMPT_TOKENS, "model_name" => "m").absolute(7);
            metrics::gauge!(names::KV_CACHE_USAGE_PERC, "model_name" => "m").set(0.25);
            metrics::histogram!(names::INTER_TOKEN_LATENCY, "model_name" => "m").record(0.5);
            metrics::counter!(names::ENGINE_STEPS, "model_name" => "m").absolute(3);
        });
        let text = handle.render();
        for line in [
            "r1serve:prompt_tokens_total{model_name=\"m\"} 7",
            "vllm:prompt_tokens_total{model_name=\"m\"} 7",
            "r1serve:kv_cache_usage_perc{model_name=\"m\"} 0.25",
            "vllm:kv_cache_usage_perc{model_name=\"m\"} 0.25",
            "vllm:inter_token_latency_seconds_count{model_name=\"m\"} 1",
            "vllm:time_per_output_token_seconds_count{model_name=\"m\"} 1",
            "r1serve:engine_steps_total{model_name=\"m\"} 3",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("vllm:engine_steps"), "{text}");
    }

    #[test]
    fn every_alias_is_a_vllm_name_of_an_r1serve_metric() {
        for (own, alias) in ALIASES {
            assert!(own.starts_with("r1serve:") && alias.starts_with("vllm:"));
            assert_eq!(
                own.ends_with("_total"),
                alias.ends_with("_total"),
                "{own} and {alias} disagree on _total"
            );
        }
    }
}
