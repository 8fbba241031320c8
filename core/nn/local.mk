## core/nn/local.mk — the transformer: RoPE, attention (fused kernel and the
## plain oracle), the dense MLP, decoder blocks and the model with its
## parameters by name. Included from Makefile.am after libmoelab_la_SOURCES.
## Headers install under $(includedir)/moelab/nn and are included as "nn/model.h".
libmoelab_la_SOURCES += \
	core/nn/rope.c core/nn/rope.h \
	core/nn/attention.c core/nn/attention.h \
	core/nn/mlp.c core/nn/mlp.h \
	core/nn/block.c core/nn/block.h \
	core/nn/model.c core/nn/model.h \
	kernels/cpu/rope.c kernels/cpu/rope.h \
	kernels/cpu/attention.c kernels/cpu/attention.h \
	kernels/cpu/attention_avx2.c kernels/cpu/attention_avx2.h
moelabnndir = $(includedir)/moelab/nn
moelabnn_HEADERS = core/nn/rope.h core/nn/attention.h core/nn/mlp.h core/nn/model.h

## ---- tests ---------------------------------------------------------------------
NN_TESTS = tests/unit/check_attention tests/unit/check_model tests/dist/check_model_parallel
check_PROGRAMS += $(NN_TESTS)
TESTS += $(NN_TESTS)
tests_unit_check_attention_SOURCES = tests/unit/check_attention.c tests/unit/testutil.h
tests_unit_check_model_SOURCES = tests/unit/check_model.c tests/unit/testutil.h \
	tests/reference/refs.c tests/reference/refs.h
tests_unit_check_model_CPPFLAGS = $(AM_CPPFLAGS) -DMOE_MODEL_REFS='"$(abs_srcdir)/tests/reference/model_refs.txt"'
EXTRA_DIST += tests/reference/model_refs.txt tests/reference/gen_model_refs.py
## The model as one rank's part (pipeline stages, expert and data groups) vs one rank.
tests_dist_check_model_parallel_SOURCES = tests/dist/check_model_parallel.c tests/dist/disttest.h tests/unit/tmpdir.h \
	tests/unit/testutil.h

## ---- benchmark: fused vs plain attention, the model's forward + backward ----------
noinst_PROGRAMS += tests/bench/bench-attention
tests_bench_bench_attention_SOURCES = tests/bench/bench-attention.c
tests_bench_bench_attention_LDADD = libmoelab.la $(BLAS_LIBS) -lm
bench-attention: tests/bench/bench-attention
	./tests/bench/bench-attention
.PHONY: bench-attention
