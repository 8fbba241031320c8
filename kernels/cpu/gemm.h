/* gemm.h */
#ifndef MOELAB_CPU_GEMM_H
#define MOELAB_CPU_GEMM_H
#endif
