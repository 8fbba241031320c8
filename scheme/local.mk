## scheme/local.mk — Guile bindings (libguile-moelab), the (moelab …) Scheme
## modules and their SRFI-64 tests. Included from the top-level Makefile.am;
## paths are relative to the top directory.

## ---- libguile-moelab: the C primitives --------------------------------------
lib_LTLIBRARIES += libguile-moelab.la
libguile_moelab_la_SOURCES = \
	scheme/bindings/bindings.h scheme/bindings/moelab-guile.h \
	scheme/bindings/convert.c scheme/bindings/error.c \
	scheme/bindings/tensor-type.c scheme/bindings/tensor-func.c \
	scheme/bindings/ops-func.c scheme/bindings/autograd-func.c \
	scheme/bindings/group-type.h scheme/bindings/group-type.c \
	scheme/bindings/ranks-func.c scheme/bindings/collective-func.c \
	scheme/bindings/grad-sync-type.c scheme/bindings/grad-sync-func.c \
	scheme/bindings/layer-type.c scheme/bindings/layer-func.c \
	scheme/bindings/router-options.c \
	scheme/bindings/router-type.c scheme/bindings/router-func.c \
	scheme/bindings/model-type.c scheme/bindings/model-func.c \
	scheme/bindings/optimizer-type.c scheme/bindings/optim-func.c \
	scheme/bindings/metrics-log-type.c scheme/bindings/metrics-func.c \
	scheme/bindings/checkpoint-func.c \
	scheme/bindings/gc-roots.c scheme/bindings/init.c
libguile_moelab_la_CPPFLAGS = $(AM_CPPFLAGS) -I$(builddir)/scheme/bindings $(GUILE_CFLAGS)
libguile_moelab_la_CFLAGS = $(AM_CFLAGS) -fvisibility=hidden
libguile_moelab_la_LIBADD = libmoelab.la $(GUILE_LIBS) $(JANSSON_LIBS)
libguile_moelab_la_LDFLAGS = -version-info 0:0:0 $(AM_LDFLAGS)
moelabinclude_HEADERS += scheme/bindings/moelab-guile.h

# guile-snarf collects the SCM_DEFINE initialisers of each file that has
# primitives into a .x file (in the build tree) that the file includes.
moelab_snarf_x = \
	scheme/bindings/tensor-type.x scheme/bindings/tensor-func.x \
	scheme/bindings/ops-func.x scheme/bindings/autograd-func.x \
	scheme/bindings/group-type.x scheme/bindings/ranks-func.x scheme/bindings/collective-func.x \
	scheme/bindings/grad-sync-type.x scheme/bindings/grad-sync-func.x scheme/bindings/layer-type.x scheme/bindings/layer-func.x \
	scheme/bindings/router-type.x scheme/bindings/router-func.x scheme/bindings/model-func.x \
	scheme/bindings/optimizer-type.x scheme/bindings/optim-func.x \
	scheme/bindings/metrics-log-type.x scheme/bindings/metrics-func.x \
	scheme/bindings/checkpoint-func.x
BUILT_SOURCES += $(moelab_snarf_x)
CLEANFILES += $(moelab_snarf_x)
$(libguile_moelab_la_OBJECTS): $(moelab_snarf_x)
.c.x:
	$(AM_V_GEN)$(MKDIR_P) $(@D) && \
	$(GUILE_SNARF) -o $@ $< $(AM_CPPFLAGS) $(GUILE_CFLAGS) $(CPPFLAGS) \
	  -I$(builddir) -I$(srcdir)/core -I$(srcdir)/scheme/bindings

