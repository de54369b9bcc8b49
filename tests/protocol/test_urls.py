"""The one base-URL check (protocol/urls.py) behind ``bench --url`` and ``endpoints=``."""

from __future__ import annotations

import pytest

from nim_async.protocol.urls import base_url_problem


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "https://nim.example/v1/", "http://[::1]:8000", "http://h"]
)
def test_base_urls_pass(url: str) -> None:
    assert base_url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("localhost:8000", "http:// or https://"),
        ("ftp://h:21", "http:// or https://"),
        ("http://:8000", "no host"),
        ("http://h:0", "port 0"),
        ("http://h:99999", "out of range"),
        ("http://h:8000/?x=1", "without ? or #"),
        ("http://u:secret@h:8000/#f", "without ? or #"),
    ],
)
def test_each_problem_is_named_without_repeating_the_url(url: str, reason: str) -> None:
    problem = base_url_problem(url)
    assert problem is not None
    assert reason in problem
    assert "secret" not in problem
