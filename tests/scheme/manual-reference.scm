;;; manual-reference.scm — the manual's reference cannot drift from the
;;; code: each doc/ref-<module>.texi is what scripts/doc-reference.scm makes
;;; from the docstrings today, every procedure that a (moelab …) module
;;; exports has an @deffn somewhere in doc/*.texi, and the keywords that a
;;; hand-written @deffn line shows are keywords its procedure takes.

(include "common.scm")
(include "../../scripts/doc-reference.scm")

(test-begin "manual-reference")

(test-assert "the generator finds the hand-written entries"
  ;; with-ranks is described in the collectives chapter, tensor in none
  (and (memq 'with-ranks (hand-written-names))
       (not (memq 'tensor (hand-written-names)))))

(let ((stale (stale-reference-files)))
  (for-each (lambda (entry)
              (test-assert (string-append "doc/" (cdr entry)
                                          " is what the docstrings give")
                (not (member (cdr entry) stale))))
            reference-files)
  (unless (null? stale)
    (format #t "  regenerate: ./pre-inst-env guile -e main -s scripts/doc-reference.scm~%")))

(let ((missing (undocumented-procedures)))
  (for-each (lambda (module)
              (test-equal (format #f "every procedure of (moelab ~a) has an @deffn" module)
                '() (or (assq-ref missing module) '())))
            (moelab-modules))
  (unless (null? missing)
    (format #t "  describe them with @deffn in their chapter, or add the module to
  reference-files in scripts/doc-reference.scm, regenerate, and include its
  doc/ref-<module>.texi from the chapter~%")))

(test-equal "hand-written @deffn lines name only keywords their procedures take"
  '() (wrong-keywords))

(test-end "manual-reference")
(exit-with-test-status)
