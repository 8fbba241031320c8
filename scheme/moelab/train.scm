;;; (moelab train) — optimizers, gradient clipping, learning-rate schedules
;;; and metrics files (the manual: "Optimizers and schedules", and "Metrics
;;; files" in "Training"; the C core in core/train/).
;;;
;;; @example
;;; (define w (randn '(4 3) #:seed 1 #:requires-grad #t))
;;; (define o (make-adamw `(("w" . ,w)) #:lr 1e-2))
;;; (define lr-at (make-lr-schedule 'cosine #:lr 1e-2 #:warmup 10 #:total 100))
;;; (backward! (tsum (t* w w)))
;;; (clip-grad-norm! (optimizer-parameters o) 1.0)
;;; (set-optimizer-lr! o (lr-at 0))
;;; (optimizer-step! o)
;;; (optimizer-zero-grad! o)
;;; (define log (make-metrics-log "runs/a/metrics.jsonl" #:header '((config (lr . 0.01)) (seed . 0))))
;;; (metrics-log-write! log '((step . 0) (loss . 2.5)))
;;; (metrics-log-close! log)
;;; (read-jsonl "runs/a/metrics.jsonl")
;;; @end example

(define-module (moelab train)
  #:use-module (moelab primitives)
  #:use-module (moelab tensor)
  #:use-module ((oop goops) #:select (define-method))
  #:re-export (<optimizer> <metrics-log>)
  #:export (make-adamw make-sgd optimizer? optimizer-step! optimizer-zero-grad!
            optimizer-lr set-optimizer-lr! optimizer-steps optimizer-config
            optimizer-parameters optimizer-state optimizer-load-state!
            clip-grad-norm! grad-norm clip-scale
            make-lr-schedule lr-schedule-config
            make-metrics-log metrics-log? metrics-log-write! metrics-log-path
            metrics-log-close! read-jsonl json-line))

(define (train-error who fmt . args)
  (throw 'moelab-error who
         (string-join (string-split (apply format #f fmt args) #\~) "~~")
         '() '(arg)))

;;; ---- optimizers ----------------------------------------------------------------------

(define (betas-pair betas)
  (cond ((and (pair? betas) (real? (car betas)) (real? (cdr betas))) betas)
        ((and (list? betas) (= (length betas) 2) (real? (car betas)) (real? (cadr betas)))
         (cons (car betas) (cadr betas)))
        (else (train-error 'make-adamw "betas must be a pair of numbers such as (0.9 . 0.95), got ~s" betas))))

(define* (make-adamw params #:key (lr 3e-4) (betas '(0.9 . 0.95)) (eps 1e-8)
                     (weight-decay 0.1) (no-decay '("norm" "bias")))
  "An AdamW optimizer over PARAMS, an alist (name . tensor) such as
model-parameters returns (a plain list of tensors is named \"0\", \"1\", …).
It is PyTorch's AdamW: for each parameter with a gradient g at its step t,
p ← p·(1 − lr·wd), m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g², then
p ← p − lr/(1−β1^t) · m / (√v/√(1−β2^t) + eps). Parameters whose name
contains one of the NO-DECAY substrings get no weight decay. BETAS is a pair
(β1 . β2), each in [0, 1). The parameters are updated in place (the tensors
keep their identity), outside autograd. Bad settings or parameters (not a
tensor, not f32/f64, not a leaf, given twice) raise moelab-error."
  (let ((b (betas-pair betas)))
    (%make-adamw params lr (car b) (cdr b) eps weight-decay no-decay)))

(define* (make-sgd params #:key (lr 1e-2) (momentum 0) (dampening 0) (weight-decay 0)
                   (nesterov? #f))
  "An SGD optimizer over PARAMS (an alist (name . tensor), as make-adamw),
with PyTorch's SGD semantics: d = g + wd·p; with MOMENTUM μ a buffer b starts
at d and then runs b ← μ·b + (1 − DAMPENING)·d, and d = b (or d + μ·b with
NESTEROV?); p ← p − lr·d, in place."
  (%make-sgd params lr momentum dampening weight-decay nesterov?))

(define (optimizer? obj)
  "True when OBJ is an optimizer (make-adamw, make-sgd)."
  (%optimizer? obj))

(define-method (write (o <optimizer>) port) (display (%optimizer-repr o) port))
(define-method (display (o <optimizer>) port) (display (%optimizer-repr o) port))

(define* (optimizer-step! o #:key (grad-scale 1.0))
  "Update every parameter of O that has a gradient (those without one are
skipped, their step count unchanged). Every gradient is checked first (shape,
dtype, device): on an error nothing changes. GRAD-SCALE (finite, > 0)
multiplies each gradient as it is read, in its own precision, and leaves the
gradients as they are: with the clipping factor (clip-scale) the update is,
bit for bit, that of clip-grad-norm! followed by optimizer-step!, without a
pass that scales the gradients in memory."
  (%optimizer-step! o grad-scale))

(define (optimizer-zero-grad! o)
  "Drop the gradients of O's parameters (the next backward! starts afresh)."
  (%optimizer-zero-grad! o))

(define (optimizer-lr o)
  "The learning rate O uses for its next step."
  (%optimizer-lr o))

(define (set-optimizer-lr! o lr)
  "Set the learning rate of O's next steps: a finite number >= 0 (else a
moelab-error, and the old rate stays)."
  (%set-optimizer-lr! o lr))

(define (optimizer-steps o)
  "How many steps O has taken."
  (%optimizer-steps o))

(define (optimizer-config o)
  "O's kind and settings as an alist: ((kind . adamw) (lr . …) (betas . …) …)."
  (%optimizer-config o))

(define (optimizer-parameters o)
  "O's parameters as an alist (name . tensor), in the order given: the live
tensors, so clip-grad-norm! and backward! act on them."
  (map (lambda (e) (cons (car e) (cadr e))) (%optimizer-parameters o)))

(define (optimizer-state o)
  "O's state, for checkpoints, as an alist keyed by strings: (\"step\" . N),
then per parameter (\"NAME.step\" . its steps) and its moment tensors,
\"NAME.exp_avg\" and \"NAME.exp_avg_sq\" (AdamW) or \"NAME.momentum_buffer\"
(SGD with momentum). The tensors are the live ones: clone them to keep a
snapshot."
  (%optimizer-state o))

(define (optimizer-load-state! o state)
  "Load STATE (an alist as optimizer-state returns; steps as integers or
tensors, moments as tensors of each parameter's shape) into O. Every entry is
checked first — no unknown or missing names, right shapes, counts >= 0,
finite moments — and on an error O is unchanged."
  (%optimizer-load-state! o state))

;;; ---- clipping -------------------------------------------------------------------------

(define (clip-grad-norm! params max)
  "The L2 norm of all the gradients of PARAMS together (an alist (name .
tensor) or a list of tensors; parameters without a gradient count as zero),
as PyTorch's clip_grad_norm_: when it exceeds MAX, every gradient is scaled
by MAX/(norm + 1e-6). Returns the norm before clipping. A NaN or infinite
norm is returned and the gradients left as they are."
  (%clip-grad-norm! params max))

(define (grad-norm params)
  "The L2 norm of all the gradients of PARAMS together, without clipping."
  (%grad-norm params))

(define (clip-scale norm max)
  "The factor by which clip-grad-norm! with maximum MAX (finite, > 0) scales
gradients whose total norm is NORM: MAX/(NORM + 1e-6) when that is below 1
and NORM is finite, else 1. Pass it to optimizer-step! as #:grad-scale to
clip inside the update."
  (%clip-scale norm max))

;;; ---- schedules ------------------------------------------------------------------------

(define schedule-configs (make-weak-key-hash-table))

(define* (make-lr-schedule kind #:key (lr 3e-4) (warmup 0) (total #f) (min-lr 0)
                           (decay-fraction 0.2) (decay-type 'linear))
  "A procedure from the optimizer step s = 0, 1, … (the step about to be
taken) to its learning rate. KIND is 'constant, 'cosine or 'wsd. Every kind
warms up linearly over WARMUP steps: lr·(s+1)/WARMUP for s < WARMUP. Then:
'constant: LR. 'cosine: with p = (s − W)/(TOTAL − W),
MIN-LR + (LR − MIN-LR)·½(1 + cos πp) until TOTAL, MIN-LR from TOTAL on.
'wsd (warmup, stable, decay): LR until the last D = ⌊DECAY-FRACTION·TOTAL⌋
steps before TOTAL, then with p = (s − TOTAL + D)/D, LR − (LR − MIN-LR)·p
(DECAY-TYPE 'linear) or MIN-LR + (LR − MIN-LR)·(1 − √p) ('1-sqrt); MIN-LR from
TOTAL on. Bad settings (unknown kind, negative lr, warmup > total, …) raise
moelab-error here, not at the first step."
  (%lr-schedule-check kind lr warmup total min-lr decay-fraction decay-type)
  (let ((proc (lambda (step)
                (%lr-schedule-at kind lr warmup total min-lr decay-fraction decay-type step))))
    (hashq-set! schedule-configs proc
                `((kind . ,kind) (lr . ,lr) (warmup . ,warmup) (total . ,total) (min-lr . ,min-lr)
                  (decay-fraction . ,decay-fraction) (decay-type . ,decay-type)))
    proc))

(define (lr-schedule-config proc)
  "The settings of a schedule made by make-lr-schedule, as an alist, or #f
for any other procedure."
  (hashq-ref schedule-configs proc #f))

;;; ---- metrics files --------------------------------------------------------------------

(define* (make-metrics-log path #:key (header '()) (append? #f))
  "Open the metrics file PATH (JSON Lines; missing directories are made) and
write its first line: the HEADER alist as a JSON object, with \"config\"
first (an object, {} when HEADER has none), then \"moelab\" (the version),
\"seed\", \"threads\" and \"started\" (UTC, ISO 8601) unless HEADER gives
them, then HEADER's other entries. With APPEND? an existing non-empty file is
continued without a second header."
  (%make-metrics-log path header append?))

(define (metrics-log? obj)
  "True when OBJ is a metrics log (make-metrics-log)."
  (%metrics-log? obj))

(define (metrics-log-write! log record)
  "Append RECORD, an alist, to LOG as one JSON line (written and flushed at
once). Values: numbers (NaN and ±Inf become null), strings, symbols,
booleans, lists and vectors (arrays), alists (objects) and tensors (nested
arrays)."
  (%metrics-log-write! log record))

(define (metrics-log-path log)
  "The file LOG writes to."
  (%metrics-log-path log))

(define (metrics-log-close! log)
  "Close LOG (again: no effect). Later writes raise moelab-error."
  (%metrics-log-close! log))

(define (read-jsonl path)
  "Every line of the JSON Lines file PATH as a list of alists (symbol keys,
in file order; arrays become lists, null becomes +nan.0). Blank lines are
skipped and a torn last line (a run killed while writing) is dropped; any
other bad line raises moelab-error naming the file and line."
  (%read-jsonl path))

(define (json-line value)
  "VALUE as the one line of JSON (a string, no newline) that
metrics-log-write! would write for it."
  (%json-line value))
