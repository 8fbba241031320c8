;;; (moelab primitives) — the %-prefixed C primitives of libguile-moelab.
;;;
;;; Loading this module loads the extension, whose scm_init_moelab defines
;;; every primitive here and exports them all. A program that links the
;;; library and calls scm_init_moelab itself makes this module before any
;;; Scheme code asks for it, and then this file is never loaded.
;;;
;;; Not for users: (moelab) wraps these in documented procedures.

(define-module (moelab primitives)
  #:use-module (moelab config))

(eval-when (expand load eval)
  ;; First by plain name: GUILE_EXTENSIONS_PATH (the build tree, through
  ;; pre-inst-env), an extension registered by the program, or the system
  ;; library path; then where `make install` put it.
  (catch #t
    (lambda ()
      (load-extension "libguile-moelab" "scm_init_moelab"))
    (lambda first-error
      (load-extension (string-append %moelab-libdir "/libguile-moelab")
                      "scm_init_moelab"))))
