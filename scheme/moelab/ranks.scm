;;; (moelab ranks) — a simulated world that stays open in the REPL.
;;;
;;; (open-ranks! N) starts N thread ranks (with-ranks on a thread of its
;;; own) that wait for work; (rank-eval R FORM) evaluates FORM on rank R and
;;; (all-ranks-eval FORM) on every rank at once, so that collectives in FORM
;;; meet. Each rank evaluates in a module of its own that uses the module
;;; current when the world was opened (the REPL's), so a rank sees the REPL's
;;; definitions and keeps its own. (close-ranks!) ends the world.
;;;
;;; @example
;;; (open-ranks! 4 #:mesh '((dp . 2) (pp . 2)))
;;; (all-ranks-eval '(tensor-item (all-reduce! (tensor (current-rank)))))
;;; ⇒ (6.0 6.0 6.0 6.0)
;;; (rank-eval 1 '(define x (* 10 (current-rank))))
;;; (rank-eval 1 'x)          ⇒ 10
;;; (close-ranks!)
;;; @end example
(define-module (moelab ranks)
  #:use-module (moelab dist)
  #:use-module (moelab control)
  #:use-module (ice-9 match)
  #:use-module (ice-9 format)
  #:use-module (ice-9 threads)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-9)
  #:export (open-ranks! close-ranks! ranks-open rank-eval all-ranks-eval))

(define (ranks-error who fmt . args)
  (throw 'moelab-error who
         (string-join (string-split (apply format #f fmt args) #\~) "~~")
         '() '(state)))

(define (error-text key args)
  (if (eq? key 'quit)
      "the expression called exit"
      (string-trim-right
       (string-map (lambda (ch) (if (char=? ch #\newline) #\space ch))
                   (call-with-output-string
                     (lambda (port) (print-exception port #f key args)))))))

;;; ---- mailboxes --------------------------------------------------------------------------

;; A FIFO one thread or more put into and one thread takes from.
(define-record-type <mailbox>
  (%make-mailbox lock cv items)
  mailbox?
  (lock mailbox-lock)
  (cv mailbox-cv)
  (items mailbox-items set-mailbox-items!))

(define (make-mailbox) (%make-mailbox (make-mutex) (make-condition-variable) '()))

(define (mailbox-put! mb x)
  (with-mutex (mailbox-lock mb)
    (set-mailbox-items! mb (append (mailbox-items mb) (list x)))
    (broadcast-condition-variable (mailbox-cv mb))))

(define (mailbox-take! mb)
  (with-mutex (mailbox-lock mb)
    (let wait ()
      (match (mailbox-items mb)
        (() (wait-condition-variable (mailbox-cv mb) (mailbox-lock mb)) (wait))
        ((x . rest) (set-mailbox-items! mb rest) x)))))

;;; ---- the world ----------------------------------------------------------------------------

(define-record-type <world>
  (make-world size mesh boxes replies thread lock)
  world?
  (size world-size*)
  (mesh world-mesh)
  (boxes world-boxes)             ; a mailbox per rank: jobs
  (replies world-replies)         ; (RANK . OUTCOME) of every job
  (thread world-thread)           ; the thread of with-ranks
  (lock world-lock))              ; one caller posts at a time

(define %world #f)

(define (rank-loop box replies base)
  ;; a rank: evaluate each job (FORM OUT ERR) in the rank's own module,
  ;; with the caller's output ports, until 'close
  (lambda (rank)
    (let ((m (make-fresh-user-module)))
      (module-use! m base)
      (let loop ()
        (match (mailbox-take! box)
          ('close 'closed)
          ((id form out err)
           (mailbox-put!
            replies
            (cons* id rank
                  (catch #t
                    (lambda ()
                      (with-output-to-port out
                        (lambda ()
                          (with-error-to-port err
                            (lambda ()
                              (call-with-values (lambda () (eval form m))
                                (case-lambda
                                  (() (cons 'ok *unspecified*))
                                  ((v . _) (cons 'ok v)))))))))
                    (lambda (key . args) (cons 'error (error-text key args))))))
           (loop)))))))

(define* (open-ranks! n #:key (mesh #f))
  "Start a world of N thread ranks that stays open, waiting for rank-eval
and all-ranks-eval, with MESH as in with-ranks (an alist such as
@code{'((dp . 2) (pp . 2))} whose sizes multiply to N). Each rank
evaluates in a fresh module of its own that uses the module current now (in
the REPL, (moelab user)): it sees the REPL's definitions, and what it
defines stays its own. A world already open is closed first. Raises
moelab-error for a bad N or MESH, and under mpirun (the ranks are then the
processes: see control-eval). Returns N."
  (when (mpi-launched?)
    (ranks-error "open-ranks!" "under mpirun the ranks are the processes: pause the job and use ,all-ranks"))
  (unless (and (exact-integer? n) (positive? n))
    (ranks-error "open-ranks!" "the number of ranks must be a positive integer, not ~s" n))
  ;; the mesh's errors, before any thread starts
  (when mesh (with-ranks n #:mesh mesh (lambda (r) #t)))
  (when %world (close-ranks!))
  (let* ((boxes (list->vector (map (lambda (_) (make-mailbox)) (iota n))))
         (replies (make-mailbox))
         (base (current-module))
         (proc (lambda (rank) ((rank-loop (vector-ref boxes rank) replies base) rank)))
         (thread (call-with-new-thread
                  (lambda ()
                    (catch #t
                      (lambda () (if mesh (with-ranks n #:mesh mesh proc) (with-ranks n proc)))
                      (lambda (key . args) (error-text key args)))))))
    (set! %world (make-world n mesh boxes replies thread (make-mutex)))
    n))

(define (close-ranks!)
  "End the world of open-ranks!: each rank finishes the jobs it has, then
stops. Waits at most (comm-timeout) seconds (30 when it has none) for them.
Does nothing when no world is open."
  (let ((w %world))
    (when w
      (set! %world #f)
      (with-mutex (world-lock w)
        (for-each (lambda (b) (mailbox-put! b 'close)) (vector->list (world-boxes w))))
      (let ((limit (or (comm-timeout) 30)))
        (join-thread (world-thread w) (+ (current-time) (inexact->exact (ceiling limit))))))
    (values)))

(define (ranks-open)
  "The world of open-ranks!, as (N . MESH), or #f when none is open."
  (let ((w %world))
    (and w (cons (world-size* w) (world-mesh w)))))

(define %jobs 0)

(define (run-jobs who w ranks form)
  ;; post FORM to RANKS of W; their outcomes, in the order of RANKS. Replies
  ;; of an earlier job that an interrupt (Ctrl-C) gave up on are dropped.
  (let ((out (current-output-port)) (err (current-error-port)))
    (with-mutex (world-lock w)
      (set! %jobs (+ %jobs 1))
      (let ((id %jobs))
      (for-each (lambda (r) (mailbox-put! (vector-ref (world-boxes w) r) (list id form out err)))
                ranks)
      (let collect ((got '()))
        (if (= (length got) (length ranks))
            (let ((outcomes (map (lambda (r) (assv-ref got r)) ranks))
                  (failed (filter (lambda (r) (eq? (car (assv-ref got r)) 'error)) ranks)))
              (unless (null? failed)
                (ranks-error who "rank ~a failed: ~a~a" (car failed) (cdr (assv-ref got (car failed)))
                             (if (null? (cdr failed))
                                 ""
                                 (format #f " (rank~p ~{~a~^, ~} failed too)"
                                         (length (cdr failed)) (cdr failed)))))
              (map cdr outcomes))
            (match (mailbox-take! (world-replies w))
              (((? (lambda (x) (eqv? x id))) . reply) (collect (cons reply got)))
              (_ (collect got)))))))))

(define (rank-eval rank form)
  "Evaluate the expression FORM (a datum, e.g. @code{'(current-rank)}) on
rank RANK of the world of open-ranks!, in the rank's module and its rank
context (current-rank, mesh-group, … answer as inside with-ranks), and
return its value. An error raises moelab-error naming the rank; the world
stays open. A collective that the other ranks do not join waits until
(comm-timeout). With no world open but a training job paused at its
control point here, FORM runs on that job's rank RANK (control-eval)."
  (let ((w %world))
    (cond
     (w
      (unless (and (exact-integer? rank) (< -1 rank (world-size* w)))
        (ranks-error "rank-eval" "no rank ~s in the world of ~a ranks" rank (world-size* w)))
      (car (run-jobs "rank-eval" w (list rank) form)))
     ((control-job-size) (control-eval form #:rank rank))
     (else (ranks-error "rank-eval" "no ranks are open: open them with (open-ranks! N) or ,ranks N")))))

(define (all-ranks-eval form)
  "Evaluate the expression FORM on every rank at once and return the list
of the values in rank order: on the ranks of open-ranks! when a world is
open (collectives in FORM meet), else on every rank of the training job
whose rank 0 runs here (control-eval, with @code{tr} bound to each rank's
trainer; the job must be paused), else here alone (a list of one value). An error on a rank
raises moelab-error naming it."
  (cond (%world => (lambda (w) (run-jobs "all-ranks-eval" w (iota (world-size* w)) form)))
        ((control-job-size) (control-eval form))
        (else (list (eval form (current-module))))))
