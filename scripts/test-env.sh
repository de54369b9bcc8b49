#!/usr/bin/env bash
# Start (or stop) the real services the docker-marked tests use:
#   * a Docker engine (dockerd), reused when one already answers;
#   * a docker-registry with htpasswd auth on 127.0.0.1:$NIM_TEST_REGISTRY_PORT, user '$oauthtoken'
#     (literally, as NGC uses it) and a fake 'nvapi-...' password;
#   * the emulator image (an emulator, not a model), built offline from this checkout with
#     `python -m nim_async.devtools.emulator_image`, pushed there as nim/nvidia/cosmos-reason1-7b:<tag>,
#     and deleted locally so the tests really pull it.
# Then it writes $NIM_TEST_STATE/env (shell exports) that tests/deployer/conftest.py reads.
#
#   scripts/test-env.sh up      # idempotent; a re-run with nothing changed takes about a second
#   scripts/test-env.sh down    # remove test containers, stop what "up" started (by PID)
#
# Needs root (dockerd). Installs docker.io, docker-registry and apache2-utils with apt-get when
# they are missing (CI starts from a fresh machine). No other network access is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${NIM_TEST_STATE:-/tmp/nim-async-test-env}
REG_PORT=${NIM_TEST_REGISTRY_PORT:-5599}
REG=127.0.0.1:$REG_PORT        # 127.0.0.0/8 is a plain-HTTP ("insecure") registry by default
REG_USER='$oauthtoken'         # single quotes: the literal user name NGC uses
REG_PASS=${NIM_TEST_REGISTRY_PASSWORD:-nvapi-nimasync-test-0000000000000000000000000000000000000000}
REPO=nim/nvidia/cosmos-reason1-7b
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export DOCKER_CONFIG=$STATE/docker-config   # keep CLI credentials out of ~/.docker

T0=$(date +%s%N)
say() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf 'test-env [%3d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"; }
wait_for() {  # wait_for <seconds> <command...>
  local n=$(( $1 * 10 )); shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
reg_up() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$REG/v2/")" = 401 ]; }
reg_has() {  # reg_has <tag>: the registry holds $REPO:<tag>
  [ "$(curl -s -o /dev/null -w '%{http_code}' -u "$REG_USER:$REG_PASS" \
      -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
      "http://$REG/v2/$REPO/manifests/$1")" = 200 ]
}

install_packages() {
  local need=()
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v docker-registry >/dev/null || need+=(docker-registry)
  command -v htpasswd >/dev/null || need+=(apache2-utils)
  command -v curl >/dev/null || need+=(curl)
  if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

start_dockerd() {
  if docker version >/dev/null 2>&1; then say "dockerd already answers; reusing it"; return; fi
  say "starting dockerd"
  nohup dockerd --pidfile "$STATE/dockerd.pid" >"$STATE/dockerd.log" 2>&1 &
  wait_for 60 docker version || { tail -30 "$STATE/dockerd.log"; echo "dockerd did not start" >&2; exit 1; }
}

start_registry() {
  mkdir -p "$STATE/registry/data"
  local want
  want=$(printf '%s\n%s\n' "$REG" "$REG_PASS" | sha256sum | cut -c1-16)
  if alive "$STATE/registry.pid" && [ "$(cat "$STATE/registry.key" 2>/dev/null)" = "$want" ] && reg_up; then
    say "registry already running on $REG"; return
  fi
  if alive "$STATE/registry.pid"; then kill "$(cat "$STATE/registry.pid")"; sleep 0.3; fi
  htpasswd -Bbn "$REG_USER" "$REG_PASS" >"$STATE/registry/htpasswd"
  cat >"$STATE/registry/config.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $STATE/registry/data
  delete:
    enabled: true
http:
  addr: $REG
  secret: nim-async-test-registry-not-a-secret
auth:
  htpasswd:
    realm: nim-async-test-registry
    path: $STATE/registry/htpasswd
YAML
  nohup docker-registry serve "$STATE/registry/config.yml" >"$STATE/registry.log" 2>&1 &
  echo $! >"$STATE/registry.pid"
  echo "$want" >"$STATE/registry.key"
  wait_for 20 reg_up || { cat "$STATE/registry.log"; echo "registry did not start" >&2; exit 1; }
  say "registry up on http://$REG (htpasswd auth)"
}

publish_image() {
  local fp tag ref
  fp=$("$PY" -m nim_async.devtools.emulator_image --fingerprint)
  tag=emu-$fp
  ref=$REG/$REPO:$tag
  if reg_has "$tag"; then
    say "registry already holds $ref"
  else
    "$PY" -m nim_async.devtools.emulator_image --tag "$ref"
    mkdir -p "$DOCKER_CONFIG"
    printf "%s" "$REG_PASS" | docker login -u "$REG_USER" --password-stdin "$REG" >/dev/null 2>&1 || { echo "docker login to $REG failed" >&2; exit 1; }
    docker push -q "$ref" >/dev/null
    docker logout "$REG" >/dev/null
    say "pushed $ref"
  fi
  # tests pull for real: no local copy of the test image
  if docker image inspect "$ref" >/dev/null 2>&1; then docker rmi -f "$ref" >/dev/null; fi
  TAG=$tag
}

write_env() {
  cat >"$STATE/env.tmp" <<ENV
export DOCKER_HOST=\${DOCKER_HOST:-unix:///var/run/docker.sock}
export NIM_TEST_REGISTRY=$REG
export NIM_TEST_REGISTRY_PATH=$REG/nim/nvidia
export NIM_TEST_REGISTRY_USER='$REG_USER'
export NIM_TEST_NGC_KEY=$REG_PASS
export NIM_TEST_IMAGE_NAME=cosmos-reason1-7b
export NIM_TEST_IMAGE_TAG=$TAG
export NIM_TEST_IMAGE=$REG/$REPO:$TAG
ENV
  mv "$STATE/env.tmp" "$STATE/env"
}

down() {
  if docker version >/dev/null 2>&1; then
    # containers deployed from the test registry only (a user's own NIM containers stay)
    ids=$(docker ps -a --filter label=nim_async.managed=true \
            --format '{{.ID}} {{.Label "nim_async.image"}}' | awk -v reg="$REG/" 'index($2, reg) == 1 {print $1}')
    # shellcheck disable=SC2086
    [ -z "$ids" ] || docker rm -f $ids >/dev/null
  fi
  for name in registry dockerd; do
    pidf=$STATE/$name.pid
    if alive "$pidf"; then
      pid=$(cat "$pidf"); kill "$pid"
      for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then echo "$name ($pid) did not stop; sending KILL"; kill -9 "$pid"; fi
      say "stopped $name (pid $pid)"
    fi
    rm -f "$pidf"
  done
  rm -f "$STATE/env"
}

up() {
  if [ "$(id -u)" != 0 ]; then echo "test-env.sh up needs root (dockerd)" >&2; exit 1; fi
  mkdir -p "$STATE"
  install_packages
  start_dockerd
  start_registry
  publish_image
  write_env
  say "READY registry=$REG user=\$oauthtoken image=$REG/$REPO:$TAG env=$STATE/env"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
