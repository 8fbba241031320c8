;;; (moelab program) — `moelab train CONFIG.scm [--steps N] [--set KEY=VALUE]…
;;; [--listen[=PORT]]`: evaluate a training configuration in a fresh module,
;;; run the trainer it returns, and print what came of it (the manual:
;;; "Training", "moelab train").
(define-module (moelab program)
  #:use-module (moelab)
  #:use-module (moelab trainer)
  #:use-module ((moelab parallel) #:select (%default-mesh))
  #:use-module (moelab control)
  #:use-module ((system repl server) #:select (make-tcp-server-socket spawn-server))
  #:use-module (ice-9 match)
  #:use-module (ice-9 format)
  #:use-module (srfi srfi-1)
  #:export (moelab-train-main train-usage-text))

(define (train-usage-text)
  "The help text of `moelab train'."
  "Usage: moelab train CONFIG.scm [--steps N] [--set KEY=VALUE]... [--resume DIR] [--listen[=PORT]]
                    [--mesh pp=P,dp=D,ep=E] [--ranks N]
Train the model of CONFIG.scm, a Scheme file evaluated in a fresh module that
uses (moelab); the value of its last expression is the trainer (make-trainer).

  --steps N          optimizer steps to run (default: the config's `steps')
  --set KEY=VALUE    a setting: the config reads it with (setting 'KEY DEFAULT);
                     batch-size, grad-accum, clip, eval-every, eval-batches,
                     print-every and lr also apply to the trainer directly
  --check-unigram    exit 1 unless the final mean validation loss is below the
                     unigram entropy of the validation tokens
  --resume DIR       first load the checkpoint DIR (a step directory, or a run
                     directory: its latest complete checkpoint); the step
                     count then counts from the start of the run
  --allow-non-finite resume even from NaN or infinite weights
  --listen[=PORT]    a REPL server on 127.0.0.1:PORT (default 37146; 0: one the
                     system chooses, named on stderr) while the
                     run goes on: (current-trainer), trainer-pause!, …; with
                     several ranks on rank 0 only, where ,all-ranks EXPR
                     evaluates on every rank while the job is paused
  --mesh SPEC        train in parallel: SPEC names the sizes of pp, dp and ep
                     (e.g. pp=2,dp=2,ep=2; their product is the number of
                     ranks); the config's make-trainer gets it as #:mesh
                     (default with several ranks: dp over all of them)
  --ranks N          run N ranks as threads of this process (default: 1, or
                     one rank per process under mpirun -np N)

Ctrl-C stops after the current step and prints the summary (exit status 130).
")

(define (usage-error fmt . args)
  (format (current-error-port) "moelab train: ~a~%Try 'moelab train --help'.~%"
          (apply format #f fmt args))
  2)

(define trainer-keys '(batch-size grad-accum clip eval-every eval-batches print-every lr))

(define (parse-setting s)
  (let ((i (string-index s #\=)))
    (and i (positive? i) (cons (string->symbol (substring s 0 i)) (substring s (+ i 1))))))

(define (convert-setting text default)
  ;; a --set value read after the type of the config's default
  (cond ((string? default) text)
        ((symbol? default) (string->symbol text))
        (else (let ((v (false-if-exception (with-input-from-string text read))))
                (if (or (eof-object? v) (not v) (symbol? v))
                    (cond ((member text '("#f" "false" "no")) #f)
                          ((member text '("#t" "true" "yes")) #t)
                          (else text))
                    v)))))

(define (config-module settings used)
  ;; A fresh module using (moelab), with (setting KEY DEFAULT).
  (let ((m (make-fresh-user-module)))
    (module-use! m (resolve-interface '(moelab)))
    (module-define! m 'setting
                    (lambda (key default)
                      (let ((e (assq key settings)))
                        (if e
                            (begin (hashq-set! used key #t) (convert-setting (cdr e) default))
                            default))))
    m))

(define (eval-config file module)
  ;; the value of FILE's last expression, evaluated in MODULE
  (call-with-input-file file
    (lambda (port)
      (save-module-excursion
       (lambda ()
         (set-current-module module)
         (let loop ((value *unspecified*))
           (let ((form (read port)))
             (if (eof-object? form)
                 value
                 (loop (eval form module))))))))))

(define (print-summary tr port)
  ;; per-domain validation losses and the routing; the mean loss and the
  ;; mean unigram entropy (or #f without validation data)
  (let ((result
         (and (trainer-val-dataset tr)
              (let ((ev (trainer-evaluate tr)) (h (trainer-unigram-entropy tr)))
                (format port "validation loss at step ~d (nats per token; perplexity; unigram entropy):~%"
                        (trainer-steps tr))
                (for-each (lambda (p)
                            (format port "  ~10a ~7,4f  ~9,2f  ~7,4f~%" (car p) (cdr p)
                                    (assq-ref (assq-ref ev 'perplexity) (car p)) (assq-ref h (car p))))
                          (assq-ref ev 'loss))
                (cons (assq-ref (assq-ref ev 'loss) 'mean) (assq-ref h 'mean))))))
    (trainer-routing-report tr #:port port)
    result))

(define* (moelab-train-main args #:key (threads #f))
  "Run `moelab train' with ARGS (the words after `train'); returns the exit
status: 0, 1 on an error in the configuration or the run, 2 on bad usage,
130 when Ctrl-C stopped the run."
  (define check? #f)
  (define resume #f)
  (define allow-non-finite? #f)
  (define mesh #f)
  (define ranks #f)
  (let loop ((args args) (file #f) (steps #f) (settings '()) (listen #f))
    (match args
      (((or "-h" "--help") . _) (display (train-usage-text)) 0)
      (("--steps" n . rest)
       (let ((k (string->number n)))
         (if (and k (exact-integer? k) (positive? k))
             (loop rest file k settings listen)
             (usage-error "--steps needs a positive integer, got '~a'" n))))
      (("--set" kv . rest)
       (let ((p (parse-setting kv)))
         (if p
             (loop rest file steps (append settings (list p)) listen)
             (usage-error "--set needs KEY=VALUE, got '~a'" kv))))
      (("--listen" . rest) (loop rest file steps settings 37146))
      (("--check-unigram" . rest) (set! check? #t) (loop rest file steps settings listen))
      (("--resume" dir . rest) (set! resume dir) (loop rest file steps settings listen))
      (("--allow-non-finite" . rest) (set! allow-non-finite? #t) (loop rest file steps settings listen))
      (("--mesh" spec . rest)
       (match (catch 'moelab-error
                (lambda () (parse-mesh spec #:who "moelab train --mesh"))
                (lambda (key who message args . _) (apply format #f message args)))
         ((and (? pair? m) (? (lambda (m) (every (lambda (d) (memq (car d) '(pp dp ep))) m))))
          (set! mesh m)
          (loop rest file steps settings listen))
         (why
          (usage-error "--mesh needs sizes such as pp=2,dp=2,ep=2 (dimensions pp, dp, ep), got '~a'~a"
                       spec (if (string? why) (string-append ": " why) "")))))
      (("--ranks" n . rest)
       (let ((k (string->number n)))
         (if (and k (exact-integer? k) (positive? k))
             (begin (set! ranks k) (loop rest file steps settings listen))
             (usage-error "--ranks needs a positive integer, got '~a'" n))))
      (((? (lambda (a) (string-prefix? "--listen=" a)) opt) . rest)
       (let ((port (string->number (substring opt 9))))
         (if (and port (exact-integer? port) (<= 0 port 65535))
             (loop rest file steps settings port)
             (usage-error "bad --listen port '~a'" (substring opt 9)))))
      (((? (lambda (a) (string-prefix? "-" a)) opt) . rest)
       (usage-error "unknown option '~a'" opt))
      ((f . rest)
       (if file
           (usage-error "one CONFIG file, got '~a' and '~a'" file f)
           (loop rest f steps settings listen)))
      (()
       (cond ((not file) (usage-error "no CONFIG file"))
             ((not (file-exists? file))
              (format (current-error-port) "moelab train: ~a: no such file~%" file)
              1)
             (else (run-ranks file steps settings listen check? resume allow-non-finite? mesh ranks)))))))

(define (run-ranks file steps settings listen check? resume allow-non-finite? mesh ranks)
  ;; One rank, N thread ranks (--ranks), or this process's rank under mpirun.
  (let* ((launched (and (mpi-launched?) (world-size-of-launch)))
         (n (or ranks launched (and mesh (apply * (map cdr mesh))) 1))
         (mesh (or mesh (and (> n 1) `((dp . ,n))))))
    (cond
     ((and mesh (not (= n (apply * (map cdr mesh)))))
      (format (current-error-port) "moelab train: --mesh ~a has ~a ranks but ~a were asked for~a~%"
              (string-join (map (lambda (e) (format #f "~a=~a" (car e) (cdr e))) mesh) ",")
              (apply * (map cdr mesh)) n
              (if launched " (mpirun -np)" (if ranks " (--ranks)" " (give --ranks N, or run under mpirun -np N)")))
      2)
     ((and (not mesh) (= n 1))
      (run-config file steps settings listen check? resume allow-non-finite? (current-output-port)))
     (else
      (let ((codes (with-ranks n #:mesh mesh
                     (lambda (rank)
                       (parameterize ((%default-mesh mesh))
                         (run-config file steps settings (and (zero? rank) listen) check? resume
                                     allow-non-finite?
                                     (if (zero? rank) (current-output-port) (%make-void-port "w"))))))))
        (apply max (filter integer? codes)))))))

(define (world-size-of-launch)
  ;; the number of processes mpirun started (OpenMPI, then PMI)
  (or (string->number (or (getenv "OMPI_COMM_WORLD_SIZE") (getenv "PMI_SIZE") ""))
      1))

(define (run-config file steps settings listen check? resume allow-non-finite? out)
  (let* ((used (make-hash-table))
         ;; the config sees --steps as (setting 'steps …) too
         (module (config-module (if steps
                                    (cons (cons 'steps (number->string steps)) settings)
                                    settings)
                                used)))
    (with-output-to-port out (lambda () (catch #t
      (lambda ()
       (call-with-launched-world  ; in a launched job: on every rank of it
        (lambda ()
        (let ((tr (eval-config file module)))
          (unless (trainer? tr)
            (error (format #f "the last expression of ~a must give a trainer (make-trainer), got ~s"
                           file tr)))
          (for-each (lambda (s)
                      (unless (hashq-ref used (car s))
                        (if (memq (car s) trainer-keys)
                            (trainer-set! tr (car s) (convert-setting (cdr s) 0))
                            (error (format #f "--set ~a: the config does not read this setting (setting '~a …) and the trainer has none of that name"
                                           (car s) (car s))))))
                    settings)
          (let ((steps (or steps
                           (let ((v (module-variable module 'steps)))
                             (and v (variable-bound? v) (variable-ref v))))))
            (unless (and (exact-integer? steps) (positive? steps))
              (error "no step count: give --steps N or (define steps N) in the config"))
            (when resume
              (let ((loaded (load-checkpoint! tr resume #:allow-non-finite? allow-non-finite?)))
                (format #t "moelab train: resumed from ~a at step ~d~%" loaded (trainer-steps tr))))
            (when (and listen (zero? (launched-rank)))    ; rank 0 only
              ;; --listen=0: a port the system chooses, named in the message
              (let ((socket (make-tcp-server-socket #:host "127.0.0.1" #:port listen)))
                (save-module-excursion
                 (lambda ()
                   (set-current-module module)
                   (spawn-server socket)))
                (format (current-error-port)
                        "moelab train: REPL server on 127.0.0.1:~a; (current-trainer) is this run~%"
                        (sockaddr:port (getsockname socket))))
              (force-output (current-error-port)))
            (format #t "moelab train: ~a, ~d step~:p of ~d×~d sequences, ~d thread~:p~%"
                    file steps
                    (assq-ref (assq-ref (trainer-config tr) 'trainer) 'batch-size)
                    (assq-ref (assq-ref (trainer-config tr) 'trainer) 'grad-accum)
                    (num-threads))
            ;; with --resume, STEPS counts from the start of the run
            (let ((left (- steps (trainer-steps tr))))
              (if (positive? left)
                  (trainer-run! tr #:steps left)
                  (format #t "moelab train: step ~d already reached~%" (trainer-steps tr))))
            (let ((interrupted? (trainer-interrupted? tr))
                  (losses (print-summary tr (current-output-port))))
              (trainer-close! tr)
              (cond (interrupted? 130)
                    ((and check? (not losses))
                     (format (current-error-port) "moelab train: --check-unigram needs a #:val-dataset~%")
                     1)
                    ((and check? (>= (car losses) (cdr losses)))
                     (format (current-error-port)
                             "moelab train: the mean validation loss ~,4f is not below the unigram entropy ~,4f~%"
                             (car losses) (cdr losses))
                     1)
                    (check?
                     (format #t "the mean validation loss ~,4f is below the unigram entropy ~,4f~%"
                             (car losses) (cdr losses))
                     0)
                    (else 0))))))
        #:module module))
      (lambda (key . args)
        (format (current-error-port) "moelab train: ")
        (print-exception (current-error-port) #f key args)
        1))))))
