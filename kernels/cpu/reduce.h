/* reduce.h */
#ifndef MOELAB_CPU_REDUCE_H
#define MOELAB_CPU_REDUCE_H
#endif
