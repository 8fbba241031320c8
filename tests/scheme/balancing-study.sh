#!/bin/sh
# balancing-study.sh — examples/balancing-study.scm --quick, shortened to 30
# steps, on a six-domain corpus of this tree's files: exit status 0 (every
# invariant the study checks holds), both tables list every arm, the second
# has every measure, and every run wrote its metrics and study lines.
# Run by `make check` from the top build directory.
set -u
builddir=$(pwd)
: "${srcdir:=.}"
example=$srcdir/examples/balancing-study.scm
test -f "$example" || { echo "balancing-study.sh: $example not found"; exit 99; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/moelab-study.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT
HOME=$tmp; export HOME
LC_ALL=C.UTF-8; export LC_ALL
top=$(cd "$srcdir" && pwd)

# the study's six domains, each one file of the source tree
set -- bible doc/routers.texi fortune examples/global-vs-micro.scm c core/moe/aux_loss.c \
       scheme scheme/moelab/trainer.scm python tests/python/interop.py info doc/training.texi
while [ $# -gt 0 ]; do
    mkdir -p "$tmp/corpus/$1" && ln -s "$top/$2" "$tmp/corpus/$1/" || exit 99
    shift 2
done

failures=0
pass() { echo "ok   $1"; }
fail() { failures=$((failures + 1)); echo "FAIL $1"; }

start=$(date +%s)
"$builddir/pre-inst-env" "$builddir/moelab" "$example" --quick --steps 30 \
    --corpus "$tmp/corpus" --out "$tmp/runs" </dev/null >"$tmp/out" 2>&1
status=$?
echo "(the study took $(( $(date +%s) - start ))s)"
if [ "$status" = 0 ]; then pass "exit status 0"; else fail "exit status $status"; fi

arms="none micro-batch global-batch global-batch-dp2 sequence bias-centred bias micro-batch-shuffled global-batch-shuffled"
for arm in $arms; do
    n=$(grep -c "^$arm  " "$tmp/out")
    if [ "$n" = 2 ]; then pass "$arm: a row in both tables"; else fail "$arm: $n table rows"; fi
    for f in metrics.jsonl study.jsonl; do
        [ -s "$tmp/runs/$arm/seed0/$f" ] || fail "$arm: no $f"
    done
done
for measure in bible fortune info mean "MaxVio micro" "MaxVio batch" "MaxVio glob" "MaxVio val" \
               dead entropy "topK share" "MI(dom;exp)"; do
    grep -q "^arm .*$measure" "$tmp/out" || fail "no column $measure"
done
if grep -q '^FAIL' "$tmp/out" || ! grep -q '^ok   seed 0: the single-domain arms drew identical tokens' "$tmp/out"; then
    fail "the study's checks"
fi
cmp -s "$tmp/runs/summary.txt" /dev/null && fail "empty summary.txt"
if [ "$failures" != 0 ]; then sed 's/^/     | /' "$tmp/out" | tail -60; fi
echo "$failures failed"
test "$failures" = 0
