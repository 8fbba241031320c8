#!/bin/sh
# global-vs-micro.sh — examples/global-vs-micro.scm prints the same report
# on 4 threads (moelab FILE) and under `mpirun -np 4 moelab FILE`, byte for
# byte; and the report holds what it claims: every rank sees the same global
# counts (the sum of the local ones, K·T·dp tokens), the local counts differ,
# and the mean over ranks of the global-batch loss is the micro-batch loss of
# the whole global batch. The threads run is checked first; then exit 77
# (skipped) when mpirun is missing or moelab was built without MPI.
# Run by `make check` from the top build directory.
set -u
: "${srcdir:=.}"
. "$srcdir/tests/testlib.sh"
example=$srcdir/examples/global-vs-micro.scm
test -f "$example" || { echo "global-vs-micro.sh: $example not found"; exit 99; }

test_setup gvm
unset MOELAB_NUM_THREADS

# ---- threads -----------------------------------------------------------------
$GUARD $run "$example" </dev/null >"$tmp/threads.out" 2>"$tmp/threads.err"
status=$?
if [ "$status" = 0 ] && [ "$(wc -l <"$tmp/threads.out")" = 7 ]; then
    pass "threads: exit 0, 7 lines"
else
    fail "threads: status $status, $(wc -l <"$tmp/threads.out") lines"
    show "$tmp/threads.out" "$tmp/threads.err"
fi

# The rank lines: "rank R: local … (c…)  global … (g…)  micro-batch loss M  global-batch loss G".
grep '^rank ' "$tmp/threads.out" | sed 's/[()]/ /g' >"$tmp/ranks"
awk '
  { n = 0; local = ""; glob = ""; ls = 0; gs = 0
    for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/ && i > 2) { n++; if (n <= 8) { local = local " " $i; ls += $i } else if (n <= 16) { glob = glob " " $i; gs += $i } }
    if (NR == 1) g0 = glob; else if (glob != g0) bad = bad " global counts differ on line " NR
    if (ls != 128) bad = bad " local sum " ls " on line " NR
    if (gs != 512) bad = bad " global sum " gs " on line " NR
    if (local == glob) bad = bad " local = global on line " NR
    for (e = 1; e <= 8; e++) { split(local, lv, " "); tot[e] += lv[e] }
  }
  END {
    split(g0, gv, " ")
    for (e = 1; e <= 8; e++) if (tot[e] != gv[e]) bad = bad " expert " e - 1 ": locals sum to " tot[e] ", global " gv[e]
    if (NR != 4) bad = bad " " NR " rank lines"
    if (bad != "") { print bad; exit 1 }
  }' "$tmp/ranks" >"$tmp/why"
if [ $? = 0 ]; then
    pass "every rank sees the global counts: the sum of the 4 local ones, 512 = K·T·dp"
else
    fail "counts: $(cat "$tmp/why")"
    show "$tmp/threads.out"
fi

mean=$(sed -n 's/^mean over ranks: .*global-batch loss \([0-9.]*\)$/\1/p' "$tmp/threads.out")
whole=$(sed -n 's/^micro-batch loss of the whole global batch in one process: \([0-9.]*\)$/\1/p' "$tmp/threads.out")
if [ -n "$mean" ] && [ "$mean" = "$whole" ]; then
    pass "mean global-batch loss over ranks = micro-batch loss of the whole batch ($mean)"
else
    fail "mean global-batch loss '$mean', whole-batch micro-batch loss '$whole'"
fi

# ---- mpirun -np 4 --------------------------------------------------------------
skip_without_mpi
mpi_run -np 4 $run "$example" \
    </dev/null >"$tmp/mpi.out" 2>"$tmp/mpi.err"
status=$?
if [ "$status" != 0 ]; then
    fail "mpirun -np 4: exit status $status"
    show "$tmp/mpi.out" "$tmp/mpi.err"
elif cmp -s "$tmp/threads.out" "$tmp/mpi.out"; then
    pass "mpirun -np 4 prints what 4 threads print"
else
    fail "mpirun -np 4 prints something else than 4 threads"
    diff "$tmp/threads.out" "$tmp/mpi.out" | head -20
fi

echo "$checks checks, $failures failed"
test "$failures" = 0
