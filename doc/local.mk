## doc/local.mk — the Texinfo manual (make info, make html, make pdf).
## Each chapter is a file of its own, included from doc/moelab.texi.
##
## The reference entries doc/ref-<module>.texi are made from the docstrings
## of the (moelab …) modules by scripts/doc-reference.scm, and committed:
##   ./pre-inst-env guile -e main -s scripts/doc-reference.scm
## Generating them at build time would make `make info' need the built
## library (and distcheck's read-only source tree a second copy of the
## manual); committing them keeps the manual a plain source.  They cannot
## drift: tests/scheme/manual-reference.scm fails when a ref file is not
## what the docstrings give, and when an exported procedure of any
## (moelab …) module has no @deffn anywhere in doc/*.texi.  A procedure
## that a chapter describes by hand gets no generated entry.
## tests/scheme/manual-examples.scm runs every @example of the tutorial and
## compares the @result{} lines.
info_TEXINFOS = doc/moelab.texi
doc_moelab_TEXINFOS = \
	doc/overview.texi doc/install.texi doc/tutorial.texi \
	doc/autograd.texi doc/autograd-versions.texi doc/autograd-threads.texi doc/autograd-testing.texi \
	doc/routers.texi \
	doc/layers.texi doc/collectives.texi doc/pipeline.texi doc/models.texi doc/optim.texi \
	doc/data.texi doc/training.texi doc/distributed.texi doc/checkpoints.texi doc/notebooks.texi doc/study.texi doc/study-results.texi \
	doc/program.texi \
	doc/ref-tensor.texi doc/ref-ops.texi doc/ref-autograd.texi \
	doc/ref-dist.texi doc/ref-layer.texi doc/ref-router.texi
# distcheck builds the HTML manual instead of DVI (no TeX needed).
AM_DISTCHECK_DVI_TARGET = html

# The screenshot in the Notebooks chapter: next to the sources for makeinfo,
# copied next to the HTML pages (makeinfo links it, does not copy it).
EXTRA_DIST += doc/notebooks-screenshot.png
html-local: doc/moelab.html/notebooks-screenshot.png
doc/moelab.html/notebooks-screenshot.png: $(srcdir)/doc/notebooks-screenshot.png doc/moelab.html
	$(AM_V_GEN)cp $(srcdir)/doc/notebooks-screenshot.png $@

# The balancing study's figures (written by make study, committed), copied
# next to the HTML pages as the screenshot is.
STUDY_FIGURES = doc/study-loss.png doc/study-max-vio.png doc/study-mi.png \
	doc/study-heatmap-0.png doc/study-heatmap-1.png
EXTRA_DIST += $(STUDY_FIGURES)
html-local: study-figures-html
study-figures-html: doc/moelab.html
	$(AM_V_GEN)for f in $(STUDY_FIGURES); do cp $(srcdir)/$$f doc/moelab.html/ || exit 1; done
.PHONY: study-figures-html

## make study: the balancing study at full size (examples/balancing-study.scm),
## one process per seed, then its tables and figures in the manual
## (doc/study-results.texi, $(STUDY_FIGURES)). STUDY_FLAGS passes options on
## (--steps N); runs and logs go to $(STUDY_OUT).
STUDY_SEEDS = 0 1 2
STUDY_OUT = runs/study
STUDY_FLAGS =
study: all
	@mkdir -p $(STUDY_OUT)
	for s in $(STUDY_SEEDS); do \
	  nice $(top_builddir)/pre-inst-env $(top_builddir)/moelab $(srcdir)/examples/balancing-study.scm \
	    --first-seed $$s --seeds 1 --out $(STUDY_OUT) $(STUDY_FLAGS) >$(STUDY_OUT)/seed$$s.log 2>&1 & \
	done; wait
	$(top_builddir)/pre-inst-env $(top_builddir)/moelab $(srcdir)/examples/balancing-study.scm \
	  --from-runs --out $(STUDY_OUT) --doc $(srcdir)/doc
.PHONY: study

MANUAL_TESTS = tests/scheme/manual-examples.scm tests/scheme/manual-reference.scm
TESTS += $(MANUAL_TESTS)
EXTRA_DIST += $(MANUAL_TESTS) scripts/doc-reference.scm
