;;; doc-reference.scm — the manual's reference entries, made from the
;;; docstrings of the (moelab …) modules.
;;;
;;;   ./pre-inst-env guile -e main -s scripts/doc-reference.scm
;;;       rewrites doc/ref-<module>.texi for the modules in `reference-files'
;;;   ./pre-inst-env guile -e main -s scripts/doc-reference.scm --check
;;;       changes nothing; exits 1 when a ref file differs from what its
;;;       docstrings give, when an exported procedure of a (moelab …)
;;;       module has no @deffn in doc/*.texi, or when a hand-written @deffn
;;;       names a keyword that its procedure does not take
;;;
;;; A procedure that a chapter describes by hand (an @deffn or @deffnx in a
;;; doc/*.texi that is not a ref file) gets no generated entry, so the index
;;; has one entry per procedure.  tests/scheme/manual-reference.scm runs the
;;; same checks in `make check'.

(use-modules (ice-9 ftw) (ice-9 rdelim) (ice-9 regex) (ice-9 match)
             (ice-9 documentation) (srfi srfi-1) (srfi srfi-26)
             (system vm program))

;; The manual and the docstrings are UTF-8 whatever the locale (CI may run
;; with none set, where Guile's ports would default to ASCII).
(fluid-set! %default-port-encoding "UTF-8")

(define %top-srcdir
  (dirname (dirname (canonicalize-path (current-filename)))))

;; module name -> generated file, under doc/
(define reference-files
  '((tensor . "ref-tensor.texi") (ops . "ref-ops.texi")
    (autograd . "ref-autograd.texi") (dist . "ref-dist.texi")
    (layer . "ref-layer.texi") (router . "ref-router.texi")))

(define (doc-file name) (string-append %top-srcdir "/doc/" name))

(define (ref-file? name) (string-prefix? "ref-" name))

(define (texi-files)
  (map doc-file
       (sort (scandir (string-append %top-srcdir "/doc")
                      (cut string-suffix? ".texi" <>))
             string<?)))

;;; ---- what the manual documents ------------------------------------------

(define deffn-line (make-regexp "^@deffnx? *(\\{[^}]*\\}|[^ ]+) +([^ ]+)"))

