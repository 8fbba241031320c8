/* kernel.h — the parts of moelab-kernel shared between its files. */
#ifndef MOELAB_KERNEL_H
#define MOELAB_KERNEL_H

#include <stdbool.h>

#include <jansson.h>
#include <libguile.h>

/* Scheme data as JSON (new reference): an alist is an object ('() the empty
 * one), a vector an array, a string a string, a number a number (NaN and
 * infinities null), a boolean a boolean, 'null null; anything else its
 * written form. */
json_t *kernel_to_json(SCM v);

/* Install the kernelspec "moelab" (kernel.json naming this program, and the
 * logos of the installed kernelspec when there is one): under PREFIX
 * (PREFIX/share/jupyter/kernels/moelab), in the user's Jupyter data
 * directory (USER), or else where `make install` puts it. Prints where;
 * returns 0, or -1 after printing why not. */
int kernel_install(bool user, const char *prefix);

#endif
