# testlib.sh — what the shell tests share (POSIX sh). Run by `make check`
# from the top build directory; a test sources it with
#     : "${srcdir:=.}"
#     . "$srcdir/tests/testlib.sh"
#     test_setup NAME
# and then has: builddir, run (the moelab program of the build tree), tmp (a
# directory removed on exit, also HOME), LC_ALL=C.UTF-8; pass, fail and show
# for its checks (counted in checks and failures); and, for the tests that
# start mpirun, mpi-env.sh's environment (MPIRUN, GUARD), mpi_run,
# skip_without_mpi and have_mpi.
builddir=$(pwd)
. "$srcdir/tests/mpi-env.sh"
run="$builddir/pre-inst-env $builddir/moelab"
failures=0
checks=0

pass() { checks=$((checks + 1)); echo "ok   $1"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "FAIL $1"; }
# show FILE…: the last lines of FILE…, indented under a failure
show() { sed 's/^/     | /' "$@" | tail -40; }

# test_setup NAME: a fresh $tmp (moelab-NAME.XXXXXX) removed on exit, the
# home directory of the test (no ~/.moelabrc, no history), a UTF-8 locale.
# A test that must also clean up something else sets its own EXIT trap after.
test_setup() {
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/moelab-$1.XXXXXX") || exit 99
    trap 'rm -rf "$tmp"' EXIT
    HOME=$tmp; export HOME
    LC_ALL=C.UTF-8; export LC_ALL
}

# mpi_run ARGS…: mpirun with ARGS, oversubscribed (CI has few cores), a hang
# turned into a failure.
mpi_run() { $GUARD "$MPIRUN" --oversubscribe "$@"; }

# have_mpi: true when mpirun is there and moelab was built with MPI (for a
# test whose MPI part is optional).
have_mpi() {
    command -v "$MPIRUN" >/dev/null 2>&1 &&
        $run -c '(exit (if %moelab-have-mpi? 0 1))' </dev/null >/dev/null 2>&1
}

# skip_without_mpi: return when mpirun and moelab's MPI are there; otherwise
# exit 77 (skipped), or 1 when checks run before (on threads) have failed.
# Starting moelab once also makes libtool's wrapper ready before mpirun
# starts several copies of it at once.
skip_without_mpi() {
    if ! command -v "$MPIRUN" >/dev/null 2>&1; then
        echo "SKIP: $MPIRUN not found ($checks checks, $failures failed)"
    else
        $run -c '(exit (if %moelab-have-mpi? 0 77))' </dev/null >"$tmp/mpi-check.out" 2>&1
        case $? in
        0) return 0 ;;
        77) echo "SKIP: moelab was built without MPI ($checks checks, $failures failed)" ;;
        *) echo "FAIL: moelab does not start"; cat "$tmp/mpi-check.out"; exit 1 ;;
        esac
    fi
    test "$failures" = 0 && exit 77
    exit 1
}
