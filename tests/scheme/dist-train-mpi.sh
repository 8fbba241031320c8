#!/bin/sh
# dist-train-mpi.sh — parallel training is exact under mpirun too: every case
# of dist-train-cases.scm (each balancing variant on each mesh, 5 steps of 2
# micro-batches against the one-process reference) runs with one process per
# rank, `mpirun --oversubscribe -np 2` and `-np 4`; every process must report
# that its rank equals the reference. Then `moelab train --mesh` under mpirun. Exit 77 (skipped) when mpirun is
# missing or moelab was built without MPI. Run by `make check`.
set -u
: "${srcdir:=.}"
. "$srcdir/tests/testlib.sh"
script=$srcdir/tests/scheme/dist-train-rank.scm

test_setup dist-train-mpi
MOELAB_COMM_TIMEOUT=${MOELAB_COMM_TIMEOUT:-120}; export MOELAB_COMM_TIMEOUT
skip_without_mpi

check() { # check NP VARIANT MESH SCHEDULE
    np=$1
    mpi_run -np "$np" $run "$script" "$2" "$3" "$4" \
        </dev/null >"$tmp/mpi.out" 2>"$tmp/mpi.err"
    status=$?
    oks=$(grep -o ': rank ok' "$tmp/mpi.out" | wc -l)
    if [ "$status" = 0 ] && [ "$oks" = "$np" ]; then
        pass "mpirun -np $np: $2, $3 ($4): every rank equals the reference"
    else
        fail "mpirun -np $np: $2, $3 ($4): status $status, $oks of $np ranks ok"
        show "$tmp/mpi.out" "$tmp/mpi.err"
    fi
}

# every balancing variant on every mesh of dist-train.scm
for variant in micro-batch global-batch sequence z expert-bias quantile-balancing; do
    check 2 $variant dp=2 1f1b
    check 2 $variant ep=2 1f1b
    check 2 $variant pp=2 gpipe
    check 2 $variant pp=2 1f1b
    check 4 $variant dp=2,ep=2 1f1b
    check 4 $variant pp=2,dp=2 1f1b
done

# `moelab train --mesh` under mpirun: one process per rank, rank 0 writes the
# metrics file and prints the summary.
corpus=$tmp/corpus
for d in bible fortune c scheme python info; do
    mkdir -p "$corpus/$d"; cat "$srcdir"/core/moe/*.c > "$corpus/$d/train"; cat "$srcdir"/README.md > "$corpus/$d/val"
done
mpi_run -np 2 $run train "$srcdir/examples/train-small.scm" --steps 2 \
    --set corpus="$corpus" --set seq-len=32 --set batch-size=2 --set eval-batches=1 \
    --set log="$tmp/m.jsonl" --mesh pp=2 </dev/null >"$tmp/train.out" 2>&1
status=$?
if [ "$status" = 0 ] && [ "$(grep -c 'done after 2 steps' "$tmp/train.out")" = 1 ] \
       && [ "$(grep -c '"grad_norm"' "$tmp/m.jsonl")" = 2 ] && grep -q '^layer 1 ' "$tmp/train.out"; then
    pass "mpirun -np 2 moelab train --mesh pp=2: one summary of both stages, one metrics file"
else
    fail "mpirun -np 2 moelab train --mesh pp=2: status $status"
    show "$tmp/train.out"
fi

[ "$failures" = 0 ]
