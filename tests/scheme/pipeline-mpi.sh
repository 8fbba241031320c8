#!/bin/sh
# pipeline-mpi.sh — pipeline-step! across processes: tests/scheme/pipeline-ranks.scm
# on 2 and 4 threads (moelab FILE N), then under `mpirun -np 2` and `-np 4`.
# Every rank must report its stage's gradient (and the last stage its losses)
# equal to one process's, for gpipe and 1f1b, with activations large enough
# that MPI sends wait for their receives; mpirun must print the threads'
# lines (sorted: each process prints its own). A stage that raises must end
# the MPI job, naming its rank. The threads runs are checked first; then exit
# 77 (skipped) when mpirun is missing or moelab was built without MPI. Run by
# `make check` from the top build directory.
set -u
: "${srcdir:=.}"
. "$srcdir/tests/testlib.sh"
script=$srcdir/tests/scheme/pipeline-ranks.scm
test -f "$script" || { echo "pipeline-mpi.sh: $script not found"; exit 99; }

test_setup pipeline-mpi
unset MOELAB_NUM_THREADS

check_lines() { # FILE N WHAT
    same=$(grep -c '^rank [0-9]: [a-z0-9]* M=[0-9]*: gradient same as one process' "$1")
    losses=$(grep -c "^rank $(($2 - 1)): .*, losses same as one process\$" "$1")
    if [ "$same" = $((2 * $2)) ] && [ "$losses" = 2 ] && [ "$(wc -l <"$1")" = $((2 * $2)) ]; then
        pass "$3: every stage's gradient and the losses equal one process (gpipe, 1f1b)"
    else
        fail "$3: expected $((2 * $2)) matching lines"
        show "$1"
    fi
}

for np in 2 4; do
    $GUARD $run "$script" "$np" </dev/null >"$tmp/threads-$np.out" 2>"$tmp/threads.err"
    status=$?
    if [ "$status" = 0 ]; then pass "threads, $np stages: exit 0"; else fail "threads, $np stages: exit status $status"; show "$tmp/threads.err"; fi
    check_lines "$tmp/threads-$np.out" "$np" "threads, $np stages"
done

skip_without_mpi

for np in 2 4; do
    mpi_run -np "$np" $run "$script" "$np" </dev/null >"$tmp/mpi.out" 2>"$tmp/mpi.err"
    status=$?
    if [ "$status" = 0 ]; then pass "mpirun -np $np: exit 0"; else fail "mpirun -np $np: exit status $status"; show "$tmp/mpi.err"; fi
    check_lines "$tmp/mpi.out" "$np" "mpirun -np $np"
    sort "$tmp/threads-$np.out" >"$tmp/a"
    sort "$tmp/mpi.out" >"$tmp/b"
    if cmp -s "$tmp/a" "$tmp/b"; then
        pass "mpirun -np $np prints what $np threads print"
    else
        fail "mpirun -np $np prints something else than $np threads"
        diff "$tmp/a" "$tmp/b" | head -10
    fi
done

# A stage that raises: the job ends (no hang), non-zero, naming the rank.
mpi_run -np 4 $run "$script" 4 fail </dev/null >"$tmp/mpi.out" 2>"$tmp/mpi.err"
status=$?
if [ "$status" != 0 ] && [ "$status" != 124 ]; then pass "a stage that raises: mpirun exits $status"; else fail "a stage that raises: mpirun exit status $status"; fi
if grep -q 'rank 1 failed: stage 1 gives up' "$tmp/mpi.err"; then
    pass "a stage that raises: the error names rank 1"
else
    fail "a stage that raises: no error naming rank 1"
    show "$tmp/mpi.err"
fi

echo "$checks checks, $failures failed"
test "$failures" = 0
