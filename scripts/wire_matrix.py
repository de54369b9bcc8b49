"""Measure what each request form does on three servers: honoured / accepted / ignored / rejected.

Servers: the real vLLM of the test tier (``scripts/vllm-env.sh up``; URL and log from its env
file), the emulator with its defaults (vLLM 0.32 behaviour) and the emulator in legacy mode
(``--legacy-guided``: NIM 1.x / vLLM < 0.12). The two emulators are started here as
``python -m nim_async.emulator`` processes on free ports (DEBUG logs to files) and stopped at
the end; the vLLM server is only used, never started or stopped.

Each form is sent :data:`TRIES` times at once (temperature 1) to each server and classified:

* ``rejected (N)``: an HTTP 4xx/5xx answer;
* ``ignored``: the server logged one of the form's fields as present but ignored (vLLM's DEBUG
  "fields were present in the request but ignored" line, the emulator's own line, or a
  "removed guided-decoding field(s)" warning), or the form's effect was absent from every
  answer (a constraint not satisfied);
* ``honoured``: the effect was seen in every answer (a constraint satisfied; under ``top_k=1``
  at most two distinct answers, where sampled answers all differ; fewer prompt tokens with
  ``max_pixels``; ...);
* ``accepted``: answered 200, no field logged as ignored, and the effect cannot be seen on this
  server (the same check also passes without the field, e.g. a random model that never stops
  early under ``ignore_eos``; the emulator's deterministic text under ``top_k``), or the form
  has no output check (``repetition_penalty``);
* ``partial k/N``: the effect in some answers only.

Every request carries one extra unknown field, ``nim_wire_probe_<n>``, unique per request, so
that vLLM's DEBUG line of exactly that request is found in a log other clients may share; the
probe is removed from the ignored set before classifying. The model has random weights (and the
emulator is a test double): no text is judged, only whether the constraint or effect held.

Usage::

    .venv/bin/python scripts/wire_matrix.py [--out /tmp/wire-matrix.json] [--tries 5]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import base64
import io
import itertools
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from nim_async.protocol.tasks import get_task

TRIES = 5
CHOICES = ["alpha7", "beta9"]
REGEX = r"[0-9]{3}-[a-z]{2}"
GRAMMAR = 'root ::= "alpha7" | "beta9"'
ENUM_SCHEMA = {"type": "string", "enum": CHOICES}
VQA_SCHEMA = get_task("vqa").output_schema()
SERVERS = ("vLLM 0.32 (real)", "emulator default", "emulator legacy")
PROBE = "nim_wire_probe_"
_IGNORED = re.compile(r"present in the request (?:\(.*?\) )?but ignored: (.*)$")
_REMOVED = re.compile(r"removed guided-decoding field\(s\) (\[.*?\])")

Answer = dict[str, Any]  # status, text, finish, usage, logprobs, prompt_logprobs
Check = Callable[[Answer], bool]


def _rf(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}}


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _choice(a: Answer) -> bool:
    return a["text"] in CHOICES


def _regex(a: Answer) -> bool:
    return re.fullmatch(REGEX, a["text"]) is not None


def _enum(a: Answer) -> bool:
    return _json(a["text"]) in CHOICES


def _object_or_opened(a: Answer) -> bool:
    # A random model under a JSON constraint may pad with whitespace until max_tokens: an
    # opened object cut at max_tokens is still the constraint at work.
    if isinstance(_json(a["text"]), dict):
        return True
    return a["finish"] == "length" and str(a["text"]).lstrip().startswith("{")


def _vqa(a: Answer) -> bool:
    value = _json(a["text"])
    if isinstance(value, dict):
        return "vqa" in value
    # Cut off at max_tokens: the object opened and, after the whitespace the grammar allows
    # (a random model may pad with it to the end, 2 of 30 answers here), "vqa" or its start.
    text = str(a["text"]).lstrip()
    if a["finish"] != "length" or not text.startswith("{"):
        return False
    rest = text[1:].lstrip()
    return rest.startswith('"vqa"') or '"vqa"'.startswith(rest)


def _length(n: int) -> Check:
    return lambda a: a["finish"] == "length" and a["usage"].get("completion_tokens") == n


def _at_least(n: int) -> Check:
    return lambda a: a["usage"].get("completion_tokens", 0) >= n


def _has(key: str) -> Check:
    return lambda a: bool(a.get(key))


@dataclass(frozen=True)
class Form:
    """One request form: extra body fields, the fields it is about, and how to see its effect."""

    name: str
    extra: dict[str, Any]
    check: Check | None = None
    stream: bool = False
    max_tokens: int = 48
    image: bool = False
    control: dict[str, Any] | None = None  # the effect also seen without the form: "accepted"
    greedy: bool = False  # the effect: at most 2 distinct answers (random text never repeats)
    fewer_prompt_tokens: bool = False  # the effect: fewer prompt tokens than the control


EXT = {"top_k": 1}
FORMS: tuple[Form, ...] = (
    Form("guided_choice (top level)", {"guided_choice": CHOICES}, _choice),
    Form("guided_regex (top level)", {"guided_regex": REGEX}, _regex),
    Form("guided_json (top level)", {"guided_json": ENUM_SCHEMA}, _enum),
    Form("guided_grammar (top level)", {"guided_grammar": GRAMMAR}, _choice),
    Form("guided_choice (top level), streamed", {"guided_choice": CHOICES}, _choice, stream=True),
    Form("structured_outputs.choice", {"structured_outputs": {"choice": CHOICES}}, _choice),
    Form("structured_outputs.regex", {"structured_outputs": {"regex": REGEX}}, _regex),
    Form("structured_outputs.json", {"structured_outputs": {"json": ENUM_SCHEMA}}, _enum),
    Form("structured_outputs.grammar", {"structured_outputs": {"grammar": GRAMMAR}}, _choice),
    Form(
        "structured_outputs.choice, streamed",
        {"structured_outputs": {"choice": CHOICES}},
        _choice,
        stream=True,
    ),
    Form("response_format json_schema", {"response_format": _rf(ENUM_SCHEMA)}, _enum),
    Form(
        "response_format json_schema, streamed",
        {"response_format": _rf(ENUM_SCHEMA)},
        _enum,
        stream=True,
    ),
    Form(
        "response_format json_schema: vqa task schema",
        {"response_format": _rf(VQA_SCHEMA)},
        _vqa,
        max_tokens=200,
    ),
    Form(
        "response_format json_object",
        {"response_format": {"type": "json_object"}},
        _object_or_opened,
    ),
    Form("nvext.guided_choice", {"nvext": {"guided_choice": CHOICES}}, _choice),
    Form("nvext.guided_json", {"nvext": {"guided_json": ENUM_SCHEMA}}, _enum),
    Form(
        "structured_outputs + response_format",
        {"structured_outputs": {"choice": CHOICES}, "response_format": _rf(ENUM_SCHEMA)},
        _choice,
    ),
    Form(
        "two kinds in structured_outputs",
        {"structured_outputs": {"choice": CHOICES, "regex": REGEX}},
        _choice,
    ),
    Form("top_k=1 (top level)", {"top_k": 1}, max_tokens=8, control={}, greedy=True),
    Form("nvext.top_k=1", {"nvext": {"top_k": 1}}, max_tokens=8, control={}, greedy=True),
    Form("repetition_penalty=1.5 (top level)", {"repetition_penalty": 1.5}, max_tokens=8),
    Form("ignore_eos (top level)", {"ignore_eos": True}, _length(24), max_tokens=24, control={}),
    Form(
        "nvext.ignore_eos", {"nvext": {"ignore_eos": True}}, _length(24), max_tokens=24, control={}
    ),
    Form("min_tokens=20 (top level)", {"min_tokens": 20}, _at_least(20), max_tokens=24, control={}),
    Form(
        "logprobs + top_logprobs",
        {"logprobs": True, "top_logprobs": 2},
        _has("logprobs"),
        max_tokens=4,
    ),
    Form("prompt_logprobs=1", {"prompt_logprobs": 1}, _has("prompt_logprobs"), max_tokens=4),
    Form(
        "mm_processor_kwargs max_pixels (image)",
        {"mm_processor_kwargs": {"max_pixels": 12544}},
        max_tokens=4,
        image=True,
        control={},
        fewer_prompt_tokens=True,
    ),
    Form(
        "media_io_kwargs keyed {'image': {}} (image)",
        {"media_io_kwargs": {"image": {}}},
        max_tokens=4,
        image=True,
    ),
    Form(
        "media_io_kwargs flat {'fps': 2} (image)",
        {"media_io_kwargs": {"fps": 2}},
        max_tokens=4,
        image=True,
    ),
)


def _image_uri() -> str:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((224, 224)).convert("RGB").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


IMAGE_URI = _image_uri()
_probe_ids = itertools.count()


def _body(model: str, form: Form, extra: dict[str, Any]) -> dict[str, Any]:
    text = "Pick one of alpha7 or beta9."
    content: Any = text
    if form.image:
        content = [
            {"type": "image_url", "image_url": {"url": IMAGE_URI}},
            {"type": "text", "text": text},
        ]
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "temperature": 1.0,
        "max_tokens": form.max_tokens,
        PROBE + str(next(_probe_ids)): 1,
        **extra,
    }
    if form.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _probe_of(body: dict[str, Any]) -> str:
    return next(k for k in body if k.startswith(PROBE))


async def _post(client: httpx.AsyncClient, body: dict[str, Any]) -> Answer:
    if not body.get("stream"):
        r = await client.post("/v1/chat/completions", json=body)
        if r.status_code != 200:
            return {"status": r.status_code, "error": r.text[:300]}
        data = r.json()
        choice = data["choices"][0]
        return {
            "status": 200,
            "text": choice["message"].get("content") or "",
            "finish": choice.get("finish_reason"),
            "usage": data.get("usage") or {},
            "logprobs": choice.get("logprobs"),
            "prompt_logprobs": data.get("prompt_logprobs"),
        }
    parts: list[str] = []
    answer: Answer = {"status": 200, "usage": {}, "finish": None}
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return {"status": r.status_code, "error": (await r.aread()).decode()[:300]}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                answer["usage"] = chunk["usage"]
            for c in chunk.get("choices") or []:
                parts.append((c.get("delta") or {}).get("content") or "")
                answer["finish"] = c.get("finish_reason") or answer["finish"]
    answer["text"] = "".join(parts)
    return answer


class LogReader:
    """Reads a server's log since a mark and names the request fields it says it ignored."""

    def __init__(self, path: Path, *, shared: bool) -> None:
        self.path = path
        self.shared = shared  # other clients may write lines: keep only those with our probes

    def mark(self) -> int:
        """The log's current size."""
        return self.path.stat().st_size if self.path.exists() else 0

    def ignored(self, mark: int, probes: set[str]) -> set[str]:
        """The field names logged as ignored since ``mark`` (probes removed)."""
        with self.path.open("rb") as f:
            f.seek(mark)
            lines = f.read().decode("utf-8", "replace").splitlines()
        names: set[str] = set()
        for line in lines:
            found = _IGNORED.search(line) or _REMOVED.search(line)
            if found is None:
                continue
            try:
                logged = {str(n) for n in ast.literal_eval(found.group(1).strip())}
            except (ValueError, SyntaxError):
                logged = {found.group(1)}
            if self.shared and _REMOVED.search(line) is None and not logged & probes:
                continue  # another client's request
            if self.shared and _REMOVED.search(line):
                continue  # once per process and without a probe: the DEBUG line says it too
            names |= {n for n in logged if not n.startswith(PROBE)}
        return names


