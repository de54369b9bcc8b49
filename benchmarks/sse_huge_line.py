"""CPU and memory of the SSE decoder on one huge line (the hostile-input issue, case 4).

A server sends one ``data:`` line of SIZE bytes with no newline, in 64 KiB reads (what a socket
hands the client). Reported: CPU seconds spent in the decoder and the peak RSS of a fresh
process. The old decoder copied its whole buffer on every read (quadratic); the current one keeps
the pieces and, with its default 16 MiB cap, stops with ResponseTooLargeError.

    python benchmarks/sse_huge_line.py [--quick] [--size-mb 64] [--no-cap]

``--module PATH`` measures another version of the decoder's source file (for example the old
``nim_async/sse.py`` of an earlier checkout) beside the current one.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CHILD = r"""
import importlib.util, json, resource, sys, time
if sys.argv[4]:
    spec = importlib.util.spec_from_file_location("sse_under_test", sys.argv[4])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    SSEDecoder = module.SSEDecoder
else:
    from nim_async.protocol.sse import SSEDecoder
size, chunk, cap = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "cap"
try:
    decoder = SSEDecoder() if cap else SSEDecoder(max_event_bytes=None)
except TypeError:
    decoder = SSEDecoder()
piece = b"x" * chunk
outcome = "read whole"
t0 = time.process_time()
try:
    decoder.feed(b"data: ")
    for i in range(size // chunk):
        decoder.feed(piece[:-1] + b"%c" % (48 + i % 10))  # a new object per read, as a socket gives
except Exception as exc:
    outcome = type(exc).__name__
cpu = time.process_time() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"cpu_s": round(cpu, 3), "peak_rss_mb": round(rss, 1), "outcome": outcome}))
"""


def run(size: int, chunk: int, cap: bool, module: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(size), str(chunk), "cap" if cap else "nocap", module],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 MB instead of 64 MB")
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--chunk-kb", type=int, default=64)
    parser.add_argument("--module", default="", help="another sse.py to measure as well")
    args = parser.parse_args()
    size = (16 if args.quick else args.size_mb) * 1024 * 1024
    chunk = args.chunk_kb * 1024
    t0 = time.perf_counter()
    runs = [("current, no cap", False, ""), ("current, default cap", True, "")]
    if args.module:
        runs.insert(0, (f"{args.module}", True, args.module))
    for label, cap, module in runs:
        r = run(size, chunk, cap, module)
        print(
            f"{size // 2**20} MB line in {chunk // 1024} KiB reads, {label}: "
            f"{r['cpu_s']:.3f} s CPU, peak RSS {r['peak_rss_mb']} MB, {r['outcome']}"
        )
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this driver: {base:.0f} MB RSS; wall {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
