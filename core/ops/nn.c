/* nn.c — not written yet. */