def _fields_of(form: Form) -> set[str]:
    names = set(form.extra)
    for key, value in form.extra.items():
        if key == "nvext" and isinstance(value, dict):
            names |= {f"nvext.{k}" for k in value}
    return names


async def _answers(
    client: httpx.AsyncClient, model: str, form: Form, extra: dict[str, Any], n: int
) -> tuple[list[Answer], set[str]]:
    bodies = [_body(model, form, extra) for _ in range(n)]
    answers = await asyncio.gather(*(_post(client, b) for b in bodies))
    return list(answers), {_probe_of(b) for b in bodies}


def _effect(form: Form, answers: list[Answer]) -> list[bool] | None:
    if form.greedy:
        # Greedy decoding of the random model: its first token is a near tie in bf16, so
        # greedy runs (temperature 0 too) give one of two answers; sampled ones never repeat.
        return [len({a["text"] for a in answers}) <= 2] * len(answers)
    if form.check is not None:
        return [form.check(a) for a in answers]
    return None


async def classify(
    client: httpx.AsyncClient, log: LogReader, model: str, form: Form, tries: int
) -> dict[str, Any]:
    """Send ``form`` ``tries`` times and classify what the server did with it."""
    mark = log.mark()
    answers, probes = await _answers(client, model, form, form.extra, tries)
    await asyncio.sleep(0.3)  # lines still in flight from the server's processes
    ignored = log.ignored(mark, probes) & _fields_of(form)
    statuses = sorted({a["status"] for a in answers})
    row: dict[str, Any] = {"statuses": statuses, "logged_ignored": sorted(ignored)}
    if statuses != [200]:
        errors = [a["error"] for a in answers if a["status"] != 200]
        row.update(outcome=f"rejected ({statuses[-1]})", evidence=errors[0][:160])
        return row
    if form.fewer_prompt_tokens:
        control, _ = await _answers(client, model, form, {}, 1)
        with_field = answers[0]["usage"].get("prompt_tokens", 0)
        without = control[0]["usage"].get("prompt_tokens", 0)
        row["evidence"] = f"prompt tokens {with_field} with, {without} without"
        good = [a["usage"].get("prompt_tokens", 0) < without for a in answers]
        visible = True
    else:
        effect = _effect(form, answers)
        if effect is None:
            good, visible = [], False
            row["evidence"] = "no output check"
        else:
            good = effect
            visible = True
            if form.control is not None:
                control, _ = await _answers(client, model, form, form.control, tries)
                seen = _effect(form, control) or []
                visible = not all(seen)
                row["evidence"] = f"effect {sum(good)}/{tries} with, {sum(seen)}/{tries} without"
            else:
                row["evidence"] = f"constraint held {sum(good)}/{tries}"
    if ignored:
        row["outcome"] = "ignored"
        row["evidence"] = f"logged ignored: {sorted(ignored)}; " + row["evidence"]
    elif not visible:
        row["outcome"] = "accepted"
    elif all(good):
        row["outcome"] = "honoured"
    elif not any(good):
        row["outcome"] = "ignored"
    else:
        row["outcome"] = f"partial {sum(good)}/{tries}"
    return row


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, raw = line[len("export ") :].partition("=")
            parts = shlex.split(raw)
            values[key] = parts[0] if parts else ""
    return values


