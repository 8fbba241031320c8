;;; common.scm — helpers shared by the SRFI-64 suites (included by each of
;;; them; not a test itself).
;;;
;;; The runner prints one PASS/FAIL line per test (the automake log keeps
;;; them), the details of each failure, and SRFI-64's summary; the suite
;;; exits non-zero when any test failed. Expected numbers are written
;;; literally (worked out by hand, or with numpy/torch where a comment says).

(use-modules (srfi srfi-1)
             (srfi srfi-4)
             (srfi srfi-64)
             (ice-9 format)
             (ice-9 rdelim)
             (moelab))

(define %failures 0)

(define (moelab-test-runner)
  (let ((runner (test-runner-null)))
    (test-runner-on-test-end!
     runner
     (lambda (r)
       (let ((kind (test-result-kind r)))
         (format #t "~a: ~a~%"
                 (case kind
                   ((pass) "PASS") ((fail) "FAIL") ((xpass) "XPASS")
                   ((xfail) "XFAIL") ((skip) "SKIP") (else kind))
                 (test-runner-test-name r))
         (when (memq kind '(fail xpass))
           (format #t "  at ~a:~a~%"
                   (test-result-ref r 'source-file "?")
                   (test-result-ref r 'source-line "?"))
           (format #t "  form:     ~s~%" (test-result-ref r 'source-form))
           (when (test-result-ref r 'expected-value #f)
             (format #t "  expected: ~s~%" (test-result-ref r 'expected-value)))
           (format #t "  actual:   ~s~%" (test-result-ref r 'actual-value))
           (when (test-result-ref r 'actual-error #f)
             (format #t "  error:    ~s~%" (test-result-ref r 'actual-error)))))))
    (test-runner-on-final!
     runner
     (lambda (r)
       (format #t "~%# of expected passes      ~a~%" (test-runner-pass-count r))
       (format #t "# of unexpected failures  ~a~%" (test-runner-fail-count r))
       (unless (zero? (test-runner-xfail-count r))
         (format #t "# of expected failures    ~a~%" (test-runner-xfail-count r)))
       (unless (zero? (test-runner-xpass-count r))
         (format #t "# of unexpected successes ~a~%" (test-runner-xpass-count r)))
       (unless (zero? (test-runner-skip-count r))
         (format #t "# of skipped tests        ~a~%" (test-runner-skip-count r)))
       (set! %failures (+ (test-runner-fail-count r) (test-runner-xpass-count r)))))
    runner))

(test-runner-factory moelab-test-runner)

(define (exit-with-test-status)
  "Call after test-end: exit 0 when every test passed, 1 otherwise."
  (exit (if (zero? %failures) 0 1)))

;;; ---- comparing numbers -------------------------------------------------------

(define (close? a b tol)
  "A and B (numbers, booleans, or nested lists of them) equal within TOL
(absolute or relative)."
  (cond ((and (number? a) (number? b))
         (or (= a b)
             (and (nan? a) (nan? b))
             (<= (magnitude (- a b)) (* tol (max 1 (magnitude a) (magnitude b))))))
        ((and (pair? a) (pair? b))
         (and (= (length a) (length b)) (every (lambda (x y) (close? x y tol)) a b)))
        (else (equal? a b))))

(define (nan? x) (and (real? x) (inexact? x) (not (= x x))))

(define* (values-close? t expected #:optional (tol 1e-5))
  "True when tensor T's values (tensor->list) are EXPECTED within TOL; else the
actual values, so that the failure report shows them."
  (let ((actual (tensor->list t)))
    (if (close? actual expected tol) #t actual)))

(define-syntax-rule (test-values name expected expr)
  (test-equal name #t (values-close? expr expected)))

(define-syntax-rule (test-values/tol name tol expected expr)
  (test-equal name #t (values-close? expr expected tol)))

;;; ---- errors --------------------------------------------------------------------

(define (raises key text thunk)
  "#t when THUNK raises KEY with TEXT (a string) in its procedure name or
message; else what happened instead (for the failure report)."
  (catch #t
    (lambda () (list 'returned (thunk)))
    (lambda (k . args)
      (let ((printed (with-output-to-string
                       (lambda ()
                         (for-each (lambda (a) (display a) (display " ")) args)))))
        (if (and (eq? k key) (or (not text) (string-contains printed text)))
            #t
            (list 'raised k args))))))

(define-syntax-rule (test-moelab-error name text expr)
  (test-equal name #t (raises 'moelab-error text (lambda () expr))))

(define-syntax-rule (test-wrong-type name expr)
  (test-equal name #t (raises 'wrong-type-arg #f (lambda () expr))))

(define (moelab-error-status thunk)
  "The status symbol of the moelab-error THUNK raises, or #f."
  (catch 'moelab-error
    (lambda () (thunk) #f)
    (lambda (key subr message args rest) (and (pair? rest) (car rest)))))

;;; ---- reference vectors (tests/reference/*_refs.txt) ---------------------------
;;; Written by the generators in tests/reference: "case NAME", "set KEY VALUE",
;;; "tensor NAME DTYPE NDIM DIMS… VALUES…".

(define (parse-ref-tensor fields)
  ;; ("tensor" name dtype ndim dims… values…) → (name . tensor)
  (let* ((name (list-ref fields 1))
         (dtype (string->symbol (list-ref fields 2)))
         (nd (string->number (list-ref fields 3)))
         (dims (map string->number (list-head (list-tail fields 4) nd)))
         (values (map string->number (list-tail fields (+ 4 nd)))))
    (cons name (if (zero? nd)
                   (tensor (car values) #:dtype dtype)
                   (tensor values #:dtype dtype #:shape dims)))))

(define ref-format-line "# moelab-refs 1")

(define (check-ref-format port path)
  ;; a reference file starts with the format line its readers understand
  (let ((first (read-line port)))
    (unless (equal? first ref-format-line)
      (error (format #f "~a: format line is ~s, this reader expects ~s (regenerate the file)"
                     path first ref-format-line)))))

(define (read-ref-cases path)
  ;; → list of (name sets tensors), sets and tensors alists keyed by strings
  (define (done cur cases) (if cur (cons (map (lambda (x) (if (list? x) (reverse x) x)) cur) cases) cases))
  (call-with-input-file path
    (lambda (port)
      (check-ref-format port path)
      (let loop ((cases '()) (cur #f))
        (let ((line (read-line port)))
          (cond ((eof-object? line) (reverse (done cur cases)))
                ((string-prefix? "case " line)
                 (loop (done cur cases) (list (substring line 5) '() '())))
                ((and cur (string-prefix? "set " line))
                 (let* ((rest (substring line 4)) (sp (string-index rest #\space)))
                   (loop cases (list (car cur)
                                     (cons (cons (substring rest 0 sp) (substring rest (+ sp 1)))
                                           (cadr cur))
                                     (caddr cur)))))
                ((and cur (string-prefix? "tensor " line))
                 (loop cases (list (car cur) (cadr cur)
                                   (cons (parse-ref-tensor (string-split line #\space)) (caddr cur)))))
                (else (loop cases cur))))))))
