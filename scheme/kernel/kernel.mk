## scheme/kernel/kernel.mk — moelab-kernel, the Jupyter kernel (C, embedding
## Guile with (moelab)), its kernelspec, the (moelab notebook) and
## (moelab kernel) modules, and their tests. Included from the top-level
## Makefile.am after scheme/program.mk.

moelab_SOURCES += scheme/own-dirs.h

## (moelab notebook): rich display, re-exported by (moelab); (moelab kernel):
## the Scheme half of the kernel (not re-exported).
moelab_sub_scm += scheme/moelab/notebook.scm
scheme/moelab/notebook.go: scheme/moelab/tensor.go scheme/moelab/router.go scheme/moelab/plot.go
scheme/moelab.go: scheme/moelab/notebook.go
dist_guilesub_DATA += scheme/moelab/kernel.scm
nodist_guilesubgo_DATA += scheme/moelab/kernel.go
scheme/moelab/kernel.go: scheme/moelab.go scheme/moelab/repl.go scheme/moelab/notebook.go
SCHEME_TESTS += tests/scheme/notebook.scm

kernelspecdir = $(datadir)/jupyter/kernels/moelab
EXTRA_DIST += scheme/kernel/kernel.json.in scheme/kernel/logo-32x32.png \
	scheme/kernel/logo-64x64.png tests/kernel/protocol.py tests/kernel/kernel-test.sh

if HAVE_KERNEL
bin_PROGRAMS += moelab-kernel
moelab_kernel_SOURCES = scheme/kernel/kernel.c scheme/kernel/kernel.h \
	scheme/kernel/wire.c scheme/kernel/wire.h scheme/kernel/install.c scheme/own-dirs.h
moelab_kernel_CPPFLAGS = $(AM_CPPFLAGS) -I$(srcdir)/scheme -I$(srcdir)/scheme/bindings \
	$(GUILE_CFLAGS) $(JANSSON_CFLAGS) $(ZMQ_CFLAGS) $(LIBCRYPTO_CFLAGS) \
	-DMOELAB_SCHEME_DIR='"$(guilemoduledir)"' \
	-DMOELAB_CCACHE_DIR='"$(guileobjectdir)"' \
	-DMOELAB_KERNELSPEC_DIR='"$(kernelspecdir)"'
moelab_kernel_LDADD = libguile-moelab.la libmoelab.la $(GUILE_LIBS) $(JANSSON_LIBS) \
	$(ZMQ_LIBS) $(LIBCRYPTO_LIBS) -lpthread

# The kernelspec: kernel.json names the installed program.
kernelspec_DATA = scheme/kernel/kernel.json scheme/kernel/logo-32x32.png \
	scheme/kernel/logo-64x64.png
scheme/kernel/kernel.json: $(srcdir)/scheme/kernel/kernel.json.in Makefile
	$(AM_V_GEN)$(MKDIR_P) $(@D) && \
	sed -e 's|@bindir[@]|$(bindir)|g' $(srcdir)/scheme/kernel/kernel.json.in > $@.tmp && \
	mv $@.tmp $@
CLEANFILES += scheme/kernel/kernel.json

# The wire format and its signatures (a Check suite, under valgrind too).
check_PROGRAMS += tests/unit/check_wire
TESTS += tests/unit/check_wire
VALGRIND_TESTS += tests/unit/check_wire
tests_unit_check_wire_SOURCES = tests/unit/check_wire.c scheme/kernel/wire.c scheme/kernel/wire.h
tests_unit_check_wire_CPPFLAGS = $(AM_CPPFLAGS) -I$(srcdir)/scheme/kernel $(JANSSON_CFLAGS) \
	$(ZMQ_CFLAGS) $(LIBCRYPTO_CFLAGS) $(CHECK_CFLAGS)
tests_unit_check_wire_LDADD = $(JANSSON_LIBS) $(ZMQ_LIBS) $(LIBCRYPTO_LIBS) $(CHECK_LIBS)

# The protocol, through jupyter_client (skipped without it).
TESTS += tests/kernel/kernel-test.sh
endif

## ---- notebooks: make notebooks renders them to doc/notebooks/ ----------------------
NOTEBOOKS = notebooks/tutorial.ipynb notebooks/routing-zoo.ipynb notebooks/training.ipynb \
	notebooks/demons-in-the-detail.ipynb
EXTRA_DIST += $(NOTEBOOKS) notebooks/moelab.html.j2 scripts/render-notebooks \
	tests/notebooks/notebook-test.sh tests/notebooks/check-figures.py
.PHONY: notebooks
notebooks: all
	cd $(srcdir) && srcdir=$$(pwd) && cd - >/dev/null && \
	for nb in $(NOTEBOOKS); do \
	  $$srcdir/scripts/render-notebooks doc/notebooks $$srcdir/$$nb || exit 1; done
if HAVE_KERNEL
TESTS += tests/notebooks/notebook-test.sh
endif

# What notebook-test.sh leaves for inspection goes with `make clean' (and
# distcheck's distclean).
mostlyclean-local:
	-rm -rf tests/notebooks/artifacts
