;;; (moelab control) — one REPL driving every rank of a training job.
;;;
;;; trainer-run! calls (control-point! TR) at each step boundary (through a
;;; hook of (moelab trainer) that this module sets when it loads). In a world
;;; of several ranks, one small all-reduce tells every rank what rank 0's
;;; trainer says (go on, or wait) and whether any rank's trainer was asked to
;;; stop. While rank 0's trainer is paused every rank waits there, serving
;;; the commands that a REPL in rank 0's process posts with control-eval: the
;;; command is broadcast, each rank evaluates it in an evaluation module of
;;; its own (where @code{tr} is its trainer), and the results are gathered
;;; back to rank 0. trainer-resume! on rank 0 lets every rank go on;
;;; trainer-stop! on any rank stops them all. In a world of one rank the
;;; control point does nothing.
;;;
;;; Scheme values travel as their written text in i32 tensors (four bytes an
;;; element) over broadcast! and all-gather. (To become the value helpers of
;;; (moelab dist) when it has them.)
(define-module (moelab control)
  #:use-module (moelab primitives)
  #:use-module (moelab tensor)
  #:use-module (moelab dist)
  #:use-module (moelab trainer)
  #:use-module (ice-9 match)
  #:use-module (ice-9 format)
  #:use-module (ice-9 threads)
  #:use-module (rnrs bytevectors)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-4)
  #:use-module (srfi srfi-9)
  #:use-module (srfi srfi-9 gnu)
  #:export (control-point! control-eval control-waiting? control-job-size
            call-with-launched-world launched-rank))

;;; ---- errors -------------------------------------------------------------------------

