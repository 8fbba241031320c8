## scheme/program.mk — the moelab program, embedding example, REPL tests.
## (placeholder)
