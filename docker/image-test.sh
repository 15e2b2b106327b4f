#!/usr/bin/env bash
# `make image-test`: build the service, stub and trainer images and check each as a user would, with podman.
#
# The images build FROM python:3.11-slim in production. Where no registry is reachable (CI), they build
# `--from` a stand-in made here: Debian bookworm by mmdebstrap (python3, a venv at /usr/local so `python` and
# `pip` sit where python:slim has them, the host's CA certificates for pip), imported as a local image and
# cached. The worker image's base (vllm/vllm-openai, CUDA) is not built here: see README, Docker.
#
# Checks, each failing the run:
#   service and stub: /healthz and /readyz 200 with the token from a mounted secret; a sample group scores
#   through POST /v1/score; 401 without the token; uid 10001; a read-only root filesystem; the healthcheck
#   passes (`podman healthcheck run`); the stub image holds no reward_service file beyond the stub's.
#   trainer: `looper --help`; rollouts of a tiny CPU model scored by the service container, reached by its
#   compose name (reward-service) over a network, with the token.
#   compose: `podman-compose` brings up the private and the stub profile in turn; each answers a scoring
#   request at http://reward-service:8000 from a client container on the compose network.
#
# Environment: IMAGE_TEST_CACHE (the base's cache, default ~/.cache/looper-image-test), IMAGE_TEST_KEEP=1 keeps
# containers and networks for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
T0=$(date +%s)
work=$(mktemp -d /var/tmp/looper-image-test.XXXXXX)
cache=${IMAGE_TEST_CACHE:-$HOME/.cache/looper-image-test}
python=${PYTHON:-$root/.venv/bin/python}
base=localhost/looper-test-base:bookworm
tag=0.1.0  # the tags docker-compose.yml names
export CONTAINERS_CONF=$work/containers.conf

step() { echo "== $* ($(($(date +%s) - T0)) s)"; }
fail() { echo "image-test FAILED: $*" >&2; exit 1; }

