## scheme/plot.mk — the (moelab plot) module (figures through gnuplot) and
## its tests. Included from the top-level Makefile.am.

moelab_sub_scm += scheme/moelab/plot.scm
scheme/moelab/plot.go: scheme/moelab/tensor.go scheme/moelab/train.go
scheme/moelab.go: scheme/moelab/plot.go
SCHEME_TESTS += tests/scheme/plot.scm
