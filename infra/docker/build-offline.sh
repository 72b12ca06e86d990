#!/usr/bin/env bash
# Build the image on a machine with no registry and no running Docker engine, then (optionally) test it.
#
#   infra/docker/build-offline.sh [--test] [--compose-demo] [--keep-running]
#   infra/docker/build-offline.sh --print-mirror   # only print the Debian mirror it would use
#
# 1. installs Debian's docker.io, debootstrap and docker-compose if missing (needs root, apt);
# 2. starts its own dockerd (own data root, exec root and socket; --iptables=false --bridge=none);
# 3. builds a Debian bookworm + Python base image with debootstrap and `docker import`;
# 4. builds the runtime and test targets with BuildKit, the CA bundle passed as a secret (never a layer);
# 5. prints the image sizes and checks the runtime image (non-root, no pip/compilers, no CA secret);
# 6. --test: runs the test suite inside the test image; --compose-demo: infra/standalone/compose-demo.sh;
# 7. stops the dockerd it started (by pid), unless --keep-running.
# Environment: SPARKVISION_DOCKER_STATE (/var/tmp/sparkvision-docker), CA_BUNDLE,
#              DEBIAN_MIRROR (default: this machine's own Debian mirror, see debian_mirror below),
#              SPARKVISION_SHARED (../shared, mounted read-only for the football tests).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

# The Debian archive this machine's apt uses: the first `deb` entry whose URI ends in /debian, in the
# order apt reads them: sources.list (one-line format), then sources.list.d/*.list (one-line) and
# *.sources (deb822: Types/URIs/Enabled) by file name. deb-src entries, disabled stanzas and other
# archives (debian-security, third-party repositories) are skipped; a mirror+file: URI gives the first
# mirror of its list. SPARKVISION_APT_ETC (/etc/apt) is where to look (for tests).
debian_mirror() {
  local etc=${SPARKVISION_APT_ETC:-/etc/apt} f files=()
  [ -f "$etc/sources.list" ] && files+=("$etc/sources.list")
  for f in "$etc"/sources.list.d/*; do
    case "$f" in *.list|*.sources) [ -f "$f" ] && files+=("$f") ;; esac
  done
  [ ${#files[@]} -gt 0 ] || return 1
  awk '
    function archive(u,   list, line, w) {
      if (u ~ /^mirror\+file:/) {            # the first entry of the mirror list
        list = u; sub(/^mirror\+file:(\/\/)?/, "", list); u = ""
        while ((getline line < list) > 0) {
          sub(/#.*/, "", line); split(line, w, " ")
          if (w[1] != "") { u = w[1]; break }
        }
        close(list)
      }
      sub(/\/+$/, "", u)
      return (u ~ /^(https?|ftp|file):/ && u ~ /\/debian$/) ? u : ""
    }
    function found(u) { print u; done = 1; exit }
    function stanza(   n, i, us, t) {        # end of a deb822 stanza
      if ((" " types " ") ~ /[ \t]deb[ \t]/ && tolower(enabled) != "no") {
        n = split(uris, us, " ")
        for (i = 1; i <= n; i++) if ((t = archive(us[i])) != "") found(t)
      }
      types = uris = enabled = key = ""
    }
    FNR == 1 { if (deb822) stanza(); deb822 = FILENAME ~ /\.sources$/ }
    deb822 {
      if ($0 ~ /^#/) next
      if ($0 ~ /^[ \t]*$/) { stanza(); next }
      if ($0 ~ /^[ \t]/) { if (key == "uris") uris = uris " " $0; else if (key == "types") types = types " " $0; next }
      key = tolower($0); sub(/:.*/, "", key)
      value = $0; sub(/^[^:]*:[ \t]*/, "", value)
      if (key == "types") types = value; else if (key == "uris") uris = value; else if (key == "enabled") enabled = value
      next
    }
    {
      line = $0; sub(/#.*/, "", line); gsub(/\[[^]]*\]/, " ", line)
      n = split(line, w, " ")
      if (n >= 3 && w[1] == "deb" && (t = archive(w[2])) != "") found(t)
    }
    END { if (!done && deb822) stanza() }
  ' "${files[@]}"
}

mirror_or_fail() {
  MIRROR=${DEBIAN_MIRROR:-$(debian_mirror || true)}
  if [ -z "$MIRROR" ]; then
    echo "no Debian archive found in ${SPARKVISION_APT_ETC:-/etc/apt}/sources.list or sources.list.d/*.list, *.sources" \
      "(a deb entry whose URI ends in /debian): set DEBIAN_MIRROR, e.g. DEBIAN_MIRROR=http://deb.debian.org/debian" >&2
    exit 1
  fi
}

RUN_TESTS=0 COMPOSE_DEMO=0 KEEP=0
for arg in "$@"; do
  case "$arg" in
    --test) RUN_TESTS=1 ;;
    --compose-demo) COMPOSE_DEMO=1 ;;
    --keep-running) KEEP=1 ;;
    --print-mirror) mirror_or_fail; echo "$MIRROR"; exit 0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

