#!/bin/sh
# control-mpi.sh — one REPL driving a launched job: `mpirun -np 2 moelab
# train CONFIG --listen=0` opens the REPL server on rank 0 only, on a port
# the system chooses and the job names (a fixed one could be taken); a client
# of it runs ,all-ranks and ,rank on both processes while the job is paused
# (ranks, each rank's trainer, the config's definitions, a collective, an
# error on rank 1, definitions that persist, a tensor), resumes it and the
# job ends normally; a second run is
# paused while it trains (both ranks at the same step) and stopped from the
# REPL. Every wait is bounded. Exit 77 (skipped) when mpirun is missing or
# moelab was built without MPI. Run by `make check` from the top build
# directory.
set -u
: "${srcdir:=.}"
. "$srcdir/tests/testlib.sh"
config=$srcdir/tests/scheme/control-train.scm
corpus=$srcdir/tests/data/corpus

test_setup control-mpi
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
MOELAB_NUM_THREADS=1; export MOELAB_NUM_THREADS
# a rank that waits for a peer gives up after 60 s (and ends the job)
MOELAB_COMM_TIMEOUT=60; export MOELAB_COMM_TIMEOUT
skip_without_mpi
# expect NAME FILE FIXED-STRING: FILE has a line with FIXED-STRING
expect() {
    if grep -qF -- "$3" "$2"; then pass "$1"; else fail "$1: no '$3'"; show "$2"; fi
}
# wait_for FILE FIXED-STRING: at most 60 s
wait_for() {
    i=0
    while [ $i -lt 600 ]; do
        grep -qF -- "$2" "$1" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1; i=$((i + 1))
    done
    return 1
}

# A client: send the lines of FILE, then ,q; print what the server says.
cat >"$tmp/client.scm" <<'EOF'
(use-modules (ice-9 textual-ports))
(define port (string->number (cadr (command-line))))
(define lines (call-with-input-file (caddr (command-line)) get-string-all))
(define sock (socket PF_INET SOCK_STREAM 0))
(connect sock AF_INET (inet-pton AF_INET "127.0.0.1") port)
(display lines sock)
(display ",q\n" sock)
(force-output sock)
(display (get-string-all sock))
(close-port sock)
EOF
client() { timeout 120 guile --no-auto-compile "$tmp/client.scm" "$port" "$1" >"$2" 2>&1 </dev/null; }

# job NAME ARGS…: start the job in the background (bounded by $GUARD);
# each process's output also goes to files of its own (mpirun merges the
# processes' output mid-line), $tmp/NAME/1/rank.R/stdout and stderr
job() { # (not mpi_run: $pid must be mpirun's own)
    name=$1; shift
    $GUARD "$MPIRUN" --oversubscribe --output-filename "$tmp/$name" -np 2 $run train "$config" \
        --set corpus="$corpus" --listen=0 "$@" </dev/null >"$tmp/$name.out" 2>&1 &
    pid=$!
}
out() { echo "$tmp/$1/1/rank.$2/$3"; }    # out NAME RANK stdout|stderr
# the port the system chose for job NAME's server (--listen=0), from rank 0's message
server_port() { sed -n 's/.*REPL server on 127\.0\.0\.1:\([0-9][0-9]*\);.*/\1/p' "$(out "$1" 0 stderr)"; }
finish() { # wait for the job; its status in $status
    wait "$pid"; status=$?; pid=
}

# ---- paused from the start: commands on both ranks, then resume -------------------
job a --steps 4 --set paused=#t
if wait_for "$(out a 0 stdout)" "paused at step 0 on 2 ranks"; then
    pass "the job waits at step 0 on 2 ranks"
else
    fail "the job waits at step 0 on 2 ranks"; show "$tmp/a.out"
fi
port=$(server_port a)
if [ -n "$port" ] && [ "$port" != 0 ] && ! grep -q "REPL server" "$(out a 1 stderr)"; then
    pass "--listen: a REPL server on rank 0 only"
else
    fail "--listen: a REPL server on rank 0 only"; show "$tmp/a.out"
fi
cat >"$tmp/a.scm" <<'EOF'
,all-ranks (current-rank)
,all-ranks (list (trainer-steps tr) (trainer-paused? tr))
,all-ranks (tensor-item (all-reduce! (tensor (+ 1.0 (current-rank)))))
,rank 1 (list (current-rank) (world-size))
,all-ranks (define k (* 3 (current-rank)))
,all-ranks k
,all-ranks (if (= (current-rank) 1) (error "boom") 'fine)
,all-ranks (list 'still (trainer-steps tr))
,all-ranks (eq? tr (current-trainer))
,all-ranks (moe-transformer? model)
,rank 1 (tensor (current-rank))
(trainer-resume! (current-trainer))
EOF
client "$tmp/a.scm" "$tmp/a.client"
expect ",all-ranks (current-rank)" "$tmp/a.client" '$1 = (0 1)'
expect ",all-ranks: each rank's trainer, only rank 0's paused" "$tmp/a.client" '$2 = ((0 #t) (0 #f))'
expect ",all-ranks: a collective across the processes" "$tmp/a.client" '$3 = (3.0 3.0)'
expect ",rank 1" "$tmp/a.client" '$4 = (1 2)'
expect ",all-ranks: a definition shows nothing, and persists" "$tmp/a.client" '$5 = (0 3)'
expect ",all-ranks: an error on rank 1, named" "$tmp/a.client" "moelab-error in control-eval: rank 1 failed: boom"
expect "the job stays paused after the error" "$tmp/a.client" '$6 = ((still 0) (still 0))'
expect "tr is the rank's current trainer" "$tmp/a.client" '$7 = (#t #t)'
expect "the config's definitions on every rank" "$tmp/a.client" '$8 = (#t #t)'
expect "a tensor comes as its printed form" "$tmp/a.client" '$9 = #<tensor f32[] cpu (1.0)>'
finish
# only rank 0 prints; the job's exit status 0 says rank 1 ended normally too
if [ "$status" = 0 ] && grep -q 'done after 4 steps' "$(out a 0 stdout)" &&
   ! grep -q 'done after' "$(out a 1 stdout)"; then
    pass "resumed: both ranks end normally (exit 0)"
else
    fail "resumed: both ranks end normally (status $status)"; show "$tmp/a.out"
fi

# ---- paused while training, then stopped ---------------------------------------------
job b --steps 100000
if wait_for "$(out b 0 stderr)" "REPL server on"; then pass "second job: the server"; else fail "second job: the server"; show "$tmp/b.out"; fi
port=$(server_port b)
cat >"$tmp/b.scm" <<'EOF'
(trainer-pause! (current-trainer))
,all-ranks (trainer-steps tr)
(trainer-stop! (current-trainer))
EOF
client "$tmp/b.scm" "$tmp/b.client"
if grep -q '^\$2 = (\([0-9][0-9]*\) \1)$' "$tmp/b.client"; then
    pass "a pause while training holds both ranks at the same step"
else
    fail "a pause while training holds both ranks at the same step"; show "$tmp/b.client"
fi
finish
steps=$(sed -n 's/^\$2 = (\([0-9]*\) .*/\1/p' "$tmp/b.client")
# the job ends (status 0, long before its 100000 steps): rank 1 stopped too
if [ "$status" = 0 ] && grep -Eq "stopped after $steps steps? " "$(out b 0 stdout)"; then
    pass "trainer-stop! on rank 0 stops both ranks (exit 0)"
else
    fail "trainer-stop! on rank 0 stops both ranks (status $status)"; show "$(out b 0 stdout)" "$(out b 1 stdout)"
fi

echo "$failures failed"
test "$failures" = 0