(define (control-error who fmt . args)
  ;; a moelab-error whose message is FMT's text as it is
  (throw 'moelab-error who
         (string-join (string-split (apply format #f fmt args) #\~) "~~")
         '() '(state)))

(define (error-text key args)
  ;; what an uncaught error would print, on one line
  (if (eq? key 'quit)
      "the expression called exit"
      (string-trim-right
       (string-map (lambda (ch) (if (char=? ch #\newline) #\space ch))
                   (call-with-output-string
                     (lambda (port) (print-exception port #f key args)))))))

;;; ---- values as bytes ------------------------------------------------------------------

;; A value that does not read back (a tensor, a trainer, a procedure) travels
;; as its printed form; it prints as that text again.
(define-record-type <shown>
  (make-shown text)
  shown?
  (text shown-text))

(set-record-type-printer! <shown> (lambda (s port) (display (shown-text s) port)))

(define (value->datum v)
  ;; V itself when its written form reads back as an equal value, else a
  ;; (shown . TEXT) the receiver turns into a <shown>
  (let ((text (call-with-output-string (lambda (port) (write v port)))))
    (cond
     ((unspecified? v) (list 'unspecified))
     ((catch #t
          (lambda () (equal? (with-input-from-string text read) v))
          (lambda _ #f))
      (cons 'value v))
     (else (cons 'shown (if (shown? v) (shown-text v) text))))))

(define (datum->value d)
  (match d
    (('value . v) v)
    (('unspecified) *unspecified*)
    (('shown . text) (make-shown text))))

(define (encode datum)
  (string->utf8 (call-with-output-string (lambda (port) (write datum port)))))

(define (decode bv n)
  ;; the datum of the first N bytes of BV
  (let ((bytes (make-bytevector n)))
    (bytevector-copy! bv 0 bytes 0 n)
    (with-input-from-string (utf8->string bytes) read)))

(define (words n) (quotient (+ n 3) 4))

(define (bytes->tensor bv width)
  ;; an i32 tensor of WIDTH bytes (a multiple of 4) holding BV, zero-padded
  (let ((v (make-s32vector (quotient width 4) 0)))
    (bytevector-copy! bv 0 v 0 (bytevector-length bv))
    (tensor v)))

(define (exchange-header len stop? group)
  ;; One all-reduce (sum) over GROUP: the length of rank 0's message (the
  ;; others give 0) and how many ranks want to stop.
  (let ((h (s32vector len (if stop? 1 0))))
    (all-reduce! (tensor h) #:group group)
    (values (s32vector-ref h 0) (s32vector-ref h 1))))

(define (broadcast-payload bv n group)
  ;; the datum of the N bytes BV of rank 0 of GROUP, on every rank (BV is
  ;; ignored elsewhere)
  (let ((t (if (zero? (group-rank group))
               (bytes->tensor bv (* 4 (words n)))
               (zeros (words n) #:dtype 'i32))))
    (broadcast! t #:group group)
    (decode (tensor->s32vector t) n)))

(define (gather-data d group)
  ;; the list of every rank's D, in rank order of GROUP, on every rank
  (let* ((bv (encode d))
         (lens (map inexact->exact
                    (tensor->list (all-gather (tensor (s32vector (bytevector-length bv)))
                                              #:group group))))
         (width (* 4 (words (apply max lens))))
         (all (tensor->s32vector (all-gather (bytes->tensor bv width) #:group group))))
    (map (lambda (i n)
           (let ((one (make-bytevector n)))
             (bytevector-copy! all (* i width) one 0 n)
             (decode one n)))
         (iota (length lens)) lens)))

;;; ---- evaluating a command on this rank ------------------------------------------------------

;; The module each rank evaluates commands in, by world rank: it uses the
;; base module (the configuration's, or (moelab)); @code{tr} is rebound to
;; the rank's trainer at each command. Definitions stay for later commands.
(define %base-module #f)
(define %rank-modules (make-hash-table))
(define %modules-lock (make-mutex))

(define (rank-module rank)
  (with-mutex %modules-lock
    (or (hashv-ref %rank-modules rank)
        (let ((m (make-fresh-user-module)))
          (module-use! m (or %base-module (resolve-interface '(moelab))))
          (hashv-set! %rank-modules rank m)
          m))))

(define (evaluate form tr)
  ;; (ok . DATUM) or (error . TEXT): FORM's value on this rank
  (catch #t
    (lambda ()
      (let ((m (rank-module (current-rank))))
        (module-define! m 'tr tr)
        (call-with-values (lambda () (eval form m))
          (case-lambda
            (() (cons 'ok (value->datum *unspecified*)))
            ((v . _) (cons 'ok (value->datum v)))))))
    (lambda (key . args)
      (cons 'error (error-text key args)))))

;;; ---- the mailbox of rank 0 ------------------------------------------------------------------

;; Commands that REPL threads of rank 0's process post for the paused job.
;; A command is (FORM TARGET REPLY): TARGET a rank or #f for all; REPLY a
;; one-slot box the serving rank fills with the gathered outcomes.
(define %lock (make-mutex))
(define %posted (make-condition-variable))
(define %queue '())
(define %serving #f)            ; (world-size . step) while rank 0 serves
(define %job-size #f)           ; the world size of rank 0's last control point
(define %job-trainer #f)        ; and its trainer
(define %served (make-condition-variable))   ; signalled when rank 0 starts serving
;; A pause asked for while rank 0 was telling the ranks to go on (it waits in
;; that broadcast for the slowest rank): taken back at once, since the
;; trainer's own pause would hold rank 0 alone, and made at the next step
;; boundary.
(define %pending-pause #f)

(define-record-type <reply>
  (make-reply full? value)
  reply?
  (full? reply-full? set-reply-full!)
  (value reply-value set-reply-value!))

(define %filled (make-condition-variable))

(define (fill! reply value)
  (with-mutex %lock
    (set-reply-value! reply value)
    (set-reply-full! reply #t)
    (broadcast-condition-variable %filled)))

(define (control-waiting?)
  "True while a job's rank 0 is paused at its control point serving
commands (control-eval): its trainer-pause! has taken effect on every rank."
  (with-mutex %lock (and %serving #t)))

(define (control-job-size)
  "The number of ranks of the training job whose rank 0 runs in this process,
once it has reached a control point (control-point!) in a world of several
ranks; #f before, and in a world of one rank."
  (with-mutex %lock %job-size))

(define* (control-eval form #:key (rank #f))
  "Evaluate the expression FORM (a datum) on every rank of the paused job
whose rank 0 runs in this process, each rank in its own evaluation module
where @code{tr} is that rank's trainer; return the list of the values in
rank order. With RANK, evaluate on that rank only and return its value.
When rank 0's trainer is paused but still in its step, waits for the step
boundary (at most (comm-timeout) seconds).
Values that do not read back as data (tensors, records) come as objects
that print as the rank printed them. An error on a rank raises moelab-error
naming the rank; the job stays paused. Raises moelab-error when no job is
paused at its control point."
  (unless (eq? (car (value->datum form)) 'value)
    (control-error "control-eval" "the expression must be data that reads back as written, got ~s" form))
  (let ((reply (make-reply #f #f)))
    (with-mutex %lock
      ;; paused but still in its step: wait for the step boundary
      (let wait ((left (* 10 (or (comm-timeout) 300))))
        (when (and (not %serving) %job-trainer
                   (or %pending-pause (trainer-paused? %job-trainer))
                   (not (trainer-stopping? %job-trainer)) (positive? left))
          (wait-condition-variable %served %lock (abs-time 0.1))
          (wait (- left 1))))
      (unless %serving
        (control-error "control-eval" "no training job is paused at its control point here: pause it with (trainer-pause! (current-trainer)) and wait for 'paused at step'"))
      (when (and rank (not (and (exact-integer? rank) (< -1 rank (car %serving)))))
        (control-error "control-eval" "no rank ~s in the job's world of ~a ranks" rank (car %serving)))
      (set! %queue (append %queue (list (list form rank reply))))
      (broadcast-condition-variable %posted)
      (let wait ()
        (unless (reply-full? reply)
          (wait-condition-variable %filled %lock)
          (wait))))
    (let ((outcomes (reply-value reply)))
      (match outcomes
        (('refused . text) (control-error "control-eval" "~a" text))
        (_
         (let ((failed (filter-map (lambda (o r) (and (eq? (car o) 'error) (cons r (cdr o))))
                                   outcomes (iota (length outcomes)))))
           (unless (null? failed)
             (control-error "control-eval" "rank ~a failed: ~a~a" (caar failed) (cdar failed)
                            (if (null? (cdr failed))
                                ""
                                (format #f " (rank~p ~{~a~^, ~} failed too)"
                                        (length (cdr failed)) (map car (cdr failed))))))
           (if rank
               (datum->value (cdr (list-ref outcomes rank)))
               (map (lambda (o) (datum->value (cdr o))) outcomes))))))))

(define (refuse-pending! why)
  ;; with %lock held: answer every queued command with WHY
  (for-each (lambda (c) (set-reply-value! (caddr c) (cons 'refused why))
                    (set-reply-full! (caddr c) #t))
            %queue)
  (set! %queue '())
  (broadcast-condition-variable %filled))

;;; ---- the control point ------------------------------------------------------------------

(define trainer-stop-flag? (@@ (moelab trainer) tr-stop?))
(define set-trainer-stop-flag! (@@ (moelab trainer) set-tr-stop!))

;; Trainers asked to stop (trainer-stop!, Ctrl-C) after their rank had told
;; the others to go on: the flag is taken back at once, since the trainer
;; would stop alone and leave the others waiting, and raised again at the
;; next control point, where every rank stops.
(define %pending-stops (make-weak-key-hash-table))

(define (trainer-stopping? tr)
  (or (trainer-stop-flag? tr) (hashq-ref %pending-stops tr #f)))

(define (abs-time seconds)
  (let* ((now (gettimeofday))
         (usec (+ (cdr now) (inexact->exact (round (* seconds 1e6))))))
    (cons (+ (car now) (quotient usec 1000000)) (remainder usec 1000000))))

(define (next-message tr size)
  ;; On rank 0: what the ranks do next. 'go and 'stop end the control point;
  ;; while paused, a command, or 'wait after a second with none (the ranks
  ;; hear from rank 0 every second, far inside the collectives' timeout).
  (with-mutex %lock
    (when %pending-pause
      (set! %pending-pause #f)
      (trainer-pause! tr))
    (let poll ((until (abs-time 1.0)))
      (cond ((trainer-stopping? tr)
             (set! %serving #f)
             (set! %job-trainer #f)
             (refuse-pending! "the job stopped")
             'stop)
            ((not (trainer-paused? tr)) (set! %serving #f) (refuse-pending! "the job resumed") 'go)
            ((pair? %queue)
             (let ((c (car %queue)))
               (set! %queue (cdr %queue))
               c))
            (else
             (unless %serving
               (set! %serving (cons size (trainer-steps tr)))
               (broadcast-condition-variable %served)
               (format #t "paused at step ~d on ~d ranks (trainer-resume! to go on)~%"
                       (trainer-steps tr) size)
               (force-output))
             (if (wait-condition-variable %posted %lock (abs-time 0.05))
                 (poll until)
                 (let ((now (gettimeofday)))
                   (if (or (> (car now) (car until))
                           (and (= (car now) (car until)) (>= (cdr now) (cdr until))))
                       'wait
                       (poll until)))))))))

(define (control-point! tr)
  "The step boundary of a training job: trainer-run! calls it before each
step with its trainer TR, on every rank of the world (each rank runs its
trainer for the same steps). In a world of several ranks (with-ranks,
mpirun) one small all-reduce tells every rank what rank 0's trainer says
and whether any rank's trainer was asked to stop: when one was (Ctrl-C,
trainer-stop!), every rank's trainer stops; when rank 0's trainer is
paused, every rank stays here and serves the control-eval commands of rank
0's process until rank 0's trainer is resumed or stopped. In a world of one
rank it returns at once."
  (when (> (world-size) 1)
    (let ((group (world-group))
          (root? (zero? (current-rank)))
          (in-flight #f))               ; rank 0: the reply of the command being run
      (when root?
        (with-mutex %lock
          (set! %job-size (world-size))
          (set! %job-trainer tr)))
      (dynamic-wind
        (lambda () #t)
        (lambda ()
          (let serve ()
            (let* ((msg (and root? (next-message tr (world-size))))
                   (bv (match msg
                         ((form target reply) (set! in-flight reply) (encode (list 'eval form target)))
                         ('wait (encode 'wait))
                         (_ #f))))     ; go, stop (and the other ranks): nothing to send
              (call-with-values
                  (lambda () (exchange-header (if bv (bytevector-length bv) 0) (trainer-stopping? tr) group))
                (lambda (n stopping)
                  (cond
                   ((positive? stopping)
                    (hashq-remove! %pending-stops tr)
                    (trainer-stop! tr)
                    (when root? (with-mutex %lock (set! %job-trainer #f))))
                   ((zero? n)
                    (when (trainer-stop-flag? tr)
                      (set-trainer-stop-flag! tr #f)
                      (hashq-set! %pending-stops tr #t))
                    (when root?
                      (with-mutex %lock
                        (when (trainer-paused? tr)
                          (trainer-resume! tr)
                          (set! %pending-pause #t)))))
                   (else
                    (match (broadcast-payload bv n group)
                      ('wait (serve))
                      (('eval form target)
                       (let ((outcomes (gather-data (if (or (not target) (= target (current-rank)))
                                                        (evaluate form tr)
                                                        '(ok . (value . #f)))
                                                    group)))
                         (when root?
                           (fill! in-flight outcomes)
                           (set! in-flight #f))
                         (serve)))))))))))
        (lambda ()
          ;; however the control point ends (on, stopped, or an error such as
          ;; a collective's timeout), no REPL is left waiting
          (when root?
            (with-mutex %lock
              (when (and in-flight (not (reply-full? in-flight)))
                (set-reply-value! in-flight (cons 'refused "the job left its control point during the command"))
                (set-reply-full! in-flight #t))
              (set! %serving #f)
              (refuse-pending! "the job left its control point before the command ran"))))))))

((@@ (moelab trainer) %set-trainer-step-hook!) control-point!)

;;; ---- a launched job -----------------------------------------------------------------------------

(define (launched-rank)
  "This process's rank in the job that mpirun (or srun) launched, read from
the launcher's environment without starting MPI; 0 when nothing launched it."
  (car (%launch-env)))

(define* (call-with-launched-world thunk #:key (module #f))
  "Call THUNK and return its value; in a job that mpirun launched with
several processes, call it inside (with-ranks N) over the N processes, so
that its collectives and control points reach the whole job. MODULE (a
module, e.g. the configuration's) is what the ranks' evaluation modules of
control-eval use; the default is (moelab)."
  (set! %base-module module)
  (match (%launch-env)
    ((rank . size)
     ;; inside with-ranks already (moelab train --mesh/--ranks): nothing to start
     (if (and (> size 1) (mpi-launched?) (= (world-size) 1))
         (list-ref (with-ranks size (lambda (r) (thunk))) rank)
         (thunk)))))