## ---- Scheme modules ----------------------------------------------------------
# guilemoduledir and guileobjectdir come from configure (under the prefix
# unless --with-guile-site or --with-guile-site-dir/-ccache-dir say otherwise).
moelab_top_scm = scheme/moelab.scm
moelab_sub_scm = \
	scheme/moelab/primitives.scm scheme/moelab/tensor.scm \
	scheme/moelab/ops.scm scheme/moelab/autograd.scm \
	scheme/moelab/dist.scm scheme/moelab/pipeline.scm scheme/moelab/layer.scm \
	scheme/moelab/router.scm scheme/moelab/nn.scm scheme/moelab/train.scm \
	scheme/moelab/checkpoint.scm
moelab_gen_scm = scheme/moelab/config.scm

guiletopdir = $(guilemoduledir)
dist_guiletop_DATA = $(moelab_top_scm)
guilesubdir = $(guilemoduledir)/moelab
dist_guilesub_DATA = $(moelab_sub_scm)
nodist_guilesub_DATA = $(moelab_gen_scm)

guiletopgodir = $(guileobjectdir)
nodist_guiletopgo_DATA = $(moelab_top_scm:.scm=.go)
guilesubgodir = $(guileobjectdir)/moelab
nodist_guilesubgo_DATA = $(moelab_sub_scm:.scm=.go) $(moelab_gen_scm:.scm=.go)

EXTRA_DIST += scheme/moelab/config.scm.in
CLEANFILES += $(moelab_gen_scm) $(nodist_guiletopgo_DATA) $(nodist_guilesubgo_DATA)

# Facts fixed at build time. Made here rather than by configure so that
# $(libdir) is fully expanded.
scheme/moelab/config.scm: $(srcdir)/scheme/moelab/config.scm.in Makefile
	$(AM_V_GEN)$(MKDIR_P) $(@D) && rm -f $@ $@.tmp && \
	sed -e 's|@libdir[@]|$(libdir)|g' \
	    -e 's|@PACKAGE_VERSION[@]|$(PACKAGE_VERSION)|g' \
	    -e 's|@have_cuda[@]|$(have_cuda)|g' \
	    -e 's|@have_mpi[@]|$(have_mpi)|g' \
	    -e 's|@guilemoduledir[@]|$(guilemoduledir)|g' \
	    -e 's|@guileobjectdir[@]|$(guileobjectdir)|g' \
	    $(srcdir)/scheme/moelab/config.scm.in > $@.tmp && mv $@.tmp $@

# Compile with warnings on; the extension is loaded at compile time, from the
# build tree (pre-inst-env).
GUILE_WARNINGS = -Wunbound-variable -Warity-mismatch -Wformat
.scm.go:
	$(AM_V_GEN)$(MKDIR_P) $(@D) && \
	$(top_builddir)/pre-inst-env $(GUILD) compile $(GUILE_WARNINGS) \
	  -L $(abs_top_srcdir)/scheme -L $(abs_top_builddir)/scheme -o $@ $<

# Which module uses which (the compiler loads them), so parallel builds
# compile in order.
scheme/moelab/primitives.go: scheme/moelab/config.go libguile-moelab.la
scheme/moelab/tensor.go: scheme/moelab/primitives.go
scheme/moelab/ops.go: scheme/moelab/tensor.go
scheme/moelab/autograd.go: scheme/moelab/tensor.go
scheme/moelab/dist.go: scheme/moelab/tensor.go
scheme/moelab/pipeline.go: scheme/moelab/tensor.go scheme/moelab/autograd.go scheme/moelab/dist.go
scheme/moelab/layer.go: scheme/moelab/tensor.go scheme/moelab/dist.go
scheme/moelab/router.go: scheme/moelab/tensor.go scheme/moelab/dist.go
scheme/moelab/nn.go: scheme/moelab/tensor.go
scheme/moelab/train.go: scheme/moelab/tensor.go
scheme/moelab/checkpoint.go: scheme/moelab/tensor.go scheme/moelab/nn.go scheme/moelab/train.go scheme/moelab/dist.go \
	scheme/moelab/data.go scheme/moelab/trainer.go
