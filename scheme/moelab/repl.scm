;;; (moelab repl) — the moelab program: command line, REPL set-up,
;;; meta-commands, batch runs and the REPL server.
;;;
;;; scheme/main.c boots Guile, registers the bindings and calls
;;; (moelab-main (program-arguments) #:threads N); everything else lives here.

(define-module (moelab repl)
  #:use-module (moelab)
  #:use-module (moelab config)
  #:use-module (moelab ranks)
  #:use-module (system repl common)
  #:use-module ((system repl repl) #:select (start-repl))
  #:use-module (system repl command)
  #:use-module ((system base compile) #:select (read-and-compile))
  #:use-module ((system vm loader) #:select (load-thunk-from-memory))
  #:use-module ((system repl debug) #:select (make-debug narrow-stack->vector))
  #:use-module ((system repl server)
                #:select (make-tcp-server-socket make-unix-domain-server-socket
                          run-server stop-server-and-clients!))
  #:use-module (ice-9 match)
  #:use-module ((ice-9 rdelim) #:select (read-line))
  #:use-module (ice-9 format)
  #:use-module (srfi srfi-1)
  #:export (moelab-main
            moelab-user-module
            moelab-banner
            moelab-error-printer
            install-moelab-repl!
            describe-tensor
            print-memory-stats)
  ;; grad-check lives in (moelab autograd); it stays reachable from here
  #:re-export (grad-check))

;;;
;;; Small helpers
;;;

(define (live-tensor? x)
  (and (tensor? x) (not (tensor-freed? x))))

(define (->number x)
  "X as a Scheme number: X itself, or the single value of a tensor."
  (cond ((number? x) x)
        ((tensor? x) (tensor-item x))
        (else (error "expected a number or a tensor" x))))

