#!/usr/bin/env bash
# The crate graph is the architecture: refuse the edges that must never exist
# (ARCHITECTURE.md, "Forbidden edges"). Run by `bash deploy/gw.sh test`.
#   - domain depends on no IO crate (decisions stay pure and testable);
#   - vision depends on nothing of the daemon (a native crash stays in the child);
#   - config depends on neither the store nor the daemon;
#   - store depends on neither the daemon nor vision;
#   - the gatewarden daemon binary links no OpenCV (a wristband-only box needs none).
# Usage: deploy/check-deps.sh [path/to/gatewarden binary]
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
# Every package the crate depends on, directly or not (normal deps only: a
# dev-dependency does not ship).
deps() { cargo tree --locked --offline -e normal -p "$1" --prefix none --format '{p}' | awk '{print $1}' | sort -u; }
refuse() { # crate, forbidden packages...
  local c=$1; shift; local have
  if ! have=$(deps "$c") || [ -z "$have" ]; then echo "check-deps: cannot resolve the dependencies of $c (see cargo's error above)" >&2; fail=1; return; fi
  for f in "$@"; do
    if grep -qx "$f" <<<"$have"; then echo "check-deps: FORBIDDEN edge $c -> $f" >&2; fail=1; fi
  done
}
IO=(tokio tokio-util sled reqwest axum hyper rumqttc rumqttd opencv ort tracing-subscriber calamine)
refuse gatewarden-domain "${IO[@]}" gatewarden-config gatewarden-store gatewarden-vision gatewarden-vision-protocol gatewarden
refuse gatewarden-config tokio sled reqwest axum rumqttc opencv ort gatewarden-store gatewarden-vision gatewarden
refuse gatewarden-store tokio reqwest axum rumqttc opencv ort gatewarden-vision gatewarden
refuse gatewarden-vision-protocol tokio sled reqwest axum rumqttc opencv ort gatewarden-store gatewarden
refuse gatewarden-vision gatewarden gatewarden-store sled tokio reqwest axum rumqttc
refuse gatewarden opencv ort gatewarden-vision
bin=${1:-target/debug/gatewarden}
if [ -x "$bin" ]; then
  if readelf -d "$bin" | grep -E 'NEEDED.*(opencv|onnxruntime)'; then
    echo "check-deps: FORBIDDEN: $bin links OpenCV or ONNX Runtime" >&2; fail=1
  fi
else
  echo "check-deps: $bin is not built; skipping the readelf check" >&2; fail=1
fi
[ "$fail" = 0 ] && echo "check-deps: the crate graph holds (6 crates, no forbidden edge; $bin links no OpenCV)"
exit "$fail"
