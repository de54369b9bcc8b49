"""A predictor over several endpoints: choice, failover, all down, recovery (issue 17).

The choice logic is checked directly (no IO); everything else against real emulators over
loopback HTTP, counted by each emulator's own metrics (``vllm:request_success_total``, the
``success`` counters behind ``/v1/metrics``). A port nobody listens on is a real refused
connection.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from nim_async.config import NIMConfig
from nim_async.emulator import Emulator, EmulatorSettings
from nim_async.errors import (
    BadRequestError,
    EndpointsUnavailableError,
    InvalidParameterError,
    PredictionTimeoutError,
    ServerError,
    ServiceUnavailableError,
    StreamError,
)
from nim_async.http.client import ServerClient
from nim_async.http.retry import RetryPolicy
from nim_async.predict.batch import predict_many
from nim_async.predict.endpoints import (
    Balancing,
    EndpointPool,
    EndpointState,
    choose,
    down_reason,
    parse_waiting,
    shown_url,
)
from nim_async.predict.predictor import AsyncNIMPredictor
from nim_async.predict.target import resolve_endpoints
from nim_async.results import NIMDeploymentResult

from .conftest import MODEL, wait_until

FAST_HEALTH = Balancing(health_interval=0.05, health_max_interval=0.2, health_timeout=2.0)


def served(emu: Emulator) -> int:
    """Requests the emulator finished (its own counter, as /v1/metrics shows it)."""
    return sum(n for reason, n in emu.metrics.success.items() if reason != "abort")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def drain(p: AsyncNIMPredictor, image: bytes) -> list[str]:
    """Stream one prediction to its end; return its tokens."""
    async with p.stream(image) as stream:
        return [token async for token in stream]


@pytest.fixture
def dead_url() -> str:
    """A loopback URL where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def image(image_factory: Any) -> bytes:
    return bytes(image_factory(size=(96, 64), shapes=[("red", (8, 8, 60, 40))], fmt="PNG"))


# --------------------------------------------------------------------------- choice (no IO)


def _states(*outstanding: int) -> list[EndpointState]:
    return [EndpointState(f"http://e{i}", outstanding=n) for i, n in enumerate(outstanding)]


def test_choose_takes_the_fewest_outstanding() -> None:
    assert choose(_states(3, 1, 2)) == 1
    assert choose(_states(0, 0, 5), start=1) == 1


def test_choose_rotates_ties() -> None:
    states = _states(0, 0, 0)
    assert [choose(states, start=k) for k in range(6)] == [0, 1, 2, 0, 1, 2]


def test_choose_prefers_up_then_untried_then_probes() -> None:
    states = _states(5, 0, 9)
    states[1].down = "connection refused"
    assert choose(states) == 0  # up beats down, whatever the load
    assert choose(states, avoid={0}) == 2  # up and untried beats up and tried
    states[2].down = "HTTP 503"
    assert choose(states, avoid={0}) == 0  # the only up one, although tried
    states[0].down = "connection refused"
    assert choose(states, avoid={0, 1}) == 2  # all down: a probe of one not tried
    assert choose(states, avoid={0, 1, 2}) in (0, 1, 2)


def test_choose_weighs_the_servers_own_queue_only_when_asked() -> None:
    states = _states(1, 2)
    states[0].queue = 4.0
    assert choose(states) == 0
    assert choose(states, queue_weight=1.0) == 1
    assert choose(states, queue_weight=0.1) == 0


def test_choose_needs_an_endpoint() -> None:
    with pytest.raises(ValueError, match="no endpoints"):
        choose([])


def test_parse_waiting_sums_label_sets_and_ignores_look_alikes() -> None:
    text = (
        "# HELP vllm:num_requests_waiting Number of requests waiting.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 2\n'
        "vllm:num_requests_waiting_total 99\n"
        'vllm:num_requests_running{engine="0"} 7\n'
    )
    assert parse_waiting(text) == 5.0
    assert parse_waiting("vllm:num_requests_waiting 4 1700000000\n") == 4.0
    assert parse_waiting("vllm:num_requests_running 1\n") is None
    assert parse_waiting("vllm:num_requests_waiting NaN\n") is None


