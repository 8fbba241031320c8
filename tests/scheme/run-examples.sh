#!/bin/sh
# run-examples.sh — every examples/*.scm, run by the moelab program as a user
# would (moelab FILE), must finish with exit status 0.
set -u
builddir=$(pwd)
: "${srcdir:=.}"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/moelab-examples.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
HOME=$tmp; export HOME
# A stuck example fails instead of hanging `make check`.
limit=${MOELAB_EXAMPLE_TIMEOUT:-600}
if command -v timeout >/dev/null 2>&1; then
    guard="timeout $limit"
else
    guard=
fi

count=0
failures=0
for example in "$srcdir"/examples/*.scm; do
    [ -f "$example" ] || continue
    # configurations for `moelab train' (tests/scheme/train-program.sh runs them)
    grep -q '^;;; moelab train configuration' "$example" && continue
    # studies that run for minutes without arguments: their own test runs them shortened
    grep -q '^;;; tested with arguments by tests/' "$example" && continue
    count=$((count + 1))
    name=examples/$(basename "$example")
    start=$(date +%s)
    $guard "$builddir/pre-inst-env" "$builddir/moelab" "$example" </dev/null >"$tmp/out" 2>&1
    status=$?
    seconds=$(( $(date +%s) - start ))
    if [ "$status" = 0 ]; then
        echo "ok   $name (${seconds}s)"
    else
        failures=$((failures + 1))
        echo "FAIL $name: exit status $status"
        sed 's/^/     | /' "$tmp/out" | tail -60
    fi
done
if [ "$count" = 0 ]; then
    echo "SKIP: no examples/*.scm"
    exit 77
fi
echo "$count examples, $failures failed"
test "$failures" = 0
