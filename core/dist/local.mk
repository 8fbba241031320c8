## core/dist/local.mk — collectives, process groups, mesh: sources and tests.
## Headers install under $(includedir)/moelab/dist and are included as "dist/comm.h".
libmoelab_la_SOURCES += \
	core/dist/comm.c core/dist/comm_impl.h core/dist/comm_threads.c core/dist/mesh.c \
	core/dist/group.c core/dist/comm_grad.c core/dist/comm_async.c \
	core/dist/grad_sync.c \
	kernels/cpu/collective.c kernels/cpu/collective.h
moelabdistdir = $(includedir)/moelab/dist
moelabdist_HEADERS = core/dist/comm.h core/dist/mesh.h core/dist/grad_sync.h core/dist/reduce_op.h

## MPI backend: only when configure found Open MPI.
EXTRA_DIST += core/dist/comm_mpi.c core/dist/comm_nccl.c
if HAVE_MPI
libmoelab_la_SOURCES += core/dist/comm_mpi.c
libmoelab_la_LIBADD += $(MPI_LIBS)
AM_CPPFLAGS += $(MPI_CFLAGS)
endif

## NCCL backend: with CUDA (libnccl is opened at run time, so a CUDA machine
## without NCCL still builds and fails with a clear message when asked).
if HAVE_CUDA
libmoelab_la_SOURCES += core/dist/comm_nccl.c
libmoelab_la_LIBADD += -ldl
AM_CPPFLAGS += $(CUDA_CFLAGS)
endif

## ---- tests -----------------------------------------------------------------
DIST_TESTS = tests/dist/check_comm tests/dist/check_mesh tests/dist/check_balance tests/dist/check_grad_sync
check_PROGRAMS += $(DIST_TESTS)
TESTS += $(DIST_TESTS)
DIST_TEST_SOURCES = tests/dist/cases.c tests/dist/cases.h tests/dist/disttest.h tests/unit/testutil.h
tests_dist_check_comm_SOURCES = tests/dist/check_comm.c $(DIST_TEST_SOURCES)
tests_dist_check_mesh_SOURCES = tests/dist/check_mesh.c $(DIST_TEST_SOURCES)
## Bucketed gradient all-reduce from hooks (grad_sync.h) on 2 and 4 thread ranks.
GRAD_SYNC_TEST_SOURCES = tests/dist/grad_sync_case.c tests/dist/grad_sync_case.h
tests_dist_check_grad_sync_SOURCES = tests/dist/check_grad_sync.c $(GRAD_SYNC_TEST_SOURCES) $(DIST_TEST_SOURCES)
## Distributed load balancing (router losses, metrics, expert bias vs one process).
BALANCE_TEST_SOURCES = tests/dist/balance_cases.c tests/dist/balance_cases.h $(DIST_TEST_SOURCES)
tests_dist_check_balance_SOURCES = tests/dist/check_balance.c $(BALANCE_TEST_SOURCES)

## CUDA tensors through NCCL and through host staging (skips without a GPU).
EXTRA_DIST += tests/dist/check_nccl.c
if HAVE_CUDA
check_PROGRAMS += tests/dist/check_nccl
tests_dist_check_nccl_SOURCES = tests/dist/check_nccl.c $(DIST_TEST_SOURCES)
TESTS += tests/dist/check_nccl
endif

## Under mpirun: two programs (collectives, load balancing), run by a script
## with -np 2 and -np 4.
EXTRA_DIST += tests/dist/run-mpi.sh tests/dist/mpi-timeout.sh tests/mpi-env.sh
if HAVE_MPI
check_PROGRAMS += tests/dist/mpi_comm tests/dist/mpi_balance tests/dist/mpi_timeout
tests_dist_mpi_comm_SOURCES = tests/dist/mpi_comm.c $(GRAD_SYNC_TEST_SOURCES) $(DIST_TEST_SOURCES)
tests_dist_mpi_balance_SOURCES = tests/dist/mpi_balance.c $(BALANCE_TEST_SOURCES)
tests_dist_mpi_timeout_SOURCES = tests/dist/mpi_timeout.c
TESTS += tests/dist/run-mpi.sh tests/dist/mpi-timeout.sh
endif

CLEANFILES += tests/dist/*.vg.log

## ---- benchmark: all-reduce and all-to-all bandwidth vs memcpy ---------------
noinst_PROGRAMS += tests/bench/bench-comm
tests_bench_bench_comm_SOURCES = tests/bench/bench-comm.c
tests_bench_bench_comm_LDADD = libmoelab.la -lm
bench-comm: tests/bench/bench-comm
	./tests/bench/bench-comm
	@if test -n "$(MPIRUN)" && test "$(have_mpi)" = yes; then \
	  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
	  $(MPIRUN) --oversubscribe -np 2 ./tests/bench/bench-comm --mpi; fi
.PHONY: bench-comm

## ---- benchmark: gradient all-reduce hidden behind backward (grad sync) ------
noinst_PROGRAMS += tests/bench/bench-grad-sync
tests_bench_bench_grad_sync_SOURCES = tests/bench/bench-grad-sync.c
tests_bench_bench_grad_sync_LDADD = libmoelab.la -lm
bench-grad-sync: tests/bench/bench-grad-sync
	./tests/bench/bench-grad-sync
	@if test -n "$(MPIRUN)" && test "$(have_mpi)" = yes; then \
	  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 \
	  $(MPIRUN) --oversubscribe -np 2 ./tests/bench/bench-grad-sync --mpi; fi
.PHONY: bench-grad-sync