def test_down_reason_names_what_takes_an_endpoint_down() -> None:
    refused = ServiceUnavailableError(
        "http://x", "No server answers at http://x (connection refused)"
    )
    assert down_reason(refused) == "connection refused"
    assert down_reason(ServerError(503, "loading")) == "HTTP 503"
    assert down_reason(ServerError(502, "bad gateway")) == "HTTP 502"
    assert down_reason(StreamError("connection reset by peer")).startswith("the stream broke")
    assert down_reason(BadRequestError(400, "bad image")) is None
    assert down_reason(ServerError(429, "slow down")) is None
    assert down_reason(PredictionTimeoutError("slow")) is None


def test_shown_url_drops_credentials() -> None:
    assert shown_url("http://user:secret@host:8000") == "http://host:8000"
    assert shown_url("http://host:8000") == "http://host:8000"


def test_balancing_checks_its_numbers() -> None:
    with pytest.raises(ValueError, match="queue_weight"):
        Balancing(queue_weight=-1)
    with pytest.raises(ValueError, match="health_interval"):
        Balancing(health_interval=0)
    with pytest.raises(ValueError, match="health_max_interval"):
        Balancing(health_interval=5, health_max_interval=1)


def test_pool_needs_two_distinct_endpoints() -> None:
    def never(url: str) -> ServerClient:
        raise AssertionError(url)

    with pytest.raises(ValueError, match="two or more"):
        EndpointPool(["http://a"], never, retry=RetryPolicy())
    with pytest.raises(ValueError, match="once"):
        EndpointPool(["http://a", "http://a"], never, retry=RetryPolicy())


# --------------------------------------------------------------------------- resolving endpoints


def test_resolve_endpoints_from_a_list() -> None:
    urls, model = resolve_endpoints(["http://127.0.0.1:8000/", "http://127.0.0.1:8001"], None, None)
    assert urls == ("http://127.0.0.1:8000", "http://127.0.0.1:8001")
    assert model is None
    assert resolve_endpoints(None, None, None) == ((), None)


@pytest.mark.parametrize(
    ("endpoints", "base_url", "match"),
    [
        (["http://a:1"], "http://a:1", "not both"),
        ([], None, "at least one"),
        ("http://a:1", None, "not one string"),
        (["a:1"], None, "http"),
        (["http://a:1", "http://a:1/"], None, "twice"),
        (42, None, "list of base URLs"),
    ],
)
def test_resolve_endpoints_refuses_unclear_arguments(
    endpoints: Any, base_url: str | None, match: str
) -> None:
    with pytest.raises(InvalidParameterError, match=match) as info:
        resolve_endpoints(endpoints, base_url, None)
    assert info.value.field == "endpoints"


def test_resolve_endpoints_hides_credentials_in_errors() -> None:
    with pytest.raises(InvalidParameterError) as info:
        resolve_endpoints(["http://u:pw@a:1", "http://u:pw@a:1"], None, None)
    assert "pw" not in str(info.value)


def test_resolve_endpoints_from_a_deployment_result() -> None:
    result = NIMDeploymentResult(
        container_id="c", container_name="n", port=8123, served_model_name="served-as"
    )
    urls, model = resolve_endpoints(result, None, None)
    assert urls == ("http://127.0.0.1:8123",)  # [base_url] for one container
    assert model == "served-as"


@pytest.mark.skipif(
    "endpoints" not in NIMDeploymentResult.model_fields,
    reason="NIMDeploymentResult.endpoints is not there yet (issue 17, deploy side)",
)
def test_resolve_endpoints_from_a_result_with_replicas() -> None:
    result = NIMDeploymentResult(
        container_id="c",
        container_name="n",
        port=8123,
        available_models=["m"],
        endpoints=["http://127.0.0.1:8123", "http://127.0.0.1:8124"],
    )
    assert resolve_endpoints(result, None, None) == (
        ("http://127.0.0.1:8123", "http://127.0.0.1:8124"),
        "m",
    )