(define (shape->string shape)
  (format #f "[~{~a~^ ~}]" shape))

(define (human-bytes n)
  (let loop ((x (exact->inexact n)) (units '("B" "KiB" "MiB" "GiB" "TiB")))
    (cond ((null? (cdr units)) (format #f "~,1f ~a" x (car units)))
          ((< x 1024) (if (string=? (car units) "B")
                          (format #f "~a B" n)
                          (format #f "~,1f ~a" x (car units))))
          (else (loop (/ x 1024) (cdr units))))))

;; describe-tensor shows reals and tells float dtypes as grad-check does.
(define fmt-real (@@ (moelab autograd) fmt-real))
(define float-dtype? (@@ (moelab autograd) float-dtype?))

;;;
;;; Errors: one clear line for moelab errors
;;;

(define (moelab-error-printer port key args default-printer)
  "Print a moelab-error, thrown in Guile's error shape
(throw 'moelab-error WHO MESSAGE FORMAT-ARGS REST), as one line:
@samp{moelab-error in WHO: MESSAGE}."
  (match args
    ((who (? string? message) . rest)
     (let ((text (match rest
                   (((? list? fargs) . _)
                    (catch #t
                      (lambda () (apply format #f message fargs))
                      (lambda _ message)))
                   (_ message))))
       (if who
           (format port "moelab-error in ~a: ~a" who text)
           (format port "moelab-error: ~a" text))))
    (_ (default-printer))))

;; The REPL's own ports, remembered before each evaluation so that error
;; reports go to the REPL (and not, say, into a string port the failing
;; expression had open).
(define %repl-ports (make-thread-local-fluid #f))

(define (remember-repl-ports! . _)
  (fluid-set! %repl-ports (cons (current-output-port) (current-error-port))))

(define (with-repl-ports thunk)
  (match (fluid-ref %repl-ports)
    ((out . err)
     (with-output-to-port out (lambda () (with-error-to-port err thunk))))
    (_ (thunk))))

;; The frames of an error, innermost first, without the exception machinery
;; (everything up to raise-exception) and without the frames outside the
;; start-stack TAG.  Falls back to cutting 3 frames, as Guile's REPL does.
(define (error-stack-vector stack tag)
  (let ((v (narrow-stack->vector stack raise-exception tag 0 (and tag 1))))
    (if (< 0 (vector-length v))
        v
        (narrow-stack->vector stack 3 tag 0 (and tag 1)))))

(define (make-on-error interactive?)
  "The REPL's on-error handler: moelab errors and interrupts (Ctrl-C) print
one line and the REPL carries on at the same level; other errors behave as
Guile's 'debug strategy on a terminal (a nested prompt with ,bt) and as its
'report strategy otherwise."
  (lambda (key . args)
    (cond
     ((or (memq key '(moelab-error signal)) (not interactive?))
      (with-repl-ports
       (lambda ()
         (force-output (current-output-port))
         (print-exception (current-error-port) #f key args)
         (force-output (current-error-port)))))
     (else
      ;; As Guile's 'debug strategy: cut make-stack, this handler and the
      ;; throw handler from the top, and the REPL's frames from the bottom.
      (let* ((tag (and (pair? (fluid-ref %stacks))
                       (cdr (fluid-ref %stacks))))
             (stack (error-stack-vector (make-stack #t) tag))
             (frame (and (< 0 (vector-length stack)) (vector-ref stack 0)))
             (message (call-with-output-string
                        (lambda (port) (print-exception port frame key args))))
             (debug (make-debug stack 0 message)))
        (with-repl-ports
         (lambda ()
           (format #t "~a~%" message)
           (format #t "Entering a new prompt.  ")
           (format #t "Type `,bt' for a backtrace or `,q' to continue.\n")
           (start-repl #:debug debug))))))))

(define (set-default-on-error! handler fallback)
  "Make HANDLER the REPL's default on-error strategy.  The REPL runs a
procedure strategy, but the option's validator only admits symbols, so the
default is set directly; FALLBACK is used if that ever stops working."
  (let ((spec (false-if-exception
               (assq 'on-error (@@ (system repl common) repl-default-options)))))
    (if (and (pair? spec) (pair? (cdr spec)))
        (set-car! (cdr spec) handler)
        (repl-default-option-set! 'on-error fallback))))

;;;
;;; Banner and prompt
;;;

(define* (moelab-banner #:key (threads #f) (port (current-output-port)))
  "The one-line banner: version, backends and thread count."
  (let* ((utf8? (string-ci=? (or (port-encoding port) "") "UTF-8"))
         (sep (if utf8? " \u2014 " " - "))
         (cuda-devices (and %moelab-have-cuda?
                            (false-if-exception (device-count 'cuda))))
         (backends (append '("cpu")
                           (cond ((not %moelab-have-cuda?) '())
                                 ((not cuda-devices) '("cuda"))
                                 ((> cuda-devices 1)
                                  (list (format #f "cuda (~a devices)" cuda-devices)))
                                 ((= cuda-devices 1) '("cuda"))
                                 (else '("cuda (no device)")))
                           (if %moelab-have-mpi? '("mpi") '()))))
    (string-append "moelab " %moelab-version
                   sep "backends: " (string-join backends ", ")
                   (if threads
                       (format #f "~a~a thread~:p" sep threads)
                       "")
                   sep ",help for commands")))

;; The REPL runs on top of this never-run REPL, so that Guile's own welcome
;; (printed only by a first REPL) gives way to moelab's banner.
(define %base-repl #f)

(define (base-repl)
  (or %base-repl
      (begin
        (set! %base-repl (make-repl (current-language)))
        %base-repl)))

(define (moelab-prompt repl)
  (let ((level (count (lambda (r) (not (eq? r %base-repl)))
                      (cond ((fluid-ref *repl-stack*) => cdr)
                            (else '()))))
        (name (module-name (current-module))))
    (string-append
     (if (equal? name '(moelab user))
         "moelab"
         (format #f "moelab@~a" name))
     (if (zero? level) "" (format #f " [~a]" level))
     "> ")))

;;;
;;; The user module
;;;

(define (moelab-user-module)
  "The (moelab user) module: a user module with (moelab) imported, made on
first use."
  (or (resolve-module '(moelab user) #f #f #:ensure #f)
      (define-module* '(moelab user) #:imports '(((moelab))))))

;;;
;;; Meta-commands
;;;

(define* (describe-tensor t #:optional (port (current-output-port)))
  "Print what the tensor T is: dtype, device, shape, strides, min/max/mean,
NaN count, whether it requires grad and whether it has a gradient."
  (unless (live-tensor? t)
    (error "describe-tensor: not a live tensor:" t))
  (let* ((shape (tensor-shape t))
         (dtype (tensor-dtype t))
         (numel (tensor-numel t))
         (stat (lambda (proc)
                 (if (zero? numel)
                     "n/a (empty)"
                     (catch #t
                       (lambda () (fmt-real (->number (proc t))))
                       (lambda _ "n/a")))))
         (grad (tensor-grad t)))
    (define (row label value)
      (format port "  ~14a~a~%" label value))
    (format port "tensor ~a~a on ~a~%" dtype (shape->string shape) (tensor-device t))
    (row "dtype" dtype)
    (row "device" (tensor-device t))
    (row "shape" (format #f "~a (~a element~:p)" (shape->string shape) numel))
    (row "strides" (format #f "~a~a" (shape->string (tensor-strides t))
                           (if (tensor-contiguous? t) "" " (not contiguous)")))
    (row "min" (stat tmin))
    (row "max" (stat tmax))
    (row "mean" (stat (lambda (x)
                        (tmean (if (float-dtype? dtype) x (to-dtype x 'f64))))))
    (row "NaN count"
         (if (float-dtype? dtype)
             (call-with-values (lambda () (count-nonfinite t))
               (lambda (nans infs)
                 (if (> infs 0)
                     (format #f "~a (and ~a infinite)" nans infs)
                     nans)))
             0))
    (row "requires-grad" (if (requires-grad? t) "yes" "no"))
    (row "grad" (if grad
                    (format #f "present: ~a~a" (tensor-dtype grad)
                            (shape->string (tensor-shape grad)))
                    "none"))))

(define (stat-ref info . keys)
  "The first of KEYS present in the alist INFO, or #f."
  (and (list? info)
       (any (lambda (key)
              (match (assq key info)
                ((_ (? number? n)) n)
                ((_ . (? number? n)) n)
                (_ #f)))
            keys)))

(define* (print-memory-stats #:optional (port (current-output-port)))
  "Print live tensors and bytes per device, from (memory-stats), after a
garbage collection (so that unreachable tensors are not counted, as far as
their finalizers have run)."
  (gc)
  (let ((stats (memory-stats)))
    (if (null? stats)
        (format port "no devices~%")
        (for-each
         (lambda (entry)
           (match entry
             ((device . info)
              (let ((tensors (stat-ref info 'live-tensors 'tensors))
                    (bytes (stat-ref info 'live-bytes 'bytes))
                    (peak (stat-ref info 'peak-bytes)))
                (if (and tensors bytes)
                    (format port "~6a ~6d live tensor~:p  ~10a~@[  (peak ~a)~]~%"
                            device tensors (human-bytes bytes)
                            (and peak (human-bytes peak)))
                    (format port "~6a ~s~%" device info))))
             (_ (format port "~s~%" entry))))
         stats))))

(define (eval-in-repl repl form)
  (repl-eval repl form))

(define-meta-command ((shape moelab) repl (form))
  "shape EXPR
Show the shape of the tensor EXPR evaluates to (or of each tensor in a list)."
  (let ((v (eval-in-repl repl form)))
    (define (show x)
      (if (tensor? x)
          (shape->string (tensor-shape x))
          (format #f "not a tensor: ~s" x)))
    (cond ((tensor? v) (format #t "~a~%" (show v)))
          ((list? v) (for-each (lambda (x) (format #t "~a~%" (show x))) v))
          ((vector? v) (for-each (lambda (x) (format #t "~a~%" (show x)))
                                 (vector->list v)))
          (else (format #t "~a~%" (show v))))))

(define-meta-command ((describe-tensor moelab) repl (form))
  "describe-tensor EXPR
Show dtype, device, shape, strides, min/max/mean, NaN count and grad of a tensor."
  (describe-tensor (eval-in-repl repl form)))

(define-meta-command ((routing moelab) repl (form))
  "routing EXPR
Show what a router did: EXPR gives a routing, a router or an MoE layer.

Prints routing-report: tokens per expert, their share of the K·T slots with
a bar, dead experts, MaxVio, CV, min/max and the aux losses."
  (routing-report (eval-in-repl repl form))
  (values))

(define-meta-command ((grad-check moelab) repl (form) . more)
  "grad-check EXPR
Check a gradient: EXPR gives (list F X), F a procedure of one tensor, X a tensor.

Compares backward! with central finite differences in f64 of sum(F(X) * W)
for fixed weights W, and prints the max abs/rel error and PASS or FAIL.
`,grad-check F X' (two expressions) works too."
  (let* ((v (eval-in-repl repl form))
         (fx (match more
               ((x-form) (list v (eval-in-repl repl x-form)))
               (() v)
               (_ (error "grad-check: expected EXPR or F X")))))
    (match fx
      ((f x) (grad-check f x))
      ((f . (? tensor? x)) (grad-check f x))
      (_ (error "grad-check: EXPR must give (list F X), got" fx)))
    (values)))

(define-meta-command ((plot moelab) repl (form))
  "plot EXPR
Draw the figure EXPR evaluates to (plot-lines, plot-heatmap, plot-bars,
plot-jsonl) in the terminal, with gnuplot's dumb terminal sized to $COLUMNS
and $LINES."
  (let ((fig (eval-in-repl repl form)))
    (if (figure? fig)
        (show-figure fig)
        (format #t "not a figure: ~s~%" fig))))

;; ,ranks N [MESH], ,rank R EXPR, ,all-ranks EXPR: (moelab ranks).
(define (unquoted x)
  (match x (('quote d) d) (_ x)))

(define-meta-command ((ranks moelab) repl . args)
  "ranks [N [MESH] | close]
Open a world of N thread ranks that waits for ,rank and ,all-ranks.

MESH is an alist such as ((dp . 2) (pp . 2)). Each rank evaluates in its own
module, which uses this one. `,ranks close' ends the world; `,ranks' alone
shows it."
  (match args
    (() (match (ranks-open)
          (#f (format #t "no ranks are open~%"))
          ((n . mesh) (format #t "~a rank~:p~@[, mesh ~s~]~%" n mesh))))
    (('close) (close-ranks!))
    ((n) (format #t "~a rank~:p open~%" (open-ranks! n)))
    ((n mesh) (format #t "~a rank~:p open, mesh ~s~%"
                      (open-ranks! n #:mesh (unquoted mesh)) (unquoted mesh)))
    (_ (error "ranks: expected N [MESH] or close"))))

(define-meta-command ((rank moelab) repl r form)
  "rank R EXPR
Evaluate EXPR on rank R of the ranks of ,ranks (or of a paused training job)."
  (repl-print repl (rank-eval r form)))

(define-meta-command ((all-ranks moelab) repl form)
  "all-ranks EXPR
Evaluate EXPR on every rank at once; show the values in rank order.

The ranks of ,ranks, or those of a paused training job (`tr' is each rank's
trainer), or else this process alone."
  (let ((results (all-ranks-eval form)))
    ;; nothing to show for a definition on every rank
    (unless (every unspecified? results)
      (repl-print repl results))))

(define-meta-command ((mem moelab) repl)
  "mem
Show live tensors and bytes per device."
  (print-memory-stats))

;;;
;;; Readline: history file and completion of moelab names
;;;

(define (history-file)
  (or (getenv "MOELAB_HISTORY")
      (string-append (or (getenv "HOME") ".") "/.moelab_history")))

(define (meta-command-names)
  (catch #t
    (lambda ()
      (append-map (lambda (group)
                    (append-map (lambda (command) (map symbol->string command))
                                (cdr group)))
                  (@@ (system repl command) *command-table*)))
    (lambda _ '())))

(define (module-names module)
  (module-map (lambda (sym var) (symbol->string sym)) module))

(define (completions text)
  "The sorted completions of TEXT: meta-commands after a comma, otherwise
the moelab names and everything else visible in the current module."
  (let ((names (if (string-prefix? "," text)
                   (map (lambda (s) (string-append "," s)) (meta-command-names))
                   (append (module-names (resolve-interface '(moelab)))
                           (module-names (current-module))
                           (append-map module-names
                                       (module-uses (current-module)))))))
    (delete-duplicates
     (sort (filter (lambda (s) (string-prefix? text s)) names) string<?))))

(define (make-moelab-completer)
  "A readline completion function (TEXT CONTINUE?) over (completions TEXT)."
  (let ((pending '()))
    (lambda (text continue?)
      (unless continue?
        (set! pending (completions text)))
      (match pending
        (() #f)
        ((first . rest) (set! pending rest) first)))))

(define (setup-readline!)
  "Use readline on the terminal, with moelab's history file and completer.
Returns #f (and leaves plain input) when guile-readline is missing."
  (catch #t
    (lambda ()
      (let* ((rl (resolve-module '(ice-9 readline)))
             (file (history-file)))
        ((module-ref rl 'readline-disable) 'history-file)
        (when (file-exists? file)
          (false-if-exception ((module-ref rl 'read-history) file)))
        ((module-ref rl 'activate-readline))
        (module-set! rl '*readline-completion-function* (make-moelab-completer))
        (add-hook! exit-hook
                   (lambda ()
                     (false-if-exception ((module-ref rl 'write-history) file))))
        #t))
    (lambda (key . args)
      (format (current-error-port) "moelab: readline not available (~a); plain input~%"
              key)
      #f)))

;;;
;;; Installing the REPL customisations
;;;

(define %installed? #f)

(define* (install-moelab-repl! #:key (interactive? #t) (prompt? #t))
  "Set up Guile's REPL for moelab: the prompt (Guile's own when PROMPT? is
#f, as Emacs/Geiser expect it from a REPL server), one-line
moelab errors, and the moelab meta-commands (defined when this module loads)."
  (set-exception-printer! 'moelab-error moelab-error-printer)
  (repl-default-prompt-set! (cond ((not prompt?) #f)
                                 (interactive? moelab-prompt)
                                 (else "")))
  (repl-default-option-set! 'value-history interactive?)
  (set-default-on-error! (make-on-error interactive?) (if interactive? 'debug 'report))
  (unless %installed?
    (set! %installed? #t)
    (add-hook! before-eval-hook remember-repl-ports!)))

;;;
;;; Running things
;;;

(define (quit-status args)
  "The exit status for (quit ARGS ...)."
  (match args
    (() 0)
    ((#t . _) 0)
    ((#f . _) 1)
    (((? integer? n) . _) n)
    (_ 0)))

(define (call-with-batch-error-handling thunk)
  "Call THUNK; return 0, or the status of (exit N), or 1 after printing a
backtrace and the error on an uncaught error."
  (catch #t
    (lambda ()
      (%start-stack 'moelab (lambda () (thunk) 0)))
    (lambda (key . args)
      (if (eq? key 'quit) (quit-status args) 1))
    (lambda (key . args)
      (unless (eq? key 'quit)
        (let* ((err (current-error-port))
               (tag (and (pair? (fluid-ref %stacks))
                         (cdr (fluid-ref %stacks))))
               (stack (or (false-if-exception
                           (make-stack #t raise-exception tag 0 (and tag 1)))
                          (false-if-exception
                           (make-stack #t 3 tag 0 (and tag 1)))))
               ;; The message points at the innermost frame with a source
               ;; location (the user's code rather than a primitive).
               (frame (and stack
                           (let loop ((i 0))
                             (cond ((>= i (stack-length stack))
                                    (and (> (stack-length stack) 0)
                                         (stack-ref stack 0)))
                                   ((frame-source (stack-ref stack i))
                                    (stack-ref stack i))
                                   (else (loop (1+ i))))))))
          (force-output (current-output-port))
          (when (and stack (> (stack-length stack) 0))
            (display "Backtrace:\n" err)
            (display-backtrace stack err))
          (print-exception err frame key args)
          (force-output err))))))

(define (compile-in-user-module file)
  "Compile the Scheme file FILE in memory, in (moelab user), as Guile
would compile a script: whole-file, with the usual warnings, so that errors
point at FILE's lines.  Returns a thunk that runs it, or throws
'moelab-compile-error after printing the compiler's message."
  (save-module-excursion
   (lambda ()
     (let ((m (moelab-user-module)))
       (set-current-module m)
       (load-thunk-from-memory
        (catch #t
          (lambda ()
            (call-with-input-file file
              (lambda (port)
                (read-and-compile port #:from 'scheme #:to 'bytecode #:env m
                                  #:opts %auto-compilation-options))))
          (lambda (key . args)
            (let ((err (current-error-port)))
              (format err "moelab: while compiling ~a:~%" file)
              (print-exception err #f key args)
              (force-output err))
            (throw 'moelab-compile-error file))))))))

(define (load-in-user-module file)
  (save-module-excursion
   (lambda ()
     (set-current-module (moelab-user-module))
     (primitive-load file))))

(define (rc-file)
  (string-append (or (getenv "HOME") ".") "/.moelabrc"))

(define (load-rc!)
  (let ((file (rc-file)))
    (when (file-exists? file)
      (catch #t
        (lambda () (load-in-user-module file))
        (lambda (key . args)
          (format (current-error-port) "moelab: error in ~a: " file)
          (print-exception (current-error-port) #f key args))))))

(define (call-with-sigint thunk)
  "Call THUNK with Ctrl-C raising a 'signal error (the REPL carries on)
instead of ending the program."
  (let ((old #f))
    (dynamic-wind
      (lambda ()
        (set! old (sigaction SIGINT
                    (lambda (sig)
                      (scm-error 'signal #f "User interrupt" '() (list sig))))))
      thunk
      (lambda ()
        (if old
            (sigaction SIGINT (car old) (cdr old))
            (sigaction SIGINT #f))))))

;; What read-input returns for a meta-command (`,name ...') and after a read
;; error: objects no datum can be.
(define %meta-command (list 'meta-command))
(define %read-failed (list 'read-failed))

(define (read-input port)
  "The next form of PORT, %meta-command when a `,' starts the next item (its
name and arguments are left for meta-command), or the end-of-file object."
  (let skip ()
    (let ((ch (peek-char port)))
      (cond ((eof-object? ch) ch)
            ((char-whitespace? ch) (read-char port) (skip))
            ((eqv? ch #\;) (read-line port) (skip))
            ((eqv? ch #\,) (read-char port) %meta-command)
            (else (read port))))))

(define (run-piped-session)
  "Read and evaluate standard input, which is not a terminal, as a quiet
REPL: the values on standard output, each error on standard error (one line
for a moelab-error), carrying on after it.  Every error counts: in reading, in
compiling, in evaluating, in a meta-command.  Returns the exit status: N for
an explicit (exit N), otherwise 1 when any error was raised, and 0."
  (let ((repl (make-repl (current-language)))
        (failed? #f))
    (define (report key args)
      (set! failed? #t)
      (force-output (current-output-port))
      (print-exception (current-error-port) #f key args)
      (force-output (current-error-port)))
    (define (guarded thunk)
      ;; (exit N) and ,q throw 'quit: that one goes through.
      (catch #t thunk
        (lambda (key . args)
          (if (eq? key 'quit)
              (apply throw key args)
              (begin (report key args) %read-failed)))))
    (define (evaluate form)
      (run-hook before-eval-hook form)
      (call-with-values (lambda () (repl-eval repl form))
        (lambda vals
          (for-each (lambda (v) (repl-print repl v)) vals))))
    (catch 'quit
      (lambda ()
        (with-fluids ((*repl-stack* (list repl)))
          (let loop ()
            (let ((item (guarded (lambda () (read-input (current-input-port))))))
              (cond ((eof-object? item) (if failed? 1 0))
                    ((eq? item %read-failed) (loop))
                    ((eq? item %meta-command)
                     (guarded (lambda () (meta-command repl)))
                     (loop))
                    (else
                     (guarded (lambda () (evaluate item)))
                     (loop)))))))
      (lambda (key . args)
        (if (null? args)
            (if failed? 1 0)
            (quit-status args))))))

(define (run-repl-mode rc? threads)
  (let ((tty? (isatty? (current-input-port))))
    (install-moelab-repl! #:interactive? tty?)
    (set-current-module (moelab-user-module))
    (when tty?
      (display (moelab-banner #:threads threads))
      (newline)
      (setup-readline!))
    (when rc? (load-rc!))
    (let ((status (if tty?
                      (call-with-sigint
                       (lambda ()
                         (with-fluids ((*repl-stack* (list (base-repl))))
                           (start-repl))))
                      (run-piped-session))))
      (run-hook exit-hook)
      (if (integer? status)
          status
          (quit-status (if (list? status) status '()))))))

(define %default-repl-port 37146)

(define (parse-listen spec)
  "A server socket and a description for --listen[=SPEC]."
  (cond
   ((or (not spec) (string-null? spec))
    (values (make-tcp-server-socket #:host "127.0.0.1" #:port %default-repl-port)
            #f))
   ((string-prefix? "unix:" spec)
    (let ((path (substring spec 5)))
      (when (string-null? path)
        (throw 'moelab-usage "--listen=unix:PATH needs a PATH"))
      (values (make-unix-domain-server-socket #:path path) path)))
   ((and (string->number spec) (exact-integer? (string->number spec))
         (<= 0 (string->number spec) 65535))
    (values (make-tcp-server-socket #:host "127.0.0.1" #:port (string->number spec))
            #f))
   (else (throw 'moelab-usage
                (format #f "bad --listen value '~a' (expected PORT or unix:PATH)" spec)))))

(define (run-server-mode spec threads)
  (call-with-values (lambda () (parse-listen spec))
    (lambda (socket unix-path)
      (install-moelab-repl! #:interactive? #t #:prompt? #f)
      (set-current-module (moelab-user-module))
      (let ((where (if unix-path
                       (string-append "unix:" unix-path)
                       (format #f "127.0.0.1:~a" (sockaddr:port (getsockname socket))))))
        (format (current-error-port)
                "moelab ~a: REPL server listening on ~a (loopback only)~%"
                %moelab-version where)
        (force-output (current-error-port))
        (for-each (lambda (sig)
                    (sigaction sig (lambda (_) (stop-server-and-clients!))))
                  (list SIGINT SIGTERM))
        (run-server socket)
        (when unix-path
          (false-if-exception (delete-file unix-path)))
        0))))

;;;
;;; Command line
;;;

(define (usage-text)
  "Usage: moelab [OPTION]... [FILE [ARG]...]
The moelab workbench: Guile Scheme with (moelab) loaded.

  (no FILE)          start the REPL in module (moelab user)
  FILE [ARG]...      run the Scheme file FILE; (command-line) is (FILE ARG...);
                     exit status 1 on an uncaught error
  -c EXPR [ARG]...   evaluate EXPR and exit; (command-line) is (\"moelab\" ARG...)
  train CONFIG.scm   train the trainer CONFIG.scm makes (moelab train --help)
  -L DIR             add DIR to the front of the module load path
  -q, --no-rc        do not load ~/.moelabrc (REPL only)
  --listen[=SPEC]    run a REPL server for Emacs/Geiser, on 127.0.0.1:PORT
                     (default 37146) or on unix:PATH; loopback only
  -h, --help         show this help and exit
  -v, --version      show the version and exit

REPL: readline on a terminal, history in ~/.moelab_history (or $MOELAB_HISTORY),
TAB completes moelab names; ,help moelab lists the moelab meta-commands.
Standard input that is not a terminal is read as a quiet REPL that carries on
after an error and exits with status 1 if any form raised one.
Environment: MOELAB_NUM_THREADS sets the number of OpenMP threads;
MOELAB_LOAD_PATH and MOELAB_LOAD_COMPILED_PATH replace the directories of
moelab's own modules, which come before GUILE_LOAD_PATH.
")

(define (usage-error message)
  (format (current-error-port) "moelab: ~a~%Try 'moelab --help'.~%" message)
  2)

(define (eval-expression-string expr)
  (save-module-excursion
   (lambda ()
     (let ((m (moelab-user-module)))
       (set-current-module m)
       (let ((port (open-input-string expr)))
         (let loop ()
           (let ((form (read port)))
             (unless (eof-object? form)
               ;; The backtrace of an error stops here (see
               ;; call-with-batch-error-handling).
               (start-stack 'moelab (eval form m))
               (loop)))))))))

(define* (moelab-main args #:key (threads #f))
  "Run the moelab program with the command line ARGS (program name first).
Returns the exit status."
  (set-exception-printer! 'moelab-error moelab-error-printer)
  ;; (command-line) starts with "moelab" (not the path of a libtool
  ;; wrapper's binary) outside batch runs, which put the FILE there.
  (let ((program "moelab"))
    (let loop ((args (if (pair? args) (cdr args) '())) (rc? #t))
      (match args
        (((or "-h" "--help") . _)
         (display (usage-text))
         0)
        (((or "-v" "--version") . _)
         (format #t "moelab ~a~%" %moelab-version)
         0)
        (((or "-q" "--no-rc") . rest)
         (loop rest #f))
        (("-L" dir . rest)
         (set! %load-path (cons dir %load-path))
         (set! %load-compiled-path (cons dir %load-compiled-path))
         (loop rest rc?))
        (("-L")
         (usage-error "option -L needs a directory"))
        (("-c" expr . rest)
         (set-program-arguments (cons program rest))
         (call-with-batch-error-handling
          (lambda () (eval-expression-string expr))))
        (("-c")
         (usage-error "option -c needs an expression"))
        (("--listen" . rest)
         (if (null? rest)
             (run-listen #f threads)
             (usage-error "--listen takes no further arguments")))
        (((? (lambda (a) (string-prefix? "--listen=" a)) opt) . rest)
         (if (null? rest)
             (run-listen (substring opt (string-length "--listen=")) threads)
             (usage-error "--listen takes no further arguments")))
        (("--" file . rest)
         (run-file file rest threads))
        (("--")
         (set-program-arguments (list program))
         (run-repl-mode rc? threads))
        (((? (lambda (a) (and (string-prefix? "-" a) (not (string=? a "-")))) opt) . _)
         (usage-error (format #f "unknown option '~a'" opt)))
        (("train" . rest)             ; moelab train CONFIG.scm …: (moelab program)
         ((module-ref (resolve-interface '(moelab program)) 'moelab-train-main)
          rest #:threads threads))
        ((file . rest)
         (run-file file rest threads))
        (()
         (set-program-arguments (list program))
         (run-repl-mode rc? threads))))))

(define (run-listen spec threads)
  (catch 'moelab-usage
    (lambda ()
      (catch 'system-error
        (lambda () (run-server-mode spec threads))
        (lambda (key subr message margs rest)
          (format (current-error-port) "moelab: --listen: ~a~%"
                  (apply format #f message margs))
          1)))
    (lambda (key message)
      (usage-error message))))

(define (run-file file args threads)
  (set-program-arguments (cons file args))
  (if (not (file-exists? file))
      (begin
        (format (current-error-port) "moelab: ~a: no such file~%" file)
        1)
      (catch 'moelab-compile-error
        (lambda ()
          (let ((thunk (compile-in-user-module file)))
            (call-with-batch-error-handling
             (lambda ()
               (save-module-excursion
                (lambda ()
                  (set-current-module (moelab-user-module))
                  (start-stack 'moelab (thunk))))))))
        (lambda _ 1))))
