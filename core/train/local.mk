## core/train/local.mk — optimizers, clipping, learning-rate schedules and
## metrics files (JSONL): sources and tests. Headers install under
## $(includedir)/moelab/train and are included as "train/optim.h"; log.h
## includes jansson.h (JANSSON_CFLAGS is in AM_CFLAGS).
libmoelab_la_SOURCES += \
	core/train/optim.c core/train/optim_internal.h core/train/adamw.c core/train/sgd.c \
	core/train/clip.c core/train/schedule.c core/train/log.c
libmoelab_la_LIBADD += kernels/cpu/liboptim.la $(JANSSON_LIBS)
## The update loops are built with -fno-math-errno: the sqrt of AdamW's
## second moment (never negative) then needs no errno branch and the loop
## vectorises. Nothing in moelab reads errno after a math call.
noinst_LTLIBRARIES = kernels/cpu/liboptim.la
kernels_cpu_liboptim_la_SOURCES = kernels/cpu/optim.c kernels/cpu/optim.h
kernels_cpu_liboptim_la_CFLAGS = $(AM_CFLAGS) -fno-math-errno
moelabtraindir = $(includedir)/moelab/train
moelabtrain_HEADERS = core/train/optim.h core/train/schedule.h core/train/log.h

## ---- tests ------------------------------------------------------------------
TRAIN_TESTS = tests/unit/check_optim tests/unit/check_metrics_log
check_PROGRAMS += $(TRAIN_TESTS)
TESTS += $(TRAIN_TESTS)
tests_unit_check_optim_SOURCES = tests/unit/check_optim.c tests/unit/testutil.h \
	tests/reference/refs.c tests/reference/refs.h
tests_unit_check_optim_CPPFLAGS = $(AM_CPPFLAGS) \
	-DMOE_OPTIM_REFS_FILE='"$(abs_srcdir)/tests/reference/optim_refs.txt"'
tests_unit_check_metrics_log_SOURCES = tests/unit/check_metrics_log.c tests/unit/testutil.h
tests_unit_check_metrics_log_LDADD = $(LDADD) $(JANSSON_LIBS)
EXTRA_DIST += tests/reference/optim_refs.txt tests/reference/gen_optim_refs.py

## ---- benchmark: optimizer steps and clipping next to memcpy ---------------------------
noinst_PROGRAMS += tests/bench/bench-optim
tests_bench_bench_optim_SOURCES = tests/bench/bench-optim.c
tests_bench_bench_optim_LDADD = libmoelab.la -lm
bench-optim: tests/bench/bench-optim
	./tests/bench/bench-optim
.PHONY: bench-optim