@pytest.mark.skipif(
    "replicas" not in NIMConfig.model_fields,
    reason="NIMConfig.replicas is not there yet (issue 17, deploy side)",
)
def test_resolve_endpoints_from_a_config_with_replicas() -> None:
    config = NIMConfig(nvidia_api_key="nvapi-test", port=9100, replicas=3, host="0.0.0.0")
    urls, _ = resolve_endpoints(None, None, config)
    assert urls == ("http://127.0.0.1:9100", "http://127.0.0.1:9101", "http://127.0.0.1:9102")
    assert resolve_endpoints(None, "http://h:1", config) == ((), None)  # base_url wins: one
    one = NIMConfig(nvidia_api_key="nvapi-test", port=9100)
    assert resolve_endpoints(None, None, one) == ((), None)


def test_predictor_refuses_base_url_with_endpoints_and_a_shared_transport() -> None:
    with pytest.raises(InvalidParameterError, match="not both"):
        AsyncNIMPredictor(MODEL, "vqa", base_url="http://a:1", endpoints=["http://b:2"])
    import httpx

    with pytest.raises(InvalidParameterError, match="transport"):
        AsyncNIMPredictor(
            MODEL,
            "vqa",
            endpoints=["http://a:1", "http://b:2"],
            transport=httpx.AsyncHTTPTransport(),
        )


async def test_one_endpoint_is_the_one_server_path(emulator: Any, image: bytes) -> None:
    async with AsyncNIMPredictor(MODEL, "vqa", endpoints=[emulator.url + "/"]) as p:
        assert p._pool is None  # no pool, no bookkeeping: exactly the one-server path
        assert p.base_url == emulator.url
        assert p.endpoints == (emulator.url,)
        await p(image)
        assert [s.up for s in p.endpoint_status()] == [True]
    assert served(emulator) == 1


async def test_predictor_from_a_deployment_result_takes_its_model_name(
    emulator: Any, image: bytes
) -> None:
    result = NIMDeploymentResult(
        container_id="c", container_name="n", port=emulator.port, served_model_name=MODEL
    )
    async with AsyncNIMPredictor(task_type="vqa", endpoints=result) as p:
        assert p.model_name == MODEL
        assert p.endpoints == (emulator.url,)
        await p(image)


# --------------------------------------------------------------------------- balancing


async def test_equal_endpoints_get_a_fair_share(start_emulator: Any, image: bytes) -> None:
    async with (
        start_emulator(itl_ms=2) as a,
        start_emulator(itl_ms=2) as b,
        AsyncNIMPredictor(MODEL, "vqa", endpoints=[a.url, b.url]) as p,
    ):
        assert p.endpoints == (a.url, b.url)
        assert p.base_url == a.url
        results = [r async for r in predict_many(p, [image] * 60, concurrency=6)]
        assert all(r.ok for r in results)
        assert served(a) + served(b) == 60
        assert 24 <= served(a) <= 36, (served(a), served(b))
        status = p.endpoint_status()
        assert [s.served for s in status] == [served(a), served(b)]
        assert all(s.outstanding == 0 and s.up for s in status)
    # sequential calls alternate exactly (ties rotate)
    async with (
        start_emulator() as c,
        start_emulator() as d,
        AsyncNIMPredictor(MODEL, "vqa", endpoints=[c.url, d.url]) as q,
    ):
        for _ in range(10):
            await q(image)
        assert (served(c), served(d)) == (5, 5)


async def test_the_faster_endpoint_serves_more(start_emulator: Any, image: bytes) -> None:
    async with (
        start_emulator(itl_ms=1) as fast,
        start_emulator(itl_ms=15) as slow,
        AsyncNIMPredictor(MODEL, "vqa", endpoints=[slow.url, fast.url]) as p,
    ):
        results = [r async for r in predict_many(p, [image] * 40, concurrency=4)]
        assert all(r.ok for r in results)
        assert served(fast) + served(slow) == 40
        assert served(fast) >= 3 * served(slow), (served(fast), served(slow))


