;;; (moelab pipeline) — pipeline parallelism: one optimizer step's
;;; micro-batches driven through the stages of a pipeline.
;;;
;;; A model cut into P stages runs on the P ranks of a group (usually
;;; (mesh-group 'pp)). Each rank holds one stage and gives pipeline-step! two
;;; closures: FORWARD computes the stage on a micro-batch (from the data on
;;; the first stage, from the received activation on the others; the last
;;; stage returns the loss) and ACTIVATION says what shape and dtype of
;;; activation the stage receives. pipeline-step! moves the activations
;;; forward and their gradients backward with point-to-point messages, in the
;;; order of a schedule: 'gpipe (all forwards, then all backwards) or
;;; '1f1b (one forward, one backward: at most P micro-batches in flight on
;;; a stage). The module knows nothing of models: what a stage computes is
;;; the closures' business.
;;;
;;; @example
;;; (with-ranks 2 #:mesh '((pp . 2))
;;;   (lambda (rank)
;;;     (pipeline-step! #:micro-batches 4 #:schedule '1f1b
;;;       #:forward (lambda (i input) …)
;;;       #:activation (lambda (i) (values '(8 16) 'f32)))))
;;; @end example

(define-module (moelab pipeline)
  #:use-module (moelab primitives)
  #:use-module (moelab tensor)
  #:use-module (moelab autograd)
  #:use-module (moelab dist)
  #:use-module (ice-9 match)
  #:use-module (srfi srfi-1)
  #:export (pipeline-step! pipeline-schedule pipeline-bubble-fraction))

;;; ---- errors ---------------------------------------------------------------------

(define (escape-tildes text)
  ;; a moelab-error message is a format string: show TEXT as it is
  (string-join (string-split text #\~) "~~"))

(define (pipeline-error who status fmt . args)
  (throw 'moelab-error who (escape-tildes (apply format #f fmt args)) '() (list status)))

(define (message-of args)
  ;; the text and status of a moelab-error's (WHO FORMAT ARGS DATA)
  (match args
    ((who (? string? fmt) fmt-args data)
     (values (if (list? fmt-args) (apply format #f fmt fmt-args) fmt)
             (if (and (pair? data) (symbol? (car data))) (car data) 'state)))
    (_ (values (format #f "~s" args) 'state))))

;;; ---- schedules --------------------------------------------------------------------

(define %schedules '(gpipe 1f1b forward-only))

(define (check-schedule who schedule)
  (unless (memq schedule %schedules)
    (pipeline-error who 'arg "unknown schedule ~s: use 'gpipe, '1f1b or 'forward-only" schedule)))

(define (check-count who what n minimum)
  (unless (and (exact-integer? n) (>= n minimum))
    (pipeline-error who 'arg "~a must be an integer of at least ~a, not ~s" what minimum n)))

(define (pipeline-schedule schedule stages stage micro-batches)
  "The steps that stage STAGE (0 to STAGES - 1) of a pipeline of STAGES
stages runs for MICRO-BATCHES micro-batches under SCHEDULE, in order: a list
of @code{(recv-activation I)}, @code{(forward I)}, @code{(send-activation I)},
@code{(recv-gradient I)}, @code{(backward I)} and @code{(send-gradient I)}
for micro-batch I. This is what pipeline-step! executes.

SCHEDULE is @code{'gpipe} (the forwards of every micro-batch, then their
backwards), @code{'1f1b} (min(STAGES - STAGE - 1, MICRO-BATCHES) warm-up
forwards, then one forward and one backward in turn, then the remaining
backwards: a stage holds at most STAGES - STAGE micro-batches' activations
instead of all of them) or @code{'forward-only} (forwards alone, for
evaluation). Backwards run in micro-batch order in both.

Under '1f1b a stage past the first receives the next micro-batch's
activation before it sends the gradient of the backward it just did (its
neighbour sends that activation before it waits for the gradient): so the
steps of neighbouring stages pair up even when a send waits for its
receive, as a large MPI message does, and the pipeline cannot deadlock.
@example
(pipeline-schedule '1f1b 2 1 2)
@result{} ((recv-activation 0) (forward 0) (backward 0) (recv-activation 1)
    (send-gradient 0) (forward 1) (backward 1) (send-gradient 1))
@end example"
  (define who "pipeline-schedule")
  (check-schedule who schedule)
  (check-count who "the number of stages" stages 1)
  (check-count who "the number of micro-batches" micro-batches 1)
  (unless (and (exact-integer? stage) (< -1 stage stages))
    (pipeline-error who 'arg "stage ~s is not a stage of a pipeline of ~a" stage stages))
  (let* ((first? (= stage 0))
         (last? (= stage (- stages 1)))
         (m micro-batches))
    (define* (forward i #:key (receive? #t))
      (append (if (and receive? (not first?)) `((recv-activation ,i)) '())
              `((forward ,i))
              (if last? '() `((send-activation ,i)))))
    (define (backward-compute i)
      (append (if last? '() `((recv-gradient ,i)))
              `((backward ,i))))
    (define (send-gradient i)
      (if first? '() `((send-gradient ,i))))
    (case schedule
      ((forward-only)
       (append-map forward (iota m)))
      ((gpipe)
       (append (append-map forward (iota m))
               (append-map (lambda (i) (append (backward-compute i) (send-gradient i)))
                           (iota m))))
      ((1f1b)
       (let* ((warm-up (min (- stages stage 1) m))
              (steady (- m warm-up)))
         (append
          (append-map forward (iota warm-up))
          (append-map
           (lambda (t)
             ;; forward warm-up + t, backward t; then the next forward's
             ;; activation comes in before backward t's gradient goes out
             (append (forward (+ warm-up t) #:receive? (= t 0))
                     (backward-compute t)
                     (if (and (not first?) (< (+ t 1) steady))
                         `((recv-activation ,(+ warm-up t 1)))
                         '())
                     (send-gradient t)))
           (iota steady))
          (append-map (lambda (i) (append (backward-compute i) (send-gradient i)))
                      (iota warm-up steady))))))))

(define (pipeline-bubble-fraction stages micro-batches)
  "The share of a pipeline step that a stage spends idle in an ideal
pipeline of STAGES stages running MICRO-BATCHES micro-batches, whose
forwards and backwards take the same time on every stage:
(STAGES - 1) / (MICRO-BATCHES + STAGES - 1), an exact fraction. 'gpipe and
'1f1b have the same bubble; 1f1b holds fewer activations."
  (check-count "pipeline-bubble-fraction" "the number of stages" stages 1)
  (check-count "pipeline-bubble-fraction" "the number of micro-batches" micro-batches 1)
  (/ (- stages 1) (+ micro-batches stages -1)))

;;; ---- point to point ------------------------------------------------------------
;;; Activations of micro-batch I travel with tag 2I, their gradients with
;;; tag 2I + 1.

(define (activation-tag i) (* 2 i))
(define (gradient-tag i) (+ (* 2 i) 1))

(define (p2p-send! t peer tag group)
  (send! t peer #:tag tag #:group group))

(define (p2p-recv! t peer tag group)
  (recv! t peer #:tag tag #:group group))

;;; ---- the engine ------------------------------------------------------------------

(define (now-ms)
  (/ (get-internal-real-time) (/ internal-time-units-per-second 1000.0)))

(define (resolve-group g)
  (cond ((group? g) g)
        ((or (symbol? g) (and (list? g) (every symbol? g))) (mesh-group g))
        (else (scm-error 'wrong-type-arg "pipeline-step!"
                         "expected a group or mesh dimensions such as 'pp, got ~s" (list g) (list g)))))

(define (default-backward i output grad)
  (if grad (backward! output grad) (backward! output)))

(define (free! . tensors)
  (for-each (lambda (t) (when (tensor? t) (tensor-free! t))) tensors))

(define (shared-losses group stage stages losses)
  ;; the last stage's loss values, on every stage of GROUP
  (let ((t (if (= stage (- stages 1))
               (tensor (vector->list losses) #:dtype 'f64)
               (zeros (vector-length losses) #:dtype 'f64))))
    (broadcast! t #:root (- stages 1) #:group group)
    (let ((result (tensor->list t)))
      (tensor-free! t)
      result)))

(define* (pipeline-step! #:key (group 'pp) (schedule '1f1b) (micro-batches 1)
                         forward (activation #f) (backward default-backward)
                         (share-losses? #f))
  "Run the forwards and backwards of MICRO-BATCHES micro-batches (M) through
the pipeline whose stages are the ranks of GROUP (a group, or mesh
dimensions: default @code{'pp}), this rank being stage (group-rank GROUP)
of P = (group-size GROUP). Every stage calls it with the same SCHEDULE and
MICRO-BATCHES; gradients accumulate into the stages' parameters as
backward! leaves them, ready for an optimizer step.

(FORWARD I INPUT) computes this stage on micro-batch I (0 to M - 1). INPUT
is #f on the first stage (FORWARD takes its data from I); on the others it
is the activation received from the previous stage, a fresh leaf that
requires grad. FORWARD returns a tensor: on the last stage the micro-batch's
loss, one element, already scaled as the caller wants the gradients summed
(e.g. divided by M for a mean); on the others the activation to send on.
(ACTIVATION I) returns (values SHAPE DTYPE [DEVICE]): what this stage
receives for micro-batch I (needed when the stage is not the first).

The backward of micro-batch I calls (BACKWARD I OUTPUT GRAD), by default
(backward! OUTPUT GRAD): OUTPUT is what FORWARD returned, GRAD the gradient
of the loss with respect to it received from the next stage (#f on the last
stage: OUTPUT is the loss). Then INPUT's gradient goes to the previous
stage (zeros when the forward did not use INPUT).

SCHEDULE is @code{'1f1b} (the default), @code{'gpipe} or
@code{'forward-only} (no backwards and no gradients: evaluation, e.g. under
with-no-grad); see pipeline-schedule for the order of the steps. Once a
micro-batch is done, the tensors FORWARD returned and those received for
it are released with tensor-free!: keep a clone of anything needed
afterwards.

Returns an alist: @code{losses}, the loss values (tensor-item) of the M
micro-batches on the last stage and #f on the others (on every stage with
SHARE-LOSSES? true: the last stage then broadcasts them, a collective over
GROUP, so that every stage must pass the same SHARE-LOSSES?); @code{stage},
@code{stages}, @code{schedule}, @code{micro-batches}; and the time this
stage spent, in milliseconds: @code{compute-ms} (in FORWARD and BACKWARD),
@code{recv-ms} (waiting for and receiving activations and gradients: the
pipeline bubble plus the transfers), @code{send-ms} and @code{total-ms}.

An error raised by FORWARD, BACKWARD or ACTIVATION, or a mismatch between
what a stage sends and what the next one expects, ends the step on that
rank; its peers, waiting for messages it will never send, fail at once
(on threads) or after (comm-timeout) seconds, and with-ranks raises
moelab-error naming the failed rank.
@example
(with-ranks 2 #:mesh '((pp . 2))
  (lambda (rank)
    (let ((w (randn '(4 4) #:dtype 'f64 #:seed rank #:requires-grad #t)))
      (assq-ref
       (pipeline-step! #:micro-batches 2
         #:forward (lambda (i input)
                     (let ((y (ttanh (matmul (or input (full '(3 4) (+ i 1.0) #:dtype 'f64)) w))))
                       (if (= rank 1) (t/ (tsum (t* y y)) 2.0) y)))
         #:activation (lambda (i) (values '(3 4) 'f64)))
       'losses))))
@end example"
  (define who "pipeline-step!")
  (unless (procedure? forward)
    (scm-error 'wrong-type-arg who "#:forward must be a procedure (lambda (i input) ...), not ~s"
               (list forward) (list forward)))
  (unless (procedure? backward)
    (scm-error 'wrong-type-arg who "#:backward must be a procedure (lambda (i output grad) ...), not ~s"
               (list backward) (list backward)))
  (check-schedule who schedule)
  (check-count who "#:micro-batches" micro-batches 1)
  (let* ((g (resolve-group group))
         (stages (group-size g))
         (stage (group-rank g))
         (first? (= stage 0))
         (last? (= stage (- stages 1)))
         (m micro-batches)
         (training? (not (eq? schedule 'forward-only)))
         (inputs (make-vector m #f))
         (outputs (make-vector m #f))
         (losses (make-vector m #f))
         (compute-ms 0.0) (recv-ms 0.0) (send-ms 0.0)
         (start (now-ms)))

    (define-syntax-rule (timed counter body ...)
      (let ((t0 (now-ms)))
        (call-with-values (lambda () body ...)
          (lambda results
            (set! counter (+ counter (- (now-ms) t0)))
            (apply values results)))))

    (define (transfer what i thunk)
      ;; a send or receive; a failure says which stage, micro-batch and message
      (catch 'moelab-error thunk
        (lambda (key . args)
          (call-with-values (lambda () (message-of args))
            (lambda (text status)
              (pipeline-error who status "stage ~a of ~a, micro-batch ~a: ~a: ~a"
                              stage stages i what text))))))

    (define (receive-buffer i)
      (call-with-values (lambda () (activation i))
        (case-lambda
          ((shape dtype) (zeros shape #:dtype dtype))
          ((shape dtype device) (zeros shape #:dtype dtype #:device device))
          (other
           (pipeline-error who 'arg "stage ~a, micro-batch ~a: #:activation returned ~s; it must \
return (values shape dtype [device])" stage i other)))))

    (define (check-output i out)
      (unless (tensor? out)
        (pipeline-error who 'arg "stage ~a of ~a, micro-batch ~a: #:forward returned ~s, not a tensor"
                        stage stages i out))
      (when (and last? (not (= (tensor-numel out) 1)))
        (pipeline-error who 'shape "stage ~a (the last), micro-batch ~a: #:forward must return the \
loss, one element, not a tensor of shape ~a" stage i (tensor-shape out))))

    (define (release-micro-batch! i out)
      ;; micro-batch I is done on this stage: its input and output go
      (free! (vector-ref inputs i) out)
      (vector-set! inputs i #f)
      (vector-set! outputs i #f))

    (define (run-step! step)
      (match step
        (('recv-activation i)
         (let ((buffer (receive-buffer i)))
           (timed recv-ms
             (transfer (format #f "receiving the activation from stage ~a" (- stage 1)) i
                       (lambda () (p2p-recv! buffer (- stage 1) (activation-tag i) g))))
           (when training? (requires-grad! buffer))
           (vector-set! inputs i buffer)))
        (('forward i)
         (let ((out (timed compute-ms (forward i (vector-ref inputs i)))))
           (check-output i out)
           (vector-set! outputs i out)
           (when last? (vector-set! losses i (tensor-item out)))
           (when (and last? (not training?))
             (release-micro-batch! i out))))
        (('send-activation i)
         (let ((out (vector-ref outputs i)))
           (timed send-ms
             (transfer (format #f "sending the activation to stage ~a" (+ stage 1)) i
                       (lambda () (p2p-send! out (+ stage 1) (activation-tag i) g))))
           (unless training? (release-micro-batch! i out))))
        (('recv-gradient i)
         (let ((grad (zeros-like (vector-ref outputs i))))
           (timed recv-ms
             (transfer (format #f "receiving the gradient from stage ~a" (+ stage 1)) i
                       (lambda () (p2p-recv! grad (+ stage 1) (gradient-tag i) g))))
           ;; the received gradient waits in the outputs' place: (output . grad)
           (vector-set! outputs i (cons (vector-ref outputs i) grad))))
        (('backward i)
         (let* ((entry (vector-ref outputs i))
                (out (if (pair? entry) (car entry) entry))
                (grad (and (pair? entry) (cdr entry))))
           (timed compute-ms (backward i out grad))
           (free! grad)
           (vector-set! outputs i #f)
           (if first?
               (release-micro-batch! i out)
               ;; the input goes once its gradient is sent
               (unless (eq? out (vector-ref inputs i)) (free! out)))))
        (('send-gradient i)
         (let* ((input (vector-ref inputs i))
                (grad (or (tensor-grad input) (zeros-like input))))
           (timed send-ms
             (transfer (format #f "sending the gradient to stage ~a" (- stage 1)) i
                       (lambda () (p2p-send! grad (- stage 1) (gradient-tag i) g))))
           (free! grad)
           (release-micro-batch! i #f)))))

    (when (and (not first?) (not (procedure? activation)))
      (pipeline-error who 'arg "stage ~a of ~a receives activations: pass #:activation \
(lambda (i) (values shape dtype))" stage stages))
    (for-each run-step! (pipeline-schedule schedule stages stage m))
    `((losses . ,(cond (share-losses? (shared-losses g stage stages losses))
                       (last? (vector->list losses))
                       (else #f)))
      (stage . ,stage)
      (stages . ,stages)
      (schedule . ,schedule)
      (micro-batches . ,m)
      (compute-ms . ,compute-ms)
      (recv-ms . ,recv-ms)
      (send-ms . ,send-ms)
      (total-ms . ,(- (now-ms) start)))))
