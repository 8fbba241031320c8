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
: "${srcdir:=.}"
. "$srcdir/tests/testlib.sh"
script=$srcdir/tests/scheme/qb-dp-ranks.scm
test -f "$script" || { echo "qb-dp.sh: $script not found"; exit 99; }

test_setup qb-dp
unset MOELAB_NUM_THREADS

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

skip_without_mpi
mpi_run -np 2 $run "$script" </dev/null >"$tmp/mpi.out" 2>"$tmp/mpi.err"
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
