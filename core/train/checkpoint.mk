## core/train/checkpoint.mk — safetensors files (atomic writes, SHA-256
## checksums through libcrypto), a model's tensors in them, and their tests.
libmoelab_la_SOURCES += core/train/safetensors.c core/train/atomic.c core/train/model_file.c
libmoelab_la_LIBADD += $(LIBCRYPTO_LIBS)
AM_CFLAGS += $(LIBCRYPTO_CFLAGS)
moelabtrain_HEADERS += core/train/safetensors.h core/train/model_file.h

CHECKPOINT_TESTS = tests/unit/check_safetensors
check_PROGRAMS += $(CHECKPOINT_TESTS)
TESTS += $(CHECKPOINT_TESTS)
VALGRIND_TESTS += $(CHECKPOINT_TESTS)
tests_unit_check_safetensors_SOURCES = tests/unit/check_safetensors.c tests/unit/testutil.h
tests_unit_check_safetensors_CPPFLAGS = $(AM_CPPFLAGS) \
	-DMOE_BAD_FILES_DIR='"$(abs_srcdir)/tests/data/safetensors"'

EXTRA_DIST += tests/python/safetensors_np.py
TESTS += tests/scheme/safetensors-interop.sh
EXTRA_DIST += tests/scheme/safetensors-interop.sh tests/scheme/interop-run.scm \
	tests/python/interop.py tests/data/safetensors
TESTS += tests/scheme/resume.sh
EXTRA_DIST += tests/scheme/resume.sh tests/scheme/resume-run.scm
TESTS += tests/scheme/checkpoint.scm
EXTRA_DIST += tests/scheme/checkpoint.scm
TESTS += tests/scheme/dist-checkpoint.scm
EXTRA_DIST += tests/scheme/dist-checkpoint.scm
