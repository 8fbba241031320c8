#!/bin/sh
# balancing-study.sh — examples/balancing-study.scm --quick, shortened to 30
# steps, on a six-domain corpus of system files: exit status 0 (every
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

# The study's six domains, each one file that the build's own Debian
# packages install and that changes only with them: the study's checks
# compare arms trained for 30 steps, so the text must not change with every
# edit of this tree (files of the tree made the test fail when they were
# edited).
python_text=$(ls /usr/lib/python3*/textwrap.py 2>/dev/null | head -n 1)
set -- bible /usr/share/common-licenses/GPL-3 fortune /usr/share/common-licenses/Apache-2.0 \
       c /usr/include/stdio.h scheme /usr/share/guile/3.0/ice-9/boot-9.scm \
       python "${python_text:-/usr/lib/python3/textwrap.py}" info /usr/share/common-licenses/GFDL-1.3
while [ $# -gt 0 ]; do
    if [ ! -r "$2" ]; then echo "balancing-study.sh: skipped: no $2 on this system"; exit 77; fi
    mkdir -p "$tmp/corpus/$1" && ln -s "$2" "$tmp/corpus/$1/" || exit 99
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
