#!/bin/sh
# mpi-timeout.sh — under mpirun -np 2, a peer that never comes ends the job
# instead of hanging it: tests/dist/mpi_timeout with a rank that skips an
# all-reduce, one that sleeps past a 2 s timeout, a receive whose sender
# never sends and a split that one rank never joins. Each run must exit
# non-zero within the timeout + 5 s, print the timeout naming the missing
# rank and the abort, and the waiting rank must have used under 10% of a
# core while it waited. Exit 77 (skipped) when mpirun is missing.
. "$(dirname "$0")/../mpi-env.sh"
command -v "$MPIRUN" >/dev/null 2>&1 || { echo "mpi-timeout.sh: $MPIRUN not found: skipped"; exit 77; }
prog=./tests/dist/mpi_timeout
test -x "$prog" || { echo "mpi-timeout.sh: $prog not built"; exit 99; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/moelab-mpi-timeout.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT

fail=0
check() { # check MODE SECONDS NEEDLE
    mode=$1 seconds=$2 needle=$3
    start=$(date +%s.%N)
    # a hang fails after 60 s (the guard's status, 124, is non-zero but
    # the time check fails)
    ${GUARD:+timeout 60} "$MPIRUN" --oversubscribe -np 2 "$prog" "$mode" "$seconds" >"$tmp/out" 2>&1
    status=$?
    took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    cpu=$(sed -n 's/.*cpu \([0-9]*\)%.*/\1/p' "$tmp/out")
    why=
    [ "$status" = 0 ] && why="$why exit status 0;"
    [ "$status" = 3 ] && why="$why a call returned that should not have;"
    grep -q "$needle" "$tmp/out" || why="$why no '$needle';"
    grep -q "aborting the MPI job" "$tmp/out" || why="$why no abort message;"
    [ -n "$cpu" ] && [ "$cpu" -lt 10 ] || why="$why cpu '${cpu}'% while waiting;"
    awk -v t="$took" -v s="$seconds" 'BEGIN { exit !(t < s + 5) }' || why="$why took ${took} s;"
    if [ -n "$why" ]; then
        echo "FAIL $mode:$why"
        sed 's/^/     | /' "$tmp/out" | head -30
        fail=1
    else
        echo "ok   $mode: exit $status after ${took} s, waiting rank at ${cpu}% cpu"
    fi
}

check skip 2 "all-reduce: timed out after 2 s waiting for rank 1 (group 'world' of 2 ranks)"
check sleep 2 "all-reduce: timed out after 2 s waiting for rank 1 (group 'world' of 2 ranks)"
check recv 1 "recv!: timed out after 1 s waiting for rank 1 (group 'world' of 2 ranks)"
check split 1 "group-split: timed out after 1 s waiting for rank 1 (group 'world' of 2 ranks)"
exit $fail
