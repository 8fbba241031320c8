/* elementwise.c — not written yet. */
