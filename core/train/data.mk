## core/train/data.mk — tokenizers, token files, text sources and datasets
## (the data side of training): the C sources, their Guile bindings and
## (moelab data), and the tests. Included from Makefile.am after
## scheme/local.mk (it appends to that fragment's lists). Headers install under
## $(includedir)/moelab/train and are included as "train/dataset.h".
libmoelab_la_SOURCES += \
	core/train/source.c core/train/source.h \
	core/train/tokfile.c core/train/tokfile.h \
	core/train/tokenizer.c core/train/tokenizer.h \
	core/train/spm.cc core/train/spm.h \
	core/train/dataset.c core/train/dataset.h \
	kernels/cpu/tokens.c kernels/cpu/tokens.h
libmoelab_la_LIBADD += $(SENTENCEPIECE_LIBS)
## spm.cc is the library's one C++ file (SentencePiece is a C++ library).
AM_CXXFLAGS = $(WARN_CXXFLAGS) $(SANITIZE_CFLAGS) $(SENTENCEPIECE_CFLAGS)
moelabdatadir = $(includedir)/moelab/train
moelabdata_HEADERS = core/train/dataset.h core/train/tokenizer.h core/train/tokfile.h core/train/source.h

## ---- tests ------------------------------------------------------------------
DATA_TESTS = tests/unit/check_tokfile tests/unit/check_tokenizer tests/unit/check_dataset
check_PROGRAMS += $(DATA_TESTS)
TESTS += $(DATA_TESTS)
DATA_TEST_CPPFLAGS = $(AM_CPPFLAGS) -DMOE_TEST_DATA='"$(abs_top_srcdir)/tests/data"'
tests_unit_check_tokfile_SOURCES = tests/unit/check_tokfile.c tests/unit/testutil.h tests/unit/tmpdir.h
tests_unit_check_tokfile_CPPFLAGS = $(DATA_TEST_CPPFLAGS)
tests_unit_check_tokenizer_SOURCES = tests/unit/check_tokenizer.c tests/unit/testutil.h tests/unit/tmpdir.h
tests_unit_check_tokenizer_CPPFLAGS = $(DATA_TEST_CPPFLAGS)
tests_unit_check_dataset_SOURCES = tests/unit/check_dataset.c tests/unit/testutil.h tests/unit/tmpdir.h
tests_unit_check_dataset_CPPFLAGS = $(DATA_TEST_CPPFLAGS)
VALGRIND_TESTS += $(DATA_TESTS)
EXTRA_DIST += scripts/make-corpus

## ---- Guile bindings and the (moelab data) module ----------------------------
libguile_moelab_la_SOURCES += scheme/bindings/tokenizer-type.c scheme/bindings/data-func.c \
	scheme/bindings/data-func.h scheme/bindings/dataset-type.c scheme/bindings/dataset-func.c
moelab_snarf_x += scheme/bindings/tokenizer-type.x scheme/bindings/data-func.x \
	scheme/bindings/dataset-type.x scheme/bindings/dataset-func.x
moelab_sub_scm += scheme/moelab/data.scm
scheme/moelab/data.go: scheme/moelab/tensor.go
scheme/moelab.go: scheme/moelab/data.go
SCHEME_TESTS += tests/scheme/data.scm

## the tiny corpora the tests read
EXTRA_DIST += tests/data/spm-train.txt \
	tests/data/corpus/alpha/train tests/data/corpus/alpha/val \
	tests/data/corpus/beta/train tests/data/corpus/beta/val \
	tests/data/empty/train tests/data/empty/val \
	tests/data/tree/.hidden tests/data/tree/x/1.txt tests/data/tree/x/2.txt \
	tests/data/tree/y.txt tests/data/tree/z.md
