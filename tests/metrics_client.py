"""Reads r1serve's /metrics with prometheus_client's own parser, as a
Prometheus server would, and checks that every metric the llm-d endpoint
picker and vLLM's dashboards read is there with the right type, labelled
with the served model, at its idle value: the server has served nothing yet.

Environment: OPENAI_BASE_URL (the server's /v1), METRICS_MODEL (the served
name) and METRICS_COMPAT ("vllm" when the server runs with
--metrics-compat vllm, else empty). Prints the number of families checked.
"""

import os
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

BASE = os.environ["OPENAI_BASE_URL"].removesuffix("/v1")
MODEL = os.environ["METRICS_MODEL"]
COMPAT = os.environ.get("METRICS_COMPAT", "")

# Family names as prometheus_client reports them: counters without `_total`.
R1SERVE = {
    "r1serve:num_requests_running": "gauge",
    "r1serve:num_requests_waiting": "gauge",
    "r1serve:kv_cache_usage_perc": "gauge",
    "r1serve:cache_config_info": "gauge",
    "r1serve:prefix_cache_queries": "counter",
    "r1serve:prefix_cache_hits": "counter",
    "r1serve:num_preemptions": "counter",
    "r1serve:engine_steps": "counter",
    "r1serve:engine_step_tokens": "counter",
    "r1serve:prompt_tokens": "counter",
    "r1serve:generation_tokens": "counter",
    "r1serve:request_success": "counter",
    "r1serve:reasoning_tokens": "counter",
    "r1serve:finished_in_reasoning": "counter",
    "r1serve:tool_calls_in_reasoning": "counter",
    "r1serve:reasoning_end": "counter",
    "r1serve:time_to_first_token_seconds": "histogram",
    "r1serve:inter_token_latency_seconds": "histogram",
    "r1serve:e2e_request_latency_seconds": "histogram",
    "r1serve:request_queue_time_seconds": "histogram",
    "r1serve:request_reasoning_tokens": "histogram",
    "r1serve:time_to_first_answer_token_seconds": "histogram",
}

# What vLLM exports under these names (vllm/v1/metrics/loggers.py).
VLLM = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:cache_config_info": "gauge",
    "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter",
    "vllm:num_preemptions": "counter",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:time_per_output_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
}


def fail(message):
    print(message)
    sys.exit(1)


def idle_value(family, sample):
    """The value `sample` of `family` has on a server that served nothing."""
    return 1.0 if family.name.endswith("cache_config_info") else 0.0


def check_cache_config(family):
    (sample,) = family.samples
    labels = sample.labels
    if labels.get("block_size") != "16":
        fail(f"{family.name}: block_size {labels.get('block_size')!r}, expected '16'")
    blocks = labels.get("num_gpu_blocks", "")
    if not blocks.isdigit() or int(blocks) == 0:
        fail(f"{family.name}: num_gpu_blocks {blocks!r} is not a block count")
    if labels.get("num_blocks") != blocks:
        fail(f"{family.name}: num_blocks {labels.get('num_blocks')!r} != num_gpu_blocks")


def main():
    with urllib.request.urlopen(f"{BASE}/metrics") as response:
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    expected = dict(R1SERVE)
    if COMPAT == "vllm":
        expected.update(VLLM)
    elif any(name.startswith("vllm:") for name in families):
        fail("vllm: metrics exported without --metrics-compat vllm")
    for name, kind in expected.items():
        family = families.get(name)
        if family is None:
            fail(f"{name} missing; families: {sorted(families)}")
        if family.type != kind:
            fail(f"{name} is a {family.type}, expected a {kind}")
        if not family.samples:
            fail(f"{name} has no samples")
        for sample in family.samples:
            if sample.labels.get("model_name") != MODEL:
                fail(f"{name}: sample {sample} lacks model_name={MODEL!r}")
            if sample.value != idle_value(family, sample):
                fail(f"{name}: {sample} is not idle")
        if name.endswith("cache_config_info"):
            check_cache_config(family)
    reasons = {
        s.labels.get("finished_reason")
        for s in families["r1serve:request_success"].samples
    }
    if not {"stop", "length", "abort"} <= reasons:
        fail(f"request_success lacks finished reasons: {reasons}")
    print(len(expected))


main()
