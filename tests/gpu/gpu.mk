## GPU tests (tests/gpu/check_gpu_*.c): each op on the GPU against the CPU,
## forward and backward, with normalised errors printed per case. They are
## part of `make check` (exit 77, "skipped: no GPU", without one) and of
## `make check-gpu`, which runs only them and ends with a summary line.
## A new suite: add it to GPU_TESTS and give it a _SOURCES line.
GPU_TESTS = tests/gpu/check_gpu_ops tests/gpu/check_gpu_moe
GPU_TESTS += tests/gpu/check_gpu_matmul tests/gpu/check_gpu_nn
check_PROGRAMS += $(GPU_TESTS)
TESTS += $(GPU_TESTS)
EXTRA_DIST += tests/gpu/gpucheck.h
tests_gpu_check_gpu_ops_SOURCES = tests/gpu/check_gpu_ops.c tests/gpu/gpucheck.h tests/ops_table.c tests/ops_table.h
tests_gpu_check_gpu_matmul_SOURCES = tests/gpu/check_gpu_matmul.c tests/gpu/gpucheck.h
tests_gpu_check_gpu_nn_SOURCES = tests/gpu/check_gpu_nn.c tests/gpu/gpucheck.h
tests_gpu_check_gpu_moe_SOURCES = tests/gpu/check_gpu_moe.c tests/unit/testutil.h \
	tests/reference/refs.c tests/reference/refs.h
tests_gpu_check_gpu_moe_CPPFLAGS = $(AM_CPPFLAGS) -DMOE_REFS_FILE='"$(abs_srcdir)/tests/reference/router_refs.txt"'

check-gpu: $(GPU_TESTS)
	@pass=0; fail=0; skip=0; \
	for t in $(GPU_TESTS); do \
	  echo "== $$t"; ./$$t; rc=$$?; \
	  if test $$rc = 0; then pass=$$((pass + 1)); \
	  elif test $$rc = 77; then skip=$$((skip + 1)); \
	  else fail=$$((fail + 1)); echo "FAIL: $$t (exit $$rc)"; fi; \
	done; \
	echo "check-gpu: $$pass passed, $$fail failed, $$skip skipped"; \
	test $$fail = 0
.PHONY: check-gpu

## GPU benchmarks: `make bench-gpu` runs each (they say "skipped: no GPU"
## without one). A new benchmark: add it to BENCH_GPU with a _SOURCES line.
BENCH_GPU = tests/bench/gpu-router tests/bench/gpu-moe
BENCH_GPU += tests/bench/gpu-matmul
noinst_PROGRAMS += $(BENCH_GPU)
EXTRA_DIST += tests/bench/router_torch.py tests/bench/moe_torch_gpu.py
tests_bench_gpu_router_SOURCES = tests/bench/gpu-router.c
tests_bench_gpu_router_CPPFLAGS = $(AM_CPPFLAGS) -DMOE_SRCDIR='"$(abs_top_srcdir)"'
tests_bench_gpu_moe_SOURCES = tests/bench/gpu-moe.c
tests_bench_gpu_moe_CPPFLAGS = $(AM_CPPFLAGS) -DMOE_SRCDIR='"$(abs_top_srcdir)"'
EXTRA_DIST += tests/bench/matmul_torch.py
tests_bench_gpu_matmul_SOURCES = tests/bench/gpu-matmul.c
tests_bench_gpu_matmul_CPPFLAGS = $(AM_CPPFLAGS) $(CUDA_CFLAGS) -DMOE_SRCDIR='"$(abs_top_srcdir)"'
tests_bench_gpu_matmul_LDADD = libmoelab.la $(CUDA_LIBS) -lm
bench-gpu: $(BENCH_GPU)
	@for b in $(BENCH_GPU); do echo "== $$b"; ./$$b || exit 1; done
.PHONY: bench-gpu
