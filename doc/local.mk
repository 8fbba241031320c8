## doc/local.mk — the Texinfo manual (make info, make html, make pdf).
## Each chapter is a file of its own, included from doc/moelab.texi.
info_TEXINFOS = doc/moelab.texi
doc_moelab_TEXINFOS = \
	doc/overview.texi doc/install.texi doc/autograd.texi doc/autograd-versions.texi \
	doc/autograd-threads.texi \
	doc/routers.texi \
	doc/layers.texi doc/collectives.texi doc/models.texi doc/optim.texi \
	doc/data.texi doc/training.texi doc/notebooks.texi doc/program.texi
# distcheck builds the HTML manual instead of DVI (no TeX needed).
AM_DISTCHECK_DVI_TARGET = html

# The screenshot in the Notebooks chapter: next to the sources for makeinfo,
# copied next to the HTML pages (makeinfo links it, does not copy it).
EXTRA_DIST += doc/notebooks-screenshot.png
html-local: doc/moelab.html/notebooks-screenshot.png
doc/moelab.html/notebooks-screenshot.png: $(srcdir)/doc/notebooks-screenshot.png doc/moelab.html
	$(AM_V_GEN)cp $(srcdir)/doc/notebooks-screenshot.png $@
