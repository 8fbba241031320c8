#!/bin/sh
# resume.sh — exact resumption and crash safety of checkpoints.
#  1. For micro-batch, global-batch (2 micro-batches per step), sequence-wise,
#     aux-loss-free-bias and quantile-balancing (2 micro-batches per step)
#     routing, and global-batch with expert bias under dp=2 on thread ranks
#     (router jitter on, cosine schedule, clipping, weight decay): 40 steps
#     in one process equal 20 steps, a
#     checkpoint, a new process that loads it, and 20 more — parameters,
#     buffers, optimizer moments, router counters bit for bit and every
#     JSONL step line except the wall-clock fields.
#  2. `moelab train CONFIG --resume RUN-DIR` goes on from the latest step,
#     also from a run on another mesh (--ranks/--mesh, and under mpirun
#     when moelab has MPI).
#  3. A writer saving checkpoints in a loop is killed with SIGKILL at random
#     moments, 5 times, each writer going on from the newest complete
#     checkpoint: after each kill every step directory loads and the run
#     directory resolves to the newest one; a temporary directory left by
#     the kill is never picked.
# Run by `make check` from the build directory.
set -u
: "${srcdir:=.}"
. "$srcdir/tests/testlib.sh"
script=$srcdir/tests/scheme/resume-run.scm
test_setup resume
unset MOELAB_NUM_THREADS
fail=0
for v in micro global seq bias qb dp2; do
    $run "$script" before $v "$tmp" >"$tmp/$v.out" 2>&1 &&
    $run "$script" after $v "$tmp" 2>&1 || { echo "FAIL $v"; tail -20 "$tmp/$v.out"; fail=1; }
done

