#!/bin/sh
# listen-threads.sh — two clients of one `moelab --listen` server (loopback)
# run backward loops at the same time, each on the server thread that serves
# it, into a parameter of their own and into one they share. Both must
# finish, the shared gradient must be the exact sum of both loops, and the
# server must still answer a third client afterwards. Run by `make check`
# from the top build directory.
set -u

builddir=$(pwd)
run="$builddir/pre-inst-env $builddir/moelab"
client="timeout 300 $run"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/moelab-listen-threads.XXXXXX") || exit 99
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
HOME=$tmp/home; export HOME
mkdir -p "$HOME"
LC_ALL=C.UTF-8; export LC_ALL
# two client threads, each with its own OpenMP team: keep the teams small
MOELAB_NUM_THREADS=1; export MOELAB_NUM_THREADS

failures=0
pass() { echo "ok   $1"; }
fail() { failures=$((failures + 1)); echo "FAIL $1"; }

# A client: send the lines of a file, then ,q; print all the server says.
# Each run is bounded by `timeout`, so that a stuck server (or a nested
# error REPL waiting for more input) fails the test instead of hanging it.
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

# What each loop client evaluates: once both have arrived, 300 backward
# passes into the shared parameter (integer inputs: exact in f64), then the
# loop that used to kill the server: two threads of its own, 300 passes each,
# into a parameter of its own.
loop_lines() {
    cat <<EOF
(begin (start-together!) (do ((i 0 (+ i 1))) ((= i 300) 'shared-done) (backward! (tsum (matmul (full '(2 256) $1 #:dtype 'f64) shared-w)))))
(begin (use-modules (ice-9 threads)) (let ((w (randn '(64 64) #:requires-grad #t))) (for-each join-thread (map (lambda (k) (call-with-new-thread (lambda () (do ((i 0 (+ i 1))) ((= i 300)) (backward! (tsum (matmul (randn '(32 64)) w))))))) '(0 1)))) 'own-done)
EOF
}
loop_lines 1 >"$tmp/a.scm"
loop_lines 2 >"$tmp/b.scm"
# Made before the loops; read after them: each of the 300+300 passes adds
# 2·c (two rows of c) to every entry: 300·2·1 + 300·2·2 = 1800.
cat >"$tmp/setup.scm" <<'EOF'
(define shared-w (zeros '(256 256) #:dtype 'f64 #:requires-grad #t))
(use-modules (ice-9 threads))
(define arrived 0)
(define arrival-lock (make-mutex))
(define arrival (make-condition-variable))
(define (start-together!) (with-mutex arrival-lock (set! arrived (+ arrived 1)) (broadcast-condition-variable arrival) (let wait () (when (< arrived 2) (wait-condition-variable arrival arrival-lock) (wait)))))
EOF
echo "(let ((g (apply append (tensor->list (tensor-grad shared-w))))) (list 'grad (apply min g) (apply max g)))" >"$tmp/check.scm"

wait_for() {
    i=0
    while [ $i -lt 100 ]; do
        if eval "$1"; then return 0; fi
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

$run --listen=0 </dev/null >"$tmp/server.out" 2>"$tmp/server.err" &
server_pid=$!
if ! wait_for "grep -q 'listening on' '$tmp/server.err'"; then
    fail "server did not start"; cat "$tmp/server.err"; exit 1
fi
port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/server.err")

$client "$tmp/client.scm" "$port" "$tmp/setup.scm" >"$tmp/setup.out" 2>&1 </dev/null
$client "$tmp/client.scm" "$port" "$tmp/a.scm" >"$tmp/a.out" 2>&1 </dev/null &
a_pid=$!
$client "$tmp/client.scm" "$port" "$tmp/b.scm" >"$tmp/b.out" 2>&1 </dev/null &
b_pid=$!
wait "$a_pid"; a_status=$?
wait "$b_pid"; b_status=$?

for c in a b; do
    if grep -q "own-done" "$tmp/$c.out" && grep -q "shared-done" "$tmp/$c.out"; then
        pass "client $c finished both loops"
    else
        fail "client $c finished both loops"; sed 's/^/     | /' "$tmp/$c.out" | tail -20
    fi
done
[ "$a_status" = 0 ] && [ "$b_status" = 0 ] && pass "both clients exit 0" || fail "both clients exit 0 ($a_status, $b_status)"
if kill -0 "$server_pid" 2>/dev/null; then pass "the server survives"; else fail "the server survives"; cat "$tmp/server.err"; fi

$client "$tmp/client.scm" "$port" "$tmp/check.scm" >"$tmp/check.out" 2>&1 </dev/null
if grep -q '(grad 1800.0 1800.0)' "$tmp/check.out"; then
    pass "the shared gradient is the exact sum of both loops"
else
    fail "the shared gradient is the exact sum of both loops"; sed 's/^/     | /' "$tmp/check.out" | tail -20
fi

kill "$server_pid" 2>/dev/null
wait "$server_pid" 2>/dev/null
server_pid=
echo "$failures failed"
test "$failures" = 0
