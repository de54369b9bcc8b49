"""The ``nim-async`` console script, run for real in a subprocess against the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from nim_async.bench.server_metrics import parse_prometheus
from nim_async.export import to_coco

COMMANDS = [
    "deploy",
    "stop",
    "ps",
    "predict",
    "batch",
    "emulate",
    "emulator-image",
    "bench",
    "demo",
]
COUNT = "How many shapes are there?"


def records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# --------------------------------------------------------------------------- help


async def test_top_level_help_lists_every_command(cli: Any) -> None:
    done = await cli("--help")
    assert done.rc == 0
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", done.out, re.M), command


@pytest.mark.parametrize("command", COMMANDS)
async def test_every_command_has_help(cli: Any, command: str) -> None:
    done = await cli(command, "--help")
    assert done.rc == 0, done.err
    assert f"nim-async {command}" in done.out
    assert "Traceback" not in done.err


def test_parsing_imports_no_heavy_module() -> None:
    """`nim-async --help` stays fast as far as the CLI goes: importing nim_async.cli and
    building its parser imports no HTTP, Docker, pydantic, Pillow or rich code and no other
    nim_async module than the catalog (where the box formats come from); commands import what
    they need when they run. (The package's own ``__init__`` is loaded before the CLI by the
    console script; its cost is its own, so it is loaded before the count starts.)"""
    code = (
        "import sys\n"
        "import nim_async\n"
        "before = set(sys.modules)\n"
        "import nim_async.cli\n"
        "nim_async.cli.build_parser().format_help()\n"
        "roots = ('httpx', 'aiohttp', 'aiodocker', 'pydantic', 'rich', 'PIL', 'anyio',"
        " 'nim_async', 'orjson')\n"
        "new = set(sys.modules) - before\n"
        "allowed = ('nim_async.cli', 'nim_async.cli.parser', 'nim_async.catalog')\n"
        "print(sorted(m for m in new if m.split('.')[0] in roots and m not in allowed))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


async def test_commands_that_talk_to_a_nim_take_url_host_port(cli: Any) -> None:
    for command in ("predict", "batch"):
        done = await cli(command, "--help")
        for option in ("--url", "--host", "--port", "--model"):
            assert option in done.out
    demo = await cli("demo", "--help")
    assert "--url" in demo.out


async def test_sampling_options_mirror_nimsamplingparams(cli: Any) -> None:
    from nim_async.config import NIMSamplingParams

    done = await cli("predict", "--help")
    for name in NIMSamplingParams.model_fields:
        if name == "prompt_logprobs":
            continue
        assert "--" + name.replace("_", "-") in done.out, name


async def test_deploy_options_mirror_nimconfig(cli: Any) -> None:
    done = await cli("deploy", "--help")
    for option in (
        "--api-key",
        "--image-name",
        "--tag",
        "--port",
        "--shm-size",
        "--max-model-len",
        "--cache-dir",
        "--no-reuse",
        "--replace",
        "--no-logs",
        "--force-pull",
        "--run-id",
        "--ckpt",
        "--model-save-path",
        "--served-model-name",
        "--overwrite",
        "--registry",
        "--gpus",
        "--startup-timeout",
        "--model-path",
    ):
        assert option in done.out, option


# --------------------------------------------------------------------------- predict


async def test_predict_streams_tokens_then_a_table(
    cli: Any, emulator: Any, image_dir: Path
) -> None:
    done = await cli("predict", str(image_dir / "img002.png"), "--url", emulator.url)
    assert done.rc == 0, done.err
    first, _, rest = done.out.partition("\n")
    assert first.startswith('{"phrase_grounding"')  # the raw tokens, as streamed
    assert "Phrase grounding" in rest
    assert re.search(r"a red (square|rectangle)", rest)


async def test_predict_json_draw_and_coco(cli: Any, emulator: Any, image_dir: Path) -> None:
    image = image_dir / "img002.png"
    done = await cli(
        "predict",
        str(image),
        "--url",
        emulator.url,
        "--json",
        "--draw",
        "boxes.png",
        "--coco",
        "coco.json",
        "--temperature",
        "0",
        "--seed",
        "3",
    )
    assert done.rc == 0, done.err
    lines = done.out.splitlines()
    assert len(lines) == 1
    payload = orjson.loads(lines[0])
    assert payload["source"] == str(image)
    assert payload["task_type"] == "phrase-grounding"
    assert len(payload["result"]["groundings"]) == 3
    assert payload["image_size"] == [200, 120]
    cwd = Path(done_cwd(image_dir))
    with Image.open(cwd / "boxes.png") as drawn:
        assert drawn.size == (200, 120)
        # The red rectangle (10..59, 20..89) got a coloured outline at its left edge.
        assert drawn.convert("RGB").getpixel((10, 55)) != (255, 0, 0)
    coco = orjson.loads((cwd / "coco.json").read_bytes())
    assert [i["file_name"] for i in coco["images"]] == [str(image)]
    assert len(coco["annotations"]) == 3
    _, _, w, h = coco["annotations"][0]["bbox"]
    assert w > 0
    assert h > 0


def done_cwd(image_dir: Path) -> Path:
    """The commands run in tmp_path, the parent of image_dir."""
    return image_dir.parent


async def test_predict_vqa_no_stream(cli: Any, emulator: Any, image_dir: Path) -> None:
    done = await cli(
        "predict",
        str(image_dir / "img001.png"),
        "--task",
        "vqa",
        "--prompt",
        COUNT,
        "--no-stream",
        "--url",
        emulator.url,
    )
    assert done.rc == 0, done.err
    assert re.search(r"How many shapes are there\?\s+│\s+2\s", done.out)


async def test_predict_user_errors_are_one_line(cli: Any, emulator: Any, image_dir: Path) -> None:
    missing = await cli("predict", "nope.png", "--url", emulator.url)
    assert "no such image file: nope.png" in missing.one_line_error()

    nobody = await cli("predict", str(image_dir / "img000.png"), "--port", "9")
    assert "127.0.0.1:9" in nobody.one_line_error()

    bad_param = await cli(
        "predict", str(image_dir / "img000.png"), "--url", emulator.url, "--top-p", "2"
    )
    assert "top_p" in bad_param.one_line_error()

    bad_url = await cli("predict", str(image_dir / "img000.png"), "--url", "localhost:8000")
    assert "--url" in bad_url.one_line_error()

    drawing_vqa = await cli(
        "predict",
        str(image_dir / "img000.png"),
        "--task",
        "vqa",
        "--url",
        emulator.url,
        "--draw",
        "x.png",
        "--no-stream",
    )
    assert "--draw needs --task phrase-grounding" in drawing_vqa.one_line_error()


async def test_server_errors_are_one_line(cli: Any, start_emulator: Any, image_dir: Path) -> None:
    async with start_emulator(fail_rate=1.0, fail_status=400) as emu:
        done = await cli("predict", str(image_dir / "img000.png"), "--url", emu.url)
    assert "HTTP 400" in done.one_line_error()


async def test_usage_errors_exit_2(cli: Any) -> None:
    done = await cli("predict")
    assert done.rc == 2
    assert "usage: nim-async predict" in done.err
    unknown = await cli("frobnicate")
    assert unknown.rc == 2


# --------------------------------------------------------------------------- batch


def batch_args(url: str, *extra: str) -> list[str]:
    return [
        "batch",
        "images",
        "--task",
        "vqa",
        "--prompt",
        COUNT,
        "--out",
        "results.jsonl",
        "--url",
        url,
        *extra,
    ]


async def test_batch_writes_one_line_per_input(cli: Any, emulator: Any, image_dir: Path) -> None:
    done = await cli(*batch_args(emulator.url, "--concurrency", "4"))
    assert done.rc == 0, done.err
    assert "batch: 20 ok, 0 failed" in done.err
    rows = records(image_dir.parent / "results.jsonl")
    assert sorted(r["source"] for r in rows) == [f"images/img{i:03d}.png" for i in range(20)]
    for row in rows:
        assert row["status"] == "ok"
        index = int(Path(row["source"]).stem[3:])
        assert row["result"] == str(1 + index % 3)
        assert row["attempts"] == 1
        assert row["elapsed"] > 0
        assert row["timings"]["total"] > 0
        assert row["usage"]["completion_tokens"] > 0


async def test_batch_with_failures_then_resume_retrying_errors(
    cli: Any, start_emulator: Any, emulator: Any, image_dir: Path
) -> None:
    out = image_dir.parent / "results.jsonl"
    async with start_emulator(fail_rate=0.5, fail_status=503, seed=11) as flaky:
        first = await cli(*batch_args(flaky.url, "--retries", "0", "--concurrency", "3"))
    assert first.rc == 1
    assert re.search(r"batch: \d+ ok, \d+ failed", first.err)
    assert "--resume --retry-errors" in first.err
    rows = records(out)
    assert len(rows) == 20
    assert len({r["source"] for r in rows}) == 20
    failed = [r for r in rows if r["status"] == "error"]
    assert failed
    assert all(r["error"]["status_code"] == 503 for r in failed)

    # Without --resume an existing results file is not appended to by accident.
    refused = await cli(*batch_args(emulator.url))
    assert "--resume" in refused.one_line_error()

    # --resume alone skips everything recorded, errors included; the kept errors still count
    # (issue 14: the summary names them and the exit status is 1).
    again = await cli(*batch_args(emulator.url, "--resume"))
    assert again.rc == 1
    assert f"0 ok, 0 failed, {len(failed)} failed (earlier), 20 already recorded" in again.err

    second = await cli(*batch_args(emulator.url, "--resume", "--retry-errors"))
    assert second.rc == 0, second.err
    assert f"{len(failed)} ok, 0 failed, {20 - len(failed)} already recorded" in second.err
    rows = records(out)
    assert len(rows) == 20
    assert len({r["source"] for r in rows}) == 20
    assert {r["status"] for r in rows} == {"ok"}


async def test_batch_disconnects_are_recorded(
    cli: Any, start_emulator: Any, image_dir: Path
) -> None:
    async with start_emulator(disconnect_after=3) as emu:
        done = await cli(*batch_args(emu.url, "--retries", "1"))
    assert done.rc == 1
    assert "batch: 0 ok, 20 failed" in done.err
    rows = records(image_dir.parent / "results.jsonl")
    assert len(rows) == 20
    assert all(r["status"] == "error" and r["attempts"] == 2 for r in rows)


async def test_batch_resume_after_kill_completes_without_duplicates(
    cli: Any, spawn: Any, start_emulator: Any, image_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    async with start_emulator(ttft_ms=60) as emu:
        proc = await spawn(*batch_args(emu.url, "--concurrency", "2", "--no-progress"))
        for _ in range(3000):
            if out.exists() and len(out.read_bytes().splitlines()) >= 5:
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        killed_rows = records(out)
        assert 5 <= len(killed_rows) < 20
        # A write torn by the kill would be a partial last line; simulate one for good measure.
        with out.open("ab") as handle:
            handle.write(b'{"source": "images/img0')
        done = await cli(*batch_args(emu.url, "--resume", "--concurrency", "4"))
    assert done.rc == 0, done.err
    assert "already recorded" in done.err
    rows = records(out)
    assert len(rows) == 20
    assert len({r["source"] for r in rows}) == 20
    # index is the position in DIR_OR_LIST, whichever run wrote the line.
    assert all(r["source"] == f"images/img{r['index']:03d}.png" for r in rows)


async def test_batch_ctrl_c_stops_cleanly(
    cli: Any, spawn: Any, start_emulator: Any, image_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results.jsonl"
    async with start_emulator(ttft_ms=80) as emu:
        proc = await spawn(*batch_args(emu.url, "--concurrency", "1"))
        for _ in range(3000):
            if out.exists() and len(out.read_bytes().splitlines()) >= 2:
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 130
    assert "rerun with --resume" in err.decode()
    assert "Traceback" not in err.decode()
    rows = records(out)  # every line whole
    assert 2 <= len(rows) < 20


async def test_batch_concurrency_limit_seen_in_server_metrics(
    cli: Any, spawn: Any, start_emulator: Any, image_dir: Path
) -> None:
    async with start_emulator(ttft_ms=40, itl_ms=2) as emu:
        proc = await spawn(*batch_args(emu.url, "--concurrency", "3"))
        peak = 0
        async with httpx.AsyncClient(base_url=emu.url) as client:
            while proc.returncode is None:
                text = (await client.get("/v1/metrics")).text
                running = parse_prometheus(text).get("vllm:num_requests_running")
                assert running is not None
                peak = max(peak, int(running))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.005)
    assert proc.returncode == 0
    assert 1 <= peak <= 3


async def test_batch_reads_a_list_file_and_stdin(
    cli: Any, emulator: Any, image_dir: Path, tmp_path: Path
) -> None:
    paths = [str(image_dir / f"img{i:03d}.png") for i in range(5)]
    listed = [*paths, paths[0]]  # a repeat gets no second line
    (tmp_path / "list.txt").write_text("# five images\n" + "\n".join(listed) + "\n\n")
    done = await cli(
        "batch",
        "list.txt",
        "--task",
        "vqa",
        "--out",
        "a.jsonl",
        "--url",
        emulator.url,
        "--ordered",
    )
    assert done.rc == 0, done.err
    assert [r["source"] for r in records(tmp_path / "a.jsonl")] == paths
    assert "1 repeated inputs skipped" in done.err

    piped = await cli(
        "batch",
        "-",
        "--task",
        "vqa",
        "--out",
        "b.jsonl",
        "--url",
        emulator.url,
        stdin="\n".join(paths[:2]).encode(),
    )
    assert piped.rc == 0, piped.err
    assert len(records(tmp_path / "b.jsonl")) == 2


async def test_batch_groundings_export_to_coco(
    cli: Any, emulator: Any, image_dir: Path, tmp_path: Path
) -> None:
    done = await cli(
        "batch", "images", "--out", "g.jsonl", "--coco", "coco.json", "--url", emulator.url
    )
    assert done.rc == 0, done.err
    coco = orjson.loads((tmp_path / "coco.json").read_bytes())
    assert len(coco["images"]) == 20
    # image i has 1 + i % 3 rectangles: 7*1 + 7*2 + 6*3 boxes
    assert len(coco["annotations"]) == 7 + 14 + 18
    names = {c["name"] for c in coco["categories"]}
    assert any("red" in n for n in names)
    assert coco == to_coco((r["source"], r) for r in records(tmp_path / "g.jsonl"))


async def test_batch_user_errors(cli: Any, emulator: Any) -> None:
    missing = await cli("batch", "no-such-dir", "--url", emulator.url)
    assert "no such directory or file" in missing.one_line_error()
    zero = await cli("batch", ".", "--concurrency", "0", "--url", emulator.url)
    assert "--concurrency" in zero.one_line_error()
    lonely = await cli("batch", ".", "--retry-errors", "--url", emulator.url)
    assert "--retry-errors" in lonely.one_line_error()


# --------------------------------------------------------------------------- demo


async def test_demo_on_the_embedded_emulator(cli: Any, tmp_path: Path) -> None:
    done = await cli("demo", "--out", "demo.png")
    assert done.rc == 0, done.err
    assert "emulator" in done.out
    assert "not a model" in done.out
    assert '{"phrase_grounding"' in done.out  # streamed tokens
    assert re.search(r"│ vqa\s+│ How many shapes are there\?\s+│ 4\s", done.out)
    with Image.open(tmp_path / "demo.png") as picture:
        assert picture.size == (640, 480)
    default = await cli("demo")
    assert default.rc == 0
    assert (tmp_path / "nim-async-demo.png").is_file()


async def test_demo_against_a_url(cli: Any, emulator: Any, tmp_path: Path) -> None:
    done = await cli("demo", "--url", emulator.url, "--out", "d.png")
    assert done.rc == 0, done.err
    assert f"Using the NIM at {emulator.url}" in done.out
    assert "Using the embedded" not in done.out
    assert (tmp_path / "d.png").is_file()


# --------------------------------------------------------------------------- delegated


async def test_emulate_serves_until_sigterm(cli: Any, spawn: Any, image_dir: Path) -> None:
    proc = await spawn("emulate", "--port", "0")
    assert proc.stdout is not None
    url = None
    try:
        while url is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "the emulator exited before listening"
            match = re.search(r"listening on (http://\S+)", line)
            url = match.group(1) if match else None
        done = await cli(
            "predict",
            str(image_dir / "img000.png"),
            "--url",
            url,
            "--task",
            "vqa",
            "--prompt",
            COUNT,
            "--json",
        )
        assert done.rc == 0, done.err
        assert orjson.loads(done.out)["result"] == "1"
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0


async def test_deploy_without_a_key_is_one_line(cli: Any, no_key_env: dict[str, str]) -> None:
    env = no_key_env
    done = await cli("deploy", "--gpus", "none", env=env)
    assert "NGC API key" in done.one_line_error()
    bad_port = await cli("deploy", "--port", "70000", env=dict(env, NGC_API_KEY="nvapi-x"))
    assert "port" in bad_port.one_line_error()


async def test_ps_and_stop_never_show_a_traceback(cli: Any) -> None:
    ps = await cli("ps")
    assert "Traceback" not in ps.err
    if ps.rc != 0:  # no Docker daemon here: one clear line
        ps.one_line_error()
    stop = await cli("stop", "nim-async-no-such-container")
    assert stop.rc == 1
    assert "Traceback" not in stop.err


def test_media_options_are_json_objects(tmp_path: Path) -> None:
    from nim_async.cli.common import sampling_from_args
    from nim_async.cli.parser import build_parser

    spec = tmp_path / "proc.json"
    spec.write_text('{"shortest_edge": 336}')
    args = build_parser().parse_args(
        [
            "predict",
            "x.png",
            "--media-io-kwargs",
            '{"fps": 2.0}',
            "--mm-processor-kwargs",
            f"@{spec}",
        ]
    )
    sampling = sampling_from_args(args)
    assert sampling is not None
    assert sampling.media_io_kwargs == {"fps": 2.0}
    assert sampling.mm_processor_kwargs == {"shortest_edge": 336}
    bad = build_parser().parse_args(["predict", "x.png", "--media-io-kwargs", "{fps"])
    with pytest.raises(ValueError, match="--media-io-kwargs must be a JSON object"):
        sampling_from_args(bad)
