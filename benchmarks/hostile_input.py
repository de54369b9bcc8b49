"""Memory and CPU of the predictor against hostile answers and images (issue 14, cases 4 and 5).

Three cases, each a fresh client process (peak RSS from ``resource.getrusage``, CPU seconds from
``time.process_time``) against a loopback server in its own process:

* ``json``: a non-streamed answer of SIZE MB (default 300) of valid JSON (whitespace padding),
  sent in 64 KiB writes;
* ``sse``: a stream whose first event is one ``data:`` line of SIZE MB (default 64) without a
  newline;
* ``png``: a 13000x13000 grey PNG (about 0.5 MB of file) passed as bytes.

Each case runs with the package under test (this checkout) and, with ``--before DIR``, with
another copy of the package (for example ``git archive 71095e2 nim_async | tar -x -C DIR``) in
the same run, so the two are compared on the same machine at the same time::

    python benchmarks/hostile_input.py [--before /tmp/before] [--json-mb 300] [--sse-mb 64]

Only the public API is used (``from nim_async import AsyncNIMPredictor``), with defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

SERVER = r"""
import asyncio, sys
from aiohttp import web
kind, size = sys.argv[1], int(sys.argv[2]) * 1024 * 1024
PIECE = 65536
async def chat(request):
    body = await request.read()
    stream = b'"stream":true' in body or b'"stream": true' in body
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream" if stream else "application/json"})
    await response.prepare(request)
    try:
        if kind == "sse":
            await response.write(b"data: ")
            for _ in range(size // PIECE):
                await response.write(b"x" * PIECE)
            await response.write(b"\n\ndata: [DONE]\n\n")
        else:
            await response.write(b'{"choices":[{"index":0,"finish_reason":"stop","message":'
                                 b'{"role":"assistant","content":"{\\"vqa\\": '
                                 b'{\\"answer\\": \\"x\\"}}"}}]')
            for _ in range(size // PIECE):
                await response.write(b" " * PIECE)
            await response.write(b"}")
    except (ConnectionError, RuntimeError):
        pass
    return response
app = web.Application(client_max_size=1 << 30)
app.router.add_post("/v1/chat/completions", chat)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[3]), print=None, handle_signals=True)
"""

CLIENT = r"""
import asyncio, io, json, resource, sys, time
from PIL import Image
from nim_async import AsyncNIMPredictor
kind, port, png = sys.argv[1], int(sys.argv[2]), sys.argv[3]
buf = io.BytesIO(); Image.new("RGB", (64, 64)).save(buf, "JPEG"); small = buf.getvalue()
async def main():
    async with AsyncNIMPredictor("cosmos-reason1-7b", "vqa", port, dialect="openai",
                                 retries=0) as p:
        if kind == "sse":
            async with p.stream(small) as s:
                await s.get_final_response()
        elif kind == "png":
            await p(open(png, "rb").read())
        else:
            await p(small)
t0 = time.process_time()
try:
    asyncio.run(main())
    outcome = "read whole"
except Exception as exc:
    outcome = type(exc).__name__ + ": " + str(exc)[:90]
print(json.dumps({"cpu_s": time.process_time() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "outcome": outcome}))
"""


def _png(side: int, path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    raw = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("the loopback server did not start")


def _client(kind: str, port: int, png: Path, root: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, kind, str(port), str(png)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,  # "python -c" puts the working directory first on sys.path
        timeout=600,
        check=False,
    )
    try:
        result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"cpu_s": float("nan"), "peak_rss_mb": float("nan"), "outcome": "crashed"}
    result["stderr_lines"] = len([line for line in done.stderr.splitlines() if line.strip()])
    return result


def main() -> None:
    """Run the cases and print one line per case and package."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a directory holding another nim_async")
    parser.add_argument("--json-mb", type=int, default=300)
    parser.add_argument("--sse-mb", type=int, default=64)
    parser.add_argument("--png-side", type=int, default=13000)
    args = parser.parse_args()
    roots = [("after", HERE)] + ([("before", args.before)] if args.before else [])
    png = Path(os.environ.get("TMPDIR", "/tmp")) / f"nim-async-bomb-{args.png_side}.png"
    if not png.exists():
        _png(args.png_side, png)
    print(f"png: {args.png_side}x{args.png_side}, {png.stat().st_size / 1024:.0f} KB file")
    for kind, size in (("json", args.json_mb), ("sse", args.sse_mb), ("png", 1)):
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, kind, str(size), str(port)],
            env={**os.environ, "PYTHONPATH": str(HERE)},
        )
        try:
            _wait(port)
            for label, root in roots:
                r = _client(kind, port, png, root)
                print(
                    f"{kind:4} {label:6} peak RSS {r['peak_rss_mb']:7.0f} MB  "
                    f"CPU {r['cpu_s']:6.2f} s  stderr lines {r['stderr_lines']}  {r['outcome']}"
                )
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
