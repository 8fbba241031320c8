## scheme/program.mk — the moelab program (REPL, batch runs, REPL server), the
## embedding example and their tests. Included from the top-level Makefile.am
## after scheme/local.mk (whose module directories and .scm.go rule it uses);
## paths are relative to the top directory.

## ---- the program ---------------------------------------------------------------
bin_PROGRAMS += moelab
moelab_SOURCES = scheme/main.c
# The installed program loads its modules from where `make install` puts them,
# before anything on GUILE_LOAD_PATH or in Guile's site directories.
moelab_CPPFLAGS = $(AM_CPPFLAGS) -I$(srcdir)/scheme/bindings $(GUILE_CFLAGS) \
	-DMOELAB_SCHEME_DIR='"$(guilemoduledir)"' \
	-DMOELAB_CCACHE_DIR='"$(guileobjectdir)"'
moelab_LDADD = libguile-moelab.la libmoelab.la $(GUILE_LIBS)

# (moelab repl): command line, REPL set-up, meta-commands. Installed and
# compiled with the other (moelab …) modules (scheme/local.mk).
dist_guilesub_DATA += scheme/moelab/repl.scm
nodist_guilesubgo_DATA += scheme/moelab/repl.go
scheme/moelab/repl.go: scheme/moelab.go scheme/moelab/config.go scheme/moelab/ranks.go

# (moelab control): the step boundary of a job, where its ranks pause and
# serve rank 0's REPL; (moelab ranks): thread ranks that stay open in the REPL.
dist_guilesub_DATA += scheme/moelab/control.scm scheme/moelab/ranks.scm
nodist_guilesubgo_DATA += scheme/moelab/control.go scheme/moelab/ranks.go
scheme/moelab/control.go: scheme/moelab/dist.go scheme/moelab/tensor.go scheme/moelab/trainer.go
scheme/moelab/ranks.go: scheme/moelab/dist.go scheme/moelab/control.go

## ---- embedding example -----------------------------------------------------------
check_PROGRAMS += examples/embed
examples_embed_SOURCES = examples/embed.c
examples_embed_CPPFLAGS = $(AM_CPPFLAGS) -I$(srcdir)/scheme/bindings $(GUILE_CFLAGS)
examples_embed_LDADD = libguile-moelab.la libmoelab.la $(GUILE_LIBS)

## ---- tests -------------------------------------------------------------------------
# Shell scripts, run from the top build directory; they run the program
# through pre-inst-env.
PROGRAM_TESTS = \
	tests/scheme/program-test.sh \
	tests/scheme/repl-test.sh \
	tests/scheme/embed-test.sh \
	tests/scheme/listen-threads.sh \
	tests/scheme/run-examples.sh
TESTS += $(PROGRAM_TESTS)
TEST_EXTENSIONS += .sh
SH_LOG_COMPILER = $(SHELL)
AM_SH_LOG_FLAGS =
EXTRA_DIST += $(PROGRAM_TESTS)

## ---- the REPL across ranks: thread ranks and a job's control point ---------------
SCHEME_TESTS += tests/scheme/ranks.scm
## a launched job (mpirun -np 2 moelab train … --listen) driven from rank 0's
## REPL (exit 77 without MPI)
TESTS += tests/scheme/control-mpi.sh
EXTRA_DIST += tests/scheme/control-mpi.sh tests/scheme/control-train.scm
