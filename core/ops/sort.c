/* sort.c — not written yet. */
