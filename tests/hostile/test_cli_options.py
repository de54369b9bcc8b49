"""`batch --retries` is the predictor's; `deploy --merge-adapter` reaches NIMConfig."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from nim_async.cli.common import config_from_args
from nim_async.cli.parser import build_parser

from .conftest import run_cli


def _errors_503(port: int) -> int:
    from nim_async.bench.server_metrics import parse_prometheus

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/metrics").read().decode()
    counters = parse_prometheus(text)
    return int(sum(v for k, v in counters.items() if k.endswith(":request_error_total")))


@pytest.mark.parametrize(("retries", "sends"), [(None, 3), ("0", 1), ("4", 5)])
async def test_batch_sends_each_input_at_most_one_plus_retries_times(
    failing_emulator: int, tmp_path: Path, retries: str | None, sends: int
) -> None:
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "b.png")
    (tmp_path / "list.txt").write_text("a.png\nb.png\n")
    extra = () if retries is None else ("--retries", retries)
    done = await run_cli(
        "batch",
        "list.txt",
        "--port",
        str(failing_emulator),
        "--no-progress",
        "--out",
        "out.jsonl",
        *extra,
        cwd=tmp_path,
    )
    assert done.rc == 1, done.err
    assert "2 failed" in done.err
    # the CLI's --retries default 2: 3 sends per input (it was 12: 4 x (1 + 2))
    assert _errors_503(failing_emulator) == 2 * sends


async def test_negative_retries_is_refused(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("a.png\n")
    done = await run_cli("batch", "list.txt", "--retries", "-1", cwd=tmp_path)
    assert done.rc in (1, 2), done.err  # refused by the command or by its parser (usage)
    assert "Traceback" not in done.err
    assert "--retries" in done.err
    assert "-1" in done.err


def test_merge_adapter_reaches_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NGC_API_KEY", "nvapi-test-0000000000")
    parser = build_parser()
    given = config_from_args(parser.parse_args(["deploy", "--merge-adapter"]))
    assert given.merge_adapter is True
    default = config_from_args(parser.parse_args(["deploy"]))
    assert default.merge_adapter is False
    help_text = parser._subparsers._group_actions[0].choices["deploy"].format_help()  # type: ignore[union-attr]
    assert "--merge-adapter" in help_text
    assert "nim-async[merge]" in help_text
