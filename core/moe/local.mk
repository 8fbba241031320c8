## core/moe/local.mk — routers, aux losses, metrics: sources and tests.
## Headers install under $(includedir)/moelab/moe and are included as "moe/router.h".
libmoelab_la_SOURCES += \
	core/moe/router.c core/moe/router_forward.c core/moe/router_state.c core/moe/config.c \
	core/moe/capacity.c core/moe/aux_loss.c core/moe/tracker.c core/moe/metrics.c core/moe/moe_internal.h \
	core/moe/quantile.c core/moe/replay.c \
	kernels/cpu/router.c kernels/cpu/router.h kernels/cpu/balance.c kernels/cpu/balance.h \
	kernels/cpu/sinkhorn.c kernels/cpu/sinkhorn.h kernels/cpu/quantile.c kernels/cpu/quantile.h \
	kernels/cpu/capacity.c kernels/cpu/capacity.h
moelabmoedir = $(includedir)/moelab/moe
moelabmoe_HEADERS = core/moe/router.h core/moe/aux_loss.h core/moe/metrics.h core/moe/route_modes.h

## ---- tests ------------------------------------------------------------------
MOE_ROUTER_TESTS = tests/unit/check_router tests/unit/check_aux_loss tests/unit/check_router_refs \
	tests/unit/check_router_conv_refs
check_PROGRAMS += $(MOE_ROUTER_TESTS)
TESTS += $(MOE_ROUTER_TESTS)
tests_unit_check_router_SOURCES = tests/unit/check_router.c tests/unit/testutil.h
tests_unit_check_aux_loss_SOURCES = tests/unit/check_aux_loss.c tests/unit/testutil.h
tests_unit_check_router_refs_SOURCES = tests/unit/check_router_refs.c tests/unit/testutil.h \
	tests/unit/tmpdir.h tests/reference/refs.c tests/reference/refs.h
tests_unit_check_router_refs_CPPFLAGS = $(AM_CPPFLAGS) -DMOE_REFS_FILE='"$(abs_srcdir)/tests/reference/router_refs.txt"'
tests_unit_check_router_conv_refs_SOURCES = $(tests_unit_check_router_refs_SOURCES)
tests_unit_check_router_conv_refs_CPPFLAGS = $(AM_CPPFLAGS) \
	-DMOE_REFS_FILE='"$(abs_srcdir)/tests/reference/router_conv_refs.txt"' \
	-DMOE_REFS_RTOL_F64=1e-10 -DMOE_REFS_RTOL_F32=1e-5 -DMOE_REFS_FLOOR_F32=1 \
	-DMOE_REFS_MIN_CASES=58
EXTRA_DIST += tests/reference/router_refs.txt tests/reference/router_conv_refs.txt \
	tests/reference/gen_router_refs.py

## ---- benchmark: router forward+backward next to the gate matmul ------------------
noinst_PROGRAMS += tests/bench/bench-router
tests_bench_bench_router_SOURCES = tests/bench/bench-router.c
tests_bench_bench_router_LDADD = libmoelab.la $(BLAS_LIBS) -lm
bench-router: tests/bench/bench-router
	./tests/bench/bench-router
.PHONY: bench-router
