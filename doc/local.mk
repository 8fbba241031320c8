## doc/local.mk — the Texinfo manual (make info, make html, make pdf).
## Each chapter is a file of its own, included from doc/moelab.texi.
info_TEXINFOS = doc/moelab.texi
doc_moelab_TEXINFOS = \
	doc/overview.texi doc/install.texi doc/autograd.texi doc/autograd-versions.texi \
	doc/routers.texi \
	doc/layers.texi doc/collectives.texi doc/models.texi doc/optim.texi \
	doc/data.texi doc/training.texi doc/checkpoints.texi doc/program.texi
# distcheck builds the HTML manual instead of DVI (no TeX needed).
AM_DISTCHECK_DVI_TARGET = html
