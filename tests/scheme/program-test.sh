#!/bin/sh
# program-test.sh — the moelab program's command line: --version, --help, -c,
# batch runs (command-line, exit status, error report), stdin that is not a
# terminal, option errors, MOELAB_NUM_THREADS and the REPL server (--listen).
# Run by `make check` from the top build directory.
set -u

builddir=$(pwd)
run="$builddir/pre-inst-env $builddir/moelab"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/moelab-program-test.XXXXXX") || exit 99
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
# Keep the user's files out of it.
HOME=$tmp/home; export HOME
mkdir -p "$HOME"
LC_ALL=C.UTF-8; export LC_ALL
unset MOELAB_NUM_THREADS

failures=0
checks=0
pass() { checks=$((checks + 1)); echo "ok   $1"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "FAIL $1"; }

# check NAME EXPECTED-STATUS GREP-PATTERN FILE: status and content.
check() {
    name=$1 want=$2 pattern=$3 file=$4
    if [ "$status" != "$want" ]; then
        fail "$name: exit status $status, expected $want"
        sed 's/^/     | /' "$tmp/out" "$tmp/err" | head -40
    elif [ -n "$pattern" ] && ! grep -q -e "$pattern" "$file"; then
        fail "$name: no match for '$pattern' in $(basename "$file")"
        sed 's/^/     | /' "$tmp/out" "$tmp/err" | head -40
    else
        pass "$name"
    fi
}

# moelab ARGS... < /dev/null, output in $tmp/out and $tmp/err, status in $status.
moelab() {
    $run "$@" </dev/null >"$tmp/out" 2>"$tmp/err"
    status=$?
}

# ---- --version, --help, bad options ----------------------------------------------
moelab --version
check "--version" 0 '^moelab [0-9][0-9.]*$' "$tmp/out"
moelab -v
check "-v" 0 '^moelab [0-9]' "$tmp/out"
moelab --help
check "--help" 0 '^Usage: moelab' "$tmp/out"
check "--help mentions --listen" 0 '--listen' "$tmp/out"
moelab --no-such-option
check "unknown option: status 2" 2 "unknown option '--no-such-option'" "$tmp/err"
moelab -c
check "-c without EXPR" 2 'needs an expression' "$tmp/err"
moelab --listen=nonsense
check "--listen with a bad value" 2 "bad --listen value" "$tmp/err"

# ---- -c EXPR ---------------------------------------------------------------------------
moelab -c "(display (tensor->list (t+ (tensor '(1 2)) 1)))"
check "-c evaluates with (moelab) loaded" 0 '^(2.0 3.0)$' "$tmp/out"
moelab -c '(write (command-line))' a "b c"
check "-c: (command-line)" 0 '^("moelab" "a" "b c")$' "$tmp/out"
moelab -c '(display (module-name (current-module)))'
check "-c runs in (moelab user)" 0 '^(moelab user)$' "$tmp/out"
moelab -c '(display 1) (display 2) (newline)'
check "-c evaluates every form" 0 '^12$' "$tmp/out"
moelab -c "(matmul (tensor '((1 2 3) (4 5 6))) (tensor '((1 2 3) (4 5 6))))"
check "-c: moelab error gives status 1" 1 'moelab-error in matmul: .*\[2 3\]' "$tmp/err"
moelab -c '(exit 7)'
check "-c: (exit 7)" 7 '' "$tmp/out"

# ---- the C locale reads as C.UTF-8 (LC_ALL, when set, is obeyed) ---------------------
times=$(printf '\303\227') # U+00D7 in UTF-8
status=0
env -u LC_ALL -u LANG -u LC_CTYPE $run -c '(display (string (integer->char #xd7)))' </dev/null >"$tmp/out" 2>"$tmp/err" || status=$?
check "C locale: the program prints UTF-8" 0 "^$times\$" "$tmp/out"
status=0
env LC_ALL=C $run -c '(display (string (integer->char #xd7)))' </dev/null >"$tmp/out" 2>"$tmp/err" || status=$?
check "LC_ALL=C is obeyed (ASCII)" 0 '^?*$' "$tmp/out"

