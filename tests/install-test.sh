#!/bin/sh
# install-test.sh — what `make install` puts where, and that the installed
# moelab works from there. Run by `make check` from the top build directory.
#
#  1. A fresh `configure --prefix=/opt/x` (CUDA auto-detected as in the build)
#     in a scratch directory that already has a core/ folder, as a
#     reconfigured build tree has: no "rm: cannot remove 'core'", no
#     confdefs.h left, and every installation directory under /opt/x.
#  2. `make install DESTDIR=...` of this build tree: every file under the
#     prefix, in the places the list below allows, the essential ones there,
#     every .go file next to its source and not older than it.
#  3. The staged tree in use: pkg-config with PKG_CONFIG_PATH at the staged
#     prefix; the README's C snippet and examples/embed.c compiled against it
#     and run; the installed program loads its own modules even when another
#     moelab's (a decoy) come first on GUILE_LOAD_PATH.
set -u

builddir=$(pwd)
abs_srcdir=$(cd "${srcdir:-.}" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/moelab-install-test.XXXXXX") || exit 99
# (the mirror of a read-only source tree, as under distcheck, is read-only too)
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
# Called from make check: the sub-makes below must not use its jobserver.
unset MAKEFLAGS MFLAGS MAKELEVEL
HOME=$tmp/home; export HOME
mkdir -p "$HOME"
GUILE_AUTO_COMPILE=0; export GUILE_AUTO_COMPILE
unset GUILE_LOAD_PATH GUILE_LOAD_COMPILED_PATH MOELAB_LOAD_PATH MOELAB_LOAD_COMPILED_PATH

failures=0
checks=0
pass() { checks=$((checks + 1)); echo "ok   $1"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); echo "FAIL $1"; }
# expect NAME WANT GOT
expect() {
    if [ "$2" = "$3" ]; then pass "$1"; else fail "$1: got '$3', expected '$2'"; fi
}

# install_dirs DIR: the installation directories of the build tree in DIR,
# fully expanded, as shell assignments.
install_dirs() {
    cat >"$tmp/dirs.mk" <<'EOF'
moelab-install-dirs:
	@for v in prefix='$(prefix)' exec_prefix='$(exec_prefix)' bindir='$(bindir)' \
	  libdir='$(libdir)' includedir='$(includedir)' datadir='$(datadir)' \
	  infodir='$(infodir)' pkgconfigdir='$(pkgconfigdir)' \
	  guilemoduledir='$(guilemoduledir)' guileobjectdir='$(guileobjectdir)' \
	  have_cuda='$(have_cuda)'; do echo "$$v"; done
EOF
    (cd "$1" && make -s --no-print-directory -f Makefile -f "$tmp/dirs.mk" moelab-install-dirs)
}

# ---- 1. configure --prefix=/opt/x ---------------------------------------------------
# configure refuses a source tree configured in place (config.status there),
# as CI's is: configure a mirror of symbolic links without it.
cp -as "$abs_srcdir/." "$tmp/src" && rm -f "$tmp/src/config.status" || exit 99
mkdir -p "$tmp/conf/core"
(cd "$tmp/conf" && "$tmp/src/configure" --prefix=/opt/x >configure.out 2>configure.err)
status=$?
expect "configure --prefix=/opt/x succeeds" 0 "$status"
if grep -q "rm:" "$tmp/conf/configure.out" "$tmp/conf/configure.err"; then
    fail "configure: an rm error in its output"
    grep "rm:" "$tmp/conf/configure.out" "$tmp/conf/configure.err" | head -3
else
    pass "configure: no rm error in its output"
