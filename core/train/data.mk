## core/train/data.mk — tokenizers, token files, text sources and datasets
## (the data side of training). Included from Makefile.am after
## libmoelab_la_SOURCES is defined. Headers install under
## $(includedir)/moelab/train and are included as "train/dataset.h".
libmoelab_la_SOURCES += \
	core/train/source.c core/train/source.h \
	core/train/tokfile.c core/train/tokfile.h \
	core/train/tokenizer.c core/train/tokenizer.h \
	core/train/spm.cc core/train/spm.h \
	core/train/dataset.c core/train/dataset.h
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
