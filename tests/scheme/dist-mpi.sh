#!/bin/sh
# dist-mpi.sh — with-ranks under mpirun: examples/collectives.scm run by the
# moelab program under `mpirun --oversubscribe -np 2` and `-np 4` must print
# the same lines as the same script on threads in one process (sorted: each
# process prints its own rank's line; they include sends and receives, Scheme
# values between ranks and a grad sync). Also: the launched world is what
# with-ranks uses, a wrong rank count is a clear error, a rank that raises
# ends the job instead of leaving its peers waiting, and so does a
# collective that one rank never joins (after the comm timeout).
# Exit 77 (skipped) when mpirun is missing or moelab was built without MPI.
# Run by `make check` from the top build directory.
set -u
: "${srcdir:=.}"
. "$srcdir/tests/testlib.sh"
example=$srcdir/examples/collectives.scm
test -f "$example" || { echo "dist-mpi.sh: $example not found"; exit 99; }

test_setup dist-mpi
unset MOELAB_NUM_THREADS
skip_without_mpi

mpi() { # mpi NP ARGS...: output in $tmp/mpi.out and $tmp/mpi.err, status in $status
    np=$1
    shift
    mpi_run -np "$np" $run "$@" \
        </dev/null >"$tmp/mpi.out" 2>"$tmp/mpi.err"
    status=$?
}

for np in 2 4; do
    $GUARD $run "$example" "$np" </dev/null >"$tmp/threads.out" 2>"$tmp/threads.err"
    status=$?
    if [ "$status" != 0 ] || [ "$(wc -l <"$tmp/threads.out")" != "$np" ]; then
        fail "threads, $np ranks: status $status, $(wc -l <"$tmp/threads.out") lines"
        show "$tmp/threads.out" "$tmp/threads.err"
        continue
    fi
    pass "threads, $np ranks: $np lines"
    mpi "$np" "$example" "$np"
    if [ "$status" != 0 ]; then
        fail "mpirun -np $np: exit status $status"
        show "$tmp/mpi.out" "$tmp/mpi.err"
        continue
    fi
    sort "$tmp/threads.out" >"$tmp/threads.sorted"
    sort "$tmp/mpi.out" >"$tmp/mpi.sorted"
    if cmp -s "$tmp/threads.sorted" "$tmp/mpi.sorted"; then
        pass "mpirun -np $np prints what $np threads print"
    else
        fail "mpirun -np $np prints something else than $np threads"
        diff "$tmp/threads.sorted" "$tmp/mpi.sorted" | head -20
    fi
done

# The launched world: one rank per process, each with its own result only.
cat >"$tmp/world.scm" <<'EOF'
(use-modules (srfi srfi-1))
(define n (string->number (cadr (command-line))))
(define results
  (with-ranks n (lambda (rank) (list (mpi-launched?) (current-rank) (world-size)
                                     (tensor-item (all-reduce! (tensor (+ rank 1))))))))
;; one write per line: mpirun merges the processes' output
(let ((me (list-index (lambda (r) r) results)))
  (display (format #f "~a ~a\n" (list-ref results me) (count (lambda (r) r) results)))
  (force-output))
EOF
mpi 2 "$tmp/world.scm" 2
sort "$tmp/mpi.out" >"$tmp/mpi.sorted"
printf '%s\n' "(#t 0 2 3.0) 1" "(#t 1 2 3.0) 1" >"$tmp/expected"
if [ "$status" = 0 ] && cmp -s "$tmp/expected" "$tmp/mpi.sorted"; then
    pass "with-ranks uses the MPI world: its rank, its result only"
else
    fail "with-ranks on the MPI world (status $status)"
    show "$tmp/mpi.out" "$tmp/mpi.err"
fi

# A rank count that is not the launched one.
mpi 2 "$example" 4
if [ "$status" != 0 ] && grep -q "4 ranks asked for, but mpirun started 2 processes" "$tmp/mpi.err"; then
    pass "with-ranks 4 under mpirun -np 2: a clear error"
else
    fail "with-ranks 4 under mpirun -np 2 (status $status)"
    show "$tmp/mpi.out" "$tmp/mpi.err"
fi

# A rank that raises while its peer waits in a collective: the job ends
# (the failed process exits without finalizing MPI, so mpirun stops the
# other) with the error named, instead of hanging.
cat >"$tmp/fail.scm" <<'EOF'
(with-ranks 2 (lambda (rank)
                (when (= rank 1) (error "boom on rank" rank))
                (barrier)))
EOF
start=$(date +%s)
mpi 2 "$tmp/fail.scm"
seconds=$(( $(date +%s) - start ))
if [ "$status" != 0 ] && [ "$status" != 124 ] && grep -q "rank 1 failed: boom on rank 1" "$tmp/mpi.err"; then
    pass "a rank that raises ends the job (${seconds}s)"
else
    fail "a rank that raises (status $status, ${seconds}s)"
    show "$tmp/mpi.out" "$tmp/mpi.err"
fi

# A rank that never joins an all-reduce!, and one that sleeps past the
# timeout: the waiting rank raises moelab-error naming all-reduce!, the
# group and the missing rank, with-ranks aborts the job with that message,
# and mpirun exits non-zero within the timeout + 5 s.
cat >"$tmp/skip.scm" <<'EOF'
(set-comm-timeout! 2)
(with-ranks 2 (lambda (rank) (when (= rank 0) (all-reduce! (tensor '(1.0))))))
EOF
cat >"$tmp/sleep.scm" <<'EOF'
(set-comm-timeout! 2)
(with-ranks 2 (lambda (rank) (when (= rank 1) (sleep 20)) (all-reduce! (tensor '(1.0)))))
EOF
for case in skip sleep; do
    what=$( [ "$case" = skip ] && echo "never joins the all-reduce" || echo "sleeps past the timeout")
    start=$(date +%s)
    mpi 2 "$tmp/$case.scm"
    seconds=$(( $(date +%s) - start ))
    if [ "$status" != 0 ] && [ "$seconds" -le 7 ] &&
       grep -q "moelab (rank 0): moelab-error in all-reduce!: timed out after 2 s waiting for rank 1 (group 'world' of 2 ranks); aborting the MPI job" "$tmp/mpi.err"; then
        pass "a rank that $what: the job ends (${seconds}s, status $status)"
    else
        fail "a rank that $what (status $status, ${seconds}s)"
        show "$tmp/mpi.out" "$tmp/mpi.err"
    fi
done

echo "$checks checks, $failures failed"
test "$failures" = 0
