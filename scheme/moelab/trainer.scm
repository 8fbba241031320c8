;;; (moelab trainer) — the training loop: one optimizer step at a time over
;;; gradient-accumulated micro-batches, evaluation per domain, metrics files,
;;; a progress display, pause and resume (the manual: "Training").
;;;
;;; The heavy work stays in C: the model's forward and backward, the
;;; optimizer, clipping, the data sampler, the routers' metrics and the JSON
;;; writer. This module sequences them and shapes what they report.
;;;
;;; @example
;;; (define m (make-moe-transformer #:layers 2 #:hidden 64 #:heads 4 #:ffn 128 #:experts 4))
;;; (define ds (make-text-dataset #:domains '((bible . "data/corpus/bible")) #:seq-len 64))
;;; (define vs (make-text-dataset #:domains '((bible . "data/corpus/bible")) #:seq-len 64 #:split 'val))
;;; (define tr (make-trainer #:model m #:optimizer (make-adamw (model-parameters m) #:lr 3e-3)
;;;                          #:dataset ds #:val-dataset vs #:batch-size 8 #:log "runs/a/metrics.jsonl"))
;;; (trainer-run! tr #:steps 20)
;;; (trainer-evaluate tr)
;;; @end example
(define-module (moelab trainer)
  #:use-module (moelab primitives)
  #:use-module (moelab tensor)
  #:use-module (moelab ops)
  #:use-module (moelab autograd)
  #:use-module (moelab nn)
  #:use-module (moelab train)
  #:use-module (moelab data)
  #:use-module (moelab dist)
  #:use-module (moelab parallel)
  #:use-module (moelab pipeline)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-9)
  #:use-module (srfi srfi-9 gnu)
  #:use-module (ice-9 format)
  #:re-export (model-gather-parameters)
  #:export (make-trainer trainer? trainer-step! trainer-run! trainer-evaluate
            trainer-pause! trainer-resume! trainer-paused? trainer-stop!
            current-trainer trainer-steps trainer-tokens trainer-last-metrics
            trainer-last-eval trainer-model trainer-optimizer trainer-dataset
            trainer-val-dataset trainer-config trainer-log-path trainer-set!
            trainer-close! trainer-interrupted? trainer-routing-report trainer-unigram-entropy
            num-threads set-num-threads! peak-rss
            trainer-checkpoint-dir trainer-state trainer-load-state!
            trainer-mesh trainer-comm-stats trainer-pipeline-stats))

(define (trainer-error who fmt . args)
  (throw 'moelab-error who
         (string-join (string-split (apply format #f fmt args) #\~) "~~")
         '() '(arg)))

;;; ---- the record ---------------------------------------------------------------------

(define-record-type <trainer>
  (%trainer model optimizer dataset val-dataset batch-size grad-accum schedule clip
            log-path log eval-every eval-batches seed ignore-index print-every config
            steps tokens paused? stop? last-metrics last-eval interrupted?
            checkpoint-dir checkpoint-every keep-last plan)
  rec:trainer?
  (model rec:trainer-model)
  (optimizer rec:trainer-optimizer)
  (dataset rec:trainer-dataset)
  (val-dataset rec:trainer-val-dataset)
  (batch-size tr-batch-size set-tr-batch-size!)
  (grad-accum tr-grad-accum set-tr-grad-accum!)
  (schedule tr-schedule set-tr-schedule!)
  (clip tr-clip set-tr-clip!)
  (log-path rec:trainer-log-path)
  (log tr-log set-tr-log!)
  (eval-every tr-eval-every set-tr-eval-every!)
  (eval-batches tr-eval-batches set-tr-eval-batches!)
  (seed tr-seed)
  (ignore-index tr-ignore-index)
  (print-every tr-print-every set-tr-print-every!)
  (config tr-user-config)
  (steps rec:trainer-steps set-tr-steps!)
  (tokens rec:trainer-tokens set-tr-tokens!)
  (paused? rec:trainer-paused? set-tr-paused!)
  (stop? tr-stop? set-tr-stop!)
  (last-metrics rec:trainer-last-metrics set-tr-last-metrics!)
  (last-eval rec:trainer-last-eval set-tr-last-eval!)
  (interrupted? rec:trainer-interrupted? set-tr-interrupted!)
  (checkpoint-dir rec:trainer-checkpoint-dir)
  (checkpoint-every tr-checkpoint-every)
  (keep-last tr-keep-last)
  (plan tr-plan))                      ; #f, or the parallel plan of #:mesh

;; Set by (moelab checkpoint), which needs this module: called as (HOOK TR
;; DIR KEEP-LAST) after every checkpoint-every-th step.
(define %checkpoint-hook #f)
(define (%set-trainer-checkpoint-hook! proc)
  "Internal: the procedure that writes the periodic checkpoints."
  (set! %checkpoint-hook proc))

;; Set by (moelab control): called as (HOOK TR) at each step boundary of
;; trainer-run!, so that a job's ranks pause, resume and stop together.
(define %step-hook #f)
(define (%set-trainer-step-hook! proc)
  "Internal: the procedure trainer-run! calls at each step boundary."
  (set! %step-hook proc))

(define (trainer-checkpoint-dir tr)
  "The directory of TR's periodic checkpoints (#:checkpoint-dir), or #f."
  (rec:trainer-checkpoint-dir tr))

(define (trainer? obj)
  "True when OBJ is a trainer (make-trainer)."
  (rec:trainer? obj))

(define (trainer-model tr)
  "The model TR trains."
  (rec:trainer-model tr))

(define (trainer-optimizer tr)
  "The optimizer of TR."
  (rec:trainer-optimizer tr))

(define (trainer-dataset tr)
  "The training dataset of TR."
  (rec:trainer-dataset tr))

(define (trainer-val-dataset tr)
  "The validation dataset of TR, or #f."
  (rec:trainer-val-dataset tr))

(define (trainer-log-path tr)
  "The metrics file of TR, or #f."
  (rec:trainer-log-path tr))

(define (trainer-steps tr)
  "The optimizer steps TR has taken."
  (rec:trainer-steps tr))

(define (trainer-tokens tr)
  "The training tokens TR has consumed (targets counted)."
  (rec:trainer-tokens tr))

(define (trainer-paused? tr)
  "True while TR is paused (trainer-pause!)."
  (rec:trainer-paused? tr))

(define (trainer-last-metrics tr)
  "The metrics alist of TR's last step (trainer-step!), or #f."
  (rec:trainer-last-metrics tr))

(define (trainer-last-eval tr)
  "The result of TR's last evaluation (trainer-evaluate), or #f."
  (rec:trainer-last-eval tr))

(define (trainer-interrupted? tr)
  "True when Ctrl-C stopped TR's last run."
  (rec:trainer-interrupted? tr))

(set-record-type-printer!
 <trainer>
 (lambda (tr port)
   (format port "#<trainer step ~a, ~a tokens, B=~a×~a~a~a>"
           (trainer-steps tr) (trainer-tokens tr) (tr-batch-size tr) (tr-grad-accum tr)
           (if (trainer-paused? tr) ", paused" "")
           (if (trainer-log-path tr) (format #f ", log ~a" (trainer-log-path tr)) ""))))

(define %current-trainer #f)

;; Thread ranks share this process's (current-trainer): rank 0's trainer is
;; it. A process of an mpirun job has its own.
(define (owns-current-trainer?)
  (or (zero? (current-rank)) (mpi-launched?)))

(define (current-trainer)
  "The trainer that trainer-run! is running, or else the one made last (#f
before any): from a REPL attached with --listen, (current-trainer) is the
run going on."
  %current-trainer)

;;; ---- threads and memory --------------------------------------------------------------

(define (num-threads)
  "The number of threads the kernels use (MOELAB_NUM_THREADS at start-up)."
  (%num-threads))

(define (set-num-threads! n)
  "Use N threads (an integer in [1, 1024]) in the kernels from now on."
  (%set-num-threads! n))

(define (peak-rss)
  "The peak resident set size of this process so far, in bytes."
  (%peak-rss))

;;; ---- checking arguments ----------------------------------------------------------------

(define (positive-int? x) (and (exact-integer? x) (positive? x)))

(define (check who what ok? value expected)
  (unless (ok? value)
    (trainer-error who "~a must be ~a, got ~s" what expected value)))

(define (check-settings who batch-size grad-accum schedule clip eval-every eval-batches print-every)
  (check who "#:batch-size" positive-int? batch-size "a positive integer")
  (check who "#:grad-accum" positive-int? grad-accum "a positive integer")
  (check who "#:schedule" (lambda (s) (or (not s) (procedure? s))) schedule
         "#f or a procedure from the step to a learning rate (make-lr-schedule)")
  (check who "#:clip" (lambda (c) (or (not c) (and (real? c) (positive? c)))) clip
         "#f or a positive number")
  (check who "#:eval-every" (lambda (e) (or (not e) (positive-int? e))) eval-every
         "#f or a positive integer")
  (check who "#:eval-batches" positive-int? eval-batches "a positive integer")
  (check who "#:print-every" positive-int? print-every "a positive integer"))

;;; ---- JSON-ready configuration ---------------------------------------------------------

(define (jsonable x)
  ;; Scheme data the metrics writer takes: keywords and unknown objects as strings.
  (cond ((keyword? x) (symbol->string (keyword->symbol x)))
        ((or (number? x) (string? x) (symbol? x) (boolean? x) (null? x)) x)
        ((tensor? x) x)
        ((and (pair? x) (list? x)) (map jsonable x))
        ((and (pair? x) (or (symbol? (car x)) (keyword? (car x)) (string? (car x))))
         (cons (let ((k (car x))) (if (keyword? k) (keyword->symbol k) k)) (jsonable (cdr x))))
        ((pair? x) (list (jsonable (car x)) (jsonable (cdr x))))   ; (0.9 . 0.95) as [0.9, 0.95]
        ((vector? x) (list->vector (map jsonable (vector->list x))))
        (else (format #f "~a" x))))

(define (trainer-config tr)
  "The settings of TR as an alist, as written under \"config\" on the first
line of its metrics file: the model, optimizer, schedule, data and trainer
settings, and the #:config alist given to make-trainer."
  (let ((vs (trainer-val-dataset tr)))
    (jsonable
     `((model . ,(model-config (trainer-model tr)))
       (optimizer . ,(optimizer-config (trainer-optimizer tr)))
       (schedule . ,(and (tr-schedule tr) (or (lr-schedule-config (tr-schedule tr)) "custom")))
       (data . ,(dataset-summary (trainer-dataset tr)))
       (val-data . ,(and vs (dataset-summary vs)))
       (mesh . ,(trainer-mesh tr))
       (trainer . ((batch-size . ,(tr-batch-size tr)) (grad-accum . ,(tr-grad-accum tr))
                   (clip . ,(tr-clip tr)) (eval-every . ,(tr-eval-every tr))
                   (eval-batches . ,(tr-eval-batches tr)) (ignore-index . ,(tr-ignore-index tr))
                   (seed . ,(tr-seed tr))))
       (user . ,(tr-user-config tr))))))

(define (dataset-summary ds)
  (let ((info (dataset-info ds)))
    `((seq-len . ,(assq-ref info 'seq-len)) (vocab-size . ,(assq-ref info 'vocab-size))
      (split . ,(assq-ref info 'split)) (batching . ,(assq-ref info 'batching))
      (domains . ,(map (lambda (d)
                         (cons (car d)
                               (filter (lambda (p) (memq (car p) '(tokens sequences probability)))
                                       (cdr d))))
                       (assq-ref info 'domains))))))

;;; ---- making one ----------------------------------------------------------------------

(define* (make-trainer #:key model optimizer dataset (val-dataset #f) (batch-size 8)
                       (grad-accum 1) (schedule #f) (clip #f) (log #f) (eval-every #f)
                       (eval-batches 4) (seed 0) (ignore-index -100) (print-every 10)
                       (config '()) (checkpoint-dir #f) (checkpoint-every #f) (keep-last #f)
                       (mesh (%default-mesh)) (zero #f) (pp-schedule '1f1b) (stage-layers #f)
                       (bucket-bytes (* 25 1024 1024)))
  "A trainer for MODEL (make-moe-transformer) with OPTIMIZER (make-adamw or
make-sgd over the model's parameters), drawing its batches from DATASET
(make-text-dataset) and evaluating on VAL-DATASET (#f: no evaluation).

Each optimizer step (trainer-step!) runs GRAD-ACCUM micro-batches of
BATCH-SIZE sequences; each micro-batch's loss is scaled by 1/GRAD-ACCUM
before backward, so the step's gradient is the mean over the
GRAD-ACCUM·BATCH-SIZE sequences. SCHEDULE, a procedure from the step
(0, 1, …) to the learning rate (make-lr-schedule), sets the rate before each
step (#f keeps the optimizer's). CLIP, a positive number, clips the global
gradient norm (as clip-grad-norm! would; the optimizer applies the factor
as it reads the gradients); #f only measures it. LOG, a file name, is
the metrics file (JSON Lines; line 1 holds the settings, see
trainer-config); #f writes none. Every EVAL-EVERY steps (#f: never)
trainer-run! evaluates on EVAL-BATCHES batches per domain of VAL-DATASET.
SEED is recorded in the metrics file (the model and the datasets carry
their own seeds). IGNORE-INDEX is the target value that counts for nothing
in the loss. PRINT-EVERY is how often trainer-run! prints a line when its
output is not a terminal. CONFIG, an alist, is recorded with the settings.
With CHECKPOINT-DIR (a directory) and CHECKPOINT-EVERY (a positive integer),
every CHECKPOINT-EVERY-th step ends with save-checkpoint into
CHECKPOINT-DIR; KEEP-LAST (#f: all) is how many step directories to keep.

MESH (default: the --mesh of moelab train, else #f), an alist over pp, dp and ep such as @code{'((pp . 2) (dp . 2) (ep
. 2))} whose sizes multiply to the world size, makes the run parallel
(inside with-ranks, or one process per rank under mpirun): BATCH-SIZE is
then the global micro-batch, split over the dp × ep data ranks; MoE layers
shard their experts over ep; the layers split into pp pipeline stages
(STAGE-LAYERS, a list of layer counts, or balanced by parameter count) run
with PP-SCHEDULE ('1f1b or 'gpipe). This rank's model and optimizer are
made from MODEL and OPTIMIZER (their configuration and values) and
trainer-model returns it. ZERO 1 shards the optimizer state over the data
ranks. BUCKET-BYTES sizes the gradient all-reduce buckets. Every logged
number is global; only world rank 0 writes LOG and prints.

Bad settings raise moelab-error before anything is made."
  (define who "make-trainer")
  (check who "#:model" moe-transformer? model "a model (make-moe-transformer)")
  (check who "#:optimizer" optimizer? optimizer "an optimizer (make-adamw, make-sgd)")
  (check who "#:dataset" dataset? dataset "a dataset (make-text-dataset)")
  (check who "#:val-dataset" (lambda (v) (or (not v) (dataset? v))) val-dataset
         "#f or a dataset (make-text-dataset)")
  (check-settings who batch-size grad-accum schedule clip eval-every eval-batches print-every)
  (check who "#:log" (lambda (l) (or (not l) (string? l))) log "#f or a file name")
  (check who "#:seed" exact-integer? seed "an integer")
  (check who "#:ignore-index" exact-integer? ignore-index "an integer")
  (check who "#:config" list? config "an alist")
  (check who "#:checkpoint-dir" (lambda (d) (or (not d) (string? d))) checkpoint-dir "#f or a directory name")
  (check who "#:checkpoint-every" (lambda (e) (or (not e) (positive-int? e))) checkpoint-every
         "#f or a positive integer")
  (check who "#:keep-last" (lambda (k) (or (not k) (positive-int? k))) keep-last "#f or a positive integer")
  (when (and checkpoint-every (not checkpoint-dir))
    (trainer-error who "#:checkpoint-every needs a #:checkpoint-dir"))
  (let ((v (model-config model)))
    (when (> (dataset-vocab-size dataset) (assq-ref v 'vocab))
      (trainer-error who "the dataset's tokenizer has ~a tokens but the model's vocabulary only ~a"
                     (dataset-vocab-size dataset) (assq-ref v 'vocab)))
    (when (> (dataset-seq-len dataset) (assq-ref v 'max-seq))
      (trainer-error who "the dataset's sequences (~a tokens) are longer than the model's max-seq ~a"
                     (dataset-seq-len dataset) (assq-ref v 'max-seq))))
  (let* ((plan (and mesh (make-parallel-plan who mesh model optimizer batch-size
                                             #:stage-layers stage-layers #:schedule pp-schedule
                                             #:zero zero #:bucket-bytes bucket-bytes)))
         (tr (%trainer (if plan (plan-model plan) model) (if plan (plan-optimizer plan) optimizer)
                       dataset val-dataset batch-size grad-accum schedule clip
                       log #f eval-every eval-batches seed ignore-index print-every config
                       0 0 #f #f #f #f #f checkpoint-dir checkpoint-every keep-last plan)))
    (set-model-grad-accum! (trainer-model tr) grad-accum)
    (when (and log (zero? (current-rank)))
      (set-tr-log! tr (make-metrics-log log #:header `((config . ,(trainer-config tr))
                                                     (seed . ,seed)))))
    (when (owns-current-trainer?) (set! %current-trainer tr))
    tr))

(define (trainer-mesh tr)
  "The mesh of TR's parallel run as an alist ((pp . P) (dp . D) (ep . E)),
or #f for a one-process trainer."
  (and (tr-plan tr) (plan-mesh (tr-plan tr))))

(define (trainer-pipeline-stats tr)
  "The pipeline timings of TR's last step under a pipeline mesh (the alist
pipeline-step! returns: compute-ms, recv-ms, send-ms, total-ms, …), or #f."
  (and (tr-plan tr) (plan-pipeline-stats (tr-plan tr))))

(define (trainer-comm-stats tr)
  "The gradient reducers' statistics of TR's parallel run (grad-sync-stats
of each), or '() for a one-process trainer."
  (if (tr-plan tr) (plan-comm-stats (tr-plan tr)) '()))

(define (trainer-close! tr)
  "Close TR's metrics file (later steps write no metrics)."
  (when (tr-log tr)
    (metrics-log-close! (tr-log tr))
    (set-tr-log! tr #f)))

(define (trainer-set! tr key value)
  "Change one setting of TR between steps: KEY is one of batch-size,
grad-accum, clip, eval-every, eval-batches, print-every (checked as
make-trainer checks them) or lr (the optimizer's rate, and no schedule from
now on)."
  (define who "trainer-set!")
  (let ((get (lambda (k cur) (if (eq? key k) value cur))))
    (case key
      ((batch-size grad-accum clip eval-every eval-batches print-every)
       (check-settings who (get 'batch-size (tr-batch-size tr)) (get 'grad-accum (tr-grad-accum tr))
                       (tr-schedule tr) (get 'clip (tr-clip tr)) (get 'eval-every (tr-eval-every tr))
                       (get 'eval-batches (tr-eval-batches tr)) (get 'print-every (tr-print-every tr)))
       (case key
         ((batch-size) (set-tr-batch-size! tr value))
         ((grad-accum) (set-model-grad-accum! (trainer-model tr) value) (set-tr-grad-accum! tr value))
         ((clip) (set-tr-clip! tr value))
         ((eval-every) (set-tr-eval-every! tr value))
         ((eval-batches) (set-tr-eval-batches! tr value))
         ((print-every) (set-tr-print-every! tr value))))
      ((lr)
       (set-optimizer-lr! (trainer-optimizer tr) value)
       (set-tr-schedule! tr #f))
      (else (trainer-error who "unknown setting ~s (batch-size, grad-accum, clip, eval-every, eval-batches, print-every, lr)"
                           key)))))

;;; ---- one step ----------------------------------------------------------------------

(define (tensor-row t) (if t (tensor->list t) '()))

(define (aux-kinds router-metrics)
  (delete-duplicates (append-map (lambda (m) (map car (assq-ref m 'aux-losses))) router-metrics)))

;; One alist per MoE layer from this process's routers: BEFORE and AFTER
;; their step (the step window, then the global and bias values).
(define (local-routing-rows before after)
  (let ((kinds (aux-kinds before)))
    (map (lambda (m a)
           `((tokens_per_expert . ,(tensor-row (assq-ref m 'tokens-per-expert-step)))
             (max_vio . ,(assq-ref m 'max-violation-step))
             (max_vio_global . ,(assq-ref a 'max-violation-global))
             (cv . ,(assq-ref m 'cv))
             (entropy . ,(assq-ref m 'entropy))
             (dead_fraction . ,(assq-ref m 'dead-fraction))
             (dropped_fraction . ,(assq-ref m 'dropped-fraction))
             (aux . ,(map (lambda (k) (cons k (assq-ref (assq-ref m 'aux-losses) k))) kinds))
             (expert_bias . ,(let ((b (assq-ref a 'bias))) (and b (tensor->list b))))))
         before after)))

(define (step-metrics tr loss lr norm ms rows)
  (let ((step-tokens (* (tr-grad-accum tr) (tr-batch-size tr) (dataset-seq-len (trainer-dataset tr))))
        (col (lambda (key) (map (lambda (r) (assq-ref r key)) rows)))
        (kinds (delete-duplicates (append-map (lambda (r) (map car (assq-ref r 'aux))) rows))))
    `((step . ,(trainer-steps tr))
      (tokens . ,(trainer-tokens tr))
      (loss . ,loss)
      (lr . ,lr)
      (grad_norm . ,norm)
      (tokens_per_s . ,(if (positive? ms) (/ (* 1000.0 step-tokens) ms) +nan.0))
      (step_ms . ,ms)
      (aux . ,(map (lambda (k)
                     (cons k (map (lambda (r) (or (assq-ref (assq-ref r 'aux) k) +nan.0)) rows)))
                   kinds))
      (max_vio . ,(col 'max_vio))
      (max_vio_global . ,(col 'max_vio_global))
      (cv . ,(col 'cv))
      (entropy . ,(col 'entropy))
      (dead_fraction . ,(col 'dead_fraction))
      (dropped_fraction . ,(col 'dropped_fraction))
      (tokens_per_expert . ,(col 'tokens_per_expert))
      ,@(if (any (lambda (r) (assq-ref r 'expert_bias)) rows)
            `((expert_bias . ,(map (lambda (r) (or (assq-ref r 'expert_bias) '())) rows)))
            '())
      ,@(if (any (lambda (r) (assq-ref r 'ep_overload)) rows)
            `((ep_overload . ,(col 'ep_overload)))
            '()))))

(define (now-ms) (/ (* 1000.0 (get-internal-real-time)) internal-time-units-per-second))

(define (trainer-step! tr)
  "One optimizer step of TR: set the learning rate from the schedule, run
grad-accum micro-batches (forward, loss scaled by 1/grad-accum, backward),
clip, update the parameters, advance the routers (model-step!: expert
biases, balance trackers) and drop the gradients. Writes the step's line to
the metrics file and returns it as an alist: step (optimizer steps done),
tokens (cumulative), loss (mean over the micro-batches), lr, grad_norm
(before clipping), tokens_per_s, step_ms, aux (loss kind → list over MoE
layers), max_vio, max_vio_global, cv, entropy, dead_fraction,
dropped_fraction (lists over MoE layers), tokens_per_expert ([L][E]) and
expert_bias ([L][E], when the routers have one). The routing statistics
are the routers' own (router-metrics).

Under #:mesh every rank of the world calls it: each micro-batch's loss is
weighted by the rank's share of the step's target tokens, the gradients are
reduced over the data ranks (in buckets, during the last backward), the
pipeline runs its schedule, and every number returned is the global one
(ep_overload, per MoE layer, is added under expert parallelism: the most
loaded expert-parallel rank's tokens over the mean)."
  (let* ((m (trainer-model tr)) (o (trainer-optimizer tr)) (ds (trainer-dataset tr))
         (n (tr-grad-accum tr)) (b (tr-batch-size tr))
         (lr (if (tr-schedule tr) ((tr-schedule tr) (trainer-steps tr)) (optimizer-lr o)))
         (t0 (now-ms)))
    (set-optimizer-lr! o lr)
    (unless (model-training? m) (model-training! m #t))
    (catch #t
      (lambda ()
        ;; The step frees its activations and gradients itself: a collection
        ;; triggered by their growth would find nothing to collect.
        (%call-with-memory-reports-held
         (lambda ()
           (if (tr-plan tr)
               (parallel-step! tr (tr-plan tr) m o ds n b lr t0)
               (accumulate-and-update! tr m o ds n b lr t0)))))
      (lambda (key . args)
        ;; A failed micro-batch leaves no partial gradient behind.
        (optimizer-zero-grad! o)
        (model-zero-grad! m)
        (apply throw key args)))))

;; The micro-batches of one step, then the update, the routers' step and the metrics.
(define (accumulate-and-update! tr m o ds n b lr t0)
  (let loop ((i 0) (loss-sum 0.0) (tokens 0))
    (if (< i n)
        (call-with-values (lambda () (dataset-next-batch ds b))
          (lambda (x y domains)
            (let* ((loss (model-loss m x y #:ignore-index (tr-ignore-index tr)))
                   (scaled (if (= n 1) loss (t* loss (/ 1.0 n))))
                   (value (tensor-item loss))
                   (count (apply * (tensor-shape y))))
              (backward! scaled)
              ;; Release the step's tensors now rather than at the next
              ;; garbage collection: the graph they hold on to is large.
              (for-each tensor-free! (delete-duplicates (list scaled loss x y) eq?))
              (loop (+ i 1) (+ loss-sum value) (+ tokens count)))))
        (let ((norm (grad-norm (optimizer-parameters o))))
          (optimizer-step! o #:grad-scale (step-grad-scale tr norm))
          (let ((before (%model-router-metrics m)))
            (model-step! m)
            (let* ((after (%model-router-metrics m))
                   (rows (local-routing-rows before after)))
              (free-router-metrics! before after)
              (finish-step! tr m o tokens (/ loss-sum n) lr norm t0 rows)))))))

;; The tensors in router metrics (counts, biases), freed once read. Left
;; to the collector, which no longer runs within a step, they pinned small
;; blocks between the freed activations that the next step's then went
;; around, and the peak resident size grew by about 5%.
(define (free-router-metrics! . lists)
  (for-each (lambda (metrics)
              (for-each (lambda (alist)
                          (for-each (lambda (kv) (when (tensor? (cdr kv)) (tensor-free! (cdr kv))))
                                    alist))
                        metrics))
            lists))

;; Clipping happens inside the update: the optimizer reads every gradient
;; times this factor (clip-grad-norm!'s), which saves a pass over them.
(define (step-grad-scale tr norm)
  (if (tr-clip tr) (clip-scale norm (tr-clip tr)) 1.0))

(define (finish-step! tr m o tokens loss lr norm t0 rows)
  (optimizer-zero-grad! o)
  (model-zero-grad! m)
  (set-tr-steps! tr (+ 1 (trainer-steps tr)))
  (set-tr-tokens! tr (+ tokens (trainer-tokens tr)))
  (let ((metrics (step-metrics tr loss lr norm (- (now-ms) t0) rows)))
    (when (tr-log tr) (metrics-log-write! (tr-log tr) metrics))
    (set-tr-last-metrics! tr metrics)
    (when (and (tr-checkpoint-every tr) %checkpoint-hook
               (zero? (modulo (trainer-steps tr) (tr-checkpoint-every tr))))
      (%checkpoint-hook tr (trainer-checkpoint-dir tr) (tr-keep-last tr)))
    metrics))

;;; ---- one parallel step ---------------------------------------------------------------

(define (target-count y ignore-index)
  (inexact->exact (tensor-item (tsum (to-dtype (t!= y ignore-index) 'f64)))))

;; This rank's rows of the step's M global micro-batches, as (x . y) pairs.
(define (draw-shards plan ds n b)
  (map (lambda (_)
         (call-with-values (lambda () (dataset-next-batch ds b))
           (lambda (x y domains)
             (cons (plan-rows plan x) (plan-rows plan y)))))
       (iota n)))

(define (parallel-step! tr plan m o ds n b lr t0)
  (let* ((ignore (tr-ignore-index tr))
         (shards (draw-shards plan ds n b))
         (counts (map (lambda (xy) (target-count (cdr xy) ignore)) shards))
         (total (inexact->exact (round (car (apply plan-data-sum plan (list (apply + counts)))))))
         (w (plan-data-size plan))
         (scales (map (lambda (c) (exact->inexact (/ (* c w) (max total 1)))) counts))
         (loss-values (make-vector n 0.0)))
    (define (loss-of i input)
      (let* ((xy (list-ref shards i))
             (loss (model-loss m (or input (car xy)) (cdr xy) #:ignore-index ignore)))
        (vector-set! loss-values i (tensor-item loss))
        (t* loss (list-ref scales i))))
    (when (zero? total)
      (trainer-error "trainer-step!" "the step's ~a micro-batches hold no target tokens (all are ~a)" n ignore))
    (if (= (plan-stages plan) 1)
        (for-each (lambda (i)
                    (when (= i (- n 1)) (plan-arm! plan))
                    (let ((scaled (loss-of i #f)))
                      (backward! scaled)
                      (tensor-free! scaled)))
                  (iota n))
        (let ((rows (quotient b w))
              (seq (cadr (tensor-shape (car (car shards)))))
              (cfg (model-config m)))
          (plan-set-pipeline-stats!
           plan
           (pipeline-step! #:group (plan-pp-group plan) #:schedule (plan-schedule plan)
                          #:micro-batches n
                          #:forward (lambda (i input)
                                      (if (plan-last-stage? plan)
                                          (loss-of i input)
                                          (model-forward m (or input (car (list-ref shards i))))))
                          #:activation (lambda (i)
                                         (values (list rows seq (assq-ref cfg 'hidden))
                                                 (assq-ref cfg 'dtype)))
                          #:backward (lambda (i output grad)
                                       (when (= i (- n 1)) (plan-arm! plan))
                                       (if grad (backward! output grad) (backward! output)))))))
    (plan-reduce-grads! plan)
    ;; the loss: token-weighted over the data ranks, from the last stage
    (let* ((local (if (plan-last-stage? plan)
                      (apply + (map * (vector->list loss-values) counts))
                      0.0))
           (loss (/ (car (plan-world-sum plan local)) total))
           (norm (plan-grad-norm plan)))
      (optimizer-step! o #:grad-scale (step-grad-scale tr norm))
      (plan-after-update! plan)
      (let* ((before (%model-router-metrics m))
             (kinds (aux-kinds before)))
        (model-step! m)
        (let* ((after (%model-router-metrics m))
               (rows (plan-routing-metrics plan before after kinds)))
          (plan-set-local-rows! plan (local-routing-rows before after))
          (free-router-metrics! before after)
          (finish-step! tr m o (* n b (dataset-seq-len ds)) loss lr norm t0 rows))))))

;;; ---- state, for checkpoints ------------------------------------------------------------

(define (trainer-state tr)
  "The loop state of TR for a checkpoint, as an alist: step, tokens, the
learning rate in use, and the settings a resumed run must share
(batch-size, grad-accum)."
  `((step . ,(trainer-steps tr)) (tokens . ,(trainer-tokens tr))
    (lr . ,(optimizer-lr (trainer-optimizer tr)))
    (schedule? . ,(and (tr-schedule tr) #t))
    (batch-size . ,(tr-batch-size tr)) (grad-accum . ,(tr-grad-accum tr))))

(define (trainer-load-state! tr state)
  "Restore STATE (from trainer-state, keys symbols or strings) into TR: its
step and token counts, and the learning rate when TR has no schedule (with
one, the step gives the rate). A state of a run with another batch size or
accumulation raises a moelab-error and changes nothing."
  (define who "trainer-load-state!")
  (define (get k)
    (let ((e (or (assq k state) (assoc (symbol->string k) state))))
      (unless e (trainer-error who "the state has no ~a" k))
      (cdr e)))
  (check who "step" (lambda (v) (and (exact-integer? v) (>= v 0))) (get 'step) "an integer >= 0")
  (check who "tokens" (lambda (v) (and (exact-integer? v) (>= v 0))) (get 'tokens) "an integer >= 0")
  (check who "lr" real? (get 'lr) "a number")
  (unless (and (equal? (get 'batch-size) (tr-batch-size tr)) (equal? (get 'grad-accum) (tr-grad-accum tr)))
    (trainer-error who "the checkpoint was taken with batch-size ~a and grad-accum ~a, this trainer has ~a and ~a"
                   (get 'batch-size) (get 'grad-accum) (tr-batch-size tr) (tr-grad-accum tr)))
  (set-tr-steps! tr (get 'step))
  (set-tr-tokens! tr (get 'tokens))
  (unless (tr-schedule tr) (set-optimizer-lr! (trainer-optimizer tr) (get 'lr))))

;;; ---- evaluation ----------------------------------------------------------------------

;; The loss of one validation batch X Y and each MoE layer's tokens per expert.
(define (eval-batch tr m x y)
  (let ((plan (tr-plan tr)) (ignore (tr-ignore-index tr)))
    (if (not plan)
        (let* ((loss (with-no-grad (lambda () (model-loss m x y #:ignore-index ignore))))
               (value (tensor-item loss)))
          (tensor-free! loss)
          (values value (map (lambda (r) (assq-ref r 'tokens-per-expert)) (model-routing m))))
        (let* ((xs (plan-rows plan x)) (ys (plan-rows plan y))
               (count (target-count ys ignore))
               (value (with-no-grad (lambda () (forward-through-stages plan m xs ys ignore))))
               (total (car (plan-data-sum plan count)))
               (loss (/ (car (plan-world-sum plan (* value count))) (max total 1)))
               (local (map (lambda (r) (assq-ref r 'tokens-per-expert)) (model-routing m)))
               (e (assq-ref (model-config m) 'experts))
               (summed (apply plan-data-sum plan (concatenate local))))
          (values loss
                  (plan-gather-layers plan
                                      (map (lambda (i) (list-head (list-tail summed (* i e)) e))
                                           (iota (length local)))))))))

;; Forward only through the pipeline: the loss value on the last stage, 0
;; on the others.
(define (forward-through-stages plan m x y ignore)
  (if (= (plan-stages plan) 1)
      (tensor-item (model-loss m x y #:ignore-index ignore))
      (let* ((cfg (model-config m))
             (result (pipeline-step! #:group (plan-pp-group plan) #:schedule 'forward-only
                                     #:micro-batches 1
                                     #:forward (lambda (i input)
                                                 (if (plan-last-stage? plan)
                                                     (model-loss m (or input x) y #:ignore-index ignore)
                                                     (model-forward m (or input x))))
                                     #:activation (lambda (i)
                                                    (values (append (tensor-shape x) (list (assq-ref cfg 'hidden)))
                                                            (assq-ref cfg 'dtype))))))
        (if (plan-last-stage? plan) (car (assq-ref result 'losses)) 0.0))))

(define (add-lists a b) (map + a b))

(define* (trainer-evaluate tr #:key (batches #f) (log? #t))
  "Evaluate TR's model on its validation dataset, domain by domain: BATCHES
(default: the trainer's eval-batches) batches of batch-size sequences from
each domain, the same sequences at every call (the validation dataset is
reset first), without gradients and with the routers in evaluation mode.
Returns an alist:
@example
((step . 200)
 (loss (bible . 2.31) (c . 1.87) … (mean . 2.05))       ; mean cross-entropy, nats
 (perplexity (bible . 10.1) … (mean . 7.8))             ; exp of each loss
 (expert-share (bible (0.12 0.13 …) …) …))              ; per domain, [L][E] shares
@end example
The expert shares are each MoE layer's fraction of routed slots per expert,
from the routers' counts. With LOG? (default) and a metrics file, the
result is also written as an eval line."
  (define who "trainer-evaluate")
  (let ((vs (trainer-val-dataset tr))
        (m (trainer-model tr))
        (n (or batches (tr-eval-batches tr))))
    (unless vs (trainer-error who "this trainer has no #:val-dataset"))
    (check who "#:batches" positive-int? n "a positive integer")
    (let ((was-training? (model-training? m)))
      (dynamic-wind
        (lambda () (model-training! m #f))
        (lambda ()
          (dataset-reset! vs)
          (let* ((per-domain
                  (map (lambda (d)
                         (let loop ((i 0) (sum 0.0) (counts #f))
                           (if (< i n)
                               (call-with-values
                                   (lambda () (dataset-next-batch vs (tr-batch-size tr) #:domain d))
                                 (lambda (x y _)
                                   (call-with-values (lambda () (eval-batch tr m x y))
                                     (lambda (value c)
                                       (for-each tensor-free! (list x y))
                                       (loop (+ i 1) (+ sum value)
                                             (if counts (map add-lists counts c) c))))))
                               (list d (/ sum n)
                                     (map (lambda (row)
                                            (let ((total (apply + row)))
                                              (map (lambda (c) (if (zero? total) 0.0 (exact->inexact (/ c total))))
                                                   row)))
                                          (or counts '()))))))
                       (dataset-domains vs)))
                 (losses (map (lambda (e) (cons (car e) (cadr e))) per-domain))
                 (mean (/ (apply + (map cdr losses)) (length losses)))
                 (shares (map (lambda (e) (cons (car e) (caddr e))) per-domain))
                 (result `((step . ,(trainer-steps tr))
                           (loss ,@losses (mean . ,mean))
                           (perplexity ,@(map (lambda (p) (cons (car p) (exp (cdr p)))) losses)
                                       (mean . ,(exp mean)))
                           (expert-share ,@shares))))
            (when (and log? (tr-log tr))
              (metrics-log-write! (tr-log tr)
                                  `((step . ,(trainer-steps tr))
                                    (eval ,@losses (mean . ,mean))
                                    (eval_expert_share ,@shares))))
            (set-tr-last-eval! tr result)
            result))
        (lambda () (model-training! m was-training?))))))

;;; ---- pause, resume, stop -------------------------------------------------------------

(define (trainer-pause! tr)
  "Ask TR's run (trainer-run!, perhaps in another thread) to wait after the
current step until trainer-resume!. Between steps the model can be
inspected and changed."
  (set-tr-paused! tr #t))

(define (trainer-resume! tr)
  "Let TR's paused run go on."
  (set-tr-paused! tr #f))

(define (trainer-stop! tr)
  "Ask TR's run to stop after the current step (as Ctrl-C does)."
  (set-tr-stop! tr #t))

;;; ---- the loop ------------------------------------------------------------------------

(define (fmt-duration s)
  (let* ((s (inexact->exact (round s))) (h (quotient s 3600)) (mn (quotient (remainder s 3600) 60)))
    (if (positive? h)
        (format #f "~d:~2,'0d:~2,'0d" h mn (remainder s 60))
        (format #f "~d:~2,'0d" mn (remainder s 60)))))

(define (fmt-num x)
  (if (and (real? x) (not (nan? x))) (format #f "~,3f" x) "n/a"))

(define (fmt-int x)
  (if (and (real? x) (not (nan? x)) (not (inf? x))) (number->string (inexact->exact (round x))) "n/a"))

(define (progress-bar port i n metrics elapsed)
  (let* ((width 24) (done (if (zero? n) width (quotient (* width i) n)))
         (eta (if (positive? i) (* elapsed (/ (- n i) i)) 0)))
    (format port "\r[~a~a] ~d/~d loss ~a lr ~,2e ~a tok/s eta ~a  "
            (make-string done #\#) (make-string (- width done) #\.) i n
            (fmt-num (assq-ref metrics 'loss)) (assq-ref metrics 'lr)
            (fmt-int (assq-ref metrics 'tokens_per_s)) (fmt-duration eta))
    (force-output port)))

(define (step-line port metrics)
  (format port "step ~d  loss ~a  lr ~,2e  |g| ~a  ~a tok/s  max_vio ~a~%"
          (assq-ref metrics 'step) (fmt-num (assq-ref metrics 'loss)) (assq-ref metrics 'lr)
          (fmt-num (assq-ref metrics 'grad_norm)) (fmt-int (assq-ref metrics 'tokens_per_s))
          (string-join (map fmt-num (assq-ref metrics 'max_vio)) " "))
  (force-output port))

(define (eval-line port result)
  (format port "eval at step ~d: ~{~a ~a~^  ~}~%" (assq-ref result 'step)
          (append-map (lambda (p) (list (car p) (fmt-num (cdr p)))) (assq-ref result 'loss)))
  (force-output port))

(define* (trainer-run! tr #:key (steps #f) (on-step #f) (port (current-output-port))
                       (progress? 'auto))
  "Run STEPS optimizer steps of TR (trainer-step!), evaluating every
eval-every steps, and return the last step's metrics. ON-STEP, when given,
is called as (ON-STEP TR METRICS) after each step. PORT shows the progress:
a bar redrawn in place when PORT is a terminal (PROGRESS? 'auto) or
PROGRESS? is #t, otherwise a line every print-every steps; each evaluation
prints a line of per-domain losses. The run waits between steps while
trainer-pause! holds it, and stops early after the current step on Ctrl-C
(SIGINT) or trainer-stop!. It ends with a summary line.
(current-trainer) is TR while it runs. Under #:mesh every rank runs it and
only world rank 0 prints."
  (check "trainer-run!" "#:steps" positive-int? steps "a positive integer")
  (let* ((port (if (zero? (current-rank)) port (%make-void-port "w")))
         (bar? (if (eq? progress? 'auto) (and (file-port? port) (isatty? port)) progress?))
         (start (now-ms))
         (first-tokens (trainer-tokens tr))
         (old-handler #f))
    (when (owns-current-trainer?) (set! %current-trainer tr))
    (set-tr-stop! tr #f)
    (set-tr-interrupted! tr #f)
    (dynamic-wind
      (lambda ()
        (set! old-handler
              (false-if-exception
               (sigaction SIGINT (lambda (_) (set-tr-interrupted! tr #t) (set-tr-stop! tr #t))))))
      (lambda ()
        (let loop ((i 0) (last #f))
          (when (and %step-hook (< i steps)) (%step-hook tr))
          (cond
           ((and (< i steps) (not (tr-stop? tr)))
            ;; with several ranks the control point (above) holds the pause
            (when (and (trainer-paused? tr) (= (world-size) 1))
              (when bar? (newline port))
              (format port "paused at step ~d (trainer-resume! to go on)~%" (trainer-steps tr))
              (force-output port)
              (let wait () (when (and (trainer-paused? tr) (not (tr-stop? tr))) (usleep 50000) (wait))))
            (if (tr-stop? tr)
                (loop i last)
                (let ((metrics (trainer-step! tr)))
                  (when on-step (on-step tr metrics))
                  (if bar?
                      (progress-bar port (+ i 1) steps metrics (/ (- (now-ms) start) 1000.0))
                      (when (or (zero? (modulo (trainer-steps tr) (tr-print-every tr)))
                                (= (+ i 1) steps))
                        (step-line port metrics)))
                  (when (and (tr-eval-every tr) (trainer-val-dataset tr)
                             (zero? (modulo (trainer-steps tr) (tr-eval-every tr))))
                    (when bar? (newline port))
                    (eval-line port (trainer-evaluate tr)))
                  (loop (+ i 1) metrics))))
           (else
            (when bar? (newline port))
            (let ((secs (/ (- (now-ms) start) 1000.0)))
              (format port "~a after ~d step~:p (~a): ~d tokens, loss ~a, ~a tokens/s~%"
                      (if (tr-stop? tr) "stopped" "done") i (fmt-duration secs)
                      (- (trainer-tokens tr) first-tokens)
                      (fmt-num (and last (assq-ref last 'loss)))
                      (fmt-int (if (positive? secs) (/ (- (trainer-tokens tr) first-tokens) secs) 0))))
            (force-output port)
            last))))
      (lambda ()
        (set-tr-stop! tr #f)
        (when old-handler
          (sigaction SIGINT (car old-handler) (cdr old-handler)))))))

;;; ---- routing summary -----------------------------------------------------------------

;; The layer numbers of the MoE layers TR's metrics describe: every stage's
;; under a pipeline.
(define (trainer-moe-layers tr)
  (if (tr-plan tr) (plan-moe-layers (tr-plan tr)) (model-moe-layers (trainer-model tr))))

(define* (trainer-routing-report tr #:key (port (current-output-port)) (width 30) (rank #f))
  "Print what TR's routers did: for each MoE layer, the balance statistics
of the last step (MaxVio, CV, normalised entropy, dead experts, the aux
losses) and each expert's share of the step's routed slots as a bar of up
to WIDTH characters; then, after an evaluation, each domain's expert shares
per layer (percent), which show whether experts specialise by domain.
Returns the last step's tokens per expert ([L][E] lists), or #f before the
first step.

In a parallel run the numbers are the global ones (summed over the data
ranks, every stage's layers). With RANK, a world rank, only that rank
prints, and it shows its own view: the tokens of its own rows through the
MoE layers it holds, before any reduction (other ranks print nothing and
return #f)."
  (let* ((plan (tr-plan tr))
         (own? (and rank plan))
         (m (and (or (not rank) (= rank (current-rank)))
                 (if (and own? (trainer-last-metrics tr) (plan-local-rows plan))
                     (let ((g (trainer-last-metrics tr)))
                       (step-metrics tr (assq-ref g 'loss) (assq-ref g 'lr) (assq-ref g 'grad_norm)
                                     (assq-ref g 'step_ms) (plan-local-rows plan)))
                     (trainer-last-metrics tr))))
         (ev (and (not own?) (trainer-last-eval tr))))
    (cond
     ((and rank (not (= rank (current-rank)))) #f)
     ((not m) (format port "no step yet: no routing to report~%") #f)
     (else
        (let ((rows (assq-ref m 'tokens_per_expert))
              (layers (if own? (model-moe-layers (trainer-model tr)) (trainer-moe-layers tr))))
          (format port "routing at step ~d (share of the step's routed slots per expert~a):~%"
                  (assq-ref m 'step)
                  (if own? (format #f "; rank ~a's own rows and layers" rank) ""))
          (for-each
           (lambda (i layer row)
             (let ((total (apply + row)) (top (apply max 1 row)))
               (format port "layer ~d  MaxVio ~a  CV ~a  entropy ~a  dead ~a~{  ~a~}~%" layer
                       (fmt-num (list-ref (assq-ref m 'max_vio) i)) (fmt-num (list-ref (assq-ref m 'cv) i))
                       (fmt-num (list-ref (assq-ref m 'entropy) i))
                       (fmt-num (list-ref (assq-ref m 'dead_fraction) i))
                       (map (lambda (a) (format #f "~a ~a" (car a) (fmt-num (list-ref (cdr a) i))))
                            (assq-ref m 'aux)))
               (for-each (lambda (e c)
                           (format port "  expert ~2d ~5,1f%  ~a~%" e
                                   (if (zero? total) 0.0 (* 100.0 (/ c total)))
                                   (if (zero? c) "dead"
                                       (make-string (max 1 (inexact->exact (round (/ (* width c) top)))) #\#))))
                         (iota (length row)) row)))
           (iota (length rows)) layers rows)
          (when ev
            (format port "expert shares per domain at step ~d (%):~%" (assq-ref ev 'step))
            (for-each
             (lambda (i layer)
               (format port "layer ~d~%" layer)
               (for-each (lambda (d)
                           (format port "  ~10a~{ ~5,1f~}~%" (car d)
                                   (map (lambda (x) (* 100 x)) (list-ref (cdr d) i))))
                         (assq-ref ev 'expert-share)))
             (iota (length layers)) layers))
          rows)))))

;;; ---- a yardstick ---------------------------------------------------------------------

(define (entropy-of-counts counts)
  (let ((total (apply + counts)))
    (- (apply + (map (lambda (c) (if (zero? c) 0 (let ((p (/ c total))) (* p (log p))))) counts)))))

(define* (trainer-unigram-entropy tr #:key (batches #f))
  "The unigram entropy (nats) of the tokens trainer-evaluate scores: per
domain of TR's validation dataset, the entropy of the empirical token
distribution of its evaluation targets (the same BATCHES batches, default
eval-batches), and their mean, as an alist like trainer-evaluate's loss.
No model that ignores context can score below it on those tokens, so a
validation loss under it shows the model has learned from context."
  (let ((vs (trainer-val-dataset tr)) (n (or batches (tr-eval-batches tr))))
    (unless vs (trainer-error "trainer-unigram-entropy" "this trainer has no #:val-dataset"))
    (dataset-reset! vs)
    (let* ((v (dataset-vocab-size vs))
           (per-domain
            (map (lambda (d)
                   (let loop ((i 0) (counts (make-list v 0)))
                     (if (< i n)
                         (call-with-values (lambda () (dataset-next-batch vs (tr-batch-size tr) #:domain d))
                           (lambda (x y rows)
                             (loop (+ i 1)
                                   (map + counts (map inexact->exact
                                                      (tensor->list (bincount (flatten y) #:minlength v)))))))
                         (cons d (entropy-of-counts counts)))))
                 (dataset-domains vs))))
      (dataset-reset! vs)
      (append per-domain
              `((mean . ,(/ (apply + (map cdr per-domain)) (length per-domain))))))))