(define (deffn-names file)
  "The procedure names that FILE describes with @deffn or @deffnx."
  (call-with-input-file file
    (lambda (port)
      (let loop ((names '()))
        (let ((line (read-line port)))
          (if (eof-object? line)
              (reverse names)
              (let ((m (regexp-exec deffn-line line)))
                (loop (if m (cons (string->symbol (match:substring m 2)) names)
                          names)))))))))

(define (documented-names keep-file?)
  (append-map (lambda (file)
                (if (keep-file? (basename file)) (deffn-names file) '()))
              (texi-files)))

(define (deffn-keywords file)
  "An alist (NAME . KEYWORDS) of the keywords each @deffn or @deffnx line
of FILE writes after NAME, such as #:valid in `[#:valid #f]'."
  (call-with-input-file file
    (lambda (port)
      (let loop ((entries '()))
        (let ((line (read-line port)))
          (if (eof-object? line)
              (reverse entries)
              (let ((m (regexp-exec deffn-line line)))
                (loop
                 (if m
                     (cons (cons (string->symbol (match:substring m 2))
                                 (filter-map
                                  (lambda (word)
                                    (let ((word (string-trim-both word (char-set #\[ #\]))))
                                      (and (string-prefix? "#:" word)
                                           (string->symbol (substring word 2)))))
                                  (string-tokenize (match:suffix m))))
                           entries)
                     entries)))))))))

;;; ---- what the modules export -----------------------------------------------

(define (module-file module)
  (string-append %top-srcdir "/scheme/moelab/" (symbol->string module) ".scm"))

(define (exports-in-order module)
  "The names MODULE exports and replaces, in the order its define-module
form lists them (the order its author grouped them in)."
  (let ((form (call-with-input-file (module-file module) read)))
    (let loop ((rest (cddr form)) (names '()))
      (match rest
        (() (reverse names))
        (((or #:export #:replace) (syms ...) . more)
         (loop more (append (reverse (filter symbol? syms)) names)))
        ((_ . more) (loop more names))))))

;; Modules that only moelab itself imports: the C primitives, the Scheme
;; half of the Jupyter kernel that the moelab-kernel program calls, and the
;; parallel plan under the trainer's #:mesh.
(define internal-modules '(primitives kernel parallel))

(define (moelab-modules)
  "Every (moelab NAME) module of the source tree that users import."
  (filter-map (lambda (file)
                (let ((name (string->symbol (basename file ".scm"))))
                  (and (not (memq name internal-modules))
                       name)))
              (scandir (string-append %top-srcdir "/scheme/moelab")
                       (cut string-suffix? ".scm" <>))))

(define (exported-value module name)
  (module-ref (resolve-interface (list 'moelab module)) name))

(define (documentable? value)
  (or (procedure? value) (macro? value)))

(define (public-procedures module)
  "The procedures and macros MODULE exports, but not its %-internals."
  (let ((iface (resolve-interface (list 'moelab module))))
    (sort (filter (lambda (name)
                    (and (not (string-prefix? "%" (symbol->string name)))
                         (documentable? (module-ref iface name))))
                  (module-map (lambda (name var) name) iface))
          (lambda (a b) (string<? (symbol->string a) (symbol->string b))))))

;;; ---- one entry ---------------------------------------------------------------

(define (docstring value)
  (or (if (macro? value)
          (procedure-documentation (macro-transformer value))
          (object-documentation value))
      ""))

(define (macro-usage name doc)
  "The argument words of a macro, from its docstring's opening usage
`(NAME ARG …)'."
  (let* ((prefix (string-append "(" (symbol->string name)))
         (end (and (string-prefix? prefix doc) (string-index doc #\)))))
    (if end
        (string-tokenize (substring doc (string-length prefix) end))
        '())))

(define (argument-words name value)
  "The words of the @deffn line after NAME, and the argument names (as
lower-case strings) that the docstring writes in upper case."
  (cond
   ((macro? value)
    (let ((words (map string-downcase (macro-usage name (docstring value)))))
      (values words
              (filter (cut string-every (char-set-union char-set:lower-case
                                                        (string->char-set "-?!"))
                           <>)
                      words))))
   ((parameter? value) (values '("[value]") '("value")))
   ((program? value)
    (let* ((alist (program-arguments-alist value))
           (required (map symbol->string (assq-ref alist 'required)))
           (optional (map symbol->string (assq-ref alist 'optional)))
           (keys (map (lambda (k) (keyword->symbol (car k)))
                      (assq-ref alist 'keyword)))
           (rest (assq-ref alist 'rest)))
      (values (append required
                      (map (cut string-append "[" <> "]") optional)
                      (map (lambda (k)
                             (format #f "[#:~a ~a]" k k))
                           keys)
                      (if rest (list (format #f "~a @dots{}" rest)) '()))
              (append required optional (map symbol->string keys)
                      (if rest (list (symbol->string rest)) '())))))
   (else
    (match (procedure-minimum-arity value)
      ((req opt rest?)
       (let ((args (append (map (cut format #f "arg~a" <>) (iota req 1))
                           (map (cut format #f "[opt~a]" <>) (iota opt 1)))))
         (values (if rest? (append args '("rest @dots{}")) args) '())))
      (_ (values '() '()))))))

(define word-chars (char-set-union char-set:letter+digit (string->char-set "-?!*")))

(define (mark-arguments line args)
  "LINE with every upper-case word that names one of ARGS written @var{arg}."
  (let loop ((i 0) (out '()))
    (if (>= i (string-length line))
        (string-concatenate-reverse out)
        (let ((c (string-ref line i)))
          (if (char-set-contains? word-chars c)
              (let* ((end (or (string-index line (char-set-complement word-chars) i)
                              (string-length line)))
                     (word (substring line i end))
                     (lower (string-downcase word)))
                (loop end
                      (cons (if (and (not (string=? word lower))
                                     (string=? word (string-upcase word))
                                     (member lower args))
                                (string-append "@var{" lower "}")
                                word)
                            out)))
              (loop (+ i 1) (cons (string c) out)))))))

(define (docstring->texinfo doc args)
  "DOC as the body of an @deffn: argument names marked outside @example."
  (let loop ((lines (string-split doc #\newline)) (in-example? #f) (out '()))
    (match lines
      (() (string-join (reverse out) "\n"))
      ((line . more)
       (let ((trimmed (string-trim line)))
         (cond
          ((string-prefix? "@example" trimmed) (loop more #t (cons line out)))
          ((string-prefix? "@end example" trimmed) (loop more #f (cons line out)))
          (in-example? (loop more #t (cons line out)))
          (else (loop more #f (cons (mark-arguments line args) out)))))))))

(define (entry module name)
  (let ((value (exported-value module name)))
    (call-with-values (lambda () (argument-words name value))
      (lambda (words args)
        (let ((category (cond ((macro? value) "Scheme Syntax")
                              ((parameter? value) "Scheme Parameter")
                              (else "Scheme Procedure")))
              (doc (string-trim-both (docstring value))))
          (string-append
           "@deffn {" category "} " (string-join (cons (symbol->string name) words) " ")
           "\n"
           (if (string-null? doc) "" (string-append (docstring->texinfo doc args) "\n"))
           "@end deffn\n"))))))

;;; ---- one file -----------------------------------------------------------------

(define (reference-text module hand-written)
  "The text of MODULE's ref file: an entry for each exported procedure that
HAND-WRITTEN (a list of names) does not hold."
  (let ((names (filter (lambda (name)
                         (and (documentable? (exported-value module name))
                              (not (memq name hand-written))))
                       (exports-in-order module))))
    (string-append
     "@c Generated by scripts/doc-reference.scm from the docstrings of\n"
     "@c (moelab " (symbol->string module) "); do not edit.  Procedures that a chapter\n"
     "@c describes by hand with @deffn are left out.\n"
     (string-concatenate (map (lambda (name) (string-append "\n" (entry module name)))
                              names)))))

(define (hand-written-names)
  (documented-names (negate ref-file?)))

(define (file-text file)
  (if (file-exists? file) (call-with-input-file file read-string) ""))

(define (stale-reference-files)
  "The ref files whose text differs from what the docstrings give."
  (let ((hand (hand-written-names)))
    (filter-map (match-lambda
                  ((module . file)
                   (and (not (string=? (file-text (doc-file file))
                                       (reference-text module hand)))
                        file)))
                reference-files)))

(define (undocumented-procedures)
  "An alist (MODULE . NAMES) of the exported procedures that no @deffn in
doc/*.texi describes."
  (let ((documented (documented-names (const #t))))
    (filter-map (lambda (module)
                  (let ((missing (remove (cut memq <> documented)
                                         (public-procedures module))))
                    (and (pair? missing) (cons module missing))))
                (moelab-modules))))

(define (accepted-keywords value)
  "The keywords (as symbols) that procedure VALUE accepts, or #t when it
takes any (allow-other-keys or a rest argument it parses itself)."
  (if (program? value)
      (let ((alist (program-arguments-alist value)))
        (if (or (assq-ref alist 'allow-other-keys?) (assq-ref alist 'rest))
            #t
            (map (lambda (k) (keyword->symbol (car k)))
                 (assq-ref alist 'keyword))))
      #t))

(define (wrong-keywords)
  "An alist (NAME . KEYWORDS) of the hand-written @deffn lines that name
keywords the exported procedure NAME does not accept."
  (let ((exports (append-map (lambda (module)
                               (map (cut cons <> module) (public-procedures module)))
                             (moelab-modules))))
    (filter-map
     (match-lambda
       ((name . keywords)
        (let ((module (assq-ref exports name)))
          (and module
               (let ((accepted (accepted-keywords (exported-value module name))))
                 (and (list? accepted)
                      (let ((bad (remove (cut memq <> accepted) keywords)))
                        (and (pair? bad) (cons name bad)))))))))
     (append-map (lambda (file)
                   (if (ref-file? (basename file)) '() (deffn-keywords file)))
                 (texi-files)))))

(define (write-reference-files)
  (let ((hand (hand-written-names)))
    (for-each (match-lambda
                ((module . file)
                 (call-with-output-file (doc-file file)
                   (cut display (reference-text module hand) <>))))
              reference-files)))

(define (main args)
  (match (cdr args)
    (()
     (write-reference-files))
    (("--check")
     (let ((stale (stale-reference-files))
           (missing (undocumented-procedures)))
       (for-each (lambda (file)
                   (format (current-error-port)
                           "doc/~a is not what the docstrings give: run ~a~%"
                           file "./pre-inst-env guile -e main -s scripts/doc-reference.scm"))
                 stale)
       (for-each (match-lambda
                   ((module . names)
                    (format (current-error-port)
                            "(moelab ~a) exports procedures with no @deffn in doc/*.texi: ~a~%"
                            module names)))
                 missing)
       (for-each (match-lambda
                   ((name . keywords)
                    (format (current-error-port)
                            "the @deffn of ~a names keywords it does not take: ~a~%"
                            name keywords)))
                 (wrong-keywords))
       (exit (and (null? stale) (null? missing) (null? (wrong-keywords))))))
    (_
     (format (current-error-port) "usage: doc-reference.scm [--check]~%")
     (exit 2))))