# ---- batch: moelab FILE ARG... -------------------------------------------------------
cat >"$tmp/args.scm" <<'EOF'
(write (command-line))
(newline)
(display (tensor->list (t* (tensor '(1 2 3)) 2)))
(newline)
EOF
moelab "$tmp/args.scm" x "y z"
check "script: (command-line)" 0 "^(\"$tmp/args.scm\" \"x\" \"y z\")\$" "$tmp/out"
check "script: tensors" 0 '^(2.0 4.0 6.0)$' "$tmp/out"

cat >"$tmp/exit.scm" <<'EOF'
(display "before")
(newline)
(exit 3)
(display "after")
EOF
moelab "$tmp/exit.scm"
check "script: (exit 3) gives status 3" 3 '^before$' "$tmp/out"
if grep -q after "$tmp/out"; then fail "script: nothing runs after (exit)"; else pass "script: nothing runs after (exit)"; fi

cat >"$tmp/error.scm" <<'EOF'
(define (layer x w)
  (matmul x w))
(display "start")
(newline)
(layer (tensor '((1 2 3))) (tensor '((1 2 3))))
(display "not reached")
EOF
moelab "$tmp/error.scm"
check "script: uncaught moelab error gives status 1" 1 'moelab-error in matmul: ' "$tmp/err"
check "script: backtrace" 1 '^Backtrace:' "$tmp/err"
check "script: error names the script's line" 1 'error.scm:[0-9]' "$tmp/err"
check "script: output before the error" 1 '^start$' "$tmp/out"
if grep -q "not reached" "$tmp/out"; then fail "script: stops at the error"; else pass "script: stops at the error"; fi

printf '(display (car (quote ())))\n' >"$tmp/scheme-error.scm"
moelab "$tmp/scheme-error.scm"
check "script: Scheme error gives status 1" 1 'In procedure car' "$tmp/err"

printf '(define (f x)\n  (car x)\n' >"$tmp/syntax.scm"
moelab "$tmp/syntax.scm"
check "script: read error gives status 1" 1 'while compiling' "$tmp/err"

moelab "$tmp/no-such-file.scm"
check "script: missing file gives status 1" 1 'no such file' "$tmp/err"

cat >"$tmp/module.scm" <<'EOF'
(define-module (my experiment)
  #:use-module (moelab))
(display (tensor-shape (zeros '(2 3))))
(newline)
EOF
moelab "$tmp/module.scm"
check "script with its own define-module" 0 '^(2 3)$' "$tmp/out"

# ---- stdin that is not a terminal: a quiet REPL --------------------------------------
printf '%s\n' "(tensor->list (t+ (tensor '(1 2)) 1))" \
    "(matmul (tensor '((1 2 3))) (tensor '((1 2 3))))" \
    "(+ 1 2)" \
    "(car 5)" \
    "(define x 10)" \
    "(* x 2)" \
    ",shape (tensor '((1 2) (3 4) (5 6)))" |
    $run >"$tmp/out" 2>"$tmp/err"
status=$?
check "piped REPL: an uncaught error gives exit status 1" 1 '' "$tmp/out"
check "piped REPL: prints values" 1 '^(2.0 3.0)$' "$tmp/out"
check "piped REPL: error on stderr" 1 'moelab-error in matmul: ' "$tmp/err"
check "piped REPL: carries on after a moelab error" 1 '^3$' "$tmp/out"
check "piped REPL: carries on after a Scheme error" 1 '^20$' "$tmp/out"
check "piped REPL: Scheme error reported" 1 'In procedure car' "$tmp/err"
check "piped REPL: meta-command" 1 '^\[3 2\]$' "$tmp/out"
if grep -q 'moelab>' "$tmp/out"; then fail "piped REPL: no prompts"; else pass "piped REPL: no prompts"; fi

# piped SCRIPT: stdin from a file; output in $tmp/out and $tmp/err, status in $status.
piped() {
    printf '%s\n' "$1" >"$tmp/piped.scm"
    $run <"$tmp/piped.scm" >"$tmp/out" 2>"$tmp/err"
    status=$?
}
piped "(display (+ 1 2))"
check "piped REPL: no error, exit status 0" 0 '^3' "$tmp/out"
piped "(car 1)
(display 'after)"
check "piped REPL: error then success still exits 1" 1 'after' "$tmp/out"
piped "(let ((x)) x)"
check "piped REPL: a syntax error exits 1, on stderr" 1 'bad let' "$tmp/err"
piped ",shape (car 1)"
check "piped REPL: an error in a meta-command exits 1" 1 'In procedure car' "$tmp/err"
piped "(display 1) (car"
check "piped REPL: a read error exits 1" 1 'end of input' "$tmp/err"
piped "(car 1)
(exit 5)"
check "piped REPL: (exit 5) after an error gives 5" 5 '' "$tmp/out"
piped "(car 1)
,q"
check "piped REPL: ,q after an error gives 1" 1 '' "$tmp/out"
piped "; a comment before a meta-command
,shape (zeros '(2 4))"
check "piped REPL: comments, then a meta-command" 0 '^\[2 4\]$' "$tmp/out"

# ---- ~/.moelabrc is for the REPL, not for scripts --------------------------------------
echo '(define rc-value 42)' >"$HOME/.moelabrc"
echo 'rc-value' | $run >"$tmp/out" 2>"$tmp/err"; status=$?
check "REPL loads ~/.moelabrc" 0 '^42$' "$tmp/out"
echo 'rc-value' | $run -q >"$tmp/out" 2>"$tmp/err"; status=$?
check "-q skips ~/.moelabrc (the unbound variable is an error)" 1 'Unbound variable: rc-value' "$tmp/err"
moelab -c '(display (defined? (quote rc-value)))'
check "-c does not load ~/.moelabrc" 0 '^#f$' "$tmp/out"
rm -f "$HOME/.moelabrc"

# ---- MOELAB_NUM_THREADS --------------------------------------------------------------
MOELAB_NUM_THREADS=banana $run -c '(display 1)' >"$tmp/out" 2>"$tmp/err" </dev/null
status=$?
check "MOELAB_NUM_THREADS=banana warns" 0 'ignoring MOELAB_NUM_THREADS=banana' "$tmp/err"

# ---- REPL server -----------------------------------------------------------------------
# A client (moelab itself): connect, send lines, print everything the server
# says until it closes the connection.
cat >"$tmp/client.scm" <<'EOF'
(use-modules (ice-9 rdelim) (ice-9 textual-ports))
(define where (cadr (command-line)))
(define sock
  (if (string-prefix? "unix:" where)
      (let ((s (socket PF_UNIX SOCK_STREAM 0)))
        (connect s AF_UNIX (substring where 5))
        s)
      (let ((s (socket PF_INET SOCK_STREAM 0)))
        (connect s AF_INET (inet-pton AF_INET "127.0.0.1") (string->number where))
        s)))
(display "(tensor->list (t+ (tensor '(1 2)) 1))\n" sock)
(display "(module-name (current-module))\n" sock)
(display "(matmul (tensor '((1 2 3))) (tensor '((1 2 3))))\n" sock)
(display "(* 6 7)\n" sock)
(display ",q\n" sock)
(force-output sock)
(display (get-string-all sock))
(close-port sock)
EOF

# wait_for TEST-COMMAND: poll up to 10 s.
wait_for() {
    i=0
    while [ $i -lt 100 ]; do
        if eval "$1"; then return 0; fi
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

check_session() {
    label=$1
    check "$label: evaluates" 0 '(2.0 3.0)' "$tmp/session"
    check "$label: in (moelab user)" 0 '(moelab user)' "$tmp/session"
    check "$label: moelab error in one line" 0 'moelab-error in matmul: ' "$tmp/session"
    check "$label: carries on" 0 '42' "$tmp/session"
}

# Unix-domain socket.
$run --listen="unix:$tmp/repl.sock" </dev/null >"$tmp/server.out" 2>"$tmp/server.err" &
server_pid=$!
if wait_for "test -S '$tmp/repl.sock'"; then
    $run "$tmp/client.scm" "unix:$tmp/repl.sock" >"$tmp/session" 2>&1 </dev/null
    status=$?
    check_session "--listen=unix:PATH"
    if kill -0 "$server_pid" 2>/dev/null; then pass "--listen: server outlives a client"; else fail "--listen: server outlives a client"; fi
else
    status=none; fail "--listen=unix:PATH: no socket appeared"; cat "$tmp/server.err"
fi
kill "$server_pid" 2>/dev/null
wait "$server_pid" 2>/dev/null
server_pid=
if [ -e "$tmp/repl.sock" ]; then fail "--listen: socket removed on SIGTERM"; else pass "--listen: socket removed on SIGTERM"; fi

# TCP on loopback; port 0 lets the kernel choose, the server says which.
# (A file of its own: the shell opens the redirection in the child, so a
# reused name could still show the unix server's line when we first look.)
$run --listen=0 </dev/null >"$tmp/tcp-server.out" 2>"$tmp/tcp-server.err" &
server_pid=$!
# (the whole line: stderr is unbuffered, the message may arrive in pieces)
if wait_for "grep -q 'listening on .*(loopback only)' '$tmp/tcp-server.err'"; then
    status=0
    check "--listen=PORT: loopback only" 0 'listening on 127\.0\.0\.1:[0-9]' "$tmp/tcp-server.err"
    port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/tcp-server.err")
    $run "$tmp/client.scm" "$port" >"$tmp/session" 2>&1 </dev/null
    status=$?
    check_session "--listen=PORT"
else
    status=none; fail "--listen=PORT: server did not start"; cat "$tmp/tcp-server.err"
fi
kill "$server_pid" 2>/dev/null
wait "$server_pid" 2>/dev/null
server_pid=

echo "$checks checks, $failures failed"
test "$failures" = 0
