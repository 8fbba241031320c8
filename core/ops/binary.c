/* binary.c — not written yet. */
