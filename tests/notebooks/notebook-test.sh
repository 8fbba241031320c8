#!/bin/sh
# notebook-test.sh — every notebook under notebooks/ runs with the moelab
# kernel without an error cell (scripts/render-notebooks), and every figure
# cell's SVG renders in headless Chromium (tests/notebooks/check-figures.py).
# The pages, figures and screenshots stay in tests/notebooks/artifacts/.
# Skipped (77) without jupyter-nbconvert, python3-jupyter-client or chromium.
set -u
PYTHON=${PYTHON:-/usr/bin/python3}
for tool in jupyter-nbconvert chromium; do
    command -v $tool >/dev/null 2>&1 || { echo "SKIP: $tool is not installed"; exit 77; }
done
"$PYTHON" -c 'import jupyter_client, nbclient' 2>/dev/null || {
    echo "SKIP: python3-jupyter-client is not installed"; exit 77; }
[ -x ./moelab-kernel ] || { echo "SKIP: moelab-kernel was not built"; exit 77; }
srcdir=$(cd "$(dirname "$0")/../.." && pwd)
art=tests/notebooks/artifacts
rm -rf "$art"; mkdir -p "$art"
fail=0
for nb in "$srcdir"/notebooks/*.ipynb; do
    name=$(basename "$nb" .ipynb)
    # a notebook that trains on the corpus needs it (a tarball has none)
    if grep -q 'data/corpus' "$nb" && [ ! -d "$srcdir/data/corpus" ]; then
        echo "SKIP: $name.ipynb needs data/corpus (scripts/make-corpus builds it)"; continue
    fi
    if "$srcdir/scripts/render-notebooks" "$art" "$nb" >"$art/$name.log" 2>&1; then
        echo "PASS: $name.ipynb runs without an error cell"
    else
        echo "FAIL: $name.ipynb"; tail -20 "$art/$name.log"; fail=1; continue
    fi
    "$PYTHON" "$srcdir/tests/notebooks/check-figures.py" "$nb" "$art/$name.html" \
        "$art/$name.png" || fail=1
done
exit $fail