async def test_queue_weight_steers_away_from_a_server_others_load(
    start_emulator: Any, image: bytes
) -> None:
    async with (
        start_emulator(itl_ms=5, max_num_seqs=1) as busy,
        start_emulator() as idle,
        AsyncNIMPredictor(MODEL, "vqa", base_url=busy.url) as other_client,
        AsyncNIMPredictor(
            MODEL,
            "vqa",
            endpoints=[busy.url, idle.url],
            balancing=Balancing(queue_weight=1.0, metrics_interval=0.05),
        ) as p,
    ):
        await p(image)  # the first call starts the metrics polls (nothing queued yet)
        load = [asyncio.ensure_future(other_client(image)) for _ in range(12)]
        try:
            await wait_until(lambda: p.endpoint_status()[0].queue >= 2)
            before = served(idle)
            for _ in range(4):
                await p(image)
            assert served(idle) - before == 4  # the busy server's own queue kept them away
        finally:
            for task in load:
                task.cancel()
            await asyncio.gather(*load, return_exceptions=True)


async def test_without_queue_weight_no_metrics_are_polled(
    start_emulator: Any, image: bytes
) -> None:
    async with (
        start_emulator() as a,
        start_emulator() as b,
        AsyncNIMPredictor(MODEL, "vqa", endpoints=[a.url, b.url]) as p,
    ):
        await p(image)
        await asyncio.sleep(0.1)
        assert p._pool is not None
        assert p._pool._metrics is None
        assert all(s.queue == 0 for s in p.endpoint_status())


# --------------------------------------------------------------------------- failures


async def test_refused_connection_goes_elsewhere(
    emulator: Any, dead_url: str, image: bytes
) -> None:
    async with AsyncNIMPredictor(MODEL, "vqa", endpoints=[dead_url, emulator.url]) as p:
        for _ in range(6):
            await p(image)
        async with p.stream(image) as stream:
            assert [t async for t in stream]
        dead, live = p.endpoint_status()
    assert served(emulator) == 7
    assert not dead.up
    assert dead.reason == "connection refused"
    assert dead.served == 0
    assert live.up
    assert live.served == 7


async def test_failover_to_an_untried_endpoint_counts_as_an_attempt(
    emulator: Any, dead_url: str, image: bytes
) -> None:
    # retries=0: one send in all, so the refused one is the whole budget (documented)
    async with AsyncNIMPredictor(MODEL, "vqa", endpoints=[dead_url, emulator.url], retries=0) as p:
        await p.wire_format()  # its lookup found the dead endpoint (and marked it down)
        assert not p.endpoint_status()[0].up
        await p(image)  # goes straight to the live one
    assert served(emulator) == 1


async def test_all_endpoints_down_is_a_clear_error(image: bytes) -> None:
    urls = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    async with AsyncNIMPredictor(MODEL, "vqa", endpoints=urls, retries=2, dialect="openai") as p:
        with pytest.raises(EndpointsUnavailableError) as info:
            await p(image)
        assert isinstance(info.value, ServiceUnavailableError)  # retryable, as before
        assert info.value.endpoints == dict.fromkeys(urls, "connection refused")
        message = str(info.value)
        assert all(url in message for url in urls)
        assert "connection refused" in message
        with pytest.raises(EndpointsUnavailableError):
            await drain(p, image)
        assert all(not s.up for s in p.endpoint_status())


async def test_a_down_endpoint_comes_back_after_a_health_check(
    start_emulator: Any, image: bytes
) -> None:
    port = free_port()
    async with (
        start_emulator() as live,
        AsyncNIMPredictor(
            MODEL, "vqa", endpoints=[f"http://127.0.0.1:{port}", live.url], balancing=FAST_HEALTH
        ) as p,
    ):
        await p(image)
        assert p.endpoint_status()[0].reason == "connection refused"
        await asyncio.sleep(0.3)  # a few failed health checks (backoff, still refused)
        assert not p.endpoint_status()[0].up
        async with Emulator(EmulatorSettings(), host="127.0.0.1", port=port) as back:
            await wait_until(lambda: p.endpoint_status()[0].up)
            for _ in range(10):
                await p(image)
            assert served(back) == 5  # back in the rotation with an equal share
            assert p._pool is not None
            assert not p._pool._watchers  # the health check ended