fi
leftovers=$(cd "$tmp/conf" && ls -d confdefs.h conftest* 2>/dev/null)
expect "configure: no confdefs.h or conftest files left" "" "$leftovers"
if [ -d "$tmp/conf/core" ]; then pass "configure: core/ left alone"; else fail "configure: core/ removed"; fi
if [ "$status" = 0 ] && install_dirs "$tmp/conf" >"$tmp/conf.dirs"; then
    have_cuda=
    . "$tmp/conf.dirs"
    echo "     (CUDA backend in this configure: $have_cuda)"
    for v in bindir libdir includedir datadir infodir pkgconfigdir guilemoduledir guileobjectdir; do
        eval "d=\$$v"
        case $d in
            /opt/x/*) pass "--prefix=/opt/x: $v is under it ($d)" ;;
            *) fail "--prefix=/opt/x: $v is $d" ;;
        esac
    done
else
    fail "configure --prefix=/opt/x: no installation directories"
fi

# ---- 2. make install DESTDIR=... --------------------------------------------------
if ! install_dirs "$builddir" >"$tmp/build.dirs"; then
    echo "FAIL: cannot read the installation directories of the build tree"
    exit 1
fi
. "$tmp/build.dirs"
dest=$tmp/dest
if make -s install DESTDIR="$dest" >"$tmp/install.log" 2>&1; then
    pass "make install DESTDIR=..."
else
    fail "make install DESTDIR=..."
    tail -20 "$tmp/install.log"
    echo "$checks checks, $failures failed"
    exit 1
fi
(cd "$dest" && find . ! -type d | sed 's|^\.||' | sort) >"$tmp/installed"
echo "     $(wc -l <"$tmp/installed") files installed under $prefix"

# Every file under the prefix, when the installation directories are.
all_under_prefix=yes
for d in "$bindir" "$libdir" "$includedir" "$infodir" "$guilemoduledir" "$guileobjectdir"; do
    case $d in "$prefix"/*) ;; *) all_under_prefix=no ;; esac
done
if [ $all_under_prefix = yes ]; then
    outside=$(grep -v "^$prefix/" "$tmp/installed")
    expect "every installed file lies under $prefix" "" "$outside"
else
    echo "     (configured with directories outside $prefix: that check skipped)"
fi

# Every file in one of the places moelab installs to (a glob per place).
allowed="$bindir/moelab
$bindir/moelab-kernel
$datadir/jupyter/kernels/moelab/*
$libdir/libmoelab.*
$libdir/libguile-moelab.*
$pkgconfigdir/moelab.pc
$pkgconfigdir/moelab-guile.pc
$includedir/moelab/*.h
$infodir/moelab.info*
$infodir/dir
$guilemoduledir/moelab.scm
$guilemoduledir/moelab/*.scm
$guileobjectdir/moelab.go
$guileobjectdir/moelab/*.go"
stray=
while read -r f; do
    ok=no
    while read -r pattern; do
        case $f in $pattern) ok=yes; break ;; esac
    done <<EOF
$allowed
EOF
    [ $ok = yes ] || stray="$stray $f"
done <"$tmp/installed"
expect "every installed file is in its place" "" "$stray"

for f in "$bindir/moelab" "$libdir/libmoelab.so" "$libdir/libguile-moelab.so" \
         "$pkgconfigdir/moelab.pc" "$pkgconfigdir/moelab-guile.pc" \
         "$includedir/moelab/moelab.h" "$includedir/moelab/moelab-guile.h" \
         "$guilemoduledir/moelab.scm" "$guilemoduledir/moelab/config.scm" \
         "$guilemoduledir/moelab/repl.scm" "$guileobjectdir/moelab.go" "$infodir/moelab.info"; do
    if [ -e "$dest$f" ]; then pass "installed: $f"; else fail "not installed: $f"; fi
done
# The Jupyter kernelspec, where the kernel is built: kernel.json names the
# installed program.
if [ -e "$dest$bindir/moelab-kernel" ]; then
    spec=$dest$datadir/jupyter/kernels/moelab
    if grep -q "\"$bindir/moelab-kernel\"" "$spec/kernel.json" 2>/dev/null && [ -s "$spec/logo-64x64.png" ]; then
        pass "installed: the kernelspec in $datadir/jupyter/kernels/moelab"
    else
        fail "the kernelspec in $datadir/jupyter/kernels/moelab"
    fi
fi
# Guile ignores a .go file older than its source.
nogo=
for scm in $(cd "$dest$guilemoduledir" && find . -name '*.scm' | sed 's|^\./||'); do
    go=$dest$guileobjectdir/${scm%.scm}.go
    if [ ! -e "$go" ] || [ "$go" -ot "$dest$guilemoduledir/$scm" ]; then nogo="$nogo $scm"; fi
done
expect "every module has a .go file, not older than its source" "" "$nogo"

# ---- 3. the staged installation in use ---------------------------------------------
LD_LIBRARY_PATH=$dest$libdir; export LD_LIBRARY_PATH

# The .pc files as they would read installed at the staged prefix.
mkdir -p "$tmp/pc"
for pc in moelab moelab-guile; do
    sed "s|^prefix=.*|prefix=$dest$prefix|" "$dest$pkgconfigdir/$pc.pc" >"$tmp/pc/$pc.pc"
done
flags=$(PKG_CONFIG_PATH=$tmp/pc pkg-config --cflags --libs moelab 2>&1)
status=$?
expect "pkg-config --cflags --libs moelab" 0 "$status"
case " $flags " in
    *" -I$dest$includedir/moelab "*"-L$dest$libdir "*) pass "pkg-config: the installed directories ($flags)" ;;
    *) fail "pkg-config gave '$flags'" ;;
esac

# The README's C snippet, in a main().
sed -n '/^## The C core/,/^Compile against/p' "$abs_srcdir/README.md" |
    sed -n '/^```c$/,/^```$/p' | sed '1d;$d' >"$tmp/snippet"
{
    echo '#include <stdio.h>'
    grep '^#include' "$tmp/snippet"
    echo 'int main(void) {'
    grep -v '^#include' "$tmp/snippet"
    echo 'return 0; }'
} >"$tmp/readme.c"
if cc -std=c11 -o "$tmp/readme" "$tmp/readme.c" $flags >"$tmp/cc.log" 2>&1; then
    pass "the README's C snippet compiles against the installed moelab"
    "$tmp/readme" >"$tmp/out" 2>&1
    expect "the README's C snippet runs" "0:" "$?:$(cat "$tmp/out")"
else
    fail "the README's C snippet does not compile"
    head -20 "$tmp/cc.log"
fi

# examples/embed.c with the command the README gives.
if cc -o "$tmp/embed" "$abs_srcdir/examples/embed.c" \
        $(PKG_CONFIG_PATH=$tmp/pc pkg-config --cflags --libs moelab-guile) >"$tmp/cc.log" 2>&1; then
    pass "examples/embed.c compiles against the installed moelab"
    out=$(GUILE_LOAD_PATH=$(PKG_CONFIG_PATH=$tmp/pc pkg-config --variable=guilemoduledir moelab-guile) \
          GUILE_LOAD_COMPILED_PATH=$(PKG_CONFIG_PATH=$tmp/pc pkg-config --variable=guileobjectdir moelab-guile) \
          "$tmp/embed" 2>&1 </dev/null)
    case $out in
        *"loss = 17"*"dloss/dW = [[1 1] [2 2]]"*) pass "examples/embed runs from the installed modules" ;;
        *) fail "examples/embed: $out" ;;
    esac
else
    fail "examples/embed.c does not compile"
    head -20 "$tmp/cc.log"
fi

# The installed program: its own directories first on the load paths...
moelab=$dest$bindir/moelab
out=$(GUILE_LOAD_PATH=$dest$guilemoduledir GUILE_LOAD_COMPILED_PATH=$dest$guileobjectdir \
      "$moelab" -c '(write (list (car %load-path) (car %load-compiled-path)))' 2>&1 </dev/null)
expect "installed moelab: its module directories come first" \
    "(\"$guilemoduledir\" \"$guileobjectdir\")" "$out"
# ... so a decoy (moelab config) earlier on GUILE_LOAD_PATH does not win. (The
# staged directories stand in for the installed ones through MOELAB_LOAD_PATH.)
mkdir -p "$tmp/decoy/moelab"
cat >"$tmp/decoy/moelab/config.scm" <<'EOF'
(define-module (moelab config)
  #:export (%moelab-version %moelab-libdir %moelab-have-cuda? %moelab-have-mpi?
            %moelab-scheme-dir %moelab-scheme-ccache-dir))
(define %moelab-version "decoy")
(define %moelab-libdir "/nowhere")
(define %moelab-have-cuda? 'decoy)
(define %moelab-have-mpi? 'decoy)
(define %moelab-scheme-dir "/nowhere")
(define %moelab-scheme-ccache-dir "/nowhere")
EOF
out=$(GUILE_LOAD_PATH=$tmp/decoy MOELAB_LOAD_PATH=$dest$guilemoduledir \
      MOELAB_LOAD_COMPILED_PATH=$dest$guileobjectdir \
      "$moelab" -c '(write (list %moelab-version %moelab-have-cuda? %moelab-libdir %moelab-scheme-dir %moelab-scheme-ccache-dir))' 2>&1 </dev/null)
cuda=#f; [ "$have_cuda" = yes ] && cuda=#t
version=$(sed -n 's/^Version: //p' "$dest$pkgconfigdir/moelab.pc")
expect "installed moelab loads its own modules, not a decoy on GUILE_LOAD_PATH" \
    "(\"$version\" $cuda \"$libdir\" \"$guilemoduledir\" \"$guileobjectdir\")" "$out"
out=$(GUILE_LOAD_PATH=$tmp/decoy MOELAB_LOAD_PATH=$dest$guilemoduledir \
      MOELAB_LOAD_COMPILED_PATH=$dest$guileobjectdir \
      "$moelab" -c "(display (tensor->list (t+ (tensor '(1 2)) 1)))" 2>&1 </dev/null)
expect "installed moelab computes" "(2.0 3.0)" "$out"

echo "$checks checks, $failures failed"
test "$failures" = 0
