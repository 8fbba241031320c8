;;; manual-examples.scm — runs every @example of the manual's tutorial
;;; (doc/tutorial.texi), in order, in one module that uses (moelab), and
;;; checks what the text says they give:
;;;
;;;   @result{} DATUM   the value of the form just before: equal, where a
;;;                     number written with N decimals matches to half a unit
;;;                     of its last decimal; an integer written without a
;;;                     point must be that exact integer
;;;   @print{} TEXT     what that form printed (lines in order)
;;;   @error{} TEXT     the form raises, and its message contains TEXT
;;;
;;; A result, print or error line may continue on lines that begin with a
;;; space.  So the tutorial cannot drift from what moelab does.

(include "common.scm")
(use-modules (ice-9 rdelim) (ice-9 match) (srfi srfi-26))

(define here (dirname (current-filename)))
(define texi-file (string-append here "/../../doc/tutorial.texi"))

(define (texi->text s)
  "S with the Texinfo escapes of an @example undone."
  (let loop ((s s)
             (pairs '(("@{" . "{") ("@}" . "}") ("@dots{}" . "...")
                      ("@@" . "@"))))
    (match pairs
      (() s)
      (((from . to) . more)
       (loop (let split ((s s) (out '()))
               (let ((i (string-contains s from)))
                 (if i
                     (split (substring s (+ i (string-length from)))
                            (cons* to (substring s 0 i) out))
                     (string-concatenate-reverse (cons s out)))))
             more)))))

;; Each example: a list of items (kind line text), kind one of code result
;; print error, in order.
(define (read-examples file)
  (call-with-input-file file
    (lambda (port)
      (let loop ((line-no 1) (in? #f) (items '()) (examples '()))
        (let ((line (read-line port)))
          (cond
           ((eof-object? line) (reverse examples))
           ((string-prefix? "@example" line)
            (loop (+ line-no 1) #t '() examples))
           ((string-prefix? "@end example" line)
            (loop (+ line-no 1) #f '() (cons (reverse items) examples)))
           ((not in?) (loop (+ line-no 1) #f items examples))
           (else
            (let* ((trimmed (string-trim line))
                   (marker (find (lambda (m) (string-prefix? (cdr m) trimmed))
                                 '((result . "@result{}") (print . "@print{}")
                                   (error . "@error{}")))))
              (loop (+ line-no 1) #t
                    (cond
                     (marker
                      (cons (list (car marker) line-no
                                  (string-trim (substring trimmed (string-length (cdr marker)))))
                            items))
                     ;; a continuation of the marked line above
                     ((and (pair? items) (not (eq? (caar items) 'code))
                           (string-prefix? " " line) (not (string-null? trimmed)))
                      (match items
                        (((kind n text) . rest)
                         (cons (list kind n (string-append text " " trimmed)) rest))))
                     (else (cons (list 'code line-no (texi->text line)) items)))
                    examples)))))))))

(define sandbox
  (let ((m (make-fresh-user-module)))
    (module-use! m (resolve-interface '(moelab)))
    m))

(define (read-forms text)
  (call-with-input-string text
    (lambda (port)
      (let loop ((forms '()))
        (let ((form (read port)))
          (if (eof-object? form) (reverse forms) (loop (cons form forms))))))))

(define (run form) (eval form sandbox))

;;; ---- comparing values -------------------------------------------------------

(define (number-tokens text)
  (filter-map (lambda (token) (and (string->number token) token))
              (string-tokenize text (char-set-complement (string->char-set " \t\n()[]'`")))))

(define (matches? actual expected tokens)
  "Does ACTUAL equal the datum EXPECTED, whose numbers were written as
TOKENS (in order)?  Returns the remaining tokens, or #f."
  (cond
   ((number? expected)
    (and (pair? tokens) (number? actual)
         (let* ((token (car tokens))
                (point (string-index token #\.)))
           (and (if (exact? expected)
                    (and (exact? actual) (= actual expected))
                    (and (inexact? actual)
                         (let ((decimals (if (and point (not (string-index token #\e)))
                                             (- (string-length token) point 1)
                                             #f)))
                           (if decimals
                               (<= (abs (- actual expected))
                                   (+ (* 0.5 (expt 10.0 (- decimals))) 1e-12))
                               (<= (abs (- actual expected))
                                   (* 1e-6 (abs expected)))))))
                (cdr tokens)))))
   ((pair? expected)
    (and (pair? actual)
         (let ((rest (matches? (car actual) (car expected) tokens)))
           (and rest (matches? (cdr actual) (cdr expected) rest)))))
   ((vector? expected)
    (and (vector? actual)
         (matches? (vector->list actual) (vector->list expected) tokens)))
   (else (and (equal? actual expected) tokens))))

(define (normalize text)
  (string-join (string-tokenize text) " "))

(define (error-text key args)
  (normalize
   (match args
     ((who (? string? message) fargs . _)
      (string-append (if who (format #f "~a: " who) "")
                     (apply simple-format #f message (if (list? fargs) fargs '()))))
     (_ (format #f "~a ~s" key args)))))

;;; ---- running the examples -----------------------------------------------------

(define (check-form form kind line expected)
  (define name (format #f "tutorial.texi:~a: ~a" line
                       (let ((s (format #f "~s" form)))
                         (if (> (string-length s) 60) (string-append (substring s 0 57) "...") s))))
  (match kind
    ('result
     (let ((value (run form)))
       (test-assert name
         (let ((ok (matches? value (call-with-input-string expected read)
                             (number-tokens expected))))
           (unless ok
             (format #t "  expected: ~a~%  actual:   ~s~%" expected value))
           (and ok #t)))))
    ('print
     (let ((printed (with-output-to-string (lambda () (run form)))))
       (test-equal name (normalize expected) (normalize printed))))
    ('error
     (test-assert name
       (catch #t
         (lambda () (run form) (format #t "  expected an error: ~a~%" expected) #f)
         (lambda (key . args)
           (let ((text (error-text key args)))
             (or (and (string-contains text (normalize expected)) #t)
                 (begin (format #t "  expected: ~a~%  raised:   ~a~%" expected text)
                        #f)))))))))

(define (run-example items)
  "Evaluate the code of one example, checking each marked form."
  (let loop ((items items) (code '()) (pending '()))
    (define (flush-all)
      (for-each run (read-forms (string-join (reverse code) "\n"))))
    (match items
      (()
       (flush-all))
      ((('code _ text) . more)
       (loop more (cons text code) pending))
      (((kind line expected) . more)
       ;; all forms but the last run as they are; the last is checked.
       ;; Several marks after one form (e.g. two @print{} lines) join.
       (let* ((same (take-while (lambda (item) (eq? (car item) kind)) more))
              (expected (string-join (cons expected (map caddr same)) " "))
              (forms (read-forms (string-join (reverse code) "\n"))))
         (if (null? forms)
             (test-assert (format #f "tutorial.texi:~a: a form before the mark" line) #f)
             (begin
               (for-each run (drop-right forms 1))
               (check-form (last forms) kind line expected)))
         (loop (drop more (length same)) '() '()))))))

(test-begin "manual-examples")

(let ((examples (read-examples texi-file)))
  (test-assert "the tutorial has examples" (> (length examples) 10))
  (test-assert "the tutorial shows results"
    (> (count (lambda (items) (any (lambda (item) (eq? (car item) 'result)) items))
              examples)
       10))
  (for-each (lambda (items)
              (catch #t
                (lambda () (run-example items))
                (lambda (key . args)
                  (test-assert (format #f "tutorial.texi:~a: runs without error (~a)"
                                       (cadar items) (error-text key args))
                    #f))))
            examples))

(test-end "manual-examples")
(exit-with-test-status)