async def test_an_endpoint_answering_503_is_left_alone(
    failing_emulator: int, emulator: Any, image: bytes
) -> None:
    failing = f"http://127.0.0.1:{failing_emulator}"
    async with AsyncNIMPredictor(MODEL, "vqa", endpoints=[failing, emulator.url]) as p:
        results = [r async for r in predict_many(p, [image] * 20, concurrency=4)]
        assert all(r.ok for r in results)
        bad, _ = p.endpoint_status()
    assert served(emulator) == 20
    assert bad.served == 0
    assert bad.failed <= 8  # marked down at its first 503; tried again only after a check


async def test_a_dropped_stream_marks_its_endpoint_down(start_emulator: Any, image: bytes) -> None:
    async with (
        start_emulator(disconnect_after=3, itl_ms=1) as dropping,
        start_emulator(itl_ms=1) as fine,
        AsyncNIMPredictor(MODEL, "vqa", endpoints=[dropping.url, fine.url], dialect="openai") as p,
    ):
        with pytest.raises(StreamError) as info:  # tokens were handed out: not resent
            await drain(p, image)
        assert info.value.partial_text
        status = p.endpoint_status()[0]
        assert not status.up
        assert str(status.reason).startswith("the stream broke")
        assert status.outstanding == 0
        async with p.stream(image) as stream:  # not started: goes to the other one
            assert [t async for t in stream]
        assert served(fine) == 1


async def test_a_call_whose_answer_never_came_is_sent_elsewhere(
    start_emulator: Any, image: bytes
) -> None:
    # the emulator drops a long non-streamed answer before sending it
    async with (
        start_emulator(disconnect_after=2) as dropping,
        start_emulator() as fine,
        AsyncNIMPredictor(
            MODEL, "vqa", endpoints=[dropping.url, fine.url], retries=1, dialect="openai"
        ) as p,
    ):
        result = await p(image)
        assert result.answer
        assert served(fine) == 1
        assert not p.endpoint_status()[0].up
        assert all(s.outstanding == 0 for s in p.endpoint_status())


async def test_http_errors_that_are_the_requests_own_do_not_take_an_endpoint_down(
    emulator: Any, start_emulator: Any, image: bytes
) -> None:
    async with (
        start_emulator() as other,
        AsyncNIMPredictor("no-such-model", "vqa", endpoints=[emulator.url, other.url]) as p,
    ):
        with pytest.raises(ServerError) as info:
            await p(image)
        assert info.value.status_code == 404
        assert all(s.up for s in p.endpoint_status())


async def test_close_stops_the_health_checks(dead_url: str, emulator: Any, image: bytes) -> None:
    p = AsyncNIMPredictor(MODEL, "vqa", endpoints=[dead_url, emulator.url], balancing=FAST_HEALTH)
    await p(image)
    assert p._pool is not None
    watchers = list(p._pool._watchers.values())
    assert watchers
    await p.aclose()
    assert all(task.done() for task in watchers)
    assert not p._pool._watchers


def test_a_second_event_loop_starts_afresh(dead_url: str, image_factory: Any) -> None:
    image = image_factory(size=(64, 64), shapes=[("red", (8, 8, 40, 40))], fmt="PNG")

    async def serve_and_call(p: AsyncNIMPredictor) -> None:
        async with Emulator(EmulatorSettings(), host="127.0.0.1", port=port):
            await p(image)

    port = free_port()
    p = AsyncNIMPredictor(MODEL, "vqa", endpoints=[dead_url, f"http://127.0.0.1:{port}"])
    asyncio.run(serve_and_call(p))
    assert not p.endpoint_status()[0].up
    asyncio.run(serve_and_call(p))  # a second asyncio.run(): new clients, fresh states
    assert p.endpoint_status()[1].served == 2

    async def close() -> None:
        await p.aclose()

    asyncio.run(close())