cleanup() {
  [ "${IMAGE_TEST_KEEP:-0}" = 1 ] && return
  podman rm -f -t 2 looper-it-service looper-it-stub >/dev/null 2>&1 || true
  podman network rm -f looper-it >/dev/null 2>&1 || true
  for profile in private stub; do
    (cd "$work/compose" 2>/dev/null && "$root/.venv/bin/podman-compose" --profile "$profile" down -t 2 >/dev/null 2>&1) || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# --- tools -------------------------------------------------------------------------------------------------
step "tools"
if ! command -v podman >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v runc >/dev/null \
   || [ ! -x /usr/lib/cni/dnsname ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q podman buildah mmdebstrap runc golang-github-containernetworking-plugin-dnsname >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q podman buildah mmdebstrap runc \
         golang-github-containernetworking-plugin-dnsname >/dev/null; }
fi
"$root/.venv/bin/pip" install -q podman-compose==1.6.0
# runc, not crun (crun cannot set rlimits or cgroups here); limits within the host's hard ones
cat > "$CONTAINERS_CONF" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
podman --version
# leftovers of a killed run (or IMAGE_TEST_KEEP=1) would make the fixed names below clash
podman rm -f -t 2 looper-it-service looper-it-stub >/dev/null 2>&1 || true
podman network rm -f looper-it >/dev/null 2>&1 || true

# --- the base, cached by the recipe ------------------------------------------------------------------------
hooks=(
  'chroot "$1" python3 -m venv /usr/local'
  'cp /etc/ssl/certs/ca-certificates.crt "$1"/etc/ssl/certs/host-ca.crt'
  'printf "[global]\ncert = /etc/ssl/certs/host-ca.crt\n" > "$1"/etc/pip.conf'
)
recipe="minbase python3,python3-venv,ca-certificates ${hooks[*]}"
key=$(printf '%s' "$recipe" | sha256sum | cut -c1-16)
if [ "$(podman image inspect --format '{{index .Labels "recipe"}}' "$base" 2>/dev/null)" != "$key" ]; then
  mkdir -p "$cache"
  if [ ! -f "$cache/base-$key.tar" ]; then
    step "base: mmdebstrap bookworm (minbase, python3)"
    sources=/etc/apt/sources.list.d/debian.sources
    [ -f "$sources" ] || sources=http://deb.debian.org/debian
    mmdebstrap --quiet --format=tar --variant=minbase --include=python3,python3-venv,ca-certificates \
      "${hooks[@]/#/--customize-hook=}" bookworm "$cache/base-$key.tar.part" "$sources" </dev/null
    mv "$cache/base-$key.tar.part" "$cache/base-$key.tar"
  fi
  podman import -q --change "LABEL recipe=$key" "$cache/base-$key.tar" "$base" >/dev/null
fi

# --- build -------------------------------------------------------------------------------------------------
build() {  # name dockerfile [extra podman build args]
  local name=$1 file=$2; shift 2
  step "build looper-$name:$tag ($file)"
  podman build -q --from "$base" --format docker -f "$file" -t "looper-$name:$tag" "$@" . >/dev/null
}
build service docker/service.Dockerfile
build stub docker/stub.Dockerfile
# CI has no GPU: the trainer gets the CPU torch wheel this machine installs from (a build argument)
cpu_torch=(--build-arg "TORCH_INSTALL=torch==2.13.0")
if [ -d /opt/wheels ]; then
  cpu_torch=(-v /opt/wheels:/opt/wheels:ro --build-arg "TORCH_INSTALL=--find-links /opt/wheels torch==2.13.0+cpu")
fi
build trainer docker/trainer.Dockerfile "${cpu_torch[@]}"

# --- run and check -----------------------------------------------------------------------------------------
mkdir -p "$work/secrets"
"$python" -c "import secrets; print(secrets.token_urlsafe(32))" > "$work/secrets/looper_service_token"
chmod 644 "$work/secrets/looper_service_token"  # read by uid 10001 inside
podman network create looper-it >/dev/null

free_port() {  # a port nothing on 127.0.0.1 listens on now: the test never takes one a user's service holds
  "$python" -c 'from looper_common.local_service import free_port; print(free_port())'
}

run_service() {  # name image port [args]
  local name=$1 image=$2 port=$3; shift 3
  podman run -d --name "looper-it-$name" --network looper-it --network-alias reward-service --read-only \
    --tmpfs /tmp -p "127.0.0.1:$port:8000" \
    -v "$work/secrets/looper_service_token:/run/secrets/looper_service_token:ro" "$image" "$@" >/dev/null
}

healthy() {  # container: run the image's healthcheck until it passes (no systemd runs it here)
  for _ in $(seq 1 60); do
    podman healthcheck run "$1" >/dev/null 2>&1 && return 0
    sleep 1
  done
  podman logs "$1" | tail -20
  fail "$1: the image's healthcheck did not pass in 60 s"
}

check_service() {  # name port scorer-kind
  local name=looper-it-$1 port=$2
  healthy "$name"
  "$python" docker/image_checks.py serve --url "http://127.0.0.1:$port" --token-file "$work/secrets/looper_service_token" \
    --expect "$3" || fail "$name: requests"
  [ "$(podman exec "$name" id -u)" = 10001 ] || fail "$name runs as $(podman exec "$name" id -u), not 10001"
  if podman exec "$name" sh -c 'touch /app/written' 2>/dev/null; then fail "$name: the root filesystem is writable"; fi
  echo "$name: healthy, scores, 401 without the token, uid 10001, read-only root"
}

step "run the service and the stub"
service_port=$(free_port)
run_service service "looper-service:$tag" "$service_port"
stub_port=$(free_port)
run_service stub "looper-stub:$tag" "$stub_port"
check_service service "$service_port" regime
check_service stub "$stub_port" stub
# the stub image is built from the public files alone
stub_files=$(podman run --rm --entrypoint sh "looper-stub:$tag" -c 'cd /app/reward_service && ls')
[ "$(echo $stub_files)" = "__init__.py app.py scorer.py settings.py stub.py workers.py" ] \
  || fail "the stub image holds reward_service files beyond the stub's: $(echo $stub_files)"
echo "looper-stub: reward_service holds only $(echo $stub_files)"

step "trainer: looper --help, and rollouts scored by reward-service over the network"
help_text=$(podman run --rm "looper-trainer:$tag" --help) || fail "looper-trainer: looper --help"
[[ "$help_text" == *rollouts* ]] || fail "looper-trainer: looper --help lists no rollouts command"
podman rm -f -t 2 looper-it-stub >/dev/null  # one reward-service on the network: the Regime W one
podman run --rm --network looper-it --read-only --tmpfs /tmp -e HF_HUB_OFFLINE=1 -e HOME=/tmp \
  -v "$work/secrets/looper_service_token:/run/secrets/looper_service_token:ro" -v "$root/docker/image_checks.py:/checks.py:ro" \
  --entrypoint python "looper-trainer:$tag" /checks.py rollouts --url http://reward-service:8000 \
  --token-file /run/secrets/looper_service_token || fail "looper-trainer: rollouts against reward-service"
podman rm -f -t 2 looper-it-service >/dev/null

step "compose: the private and the stub profile in turn"
mkdir -p "$work/compose/secrets" "$work/compose/docker"
cp docker-compose.yml .env "$work/compose/"
sed -i "s/^LOOPER_SERVICE_PORT=.*/LOOPER_SERVICE_PORT=$(free_port)/" "$work/compose/.env"
cp "$work/secrets/looper_service_token" "$work/compose/secrets/"
for profile in private stub; do
  service=reward-service; [ "$profile" = stub ] && service=reward-service-stub
  image=looper-service; [ "$profile" = stub ] && image=looper-stub
  (cd "$work/compose" && "$root/.venv/bin/podman-compose" --profile "$profile" up -d --no-build "$service" >/dev/null 2>&1) \
    || fail "podman-compose --profile $profile up"
  container=$(podman ps --filter "label=com.docker.compose.service=$service" --format '{{.Names}}' | head -1)
  [ -n "$container" ] || fail "compose profile $profile: no $service container"
  healthy "$container"
  network=$(podman inspect "$container" --format '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' | awk '{print $1}')
  podman run --rm --network "$network" -v "$work/secrets/looper_service_token:/token:ro" \
    -v "$root/docker/image_checks.py:/checks.py:ro" --entrypoint python "$image:$tag" /checks.py serve \
    --url http://reward-service:8000 --token-file /token --expect "$([ "$profile" = stub ] && echo stub || echo regime)" \
    || fail "compose profile $profile: scoring at http://reward-service:8000"
  (cd "$work/compose" && "$root/.venv/bin/podman-compose" --profile "$profile" down -t 2 >/dev/null 2>&1)
  echo "compose profile $profile: $service healthy, answers at http://reward-service:8000"
done

step "image-test passed"
