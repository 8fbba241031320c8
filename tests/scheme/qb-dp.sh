#!/bin/sh
# qb-dp.sh — quantile balancing over a data-parallel group of 2 ranks:
# tests/scheme/qb-dp-ranks.scm on 2 threads (moelab FILE) and under
# `mpirun -np 2 moelab FILE`. Each run must print one line per rank, each
# saying β equals that of one process routing both ranks' micro-batches, and
# mpirun must print the threads' lines (sorted: each process prints its own).
# The threads run is checked first; then exit 77 (skipped) when mpirun is
# missing or moelab was built without MPI. Run by `make check` from the top
# build directory.
set -u
builddir=$(pwd)
: "${srcdir:=.}"
. "$srcdir/tests/mpi-env.sh"
run="$builddir/pre-inst-env $builddir/moelab"
script=$srcdir/tests/scheme/qb-dp-ranks.scm
test -f "$script" || { echo "qb-dp.sh: $script not found"; exit 99; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/moelab-qb-dp.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
HOME=$tmp; export HOME
LC_ALL=C.UTF-8; export LC_ALL
unset MOELAB_NUM_THREADS

failures=0
checks=0
pass() { checks=$((checks + 1)); echo "ok   $1"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "FAIL $1"; }

check_lines() { # FILE WHAT
    n=$(grep -c '^rank [01]: beta .* same as one process with 2 micro-batches$' "$1")
    if [ "$n" = 2 ] && [ "$(wc -l <"$1")" = 2 ]; then
        pass "$2: both ranks' β equal one process with 2 micro-batches"
    else
        fail "$2: expected 2 matching rank lines"
        sed 's/^/     | /' "$1" | tail -20
    fi
}

$GUARD $run "$script" </dev/null >"$tmp/threads.out" 2>"$tmp/threads.err"
status=$?
if [ "$status" = 0 ]; then pass "threads: exit 0"; else fail "threads: exit status $status"; cat "$tmp/threads.err"; fi
check_lines "$tmp/threads.out" threads

if ! command -v "$MPIRUN" >/dev/null 2>&1; then
    echo "SKIP: $MPIRUN not found ($checks checks, $failures failed)"
    test "$failures" = 0 && exit 77 || exit 1
fi
$run -c '(exit (if %moelab-have-mpi? 0 77))' </dev/null >"$tmp/out" 2>&1
if [ $? = 77 ]; then
    echo "SKIP: moelab was built without MPI ($checks checks, $failures failed)"
    test "$failures" = 0 && exit 77 || exit 1
fi
$GUARD "$MPIRUN" --oversubscribe -np 2 $run "$script" </dev/null >"$tmp/mpi.out" 2>"$tmp/mpi.err"
status=$?
if [ "$status" = 0 ]; then pass "mpirun -np 2: exit 0"; else fail "mpirun -np 2: exit status $status"; tail -20 "$tmp/mpi.err"; fi
check_lines "$tmp/mpi.out" "mpirun -np 2"
sort "$tmp/threads.out" >"$tmp/a"
sort "$tmp/mpi.out" >"$tmp/b"
if cmp -s "$tmp/a" "$tmp/b"; then
    pass "mpirun -np 2 prints what 2 threads print"
else
    fail "mpirun -np 2 prints something else than 2 threads"
    diff "$tmp/a" "$tmp/b" | head -10
fi

echo "$checks checks, $failures failed"
test "$failures" = 0