scheme/moelab.go: scheme/moelab/tensor.go scheme/moelab/ops.go scheme/moelab/autograd.go \
	scheme/moelab/dist.go scheme/moelab/pipeline.go scheme/moelab/config.go scheme/moelab/layer.go \
	scheme/moelab/router.go scheme/moelab/nn.go scheme/moelab/train.go \
	scheme/moelab/checkpoint.go

# Installed .go files must be newer than the installed .scm files, or Guile
# ignores them: install the sources first. (Named through variables so that
# automake does not take these for overrides of its own targets.)
moelab_install_top_go = install-nodist_guiletopgoDATA
moelab_install_sub_go = install-nodist_guilesubgoDATA
$(moelab_install_top_go): install-dist_guiletopDATA
$(moelab_install_sub_go): install-dist_guilesubDATA install-nodist_guilesubDATA

## ---- SRFI-64 tests (automake parallel test driver, one .log/.trs per file) -----
SCHEME_TESTS = \
	tests/scheme/tensor.scm tests/scheme/ops.scm tests/scheme/autograd.scm \
	tests/scheme/errors.scm tests/scheme/printing.scm tests/scheme/docs.scm \
	tests/scheme/dist.scm tests/scheme/pipeline.scm tests/scheme/layer.scm tests/scheme/router.scm \
	tests/scheme/router-modes.scm \
	tests/scheme/model.scm tests/scheme/model-parallel.scm \
	tests/scheme/train.scm \
	tests/scheme/threads.scm tests/scheme/memory.scm
TESTS += $(SCHEME_TESTS)
TEST_EXTENSIONS = .scm
SCM_LOG_COMPILER = $(top_builddir)/tests/scheme/run-test
AM_SCM_LOG_FLAGS =
EXTRA_DIST += $(SCHEME_TESTS) tests/scheme/common.scm
## the one-process reference of data-parallel training (a module the distributed
## tests load) and its own tests
SCHEME_TESTS += tests/scheme/dist-reference-test.scm
EXTRA_DIST += tests/scheme/dist-reference.scm

## ---- examples written in Scheme (tests/scheme/run-examples.sh runs them all) ---------
EXTRA_DIST += examples/two-layer.scm examples/collectives.scm
EXTRA_DIST += examples/toy-regression.scm
EXTRA_DIST += examples/global-vs-micro.scm
## the balancing study: its measures and invariants, and a shortened --quick run
EXTRA_DIST += examples/balancing-study.scm
SCHEME_TESTS += tests/scheme/study.scm
TESTS += tests/scheme/balancing-study.sh
EXTRA_DIST += tests/scheme/balancing-study.sh

## ---- with-ranks under mpirun -np 2 and -np 4 (exit 77 without MPI) -------------
## (a .sh test: run by SH_LOG_COMPILER from scheme/program.mk)
TESTS += tests/scheme/dist-mpi.sh
EXTRA_DIST += tests/scheme/dist-mpi.sh
## the global-vs-micro example: the same report on 4 threads and mpirun -np 4
TESTS += tests/scheme/global-vs-micro.sh
EXTRA_DIST += tests/scheme/global-vs-micro.sh
## pipeline-step! on 2 and 4 stages: threads and mpirun give one process's gradients
TESTS += tests/scheme/pipeline-mpi.sh
EXTRA_DIST += tests/scheme/pipeline-mpi.sh tests/scheme/pipeline-ranks.scm
## quantile balancing over dp = 2: 2 threads and mpirun -np 2 give the β of one process
TESTS += tests/scheme/qb-dp.sh
EXTRA_DIST += tests/scheme/qb-dp.sh tests/scheme/qb-dp-ranks.scm

## ---- benchmark (by hand: make bench-pipeline) ------------------------------------
EXTRA_DIST += tests/bench/bench-pipeline.scm
bench-pipeline: all
	$(top_builddir)/pre-inst-env $(GUILE) --no-auto-compile $(srcdir)/tests/bench/bench-pipeline.scm
.PHONY: bench-pipeline
