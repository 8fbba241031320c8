#!/bin/sh
# train-program.sh — `moelab train`: the example configuration runs a few
# steps and prints the per-domain validation losses and the routing summary,
# --set reaches the config and the trainer, --steps, the metrics file, bad
# usage (exit 2), a bad config (exit 1), --check-unigram, and Ctrl-C
# stopping after the current step with the summary (exit 130).
# Run by `make check` from the top build directory.
set -u

builddir=$(pwd)
: "${srcdir:=.}"
run="$builddir/pre-inst-env $builddir/moelab"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/moelab-train-test.XXXXXX") || exit 99
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
HOME=$tmp/home; export HOME
mkdir -p "$HOME"
LC_ALL=C.UTF-8; export LC_ALL
MOELAB_NUM_THREADS=2; export MOELAB_NUM_THREADS

failures=0
pass() { echo "ok   $1"; }
fail() { failures=$((failures + 1)); echo "FAIL $1"; }
# check NAME EXPECTED-STATUS STATUS GREP-PATTERN FILE
check() {
    if [ "$3" != "$2" ]; then
        fail "$1: exit status $3, expected $2"; sed 's/^/     | /' "$5" | tail -20
    elif [ -n "$4" ] && ! grep -q -- "$4" "$5"; then
        fail "$1: no '$4' in the output"; sed 's/^/     | /' "$5" | tail -20
    else
        pass "$1"
    fi
}

