/* elementwise.h */
#ifndef MOELAB_CPU_ELEMENTWISE_H
#define MOELAB_CPU_ELEMENTWISE_H
#endif