def start_emulator(
    model: str, log_path: Path, *, legacy: bool
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m nim_async.emulator`` on a free port (DEBUG log to ``log_path``)."""
    port = _free_port()
    cmd = [
        sys.executable, "-m", "nim_async.emulator", "--port", str(port),
        "--served-model-name", model, "--max-model-len", "4096", "--max-pixels", "50176",
        "--log-level", "DEBUG",
    ]  # fmt: skip
    if legacy:
        cmd.append("--legacy-guided")
    with log_path.open("wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"emulator did not start: {' '.join(cmd)} (log {log_path})")


def markdown(table: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The table as markdown: form x server -> outcome."""
    lines = ["| request form | " + " | ".join(SERVERS) + " |", "|---" * (len(SERVERS) + 1) + "|"]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(row[s]["outcome"] for s in SERVERS) + " |")
    return "\n".join(lines)


async def measure(
    targets: dict[str, tuple[str, LogReader]], model: str, tries: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """Measure every form on the servers of ``targets`` (name -> (URL, log))."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    clients = {s: httpx.AsyncClient(base_url=url, timeout=300) for s, (url, _) in targets.items()}
    try:
        for form in FORMS:
            rows = await asyncio.gather(
                *(classify(clients[s], targets[s][1], model, form, tries) for s in SERVERS)
            )
            table[form.name] = dict(zip(SERVERS, rows, strict=True))
            print(f"{form.name}: " + "; ".join(r["outcome"] for r in rows), flush=True)
    finally:
        for c in clients.values():
            await c.aclose()
    return table


def run(args: argparse.Namespace) -> dict[str, dict[str, dict[str, Any]]]:
    """Start the emulators, measure every form on the three servers, stop the emulators."""
    env = _read_env(Path(args.vllm_env))
    model = env["NIM_VLLM_MODEL"]
    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        default, default_url = start_emulator(model, logs / "emulator-default.log", legacy=False)
        procs.append(default)
        legacy, legacy_url = start_emulator(model, logs / "emulator-legacy.log", legacy=True)
        procs.append(legacy)
        targets = {
            SERVERS[0]: (env["NIM_VLLM_URL"], LogReader(Path(env["NIM_VLLM_LOG"]), shared=True)),
            SERVERS[1]: (default_url, LogReader(logs / "emulator-default.log", shared=False)),
            SERVERS[2]: (legacy_url, LogReader(logs / "emulator-legacy.log", shared=False)),
        }
        return asyncio.run(measure(targets, model, args.tries))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


def main() -> None:
    """Command line: measure and print the table (markdown), write the details as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    state = os.environ.get("NIM_TEST_STATE", "/tmp/nim-async-test-env")
    parser.add_argument("--vllm-env", default=f"{state}/vllm/env", help="the tier's env file")
    parser.add_argument("--tries", type=int, default=TRIES, help="answers per form and server")
    parser.add_argument("--out", default="/tmp/wire-matrix.json", help="JSON details")
    parser.add_argument("--log-dir", default="/tmp/wire-matrix-logs", help="emulator logs")
    args = parser.parse_args()
    t0 = time.monotonic()
    table = run(args)
    Path(args.out).write_text(json.dumps(table, indent=2) + "\n")
    print()
    print(markdown(table))
    print(f"\n{len(table)} forms x {len(SERVERS)} servers, {args.tries} tries each, "
          f"{time.monotonic() - t0:.0f} s; details in {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
