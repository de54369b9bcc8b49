#!/usr/bin/env bash
# Build once, then start (or stop) the real Kubernetes pieces the kubernetes-marked tests use
# (tests/kubernetes/):
#   build  kube-apiserver, kube-scheduler, kube-controller-manager and kubelet from Debian
#          bookworm's *source* package `kubernetes` (no registry reachable here ships them), with
#          Debian's golang-1.19, cached OUTSIDE the repo keyed by the source version
#          ($NIM_K8S_HOME, default /var/cache/nim-async/k8s-<version>/bin). Known fix: the vendored
#          modern-go/reflect2 1.0.1 and json-iterator are replaced by Debian's 1.0.2 / 1.1.12 (else
#          the API server crashes on the first custom object under Go >= 1.18); the OpenAPI
#          definitions (not in the source package) are generated first (make gen_openapi). The
#          go build runs under `nice -n 19` (about 25 min cold on 2 quiet cores); the API server
#          is built first and usable (CRD tier) before the other three are done.
#          `build --background` returns at once; the log is $CACHE/k8s-build.log.
#   up     CRD tier: etcd (Debian etcd-server) + kube-apiserver on 127.0.0.1 (certificates and a
#          token generated locally). Pod tier, when kubelet & co. are built and we are root:
#          containerd (its CRI plugin with restrict_oom_score_adj = true, the local registry
#          127.0.0.1:5599 as a plain-HTTP mirror), kubelet, scheduler and controller-manager,
#          the whole node inside a network namespace of its own (nimk8s) with bridge CNI.
#          Writes $NIM_TEST_STATE/k8s/{kubeconfig,env}; tests/kubernetes/conftest.py reads env.
#   down   stop what "up" started (by PID), remove the network namespace.
#
# Loopback and the network namespace made here are the only targets. Needs root for apt-get, the
# namespace and the pod tier. Network: Debian only (apt-get, apt-get source).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${NIM_K8S_CACHE:-/var/cache/nim-async}
STATE=${NIM_TEST_STATE:-/tmp/nim-async-test-env}/k8s
SRC_PKG=kubernetes
GO=/usr/lib/go-1.19/bin/go
NS=nimk8s
# enter the namespace's network only: `ip netns exec` also remounts /sys in a mount namespace of
# its own, which hides the cgroup mounts from kubelet and runc ("mountpoint for cpu not found")
IN_NS="nsenter --net=/run/netns/$NS"
API_PORT=${NIM_K8S_API_PORT:-6443}
ETCD_PORT=${NIM_K8S_ETCD_PORT:-2479}
ETCD_PEER_PORT=$((ETCD_PORT + 1))
REG_PORT=${NIM_TEST_REGISTRY_PORT:-5599}
PAUSE_IMAGE=nim-async.local/pause:1

