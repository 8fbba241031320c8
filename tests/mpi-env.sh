# mpi-env.sh — sourced by the test scripts that start mpirun (POSIX sh).
# Root is allowed (containers, CI); shared-memory single-copy needs ptrace
# rights that containers rarely grant; one OpenMP thread per process, since
# the ranks are oversubscribed on CI's few cores. Sets MPIRUN (when unset) and
# GUARD, a command prefix that turns a hang into a failure after 300 s.
MPIRUN=${MPIRUN:-mpirun}
OMPI_ALLOW_RUN_AS_ROOT=1
OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM OMPI_MCA_btl_vader_single_copy_mechanism OMP_NUM_THREADS
if command -v timeout >/dev/null 2>&1; then GUARD="timeout 300"; else GUARD=; fi
