/* join.c — not written yet. */
