#!/bin/sh
# repl-test.sh — drive the moelab REPL on a pseudo-terminal, as a person
# would, with expect: the banner, evaluating, a moelab error (one line, the
# REPL carries on), a Scheme error (nested prompt, ,q back), the moelab
# meta-commands (,ranks ,rank ,all-ranks among them), ,describe, TAB
# completion, ~/.moelabrc, the history file, and quitting with ,q. Skipped
# (77) only when expect is missing.
set -u

EXPECT=${EXPECT:-expect}
if ! command -v "$EXPECT" >/dev/null 2>&1; then
    echo "SKIP: expect is not installed (apt-get install expect)"
    exit 77
fi

builddir=$(pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/moelab-repl-test.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
HOME=$tmp/home; export HOME
mkdir -p "$HOME"
LC_ALL=C.UTF-8; export LC_ALL
TERM=dumb; export TERM
MOELAB_NUM_THREADS=3; export MOELAB_NUM_THREADS
echo '(define from-rc "rc was loaded")' >"$HOME/.moelabrc"

cat >"$tmp/repl.exp" <<'EOF'
# Every step: send a line, expect its answer, then a prompt at the top level.
set timeout 30
log_user 1
set prompt "moelab> "
set failures 0
proc failed {what} {
    global failures
    incr failures
    send_user "\nFAIL: $what\n"
}
# step NAME LINE PATTERN...: send LINE, expect each regexp PATTERN in order,
# then the top-level prompt.
proc step {name line args} {
    global prompt
    send -- "$line\r"
    # The echo of the line (readline redraws it as it goes) ends with the
    # newline of Enter.
    expect {
        "\r\n" {}
        timeout { failed "$name: no echo"; return }
        eof { failed "$name: moelab exited"; return }
    }
    foreach pattern $args {
        expect {
            -re $pattern {}
            timeout { failed "$name: no match for /$pattern/"; return }
            eof { failed "$name: moelab exited"; return }
        }
    }
    expect {
        -ex $prompt { send_user "\nok   $name\n" }
        timeout { failed "$name: no prompt after it" }
        eof { failed "$name: moelab exited" }
    }
}

spawn {*}$argv
# A wide terminal, so that readline does not scroll long lines.
catch {exec stty rows 50 columns 400 < $spawn_out(slave,name)}
expect {
    -re "moelab \[0-9.]+ \u2014 backends: cpu\[^\r\n]* \u2014 3 threads \u2014 ,help for commands\r\n" {
        send_user "\nok   banner\n"
    }
    timeout { failed "banner"; exit 1 }
    eof { failed "banner: moelab exited"; exit 1 }
}
expect {
    "moelab> " {}
    timeout { failed "first prompt"; exit 1 }
}

step "evaluate" "(t+ (tensor '(1 2)) 1)" {#<tensor f32\[2\] cpu[^\r\n]*>}
step "moelab error: one line" \
    "(matmul (tensor '((1 2 3) (4 5 6))) (tensor '((1 2 3) (4 5 6))))" \
    {^moelab-error in matmul: [^\r\n]*\[2 3\][^\r\n]*\r\n}
step "carry on after the error" "(tensor->list (t* (tensor '(1 2)) 2))" {\(2\.0 4\.0\)}
step "definitions persist" "(define w (tensor '((1 2 3) (4 5 6)) #:requires-grad #t))" {}
step ",shape" ",shape w" {^\[2 3\]\r\n}
step ",shape of a list" ",shape (list w (tensor '(1 2)))" {^\[2 3\]\r\n\[2\]\r\n}
step ",describe-tensor" ",describe-tensor w" \
    {dtype +f32} {device +cpu} {shape +\[2 3\]} {strides +\[3 1\]} \
    {min +1} {max +6} {mean +3\.5} {NaN count +0} {grad +none}
step "backward!" "(backward! (tsum (t* w w)))" {}
step ",describe-tensor after backward!" ",describe-tensor w" {grad +present: f32\[2 3\]}
step ",grad-check passes" ",grad-check (list (lambda (x) (t* x (t* x x))) (tensor '(0.5 -1.0 2.0)))" \
    {max abs error} {\r\n +PASS\r\n}
step ",grad-check catches a wrong gradient" \
    ",grad-check (list (lambda (x) (t+ (detach (t* x x)) x)) (tensor '(1.0 2.0)))" \
    {\r\n +FAIL\r\n}
step ",mem" ",mem" {cpu +[0-9]+ live tensors?}
# A world of 4 thread ranks that stays open: one rank, all ranks at once
# (a collective), definitions that stay on their rank, errors naming it.
step ",ranks" ",ranks 4 ((dp . 2) (pp . 2))" {4 ranks open, mesh \(\(dp \. 2\) \(pp \. 2\)\)\r\n}
step ",all-ranks" ",all-ranks (current-rank)" {= \(0 1 2 3\)\r\n}
step ",all-ranks: a collective" ",all-ranks (tensor-item (all-reduce! (tensor (+ 1.0 (current-rank)))))" \
    {= \(10\.0 10\.0 10\.0 10\.0\)\r\n}
step ",all-ranks: the mesh" ",all-ranks (group-ranks (mesh-group 'dp))" {= \(\(0 1\) \(0 1\) \(2 3\) \(2 3\)\)\r\n}
step ",rank: a definition" ",rank 2 (define x (* 10 (current-rank)))" {}
step ",rank: it stays on its rank" ",rank 2 x" {= 20\r\n}
step ",rank: an error names the rank" ",rank 1 x" {moelab-error in rank-eval: rank 1 failed: Unbound variable: x\r\n}
step ",all-ranks: an error on one rank" {,all-ranks (if (= (current-rank) 3) (error "boom") 0)} \
    {moelab-error in all-ranks-eval: rank 3 failed: boom\r\n}
step "the ranks survive it" ",all-ranks (world-size)" {= \(4 4 4 4\)\r\n}
step ",ranks close" ",ranks close" {}
step ",ranks: none open" ",ranks" {no ranks are open\r\n}
# A gate that sends tokens 0-2 to expert 0 and token 3 to expert 1.
step "a hand-set router" \
    "(define rt (let ((r (make-router #:hidden 2 #:experts 4 #:top-k 1 #:pre-softmax? #t))) (set-router-weight! r (tensor '((1 0) (0 1) (-1 0) (0 -1)))) r))" {}
step ",routing" ",routing (router-forward rt (tensor '((1 0) (2 0) (3 0) (0 1))))" \
    {routing: T=4 tokens, E=4 experts, K=1} {expert 0 +3 +75\.0% +#{40}\r\n} \
    {expert 1 +1 +25\.0% +#{13}\r\n} {expert 2 +0 +0\.0% +dead} {expert 3 +0 +0\.0% +dead} \
    {MaxVio 2\.00 +CV 1\.22 +min 0 +max 3\r\n}
step ",plot" ",plot (plot-bars (list 1 2 3))" {\+-+-+} {\*\*}
step ",help moelab" ",help moelab" {,shape EXPR} {,describe-tensor EXPR} {,routing EXPR} {,grad-check EXPR} {,plot EXPR} {,ranks } {,rank R EXPR} {,all-ranks EXPR} {,mem}
step ",describe shows docstrings" ",describe tensor" {[a-z]}
step "~/.moelabrc was loaded" "from-rc" {"rc was loaded"}

# A Scheme error: Guile's debugger prompt, then back with ,q.
send -- "(car 5)\r"
expect "\r\n"
expect {
    -re {In procedure car[^\r\n]*\r\n} {}
    timeout { failed "Scheme error message" }
}
expect {
    -ex "moelab \[1\]> " { send_user "\nok   Scheme error: nested prompt\n" }
    timeout { failed "Scheme error: nested prompt" }
}
send -- ",q\r"
expect "\r\n"
expect {
    -ex $prompt { send_user "\nok   ,q leaves the nested prompt\n" }
    timeout { failed ",q leaves the nested prompt" }
}

# TAB completion of moelab names.
send -- "(tensor->li\t"
expect {
    "tensor->list" { send_user "\nok   TAB completion\n" }
    timeout { failed "TAB completion" }
}
send -- " (tensor '(7 8)))\r"
expect "\r\n"
expect {
    -re {\(7\.0 8\.0\)} {}
    timeout { failed "completed expression evaluates" }
}
expect -ex $prompt

# Ctrl-C interrupts a long computation: one line, same prompt level.
send -- "(let loop () (loop))\r"
expect "\r\n"
sleep 1
send -- "\003"
expect {
    -re {User interrupt} {}
    timeout { failed "Ctrl-C interrupts" }
}
expect {
    -ex $prompt { send_user "\nok   Ctrl-C interrupts, the REPL carries on\n" }
    timeout { failed "prompt after Ctrl-C" }
}

step "still alive" "(+ 40 2)" {^\$[0-9]+ = 42\r\n}

send -- ",q\r"
expect {
    eof { send_user "\nok   ,q quits\n" }
    timeout { failed ",q quits" }
}
lassign [wait] pid spawnid oserr status
if {$status != 0} { failed "exit status $status" }
exit [expr {$failures > 0}]
EOF

"$EXPECT" -f "$tmp/repl.exp" "$builddir/pre-inst-env" "$builddir/moelab"
status=$?
echo
if [ "$status" != 0 ]; then
    echo "FAIL: the REPL session (see above)"
    exit 1
fi

# The history file has what was typed.
if grep -q '^,shape w$' "$HOME/.moelab_history" && grep -q "^(t+ (tensor '(1 2)) 1)\$" "$HOME/.moelab_history"; then
    echo "ok   history in ~/.moelab_history"
else
    echo "FAIL: history in ~/.moelab_history"
    cat "$HOME/.moelab_history" 2>/dev/null
    exit 1
fi
echo "the REPL session passed"
