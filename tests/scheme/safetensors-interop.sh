#!/bin/sh
# safetensors-interop.sh — moelab's safetensors files against an independent
# reader and writer (tests/python/safetensors_np.py: the standard library and
# numpy): Python reads and checks what moelab wrote (checksum included),
# moelab reads what Python wrote (with and without the checksum), and the
# Mixtral export has Mixtral's names, shapes and values. Skipped (77) when
# there is no python3 with numpy. Run by `make check` from the build directory.
set -u
builddir=$(pwd)
: "${srcdir:=.}"
run="$builddir/pre-inst-env $builddir/moelab"
py=
for p in /usr/bin/python3 python3; do
    if "$p" -c 'import numpy' 2>/dev/null; then py=$p; break; fi
done
test -n "$py" || { echo "no python3 with numpy: skipped"; exit 77; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/moelab-interop.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
HOME=$tmp; export HOME
PYTHONPATH=$srcdir/tests/python; export PYTHONPATH
PYTHONDONTWRITEBYTECODE=1; export PYTHONDONTWRITEBYTECODE
set -e
$run "$srcdir/tests/scheme/interop-run.scm" write "$tmp"
"$py" "$srcdir/tests/python/interop.py" check-moelab "$tmp"
"$py" "$srcdir/tests/python/interop.py" check-hf "$tmp"
"$py" "$srcdir/tests/python/interop.py" write "$tmp"
$run "$srcdir/tests/scheme/interop-run.scm" check "$tmp"
echo "all interop checks passed"
