;;; (moelab kernel) — the Scheme half of moelab-kernel, the Jupyter kernel:
;;; running a cell with its output streamed, completion, inspection and
;;; whether a cell is complete. Each procedure returns the content of the
;;; reply as Scheme data that the C side turns into JSON: an alist is an
;;; object, a vector an array, a string a string.
;;;
;;; The C side (scheme/kernel/) defines the primitives
;;;   (%kernel-publish MSG-TYPE CONTENT)   a message on the iopub socket
;;; before it loads this module.

(define-module (moelab kernel)
  #:use-module (moelab)
  #:use-module (moelab notebook)
  #:use-module ((moelab repl) #:select (moelab-user-module moelab-error-printer))
  #:use-module (ice-9 match)
  #:use-module ((ice-9 documentation) #:select (object-documentation))
  #:use-module ((system vm program) #:select (program? program-arguments-alist))
  #:use-module ((srfi srfi-11) #:select (let-values))
  #:use-module (ice-9 format)
  #:use-module (srfi srfi-1)
  #:export (kernel-init! kernel-execute kernel-complete kernel-inspect kernel-is-complete))

(define (publish type content)
  ((module-ref (resolve-module '(guile-user)) '%kernel-publish) type content))

;;; ---- output streamed while a cell runs ------------------------------------------

(define (stream-port name)
  "An output port whose text goes out at once as a stream message NAME."
  (let ((port (make-soft-port
               (vector (lambda (c) (publish "stream" `((name . ,name) (text . ,(string c)))))
                       (lambda (s) (unless (string-null? s)
                                     (publish "stream" `((name . ,name) (text . ,s)))))
                       (lambda () #t) #f (lambda () #t))
               "w")))
    port))

;;; display-html, display-svg and display-figure publish display_data.
(define %display-handler (@@ (moelab notebook) %display-handler))

(define (display-data bundle)
  (publish "display_data" `((data . ,bundle) (metadata . ()) (transient . ()))))

;;; ---- interrupts ------------------------------------------------------------------------

;; SIGINT (sent by Jupyter, or raised by the control channel's
;; interrupt_request) stops the running cell at the next safe point; between
;; cells it is ignored.
(define cell-running? #f)

(define (kernel-init!)
  "Install the SIGINT handler (called by the kernel once it has loaded this
module: installing it while the module loads would start Guile's signal
thread inside the load)."
  (sigaction SIGINT
    (lambda (sig)
      (when cell-running?
        (set! cell-running? #f)
        (throw 'interrupt "the cell was interrupted")))))

;;; ---- execute ---------------------------------------------------------------------------

(define (error-text key args)
  (call-with-output-string
    (lambda (port)
      (if (eq? key 'moelab-error)
          (moelab-error-printer port key args
                                (lambda () (format port "~s" args)))
          (match args
            (((? (lambda (x) (or (not x) (string? x) (symbol? x))) who)
              (? string? message) (? list? fargs) . _)
             (format port "~@[~a: ~]~a" who
                     (catch #t (lambda () (apply format #f message fargs))
                       (lambda _ message))))
            (((? string? message) . _) (display message port))
            (_ (format port "~s" args)))))))

(define (short-backtrace stack)
  "Up to 6 frames of STACK, innermost first, one line each."
  (if (not stack)
      '()
      (let loop ((i 0) (acc '()))
        (if (or (>= i (stack-length stack)) (= (length acc) 6))
            (reverse acc)
            (let* ((frame (stack-ref stack i))
                   (proc (frame-procedure-name frame))
                   (src (frame-source frame)))
              (loop (1+ i)
                    (if proc
                        (cons (format #f "  in ~a~@[ (~a)~]" proc
                                      (match src
                                        ((_ file line . _)
                                         (format #f "~a:~a" (or file "cell") (1+ line)))
                                        (_ #f)))
                              acc)
                        acc)))))))

(define (read-forms code)
  (let ((port (open-input-string code)))
    (let loop ((acc '()))
      (let ((form (read port)))
        (if (eof-object? form) (reverse acc) (loop (cons form acc)))))))

(define (kernel-execute code count silent?)
  "Run the cell CODE in the (moelab user) module with its output streamed
(stdout and stderr as stream messages, as written). Publishes
execute_result (the value of the last form, with its MIME bundle) or
error; returns the content of execute_reply."
  (set! cell-running? #f)               ; a signal that came between cells
  (let* ((stack #f)
         (out (stream-port "stdout"))
         (err (stream-port "stderr"))
         (module (moelab-user-module))
         (result
          (catch #t
            (lambda ()
              (set! cell-running? #t)
              (let ((value
                     (parameterize ((%display-handler display-data))
                      (with-output-to-port out
                       (lambda ()
                         (with-error-to-port err
                           (lambda ()
                             (let loop ((forms (read-forms code)) (value *unspecified*))
                               (if (null? forms)
                                   value
                                   (loop (cdr forms) (eval (car forms) module)))))))))))
                (set! cell-running? #f)
                (cons 'ok value)))
            (lambda (key . args)
              (set! cell-running? #f)
              (list 'error key args))
            (lambda (key . args)
              (set! stack (make-stack #t 1)))))
         (result-count (lambda () (if silent? 0 count))))
    (match result
      (('ok . value)
       (unless (or silent? (unspecified? value))
         (publish "execute_result"
                  `((execution_count . ,count)
                    (data . ,(catch #t (lambda () (mime-bundle value))
                               (lambda (key . args)
                                 `(("text/plain" . ,(error-text key args))))))
                    (metadata . ()))))
       `((status . "ok") (execution_count . ,count)
         (user_expressions . ()) (payload . #())))
      (('error key args)
       (let* ((ename (symbol->string key))
              (evalue (error-text key args))
              (traceback (list->vector (cons evalue (short-backtrace stack)))))
         (publish "error" `((ename . ,ename) (evalue . ,evalue) (traceback . ,traceback)))
         `((status . "error") (execution_count . ,count)
           (ename . ,ename) (evalue . ,evalue) (traceback . ,traceback)))))))

;;; ---- complete, inspect, is_complete ---------------------------------------------------

(define (delimiter? c)
  (or (char-whitespace? c) (memv c '(#\( #\) #\[ #\] #\' #\` #\, #\" #\;))))

(define (word-bounds code pos)
  "Start and end of the symbol around position POS of CODE."
  (let* ((pos (max 0 (min pos (string-length code))))
         (start (let loop ((i pos))
                  (if (and (> i 0) (not (delimiter? (string-ref code (1- i)))))
                      (loop (1- i)) i)))
         (end (let loop ((i pos))
                (if (and (< i (string-length code)) (not (delimiter? (string-ref code i))))
                    (loop (1+ i)) i))))
    (values start end)))

(define (visible-names module)
  "Every name bound in MODULE or in the modules it uses."
  (let ((names (make-hash-table)))
    (let walk ((m module) (depth 0))
      (module-for-each (lambda (name var) (hashq-set! names name #t)) m)
      (when (< depth 3)
        (for-each (lambda (u) (walk u (1+ depth))) (module-uses m))))
    (hash-map->list (lambda (k v) (symbol->string k)) names)))

(define (kernel-complete code cursor)
  "The content of complete_reply for CODE with the cursor at CURSOR: the
names visible in the (moelab user) module that start with the symbol before
the cursor, sorted."
  (let-values (((start end) (word-bounds code cursor)))
    (let* ((cursor (max start (min cursor (string-length code))))
           (prefix (substring code start cursor))
           (matches (sort (filter (lambda (n) (string-prefix? prefix n))
                                  (delete-duplicates (visible-names (moelab-user-module))))
                          string<?)))
      `((status . "ok") (matches . ,(list->vector matches))
        (cursor_start . ,start) (cursor_end . ,cursor) (metadata . ())))))

(define (arguments->string args)
  "The argument list ARGS (program-arguments-alist) as (required [#:optional …] [#:key …] [. rest])."
  (let ((names (lambda (key) (or (assq-ref args key) '()))))
    (format #f "(~{~a~^ ~}~@[ #:optional ~{~a~^ ~}~]~@[ #:key ~{~a~^ ~}~]~@[ . ~a~])"
            (names 'required)
            (and (pair? (names 'optional)) (names 'optional))
            (and (pair? (names 'keyword)) (map (lambda (k) (keyword->symbol (car k))) (names 'keyword)))
            (assq-ref args 'rest))))

(define (kernel-inspect code cursor)
  "The content of inspect_reply for the name around CURSOR in CODE: its
docstring and arguments, as ,describe shows them."
  (let-values (((start end) (word-bounds code cursor)))
    (let* ((name (substring code start end))
           (var (and (not (string-null? name))
                     (module-variable (moelab-user-module) (string->symbol name))))
           (value (and var (variable-bound? var) (variable-ref var))))
      (if (not var)
          `((status . "ok") (found . #f) (data . ()) (metadata . ()))
          (let* ((doc (or (object-documentation value)
                          (and (macro? value)
                               (procedure-documentation (macro-transformer value)))))
                 (args (and (program? value) (program-arguments-alist value)))
                 (text (string-append
                        name
                        (if (procedure? value)
                            (format #f " is a procedure~@[ ~a~]" (and args (arguments->string args)))
                            (format #f " = ~a" (call-with-output-string
                                                 (lambda (p) (write value p)))))
                        "\n\n" (or doc "(no documentation)"))))
            `((status . "ok") (found . #t) (data . (("text/plain" . ,text)))
              (metadata . ())))))))

(define (kernel-is-complete code)
  "The content of is_complete_reply for CODE: complete when every form
reads, incomplete when the text ends inside a form or a string (unbalanced
parentheses), invalid on any other read error."
  (catch 'read-error
    (lambda ()
      (read-forms code)
      '((status . "complete")))
    (lambda (key who message args . rest)
      (if (string-contains message "end of input")
          '((status . "incomplete") (indent . "  "))
          '((status . "invalid"))))))
