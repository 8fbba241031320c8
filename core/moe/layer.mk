## core/moe/layer.mk — token dispatch, grouped experts, the MoE layer.
## Included from Makefile.am after libmoelab_la_SOURCES is defined.
libmoelab_la_SOURCES += \
	core/moe/dispatch.c core/moe/dispatch.h \
	core/moe/experts.c core/moe/experts.h \
	core/moe/expert_parallel.c \
	core/moe/layer.c core/moe/layer.h \
	kernels/cpu/grouped_gemm.c kernels/cpu/grouped_gemm.h kernels/cpu/permute.c kernels/cpu/permute.h
## Installed beside router.h (moelabmoedir, core/moe/local.mk): included as "moe/layer.h".
moelabmoe_HEADERS += core/moe/dispatch.h core/moe/experts.h core/moe/layer.h

## ---- tests ---------------------------------------------------------------------
MOE_LAYER_TESTS = tests/unit/check_dispatch tests/unit/check_experts tests/unit/check_moe_layer
check_PROGRAMS += $(MOE_LAYER_TESTS)
TESTS += $(MOE_LAYER_TESTS)
tests_unit_check_dispatch_SOURCES = tests/unit/check_dispatch.c tests/unit/testutil.h
tests_unit_check_experts_SOURCES = tests/unit/check_experts.c tests/unit/testutil.h
tests_unit_check_moe_layer_SOURCES = tests/unit/check_moe_layer.c tests/unit/testutil.h

## Expert parallelism on the MPI backend: check_moe_layer run under mpirun
## -np 2 and -np 4 by the collectives' runner (tests/dist/run-mpi.sh), through
## a two-line script made here.
if HAVE_MPI
TESTS += tests/unit/check_moe_layer_mpi.sh
CLEANFILES += tests/unit/check_moe_layer_mpi.sh
tests/unit/check_moe_layer_mpi.sh: Makefile
	@$(MKDIR_P) tests/unit
	$(AM_V_GEN){ echo '#!/bin/sh'; \
	  echo 'exec $(SHELL) $(abs_top_srcdir)/tests/dist/run-mpi.sh ./tests/unit/check_moe_layer'; \
	} >$@ && chmod +x $@
check_SCRIPTS = tests/unit/check_moe_layer_mpi.sh
endif


## ---- benchmark: the layer vs the PyTorch reference, expert GEMMs vs sgemm ---------
EXTRA_DIST += tests/bench/moe_reference.py
noinst_PROGRAMS += tests/bench/bench-moe
tests_bench_bench_moe_SOURCES = tests/bench/bench-moe.c
tests_bench_bench_moe_CPPFLAGS = $(AM_CPPFLAGS) -DMOE_SRCDIR='"$(abs_top_srcdir)"'
tests_bench_bench_moe_LDADD = libmoelab.la $(BLAS_LIBS) -lm
bench-moe: tests/bench/bench-moe
	./tests/bench/bench-moe
.PHONY: bench-moe
