/* names.h — the one way an enum gets its names: NAME_TABLE defines the
 * table (its size checked against the enum's _COUNT at compile time),
 * moe_<prefix>_name (unknown values: "?") and moe_<prefix>_parse (false when
 * unknown; *OUT untouched). Not installed. */
#ifndef MOELAB_NAMES_H
#define MOELAB_NAMES_H

#include <assert.h>
#include <stdbool.h>
#include <string.h>

#define NAME_TABLE(type, prefix, count, ...)                                              \
    static const char *const prefix##_names[] = {__VA_ARGS__};                            \
    static_assert(sizeof prefix##_names / sizeof *prefix##_names == count, #prefix);      \
    const char *moe_##prefix##_name(type v)                                               \
    {                                                                                     \
        return (unsigned)v < (unsigned)count ? prefix##_names[v] : "?";                   \
    }                                                                                     \
    bool moe_##prefix##_parse(const char *name, type *out)                                \
    {                                                                                     \
        for (unsigned i = 0; name && i < (unsigned)count; i++)                            \
            if (strcmp(name, prefix##_names[i]) == 0) {                                   \
                *out = (type)i;                                                           \
                return true;                                                              \
            }                                                                             \
        return false;                                                                     \
    }

#endif
