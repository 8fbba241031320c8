/* cases.h — the collective test cases shared by the threads and MPI drivers. */
#ifndef MOELAB_DIST_CASES_H
#define MOELAB_DIST_CASES_H

#include "disttest.h"

typedef struct dist_case {
    const char *name;
    moe_rank_fn fn; /* runs on every rank of the group it is given */
} dist_case;

/* NULL-terminated; "mismatch" comes last (it poisons a threads world). */
extern const dist_case dist_cases[];

#endif