STATE=${SPARKVISION_DOCKER_STATE:-/var/tmp/sparkvision-docker}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
SHARED=${SPARKVISION_SHARED:-$ROOT/../shared}
BASE_TAG=sparkvision-base:bookworm
IMAGE=${SPARKVISION_IMAGE:-sparkvision:latest}
TEST_IMAGE=${SPARKVISION_TEST_IMAGE:-sparkvision:test}
DOCKER=/usr/bin/docker   # Debian's client: its BuildKit needs no buildx plugin
export DOCKER_HOST=unix://$STATE/docker.sock DOCKER_BUILDKIT=1

log() { printf '[build-offline %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

[ "$(id -u)" = 0 ] || { echo "build-offline.sh starts dockerd and debootstrap: run it as root" >&2; exit 1; }

need=()
[ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v docker-compose >/dev/null || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

mkdir -p "$STATE"
DOCKERD_PID=
stop_dockerd() {
  [ -n "$DOCKERD_PID" ] || return 0
  if [ "$KEEP" = 1 ]; then log "dockerd left running (pid $DOCKERD_PID, DOCKER_HOST=$DOCKER_HOST)"; return 0; fi
  log "stopping dockerd (pid $DOCKERD_PID)"
  kill -TERM "$DOCKERD_PID" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
  kill -KILL "$DOCKERD_PID" 2>/dev/null || true
  # dockerd leaves its default network namespace mounted under the exec root
  awk -v root="$STATE/" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount 2>/dev/null || true
}
trap stop_dockerd EXIT

if $DOCKER info >/dev/null 2>&1; then
  log "reusing the dockerd already serving $DOCKER_HOST"
else
  log "starting dockerd (state in $STATE)"
  dockerd --data-root "$STATE/data" --exec-root "$STATE/exec" --pidfile "$STATE/dockerd.pid" \
    -H "$DOCKER_HOST" --iptables=false --ip6tables=false --bridge=none >"$STATE/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do $DOCKER info >/dev/null 2>&1 && break; sleep 1; done
  $DOCKER info >/dev/null 2>&1 || { tail -20 "$STATE/dockerd.log" >&2; echo "dockerd did not start" >&2; exit 1; }
fi

if ! $DOCKER image inspect "$BASE_TAG" >/dev/null 2>&1; then
  mirror_or_fail
  log "debootstrap bookworm (minbase + python3-venv) from $(printf '%s' "$MIRROR" | sed -E 's#//[^/@]*@#//***@#')"
  rootfs=$STATE/rootfs
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$MIRROR" >"$STATE/debootstrap.log" 2>&1 \
    || { tail -20 "$STATE/debootstrap.log" >&2; exit 1; }
  cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
SOURCES
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner -C "$rootfs" -cf "$STATE/rootfs.tar" .
  $DOCKER import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' "$STATE/rootfs.tar" "$BASE_TAG" >/dev/null
  rm -f "$STATE/rootfs.tar"
  $DOCKER run --rm --network none "$BASE_TAG" python3 -c "import venv, ssl" \
    || { $DOCKER rmi "$BASE_TAG" >/dev/null; echo "the imported base image does not run python3" >&2; exit 1; }
  rm -rf "$rootfs"
fi

secret=()
if [ -s "$CA_BUNDLE" ]; then secret=(--secret "id=pip_ca,src=$CA_BUNDLE"); fi
build() {
  local target=$1 tag=$2
  log "docker build --target $target -t $tag"
  $DOCKER build --network host --progress plain "${secret[@]}" --build-arg BASE_IMAGE="$BASE_TAG" \
    --build-arg SPARKVISION_GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null || true)" \
    --target "$target" -t "$tag" . >"$STATE/build-$target.log" 2>&1 \
    || { tail -40 "$STATE/build-$target.log" >&2; exit 1; }
}
started=$SECONDS
build runtime "$IMAGE"
build test "$TEST_IMAGE"
log "built in $((SECONDS - started)) s"
for tag in "$IMAGE" "$TEST_IMAGE"; do
  size=$($DOCKER image inspect -f '{{.Size}}' "$tag")
  log "image size: $tag $((size / 1024 / 1024)) MiB"
done

log "checking the runtime image"
ca_sum=$(sha256sum "$CA_BUNDLE" 2>/dev/null | cut -d' ' -f1 || true)
ca_size=$(stat -c %s "$CA_BUNDLE" 2>/dev/null || echo 0)
$DOCKER run --rm --network none -e CA_SUM="$ca_sum" -e CA_SIZE="$ca_size" --entrypoint /bin/bash "$IMAGE" -c '
  set -e
  [ "$(id -u)" != 0 ] || { echo "runs as root"; exit 1; }
  for tool in pip pip3 gcc cc make; do ! command -v $tool >/dev/null || { echo "build tool in image: $tool"; exit 1; }; done
  ! python -c "import pip" 2>/dev/null || { echo "pip importable in the runtime venv"; exit 1; }
  [ ! -e /run/secrets/pip_ca ] || { echo "secret left in image"; exit 1; }
  if [ -n "$CA_SUM" ]; then
    hits=$(find / -xdev -type f -size "${CA_SIZE}c" 2>/dev/null | xargs -r sha256sum 2>/dev/null | grep -c "$CA_SUM" || true)
    [ "$hits" = 0 ] || { echo "the build machine CA bundle is in the image"; exit 1; }
  fi
  java -version 2>&1 | head -1
  python -c "import sparkvision, pyspark, tensorflow as tf, keras; print(\"pyspark\", pyspark.__version__, \"tensorflow\", tf.__version__, \"keras\", keras.__version__)"
  sparkvision weights efficientnet_lite0 efficientnet_lite1 efficientnet_lite2
  echo "runtime image ok: user $(id -un), no pip, no compilers, no CA secret"
'

if [ "$RUN_TESTS" = 1 ]; then
  bash tests/fetch_photos.sh "$ROOT/.cache/photos"
  mounts=(-v "$ROOT/.cache/photos:/opt/sparkvision/.cache/photos:ro")
  if [ -d "$SHARED/data" ]; then mounts+=(-v "$(cd "$SHARED" && pwd):/opt/shared:ro"); fi
  log "pytest inside $TEST_IMAGE"
  # the stages, the run's files and the sparkdl layer: every package the image ships, used end to end (the whole
  # quick suite runs on the host; the image's job is to show its own Python, Java and Spark run them)
  $DOCKER run --rm --network host "${mounts[@]}" "$TEST_IMAGE" test -q -m "not slow" tests/stages tests/run tests/compat/test_compat_image.py
fi

if [ "$COMPOSE_DEMO" = 1 ]; then
  SPARKVISION_IMAGE=$IMAGE bash infra/standalone/compose-demo.sh
fi
