/* reduce.c — not written yet. */