T0=$(date +%s%N)
say() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf 'k8s-env [%3d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"; }
die() { say "$*" >&2; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for <seconds> <command...>
  local n=$(( $1 * 10 )); shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

src_list() {  # the deb-src line apt-get source needs (same mirror as the binary lines)
  local f=/etc/apt/sources.list.d/nim-async-src.sources
  [ -f "$f" ] && return 0
  cat >"$f" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  APT_UPDATED=
}

apt_update() { [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq; APT_UPDATED=1; }; }

src_version() {  # the source version apt would fetch, e.g. 1.20.5+really1.20.2-1.1
  if [ -n "${NIM_K8S_VERSION:-}" ]; then echo "$NIM_K8S_VERSION"; return; fi
  local known
  known=$(ls -d "$CACHE"/k8s-*/bin/kube-apiserver 2>/dev/null | head -n1 || true)
  if [ -n "$known" ] && [ -z "${NIM_K8S_REFRESH:-}" ]; then  # offline: the cached one
    basename "$(dirname "$(dirname "$known")")" | sed 's/^k8s-//'
    return
  fi
  apt-cache showsrc "$SRC_PKG" 2>/dev/null | awk '/^Version:/ {print $2; exit}'
}

home_for() { echo "${NIM_K8S_HOME:-$CACHE/k8s-$1}"; }

install_build_deps() {
  local need=()
  [ -x "$GO" ] || need+=(golang-1.19-go)
  [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need+=(golang-github-modern-go-reflect2-dev)
  [ -d /usr/share/gocode/src/github.com/json-iterator/go ] || need+=(golang-github-json-iterator-go-dev)
  command -v dpkg-source >/dev/null || need+=(dpkg-dev)
  command -v rsync >/dev/null || need+=(rsync)  # hack/make-rules/build.sh copies with it
  command -v make >/dev/null || need+=(make)
  if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

do_build() {  # the long part; run in the background by "build --background"
  local ver home src out
  export DEBIAN_FRONTEND=noninteractive
  mkdir -p "$CACHE"
  src_list
  apt_update
  ver=$(apt-cache showsrc "$SRC_PKG" | awk '/^Version:/ {print $2; exit}')
  [ -n "$ver" ] || die "apt-cache showsrc $SRC_PKG: no source version (deb-src line?)"
  home=$(home_for "$ver"); out=$home/bin
  if [ -x "$out/kube-apiserver" ] && [ -x "$out/kubelet" ] && [ -x "$out/kube-scheduler" ] \
      && [ -x "$out/kube-controller-manager" ]; then
    say "already built: $out"; return 0
  fi
  install_build_deps
  mkdir -p "$home"
  src=$(ls -d "$home"/src/kubernetes-*/ 2>/dev/null | head -n1 || true)
  if [ -z "$src" ]; then
    say "apt-get source $SRC_PKG=$ver"
    rm -rf "$home/src"; mkdir -p "$home/src"
    (cd "$home/src" && apt-get source -qq "$SRC_PKG=$ver" >/dev/null)
    src=$(ls -d "$home"/src/kubernetes-*/ | head -n1)
  fi
  src=${src%/}
  say "fix: Debian's reflect2 and json-iterator replace the vendored ones"
  rm -rf "$src/vendor/github.com/modern-go/reflect2" "$src/vendor/github.com/json-iterator/go"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/json-iterator/go "$src/vendor/github.com/json-iterator/go"
  find "$src/vendor/github.com/modern-go/reflect2" "$src/vendor/github.com/json-iterator/go" \
    -name '*_test.go' -delete
  local up=${ver#*really}; up=${up%%-*}
  # Kubernetes 1.20 builds in GOPATH mode (hack/lib/init.sh: GO111MODULE=off) from a GOPATH in
  # which k8s.io/kubernetes is this tree; vendor/ (staging symlinks included) resolves the rest.
  local gp=$home/gopath
  mkdir -p "$gp/src/k8s.io"
  ln -sfn "$src" "$gp/src/k8s.io/kubernetes"
  local pkg=k8s.io/kubernetes/vendor/k8s.io/component-base/version
  local ld="-s -w -X $pkg.gitVersion=v$up -X $pkg.gitMajor=${up%%.*}"
  ld="$ld -X $pkg.gitMinor=$(echo "$up" | cut -d. -f2) -X $pkg.gitTreeState=archive"
  if [ ! -f "$src/pkg/generated/openapi/zz_generated.openapi.go" ]; then
    # not in the source package: generated by openapi-gen (what `make` does before a build)
    say "make gen_openapi (nice -n 19)"
    (cd "$gp/src/k8s.io/kubernetes" && PATH=$(dirname "$GO"):$PATH GO111MODULE=off GOFLAGS= \
      nice -n 19 make gen_openapi)
  fi
  mkdir -p "$out.tmp"
  export GO111MODULE=off GOFLAGS= CGO_ENABLED=0 GOCACHE=$home/gocache GOPATH=$gp
  for cmd in kube-apiserver kubelet kube-scheduler kube-controller-manager; do
    [ -x "$out/$cmd" ] && continue
    say "go build $cmd (nice -n 19)"
    (cd "$gp/src/k8s.io/kubernetes" && nice -n 19 "$GO" build -trimpath -ldflags "$ld" -o "$out.tmp/$cmd" "./cmd/$cmd")
    mkdir -p "$out"; mv "$out.tmp/$cmd" "$out/$cmd"
    say "built $out/$cmd"
  done
  rmdir "$out.tmp" 2>/dev/null || true
  echo "$ver" >"$home/VERSION"
  if [ -z "${NIM_K8S_KEEP_BUILD:-}" ]; then  # the source tree and go cache: 2 GB no longer needed
    rm -rf "$home/src" "$home/gocache" "$home/gopath"
  fi
  say "done: $(du -sh "$out" | cut -f1) in $out"
}

all_built() {  # all_built <bin dir>: the four binaries are there
  local c
  for c in kube-apiserver kubelet kube-scheduler kube-controller-manager; do
    [ -x "$1/$c" ] || return 1
  done
}

cmd_build() {
  local cached; cached=$(bin_dir)
  if [ -n "$cached" ] && all_built "$cached"; then say "already built: $cached"; return 0; fi
  [ "$(id -u)" = 0 ] || die "build needs root (apt-get)"
  if [ "${1:-}" = --background ]; then
    mkdir -p "$CACHE"
    local log=$CACHE/k8s-build.log
    if alive "$CACHE/k8s-build.pid"; then say "a build is already running (log: $log)"; return; fi
    nohup "$0" build >"$log" 2>&1 &
    echo $! >"$CACHE/k8s-build.pid"
    say "building in the background, PID $!, log: $log"
    return
  fi
  do_build
}

# ---------------------------------------------------------------------------------------- up

bin_dir() {  # the cached binaries' directory (at least the API server), or nothing
  local ver d
  ver=$(src_version 2>/dev/null || true)
  [ -n "$ver" ] || return 0
  d=$(home_for "$ver")/bin
  if [ -x "$d/kube-apiserver" ]; then echo "$d"; fi
  return 0
}

pki() {  # CA, API server certificate, service-account key pair, the admin token (made once)
  local d=$STATE/pki tok
  [ -f "$d/token" ] && return 0
  mkdir -p "$d"; chmod 700 "$d"
  say "generating certificates and a token"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=nim-async-k8s-ca \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
    -keyout "$d/apiserver.key" -out "$d/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' >"$d/ext"
  openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -extfile "$d/ext" -out "$d/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  tok=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  printf '%s,nim-async-admin,nim-async-admin,"system:masters"\n' "$tok" >"$d/tokens.csv"
  printf '%s' "$tok" >"$d/token"
  chmod 600 "$d"/*
}

write_kubeconfig() {
  local d=$STATE/pki
  cat >"$STATE/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: nim-async-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $d/ca.crt
users:
- name: nim-async-admin
  user:
    token: $(cat "$d/token")
contexts:
- name: nim-async-test
  context: {cluster: nim-async-test, user: nim-async-admin, namespace: default}
current-context: nim-async-test
KUBECONFIG
  chmod 600 "$STATE/kubeconfig"
}

api_get() {  # api_get <path>: GET from the API server as the admin
  curl -sf -m 5 --cacert "$STATE/pki/ca.crt" -H "Authorization: Bearer $(cat "$STATE/pki/token")" \
    "https://127.0.0.1:$API_PORT$1"
}
api_ready() { api_get /readyz >/dev/null; }

start_etcd() {
  alive "$STATE/etcd.pid" && return 0
  if ! command -v etcd >/dev/null; then
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
  fi
  say "starting etcd on 127.0.0.1:$ETCD_PORT"
  rm -rf "${STATE:?}/etcd"
  nohup etcd --name nim-async --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "nim-async=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync >"$STATE/etcd.log" 2>&1 &
  echo $! >"$STATE/etcd.pid"
  wait_for 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health" \
    || die "etcd did not start (see $STATE/etcd.log)"
}

start_apiserver() {
  local bin=$1 d=$STATE/pki
  if alive "$STATE/apiserver.pid" && api_ready; then return 0; fi
  say "starting kube-apiserver on 127.0.0.1:$API_PORT"
  nohup "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --insecure-port 0 \
    --tls-cert-file "$d/apiserver.crt" --tls-private-key-file "$d/apiserver.key" \
    --client-ca-file "$d/ca.crt" --token-auth-file "$d/tokens.csv" \
    --service-account-key-file "$d/sa.pub" --service-account-signing-key-file "$d/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-cluster-ip-range 10.96.0.0/24 --authorization-mode Node,RBAC \
    --kubelet-preferred-address-types Hostname --allow-privileged=true \
    --cert-dir "$STATE/apiserver-certs" >"$STATE/apiserver.log" 2>&1 &
  echo $! >"$STATE/apiserver.pid"
  wait_for 180 api_ready || die "kube-apiserver did not become ready (see $STATE/apiserver.log)"
}

relay() {  # relay <name> <port> <into|out>: 127.0.0.1:<port> reachable across the namespace
  # into: the host's port appears on the namespace's loopback; out: the reverse. Through a unix
  # socket, so that no interface or route is added to the host.
  local name=$1 port=$2 dir=$3 sock=$STATE/relay-$1.sock
  if alive "$STATE/relay-$name-a.pid" && alive "$STATE/relay-$name-b.pid"; then return 0; fi
  rm -f "$sock"
  if [ "$dir" = into ]; then
    nohup socat "UNIX-LISTEN:$sock,fork,mode=600" "TCP:127.0.0.1:$port" >/dev/null 2>&1 &
    echo $! >"$STATE/relay-$name-a.pid"
    wait_for 5 test -S "$sock" || die "relay $name: socat did not listen on $sock"
    nohup $IN_NS socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" \
      "UNIX-CONNECT:$sock" >/dev/null 2>&1 &
  else
    nohup $IN_NS socat "UNIX-LISTEN:$sock,fork,mode=600" "TCP:127.0.0.1:$port" \
      >/dev/null 2>&1 &
    echo $! >"$STATE/relay-$name-a.pid"
    wait_for 5 test -S "$sock" || die "relay $name: socat did not listen on $sock"
    nohup socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$sock" \
      >/dev/null 2>&1 &
  fi
  echo $! >"$STATE/relay-$name-b.pid"
}

pause_image() {  # the sandbox image: a 12-line Go program, as an OCI layout imported directly
  local ctr=(ctr --address "$STATE/containerd/containerd.sock" -n k8s.io)
  "${ctr[@]}" images ls -q 2>/dev/null | grep -qx "$PAUSE_IMAGE" && return 0
  say "building the pause image ($PAUSE_IMAGE)"
  local d=$STATE/pause layer cfg man lsz csz msz
  rm -rf "$d"; mkdir -p "$d/root" "$d/oci/blobs/sha256"
  printf '%s\n' 'package main' 'import ("os"; "os/signal"; "syscall")' \
    'func main() { c := make(chan os.Signal, 1); signal.Notify(c, syscall.SIGINT, syscall.SIGTERM); <-c }' \
    >"$d/pause.go"
  (cd "$d" && CGO_ENABLED=0 GO111MODULE=off GOCACHE=$d/cache GOPATH=$d/gopath "$GO" build -o root/pause pause.go)
  tar -C "$d/root" -cf "$d/layer.tar" pause
  layer=$(sha256sum "$d/layer.tar" | cut -d' ' -f1); lsz=$(stat -c %s "$d/layer.tar")
  cp "$d/layer.tar" "$d/oci/blobs/sha256/$layer"
  printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$layer" >"$d/config.json"
  cfg=$(sha256sum "$d/config.json" | cut -d' ' -f1); csz=$(stat -c %s "$d/config.json")
  cp "$d/config.json" "$d/oci/blobs/sha256/$cfg"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cfg" "$csz" "$layer" "$lsz" >"$d/manifest.json"
  man=$(sha256sum "$d/manifest.json" | cut -d' ' -f1); msz=$(stat -c %s "$d/manifest.json")
  cp "$d/manifest.json" "$d/oci/blobs/sha256/$man"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$d/oci/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
    "$man" "$msz" "$PAUSE_IMAGE" >"$d/oci/index.json"
  tar -C "$d/oci" -cf "$d/pause-oci.tar" oci-layout index.json blobs
  "${ctr[@]}" images import "$d/pause-oci.tar" >/dev/null
}

start_containerd() {
  local c=$STATE/containerd
  if alive "$c.pid" && ctr --address "$c/containerd.sock" version >/dev/null 2>&1; then return 0; fi
  say "starting containerd in the network namespace $NS"
  mkdir -p "$c" "$STATE/cni/net.d"
  cat >"$STATE/cni/net.d/10-nim-async.conflist" <<'CNI'
{"cniVersion": "0.4.0", "name": "nim-async", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}}]}
CNI
  cat >"$c/config.toml" <<TOML
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$c/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."127.0.0.1:$REG_PORT"]
    endpoint = ["http://127.0.0.1:$REG_PORT"]
TOML
  nohup $IN_NS containerd --config "$c/config.toml" >"$STATE/containerd.log" 2>&1 &
  echo $! >"$c.pid"
  wait_for 30 ctr --address "$c/containerd.sock" version \
    || die "containerd did not start (see $STATE/containerd.log)"
}

node_ready() {
  api_get /api/v1/nodes/localhost | tr -d ' \n' | grep -q '"type":"Ready","status":"True"'
}

install_node_deps() {  # what the pod tier runs besides the built binaries
  local need=()
  command -v socat >/dev/null || need+=(socat)  # the loopback relays into the namespace
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  # the pod network: bridge + host-local IPAM + loopback, where containerd looks (bin_dir)
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] \
    || need+=(containernetworking-plugins)
  if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

start_node() {
  local bin=$1
  install_node_deps
  if [ ! -e "/run/netns/$NS" ]; then ip netns add "$NS"; ip netns exec "$NS" ip link set lo up; fi
  # kubelet needs a default route to find a node IP (else the node has no addresses at all and
  # the API server cannot reach it for logs / port-forward): a veth pair with both ends inside
  # the namespace, so the route leads nowhere outside it
  if ! ip netns exec "$NS" ip link show nim0 >/dev/null 2>&1; then
    ip netns exec "$NS" ip link add nim0 type veth peer name nim1
    ip netns exec "$NS" ip addr add 10.89.0.1/24 dev nim0
    ip netns exec "$NS" ip link set nim1 up
    ip netns exec "$NS" ip link set nim0 up
    ip netns exec "$NS" ip route add default via 10.89.0.2 dev nim0
  fi
  relay api "$API_PORT" into
  relay registry "$REG_PORT" into
  start_containerd
  pause_image
  if ! alive "$STATE/kubelet.pid"; then
    say "starting kubelet in $NS"
    mkdir -p "$STATE/kubelet"
    cat >"$STATE/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
serializeImagePulls: false
resolvConf: /etc/resolv.conf
YAML
    nohup $IN_NS "$bin/kubelet" --config "$STATE/kubelet/config.yaml" \
      --kubeconfig "$STATE/kubeconfig" --hostname-override localhost \
      --container-runtime remote \
      --container-runtime-endpoint "unix://$STATE/containerd/containerd.sock" \
      --root-dir "$STATE/kubelet/root" --cert-dir "$STATE/kubelet/pki" \
      --volume-plugin-dir "$STATE/kubelet/plugins" --runtime-request-timeout 10m \
      >"$STATE/kubelet.log" 2>&1 &
    echo $! >"$STATE/kubelet.pid"
  fi
  relay kubelet 10250 out
  if ! alive "$STATE/scheduler.pid"; then
    say "starting kube-scheduler and kube-controller-manager"
    nohup "$bin/kube-scheduler" --kubeconfig "$STATE/kubeconfig" --leader-elect=false \
      --bind-address 127.0.0.1 --secure-port 10359 --port 0 >"$STATE/scheduler.log" 2>&1 &
    echo $! >"$STATE/scheduler.pid"
  fi
  if ! alive "$STATE/controller-manager.pid"; then
    nohup "$bin/kube-controller-manager" --kubeconfig "$STATE/kubeconfig" --leader-elect=false \
      --bind-address 127.0.0.1 --secure-port 10357 --port 0 \
      --service-account-private-key-file "$STATE/pki/sa.key" --root-ca-file "$STATE/pki/ca.crt" \
      --controllers '*,-nodeipam,-ttl,-bootstrapsigner,-tokencleaner' \
      >"$STATE/controller-manager.log" 2>&1 &
    echo $! >"$STATE/controller-manager.pid"
  fi
  wait_for 180 node_ready || die "the node did not become Ready (see $STATE/kubelet.log)"
}

write_env() {
  cat >"$STATE/env" <<ENV
export NIM_K8S_KUBECONFIG=$STATE/kubeconfig
export NIM_K8S_TIER=$1
export NIM_K8S_NETNS=$NS
export NIM_K8S_STATE=$STATE
ENV
}

cmd_up() {
  local bin tier=crd
  bin=$(bin_dir)
  [ -n "$bin" ] || die "no Kubernetes binaries; build them once with: scripts/k8s-env.sh build (about 25 min)"
  mkdir -p "$STATE"
  pki
  write_kubeconfig
  start_etcd
  start_apiserver "$bin"
  if [ -x "$bin/kubelet" ] && [ -x "$bin/kube-scheduler" ] && [ -x "$bin/kube-controller-manager" ] \
      && [ "$(id -u)" = 0 ] && [ -z "${NIM_K8S_CRD_ONLY:-}" ]; then
    start_node "$bin"
    tier=pod
  fi
  write_env "$tier"
  say "up ($tier tier); kubeconfig: $STATE/kubeconfig, env: $STATE/env"
}

# ---------------------------------------------------------------------------------------- down

stop_pid() {  # stop_pid <pidfile>: SIGTERM, SIGKILL after 10 s
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

cmd_down() {
  local p f t
  if [ ! -d "$STATE" ]; then say "nothing to stop"; return 0; fi
  for p in controller-manager scheduler kubelet; do stop_pid "$STATE/$p.pid"; done
  if [ -S "$STATE/containerd/containerd.sock" ]; then  # the pods' processes first
    local ctr=(ctr --address "$STATE/containerd/containerd.sock" -n k8s.io)
    for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
      "${ctr[@]}" tasks kill -s KILL "$t" >/dev/null 2>&1 || true
    done
  fi
  stop_pid "$STATE/containerd.pid"
  for f in "$STATE"/relay-*.pid; do [ -e "$f" ] && stop_pid "$f"; done
  stop_pid "$STATE/apiserver.pid"
  stop_pid "$STATE/etcd.pid"
  awk -v s="$STATE/" 'index($2, s) == 1 {print $2}' /proc/mounts | sort -r \
    | xargs -r -n1 umount -l 2>/dev/null || true
  if [ -e "/run/netns/$NS" ]; then ip netns delete "$NS"; fi
  rm -f "$STATE/env"
  say "down"
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  *) echo "usage: $0 build [--background] | up | down" >&2; exit 2 ;;
esac
