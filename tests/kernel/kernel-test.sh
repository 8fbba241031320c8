#!/bin/sh
# kernel-test.sh — moelab-kernel from the build tree, driven by Jupyter's
# own client (tests/kernel/protocol.py), through a kernelspec in a temporary
# JUPYTER_PATH; then moelab-kernel --install. Skipped (77) without
# python3-jupyter-client.
set -u
PYTHON=${PYTHON:-/usr/bin/python3}
if ! "$PYTHON" -c 'import jupyter_client' 2>/dev/null; then
    echo "SKIP: jupyter_client is not installed (apt-get install python3-jupyter-client)"
    exit 77
fi
builddir=$(pwd)
srcdir=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/moelab-kernel-test.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
HOME=$tmp/home; export HOME
mkdir -p "$HOME" "$tmp/share/kernels/moelab-build"
JUPYTER_PATH=$tmp/share; export JUPYTER_PATH
JUPYTER_RUNTIME_DIR=$tmp/runtime; export JUPYTER_RUNTIME_DIR
MOELAB_NUM_THREADS=2; export MOELAB_NUM_THREADS
cat >"$tmp/share/kernels/moelab-build/kernel.json" <<JSON
{"argv": ["$builddir/pre-inst-env", "$builddir/moelab-kernel", "-f", "{connection_file}"],
 "display_name": "moelab (build tree)", "language": "scheme", "interrupt_mode": "signal"}
JSON
"$PYTHON" "$srcdir/tests/kernel/protocol.py" moelab-build "$tmp/kernel.log" || {
    echo "--- the kernel's log:"; cat "$tmp/kernel.log"; exit 1; }

# --install --prefix and --user write a kernelspec Jupyter finds
fail=0
"$builddir/pre-inst-env" "$builddir/moelab-kernel" --install --prefix "$tmp/prefix" || fail=1
JUPYTER_PATH=$tmp/prefix/share/jupyter "$PYTHON" -c '
import sys
from jupyter_client.kernelspec import KernelSpecManager
spec = KernelSpecManager().get_kernel_spec("moelab")
assert spec.argv[1:] == ["-f", "{connection_file}"], spec.argv
assert spec.argv[0].endswith("moelab-kernel"), spec.argv
assert spec.language == "scheme" and spec.interrupt_mode == "signal"
print("PASS: --install --prefix: jupyter finds moelab")' || fail=1
JUPYTER_DATA_DIR=$tmp/user "$builddir/pre-inst-env" "$builddir/moelab-kernel" --install --user \
    && test -f "$tmp/user/kernels/moelab/kernel.json" && echo "PASS: --install --user" || fail=1
"$builddir/pre-inst-env" "$builddir/moelab-kernel" -f "$tmp/none.json" 2>"$tmp/err"
grep -q "cannot read the connection file" "$tmp/err" && echo "PASS: a missing connection file" || fail=1
exit $fail
