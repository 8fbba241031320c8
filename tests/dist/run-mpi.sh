#!/bin/sh
# run-mpi.sh [PROGRAM…] — multi-rank test programs on the MPI backend, each
# under mpirun -np 2 and -np 4 (oversubscribed: CI machines have few cores).
# Default: tests/dist/mpi_comm (collectives) and tests/dist/mpi_balance
# (distributed load balancing). Exit 77 (skipped) when mpirun is missing.
. "$(dirname "$0")/../mpi-env.sh"
command -v "$MPIRUN" >/dev/null 2>&1 || { echo "run-mpi.sh: $MPIRUN not found: skipped"; exit 77; }
progs=${*:-./tests/dist/mpi_comm ./tests/dist/mpi_balance}
for prog in $progs; do
  test -x "$prog" || { echo "run-mpi.sh: $prog not built"; exit 99; }
done
fail=0
for prog in $progs; do
  for np in 2 4; do
    echo "== mpirun -np $np $prog"
    $GUARD "$MPIRUN" --oversubscribe -np $np "$prog" || { echo "run-mpi.sh: $prog -np $np failed"; fail=1; }
  done
done
exit $fail
