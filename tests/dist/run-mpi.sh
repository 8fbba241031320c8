#!/bin/sh
# run-mpi.sh — the multi-rank tests on the MPI backend: tests/dist/mpi_comm
# (collectives) and tests/dist/mpi_balance (distributed load balancing)
# under mpirun -np 2 and -np 4 (oversubscribed: CI machines have few cores).
# Exit 77 (skipped) when mpirun is missing.
MPIRUN=${MPIRUN:-mpirun}
command -v "$MPIRUN" >/dev/null 2>&1 || { echo "run-mpi.sh: $MPIRUN not found: skipped"; exit 77; }
progs="${MPI_COMM_TEST:-./tests/dist/mpi_comm} ${MPI_BALANCE_TEST:-./tests/dist/mpi_balance}"
for prog in $progs; do
  test -x "$prog" || { echo "run-mpi.sh: $prog not built"; exit 99; }
done
# Root is allowed in containers and CI; shared-memory single-copy needs
# ptrace rights containers rarely grant; one OpenMP thread per process.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fail=0
if command -v timeout >/dev/null 2>&1; then t="timeout 300"; else t=; fi
for prog in $progs; do
  for np in 2 4; do
    echo "== mpirun -np $np $prog"
    $t "$MPIRUN" --oversubscribe -np $np "$prog" || { echo "run-mpi.sh: $prog -np $np failed"; fail=1; }
  done
done
exit $fail
