/* data-func.h — what the tokenizer and dataset bindings share (not installed). */
#ifndef MOELAB_GUILE_DATA_FUNC_H
#define MOELAB_GUILE_DATA_FUNC_H

#include <libguile.h>

#include "train/dataset.h"
#include "train/tokenizer.h"

/* The moe_tokenizer of a <tokenizer> (borrowed); wrong-type-arg otherwise. */
moe_tokenizer *moelab_to_tokenizer(SCM obj, int pos, const char *subr);
/* A new <tokenizer> taking over the caller's reference. */
SCM moelab_wrap_tokenizer(moe_tokenizer *t);
/* A string as UTF-8, freed when the current dynwind context ends. */
char *moelab_dynwind_string(SCM obj, int pos, const char *subr);
/* A non-empty list of path strings, freed with the dynwind context. */
const char **moelab_dynwind_paths(SCM list, int *n, int pos, const char *subr);

/* The moe_dataset of a <dataset> (borrowed); wrong-type-arg otherwise. */
moe_dataset *moelab_to_dataset(SCM obj, int pos, const char *subr);
/* A new <dataset> owning DS. */
SCM moelab_wrap_dataset(moe_dataset *ds);

void moelab_init_tokenizer_type(void);
void moelab_init_dataset_type(void);
void moelab_init_data_func(void);
void moelab_init_dataset_func(void);

#endif
