/* unary.c — not written yet. */
