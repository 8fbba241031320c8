#!/bin/sh
# embed-test.sh — run examples/embed (a C program that boots Guile, loads
# moelab and evaluates a script) against the build tree, and check its output.
set -u
builddir=$(pwd)
out=$("$builddir/pre-inst-env" "$builddir/examples/embed" </dev/null 2>&1)
status=$?
echo "$out"
if [ "$status" != 0 ]; then
    echo "FAIL: examples/embed exited with status $status"
    exit 1
fi
case $out in
    *"loss = 17"*"dloss/dW = [[1 1] [2 2]]"*) echo "ok   examples/embed" ;;
    *) echo "FAIL: examples/embed printed something else"; exit 1 ;;
esac
