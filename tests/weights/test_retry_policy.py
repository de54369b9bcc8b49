"""The Vi API calls follow the one retry policy (nim_async.http.retry) and the one httpx mapping
(nim_async.http.errors): no answer, 429 and 502-504 are retried; 500 and other statuses are not."""

from __future__ import annotations

import pytest

from nim_async.deploy.weights import prepare_weights
from nim_async.errors import WeightsDownloadError


@pytest.mark.parametrize("status", [500, 501])
async def test_a_server_error_is_not_retried(fake_vi, vi_config, status):  # type: ignore[no-untyped-def]
    fake_vi.status_override = status
    with pytest.raises(WeightsDownloadError) as info:
        await prepare_weights(vi_config(), quiet=True)
    assert info.value.status_code == status
    assert len(fake_vi.api_requests) == 1


async def test_a_gateway_error_is_retried_until_the_attempts_are_spent(fake_vi, vi_config):  # type: ignore[no-untyped-def]
    fake_vi.status_override = 502
    with pytest.raises(WeightsDownloadError) as info:
        await prepare_weights(vi_config(), quiet=True)
    assert info.value.status_code == 502
    assert len(fake_vi.api_requests) == 3


async def test_no_answer_names_the_failure(vi_config, unused_tcp_port):  # type: ignore[no-untyped-def]
    config = vi_config(endpoint=f"http://127.0.0.1:{unused_tcp_port}")
    with pytest.raises(WeightsDownloadError, match=r"\(ConnectError\)"):
        await prepare_weights(config, quiet=True)
