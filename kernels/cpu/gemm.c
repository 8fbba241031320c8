/* gemm.c — not written yet. */
