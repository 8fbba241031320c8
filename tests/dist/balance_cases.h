/* balance_cases.h — distributed load-balancing invariants shared by the
 * threads driver (check_balance) and the MPI driver (mpi_balance). */
#ifndef MOELAB_DIST_BALANCE_CASES_H
#define MOELAB_DIST_BALANCE_CASES_H

#include "cases.h"

/* NULL-terminated. Each case runs on every rank of the world it is given
 * (world 4: mesh dp=2 cp=2; world 2: dp=2; other even worlds >= 4:
 * dp=N/2 cp=2; odd: dp=N). */
extern const dist_case balance_cases[];

#endif
