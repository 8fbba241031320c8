## scheme/local.mk — Guile bindings, Scheme modules, the moelab program.
## (placeholder: filled in by the Guile issue)
