/* softmax.c — not written yet. */
