#!/usr/bin/env bash
# Install aiperf (NVIDIA's LLM benchmark client) into a venv of its own OUTSIDE the repo, cached by
# version ($NIM_AIPERF_HOME, default /var/cache/nim-async/aiperf-$AIPERF_VERSION), for
# tests/bench/test_aiperf_agreement.py, which compares `nim-async bench` against it on the emulator.
#
#   scripts/aiperf-env.sh          # idempotent: with the venv installed it returns in about a second
#   scripts/aiperf-env.sh path     # print the venv's `aiperf` command (after installing if needed)
#
# It writes $NIM_TEST_STATE/aiperf/env (default /tmp/nim-async-test-env/aiperf/env) with
# NIM_AIPERF_BIN (the `aiperf` command), NIM_AIPERF_VERSION and NIM_AIPERF_TOKENIZER (a local
# word-level tokenizer: aiperf's "builtin" one downloads its vocabulary). Needs no root (without
# write access to /var/cache the default is under ~/.cache/nim-async). Network: PyPI only, on the first install.
set -euo pipefail
cd "$(dirname "$0")/.."

AIPERF_VERSION=0.13.0
CACHE=/var/cache/nim-async
if [ -z "${NIM_AIPERF_HOME:-}" ] && ! { mkdir -p "$CACHE" && [ -w "$CACHE" ]; } 2>/dev/null; then
  CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/nim-async
fi
VENV=${NIM_AIPERF_HOME:-$CACHE/aiperf-$AIPERF_VERSION}
STATE=${NIM_TEST_STATE:-/tmp/nim-async-test-env}/aiperf
BASE_PY=${NIM_AIPERF_BASE_PYTHON:-python3}
mkdir -p "$STATE"

installed() {
  [ -f "$VENV/.nim-async-ok" ] && [ "$(cat "$VENV/.nim-async-ok")" = "$AIPERF_VERSION" ] &&
    [ -x "$VENV/bin/aiperf" ] &&
    "$VENV/bin/python" -c 'import importlib.metadata as m, sys
sys.exit(m.version("aiperf") != sys.argv[1])' "$AIPERF_VERSION" >/dev/null 2>&1
}

if ! installed; then
  echo "aiperf-env: installing aiperf $AIPERF_VERSION into $VENV" >&2
  rm -rf "$VENV"
  "$BASE_PY" -m venv "$VENV"
  rc=0
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "aiperf==$AIPERF_VERSION" \
    2>"$STATE/pip.err" || rc=$?
  grep -v 'is neither a file nor a directory' "$STATE/pip.err" >&2 || true
  if [ $rc -ne 0 ]; then
    echo "aiperf-env: pip install aiperf==$AIPERF_VERSION failed ($rc)" >&2
    exit $rc
  fi
  echo "$AIPERF_VERSION" >"$VENV/.nim-async-ok"
  installed || { echo "aiperf-env: aiperf $AIPERF_VERSION does not import after install" >&2; exit 1; }
fi

# aiperf needs a tokenizer; its "builtin" one downloads tiktoken's vocabulary (no network in the
# tests): a local word-level one instead (token counts come from the server's usage).
if [ ! -f "$VENV/tokenizer/tokenizer.json" ]; then
  "$VENV/bin/python" - "$VENV/tokenizer" <<'PY'
import sys

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

tok = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
fast.save_pretrained(sys.argv[1])
PY
fi

printf 'export NIM_AIPERF_BIN=%q\nexport NIM_AIPERF_VERSION=%q\nexport NIM_AIPERF_TOKENIZER=%q\n' \
  "$VENV/bin/aiperf" "$AIPERF_VERSION" "$VENV/tokenizer" >"$STATE/env.tmp"
mv "$STATE/env.tmp" "$STATE/env"
if [ "${1:-}" = path ]; then
  echo "$VENV/bin/aiperf"
fi
