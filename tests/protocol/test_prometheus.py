"""The one Prometheus text reader (protocol/prometheus.py), as vLLM and the emulator write it."""

from __future__ import annotations

from nim_async.protocol.prometheus import parse_prometheus

TEXT = (
    "# HELP vllm:num_requests_waiting Number of requests waiting.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0\n'
    'vllm:num_requests_waiting{engine="1",model_name="m"} 2\n'
    "vllm:num_requests_waiting_total 99\n"
    'vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m"} 7\n'
    'vllm:e2e_request_latency_seconds_sum{model_name="m",path="a}b"} 1.5\n'
    "vllm:prompt_tokens_total 12 1700000000\n"
    "vllm:broken NaN\n"
    "vllm:text abc\n"
    "vllm:empty\n"
    "\n"
)


def test_sums_label_sets_and_keeps_names_whole() -> None:
    values = parse_prometheus(TEXT)
    assert values["vllm:num_requests_waiting"] == 5.0
    assert values["vllm:num_requests_waiting_total"] == 99.0
    assert values["vllm:e2e_request_latency_seconds_bucket"] == 7.0  # +Inf is a label here
    assert values["vllm:e2e_request_latency_seconds_sum"] == 1.5  # a brace inside a label value
    assert values["vllm:prompt_tokens_total"] == 12.0  # the timestamp is not the value


def test_skips_what_is_not_a_number() -> None:
    values = parse_prometheus(TEXT)
    assert "vllm:broken" not in values
    assert "vllm:text" not in values
    assert "vllm:empty" not in values
    assert parse_prometheus("") == {}
