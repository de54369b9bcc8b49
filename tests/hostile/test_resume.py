"""``nim-async batch --resume`` keys inputs by their canonical identity and owns earlier errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from PIL import Image

from nim_async.predict.journal import BatchJournal
from nim_async.predict.sources import source_identity

from .conftest import run_cli


def _images(folder: Path, count: int) -> None:
    folder.mkdir()
    for i in range(count):
        Image.new("RGB", (32, 32), (20 * i, 10, 10)).save(folder / f"img{i}.png")


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_relative_then_absolute_folder_runs_nothing_again(
    tmp_path: Path, emulator: Any
) -> None:
    _images(tmp_path / "images", 5)
    common = ("--url", emulator.url, "--no-progress", "--out", "r.jsonl", "--task", "vqa")
    first = await run_cli("batch", "images", *common, cwd=tmp_path)
    assert first.rc == 0, first.err
    again = await run_cli("batch", str(tmp_path / "images"), *common, "--resume", cwd=tmp_path)
    assert again.rc == 0, again.err
    assert "0 ok, 0 failed, 5 already recorded (skipped)" in again.err  # HEAD: 5 ok, 0 skipped
    dotted = await run_cli("batch", "./images/../images", *common, "--resume", cwd=tmp_path)
    assert "5 already recorded (skipped)" in dotted.err
    records = _lines(tmp_path / "r.jsonl")
    assert len(records) == 5
    assert records[0]["source"].startswith("images/")  # shown as given
    assert records[0]["key"] == str((tmp_path / records[0]["source"]).resolve())


async def test_a_resume_reports_earlier_errors_and_fails(tmp_path: Path, emulator: Any) -> None:
    _images(tmp_path / "images", 2)
    (tmp_path / "list.txt").write_text("images/img0.png\nimages/img1.png\nimages/late.png\n")
    common = ("--url", emulator.url, "--no-progress", "--out", "r.jsonl", "--task", "vqa")
    first = await run_cli("batch", "list.txt", *common, cwd=tmp_path)
    assert first.rc == 1
    assert "2 ok, 1 failed" in first.err
    resumed = await run_cli("batch", "list.txt", *common, "--resume", cwd=tmp_path)
    assert resumed.rc == 1, resumed.err  # HEAD: 0 and "0 failed"
    assert "0 ok, 0 failed, 1 failed (earlier), 3 already recorded (skipped)" in resumed.err
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "late.png")
    retried = await run_cli(
        "batch", "list.txt", *common, "--resume", "--retry-errors", cwd=tmp_path
    )
    assert retried.rc == 0, retried.err
    assert "1 ok, 0 failed" in retried.err
    assert "(earlier)" not in retried.err


def test_identity_is_the_resolved_path_or_the_url(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "link.png").symlink_to("a.png")
    real = str((tmp_path / "a.png").resolve())
    assert source_identity(str(tmp_path / "link.png")) == real
    assert source_identity(tmp_path / "." / "a.png") == real
    assert source_identity("HTTP://Example.com/a.png?x=1") == "HTTP://Example.com/a.png?x=1"
    assert source_identity(b"abc") != source_identity(b"abd")  # same length, two inputs


def test_old_files_without_keys_resume_by_resolved_source(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    src = tmp_path / "x.png"
    out.write_bytes(orjson.dumps({"source": str(src), "status": "error"}) + b"\n")
    with BatchJournal(out, resume=True) as journal:
        assert journal.recorded == {str(src.resolve())}
        assert journal.earlier_failed == 1
        assert list(journal.pending([str(src), str(tmp_path / "y.png")])) == [
            str(tmp_path / "y.png")
        ]
