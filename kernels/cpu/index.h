/* index.h */
#ifndef MOELAB_CPU_INDEX_H
#define MOELAB_CPU_INDEX_H
#endif