# ---- moelab train --resume ------------------------------------------------------
cat >"$tmp/cfg.scm" <<SCM
(define m (make-moe-transformer #:vocab 256 #:layers 1 #:hidden 16 #:heads 2 #:ffn 16 #:experts 4
                                #:top-k 2 #:max-seq 16))
(define steps 4)
(make-trainer #:model m #:optimizer (make-adamw (model-parameters m) #:lr 1e-2)
              #:dataset (make-text-dataset #:domains '((c . "$srcdir/tests/data/spm-train.txt")) #:seq-len 16)
              #:batch-size 2 #:checkpoint-dir "$tmp/cli" #:checkpoint-every 2)
SCM
if $run train "$tmp/cfg.scm" >"$tmp/cli1.out" 2>&1 &&
   $run train "$tmp/cfg.scm" --steps 6 --resume "$tmp/cli" >"$tmp/cli2.out" 2>&1 &&
   grep -q "resumed from $tmp/cli/step-0000004 at step 4" "$tmp/cli2.out" &&
   grep -q "done after 2 steps" "$tmp/cli2.out" &&
   test -d "$tmp/cli/step-0000006"; then
    echo "ok   moelab train --resume: steps 5 and 6 after the run directory's step 4"
else
    echo "FAIL moelab train --resume"; cat "$tmp/cli1.out" "$tmp/cli2.out"; fail=1
fi

# ---- moelab train --resume across meshes ----------------------------------------
# a run on 4 thread ranks (dp=2 x ep=2) saves; one process resumes it and
# saves; 2 thread ranks (pp=2) resume that
sed -e "s|$tmp/cli|$tmp/mesh|" -e "s|#:layers 1|#:layers 2|" -e "s|#:batch-size 2|#:batch-size 4|" "$tmp/cfg.scm" >"$tmp/mesh.scm"
if $run train "$tmp/mesh.scm" --ranks 4 --mesh dp=2,ep=2 >"$tmp/mesh1.out" 2>&1 &&
   $run train "$tmp/mesh.scm" --steps 6 --resume "$tmp/mesh" >"$tmp/mesh2.out" 2>&1 &&
   $run train "$tmp/mesh.scm" --steps 8 --resume "$tmp/mesh" --ranks 2 --mesh pp=2 >"$tmp/mesh3.out" 2>&1 &&
   grep -q "resumed from $tmp/mesh/step-0000004 at step 4" "$tmp/mesh2.out" &&
   grep -q "resumed from $tmp/mesh/step-0000006 at step 6" "$tmp/mesh3.out" &&
   grep -q "done after 2 steps" "$tmp/mesh3.out" &&
   test -d "$tmp/mesh/step-0000008"; then
    echo "ok   moelab train --resume: dp=2 x ep=2 -> one process -> pp=2"
else
    echo "FAIL moelab train --resume across meshes"; cat "$tmp/mesh1.out" "$tmp/mesh2.out" "$tmp/mesh3.out"; fail=1
fi

# the same under mpirun (one process per rank), when moelab has MPI
if have_mpi; then
    sed -e "s|$tmp/mesh|$tmp/mpi|" "$tmp/mesh.scm" >"$tmp/mpi.scm"
    if mpi_run -np 4 $run train "$tmp/mpi.scm" --mesh dp=2,ep=2 </dev/null >"$tmp/mpi1.out" 2>&1 &&
       $run train "$tmp/mpi.scm" --steps 6 --resume "$tmp/mpi" >"$tmp/mpi2.out" 2>&1 &&
       mpi_run -np 2 $run train "$tmp/mpi.scm" --steps 8 --resume "$tmp/mpi" --mesh pp=2 \
           </dev/null >"$tmp/mpi3.out" 2>&1 &&
       grep -q "resumed from $tmp/mpi/step-0000006 at step 6" "$tmp/mpi3.out" &&
       test -d "$tmp/mpi/step-0000008"; then
        echo "ok   under mpirun: dp=2 x ep=2 (4 processes) -> one process -> pp=2 (2 processes)"
    else
        echo "FAIL --resume across meshes under mpirun"; cat "$tmp/mpi1.out" "$tmp/mpi2.out" "$tmp/mpi3.out"; fail=1
    fi
else
    echo "skip --resume under mpirun: no mpirun, or moelab without MPI"
fi

# ---- SIGKILL during writes ----------------------------------------------------
mkdir "$tmp/k"
cat >"$tmp/check.scm" <<'SCM'
(use-modules (moelab) (moelab primitives) (ice-9 match))
(define dir (cadr (command-line)))
(define steps (checkpoint-steps (string-append dir "/run")))
(define m (make-moe-transformer #:vocab 256 #:layers 2 #:hidden 16 #:heads 2 #:ffn 16 #:experts 4
                                #:top-k 2 #:dense-ffn 16 #:max-seq 16
                                #:router-options '(#:losses () #:jitter 0.1 #:expert-bias? #t #:bias-rate 1e-2)))
(for-each (lambda (s)
            (load-model! m (string-append (cdr s) "/model.safetensors"))
            (load-tensors (string-append (cdr s) "/optimizer.safetensors"))
            (unless (= (car s) (assq-ref (%read-json-file "check" (string-append (cdr s) "/trainer.json")) 'step))
              (error "step mismatch" s)))
          steps)
(unless (or (null? steps) (equal? (latest-checkpoint (string-append dir "/run")) (cdr (car (last-pair steps)))))
  (error "latest-checkpoint is not the newest step"))
(format #t "~a complete checkpoints~%" (length steps))
SCM
i=0
while [ $i -lt 5 ]; do
    $run "$script" kill-writer "$tmp/k" >/dev/null 2>&1 &
    pid=$!
    # a random moment 1.0 to 2.9 s in (start-up takes about a second)
    r=$(od -An -N1 -tu1 /dev/urandom | tr -d ' ')
    sleep "$(( 1 + r % 2 )).$(( r % 10 ))"
    kill -KILL $pid 2>/dev/null
    wait $pid 2>/dev/null
    out=$($run "$tmp/check.scm" "$tmp/k" 2>&1) || { echo "FAIL kill $i: $out"; fail=1; }
    echo "kill $i: $out; $(ls -a "$tmp/k/run" 2>/dev/null | grep -c '^\.tmp-') temporary directories left"
    i=$((i + 1))
done
test $fail = 0 && echo "all resume checks passed"
exit $fail
