/* index.c — not written yet. */