# The corpus: data/corpus when built, else the six domains made of this
# source tree's text (the example reads data/corpus/<domain>/{train,val}).
corpus=$srcdir/data/corpus
if [ ! -f "$corpus/bible/val" ]; then
    corpus=$tmp/corpus
    for d in bible fortune c scheme python info; do mkdir -p "$corpus/$d"; done
    cat "$srcdir"/doc/*.texi > "$corpus/bible/train"; cat "$srcdir"/README.md > "$corpus/bible/val"
    cat "$srcdir"/core/moe/*.h > "$corpus/fortune/train"; cat "$srcdir"/core/nn/*.h > "$corpus/fortune/val"
    cat "$srcdir"/core/moe/*.c > "$corpus/c/train"; cat "$srcdir"/core/nn/*.c > "$corpus/c/val"
    cat "$srcdir"/scheme/moelab/*.scm > "$corpus/scheme/train"; cat "$srcdir"/tests/scheme/*.scm > "$corpus/scheme/val"
    cat "$srcdir"/tests/reference/*.py > "$corpus/python/train"; cat "$srcdir"/tests/bench/*.py > "$corpus/python/val"
    cat "$srcdir"/doc/*.texi > "$corpus/info/train"; cat "$srcdir"/core/*.h > "$corpus/info/val"
fi
example=$srcdir/examples/train-small.scm
small="--set corpus=$corpus --set seq-len=32 --set batch-size=2 --set eval-batches=1"

# ---- a short run ----------------------------------------------------------------
$run train "$example" --steps 3 $small --set log="$tmp/a.jsonl" --set eval-every=2 \
    </dev/null >"$tmp/out" 2>&1
status=$?
check "train: 3 steps" 0 $status "done after 3 steps" "$tmp/out"
check "train: per-domain validation losses" 0 $status "^  python " "$tmp/out"
check "train: routing summary" 0 $status "^layer 1  MaxVio" "$tmp/out"
check "train: expert shares per domain" 0 $status "expert shares per domain" "$tmp/out"
lines=$(wc -l <"$tmp/a.jsonl")
# header, 3 steps, the eval at step 2 and the final one
if [ "$lines" = 6 ]; then pass "train: metrics file lines"; else fail "train: $lines metrics lines, expected 6"; fi
if grep -q '"batch-size": 2' "$tmp/a.jsonl"; then pass "train: --set reaches the config"; else fail "train: --set batch-size"; fi

# ---- in parallel: thread ranks in this process ------------------------------------
$run train "$example" --steps 2 $small --set log="$tmp/p.jsonl" --ranks 2 --mesh pp=2 \
    </dev/null >"$tmp/out" 2>&1
status=$?
check "train: --ranks 2 --mesh pp=2" 0 $status "done after 2 steps" "$tmp/out"
check "train: the routing report covers both stages' layers" 0 $status "^layer 1 " "$tmp/out"
if [ "$(grep -c '"grad_norm"' "$tmp/p.jsonl")" = 2 ] && [ "$(grep -c 'done after' "$tmp/out")" = 1 ]; then
    pass "train: one metrics file and one summary (rank 0 writes and prints)"
else
    fail "train: rank 0 alone writes and prints"; sed 's/^/     | /' "$tmp/p.jsonl" | tail -5
fi
if grep -q '"mesh": {"pp": 2, "dp": 1, "ep": 1}' "$tmp/p.jsonl"; then pass "train: the mesh is in the settings line"
else fail "train: the mesh in the settings line"; head -c 600 "$tmp/p.jsonl"; fi
$run train "$example" --steps 1 $small --ranks 2 --mesh pp=2,dp=2 </dev/null >"$tmp/out" 2>&1
check "train: a mesh of another size than --ranks" 2 $? "has 4 ranks but 2 were asked for" "$tmp/out"
$run train "$example" --steps 1 $small --mesh tp=2 </dev/null >"$tmp/out" 2>&1
check "train: an unknown mesh dimension" 2 $? "--mesh needs sizes such as" "$tmp/out"
$run train "$example" --steps 1 $small --mesh pp=2,,dp </dev/null >"$tmp/out" 2>&1
check "train: a mesh that does not parse is named" 2 $? "cannot parse 'pp=2,,dp'" "$tmp/out"

# --set for a trainer setting the config does not read; --steps as (setting 'steps)
$run train "$example" --steps 2 $small --set log="$tmp/b.jsonl" --set grad-accum=2 \
    </dev/null >"$tmp/out" 2>&1
status=$?
check "train: --set grad-accum" 0 $status "of 2×2 sequences" "$tmp/out"
if grep -q '"total": 2' "$tmp/b.jsonl"; then pass "train: --steps is the schedule's total"; else fail "train: --steps in the schedule"; fi

# ---- errors -----------------------------------------------------------------------
$run train </dev/null >"$tmp/out" 2>&1
check "train: no config" 2 $? "no CONFIG file" "$tmp/out"
$run train "$example" --steps x </dev/null >"$tmp/out" 2>&1
check "train: bad --steps" 2 $? "positive integer" "$tmp/out"
$run train "$tmp/missing.scm" </dev/null >"$tmp/out" 2>&1
check "train: missing config" 1 $? "no such file" "$tmp/out"
echo '(+ 1 2)' >"$tmp/three.scm"
$run train "$tmp/three.scm" --steps 1 </dev/null >"$tmp/out" 2>&1
check "train: a config that gives no trainer" 1 $? "must give a trainer" "$tmp/out"
$run train "$example" --steps 1 $small --set colour=blue </dev/null >"$tmp/out" 2>&1
check "train: unknown --set" 1 $? "colour" "$tmp/out"
$run train --help </dev/null >"$tmp/out" 2>&1
check "train: --help" 0 $? "Usage: moelab train" "$tmp/out"

# ---- --check-unigram: 2 steps cannot beat the unigram entropy ---------------------------
$run train "$example" --steps 2 $small --set log="$tmp/c.jsonl" --check-unigram </dev/null >"$tmp/out" 2>&1
check "train: --check-unigram fails an untrained model" 1 $? "is not below the unigram entropy" "$tmp/out"

# ---- Ctrl-C: stop after the current step, with the summary ------------------------
$run train "$example" --steps 100000 $small --set log="$tmp/d.jsonl" </dev/null >"$tmp/out" 2>&1 &
pid=$!
i=0
while [ $i -lt 600 ]; do
    [ -f "$tmp/d.jsonl" ] && [ "$(wc -l <"$tmp/d.jsonl")" -ge 3 ] && break
    sleep 0.1; i=$((i + 1))
done
# the program is the last process of the pre-inst-env chain
kill -INT $(pgrep -P $pid 2>/dev/null || true) $pid 2>/dev/null
wait $pid
status=$?
pid=
check "train: Ctrl-C stops with a summary" 130 $status "stopped after" "$tmp/out"
check "train: Ctrl-C summary has the routing" 130 $status "^layer 0  MaxVio" "$tmp/out"

# ---- --listen: a REPL attached to the run stops it ----------------------------------
# --listen=0: a port the system chooses (a fixed one could be taken), named on stderr
$run train "$example" --steps 100000 $small --set log="$tmp/e.jsonl" --listen=0 \
    </dev/null >"$tmp/out" 2>&1 &
pid=$!
i=0
while [ $i -lt 600 ]; do
    [ -f "$tmp/e.jsonl" ] && [ "$(wc -l <"$tmp/e.jsonl")" -ge 3 ] && break
    sleep 0.1; i=$((i + 1))
done
port=$(sed -n 's/.*REPL server on 127\.0\.0\.1:\([0-9][0-9]*\);.*/\1/p' "$tmp/out")
check "train --listen=0: the server names its port" 0 $? "REPL server on 127.0.0.1:[1-9]" "$tmp/out"
cat >"$tmp/client.scm" <<EOS
(use-modules (ice-9 rdelim))
(define s (socket PF_INET SOCK_STREAM 0))
(connect s AF_INET (inet-pton AF_INET "127.0.0.1") $port)
(display "(list (trainer? (current-trainer)) (moe-transformer? model))\n(trainer-stop! (current-trainer))\n" s)
(force-output s)
(let loop ((n 0))
  (let ((l (read-line s)))
    (unless (or (eof-object? l) (string-prefix? "\$2" l))
      (display l) (newline) (loop (+ n 1)))))
(close-port s)
EOS
timeout 60 guile --no-auto-compile "$tmp/client.scm" >"$tmp/client.out" 2>&1
check "train --listen: the config's module and (current-trainer)" 0 $? '\$1 = (#t #t)' "$tmp/client.out"
wait $pid
status=$?
pid=
check "train --listen: trainer-stop! from the REPL" 0 $status "stopped after" "$tmp/out"

echo "$failures failed"
test "$failures" = 0
