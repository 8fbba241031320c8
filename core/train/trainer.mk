## core/train/trainer.mk — the trainer: (moelab trainer) on top of the model,
## optimizer, data and metrics-file primitives, its few primitives of its own,
## the `moelab train` command's module (moelab program), the example config,
## the tests and the training benchmark. Included from Makefile.am after
## scheme/local.mk, scheme/program.mk and core/train/data.mk (it appends to
## their lists).

## ---- Guile bindings and modules ------------------------------------------------
libguile_moelab_la_SOURCES += scheme/bindings/trainer-func.c
moelab_snarf_x += scheme/bindings/trainer-func.x
moelab_sub_scm += scheme/moelab/trainer.scm scheme/moelab/parallel.scm
scheme/moelab/parallel.go: scheme/moelab/tensor.go scheme/moelab/nn.go scheme/moelab/train.go \
	scheme/moelab/dist.go scheme/moelab/router.go scheme/moelab/autograd.go scheme/moelab/ops.go
scheme/moelab/trainer.go: scheme/moelab/tensor.go scheme/moelab/nn.go scheme/moelab/train.go \
	scheme/moelab/data.go scheme/moelab/router.go scheme/moelab/autograd.go scheme/moelab/ops.go \
	scheme/moelab/dist.go scheme/moelab/parallel.go scheme/moelab/pipeline.go
scheme/moelab.go: scheme/moelab/trainer.go

# (moelab program): `moelab train CONFIG.scm`, loaded by (moelab repl) on demand.
dist_guilesub_DATA += scheme/moelab/program.scm
nodist_guilesubgo_DATA += scheme/moelab/program.go
scheme/moelab/program.go: scheme/moelab.go scheme/moelab/trainer.go scheme/moelab/repl.go

## ---- tests -------------------------------------------------------------------------
SCHEME_TESTS += tests/scheme/trainer.scm tests/scheme/dist-train.scm
TESTS += tests/scheme/train-program.sh tests/scheme/dist-train-mpi.sh
EXTRA_DIST += tests/scheme/train-program.sh examples/train-small.scm \
	tests/scheme/dist-train-cases.scm tests/scheme/dist-train-rank.scm tests/scheme/dist-train-mpi.sh

## ---- benchmark (by hand: make bench-train) -------------------------------------------
EXTRA_DIST += tests/bench/bench-train.scm tests/bench/train_torch.py
bench-train: all
	$(top_builddir)/pre-inst-env $(GUILE) --no-auto-compile $(srcdir)/tests/bench/bench-train.scm \
	  $(srcdir)/tests/bench/train_torch.py
EXTRA_DIST += tests/bench/bench-train-dist.scm
bench-train-dist: all
	$(top_builddir)/pre-inst-env $(GUILE) --no-auto-compile $(srcdir)/tests/bench/bench-train-dist.scm
.PHONY: bench-train bench-train-dist
