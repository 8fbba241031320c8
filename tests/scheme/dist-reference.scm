;;; dist-reference.scm — the module (dist-reference): a data-parallel training
;;; run computed in one process, shard after shard, for the tests that check
;;; the distributed trainer against it. Load it with
;;;   (add-to-load-path "<srcdir>/tests/scheme") (use-modules (dist-reference))
;;;
;;; (reference-run #:model m #:optimizer o #:dataset ds #:batch-size B
;;;                #:grad-accum M #:shards W #:steps K #:clip c #:ignore-index -100)
;;; runs K optimizer steps as W data ranks (W = dp × ep) would, and returns
;;; per step an alist: step, loss (the mean cross-entropy over every target
;;; token of the step), lr, grad-norm (before clipping), params ((name . numbers)
;;; … after the step), the routing metrics of the trainer's step line (aux,
;;; max_vio, max_vio_global, cv, entropy, dead_fraction, dropped_fraction,
;;; tokens_per_expert, expert_bias when the routers have one) and qb_beta
;;; ([L][E], quantile-balancing routers only).
;;;
;;; How a step is arranged, and why:
;;; - Data. The M global micro-batches of B sequences are drawn from DS as
;;;   one process draws them; rank r's shard of each is rows
;;;   [r·B/W, (r+1)·B/W). The shards run in rank order, each a forward and a
;;;   backward into the same gradients.
;;; - Cross-entropy. Shard (r, m) holds n_{r,m} target tokens (not
;;;   IGNORE-INDEX), N of them in the whole step. A rank scales its mean by
;;;   n·W/N and the gradients are summed over ranks and divided by W; here the
;;;   sum is the accumulation, so each shard's mean is scaled by n/N. Either
;;;   way the step's gradient is that of the mean over all N tokens.
;;; - Aux losses reach the routers by injection, scale 1/grad-accum. The model
;;;   is told grad-accum = M·W, so the W·M injections add up to the mean of
;;;   the shards' aux gradients. (A rank whose gradients are then divided by W
;;;   must inject with 1/M to get the same mean.)
;;; - Micro-batch, sequence, z (and OLMo's local and instance) losses are
;;;   computed over the shard alone, as a rank computes them.
;;; - Global-batch. A rank's tracker adds the counts of every rank (summed
;;;   over the data world) at each micro-batch, so all shards of micro-batch m
;;;   see the counts of micro-batches 0…m of every rank. Run in sequence,
;;;   shard s would see only the shards before it; so each shard's routing
;;;   is measured first (a forward in evaluation mode, which leaves every
;;;   router counter alone) and before shard s runs, its routers' trackers
;;;   are loaded with the buffer of the micro-batches before m plus the counts
;;;   and tokens of the other shards of m. The forward then adds its own. The
;;;   tracker's micro-batch count is loaded so that it reads W·(m+1) during
;;;   the forward: Megatron's convention divides by micro-batches seen × this
;;;   micro-batch's tokens, there (m+1) × all ranks' tokens, here W·(m+1) ×
;;;   the shard's tokens: the same for equal shards. The measured counts are
;;;   the selected experts, which are the loss's counts when the router counts
;;;   its actual routing, or counts the top-k of the loss scores and selects
;;;   them plainly (no expert bias, groups, sinkhorn or debug routing); other
;;;   routers, jitter and unbuffered trackers raise an error for W > 1.
;;; - Noise. Every rank's router stream starts a micro-batch where it stood
;;;   after the previous one, so each shard of m draws from the position
;;;   shard 0 started at (restored before shards 1…W−1).
;;; - The optimizer step, clipping and model-step! come once per step as in
;;;   trainer-step!; the routers' counters then hold every shard of every
;;;   micro-batch, which is what the data-world sums give a rank: the
;;;   expert-bias update, the quantile-balancing β (the mean of the W·M
;;;   shards' quantiles) and the step metrics (the aux means are means over
;;;   the W·M shards).
;;;
;;; With W = 1 a step is exactly trainer-step! (the tests check it to 1e-12).
;;; The model's grad-accum is restored when the run ends; its routers keep
;;; their counters and step as after trainer-step!. The metrics are shaped by
;;; the trainer's internal step-metrics, over a trainer record that
;;; make-trainer makes for that alone (it becomes (current-trainer)).

(define-module (dist-reference)
  #:use-module (moelab)
  #:use-module (moelab primitives)
  #:use-module (srfi srfi-1)
  #:export (reference-run shard-routing-counts))

(define (fail fmt . args)
  (throw 'moelab-error "reference-run" (apply format #f fmt args) '() '(arg)))

(define (positive-int? x) (and (exact-integer? x) (positive? x)))

(define (router-option model key)
  (assq-ref (assq-ref (model-config model) 'router) key))

;; The trainer's own shaping of a step line, minus what the reference
;; reports itself (step, loss, grad norm) or cannot have (timing).
(define step-metrics (@@ (moelab trainer) step-metrics))
(define local-routing-rows (@@ (moelab trainer) local-routing-rows))
(define routing-keys '(aux max_vio max_vio_global cv entropy dead_fraction dropped_fraction
                       tokens_per_expert expert_bias))

(define (target-count y ignore-index)
  (count (lambda (v) (not (= v ignore-index))) (tensor->list (flatten y))))

(define (shard t r rows) (narrow t 0 (* r rows) rows))

;;; ---- global-batch counts --------------------------------------------------------

(define (check-measurable model)
  (let ((opt (lambda (k) (router-option model k))))
    (unless (zero? (opt 'jitter))
      (fail "a global-batch loss over several shards needs a router without jitter (got ~a)"
            (opt 'jitter)))
    (unless (opt 'global-buffer?)
      (fail "a global-batch loss over several shards needs #:global-buffer? #t"))
    (unless (or (eq? (opt 'count-from) 'actual)
                (not (or (opt 'expert-bias?) (opt 'groups) (opt 'sinkhorn?) (opt 'debug-routing))))
      (fail "the global-batch counts of a router that counts the plain top-k but selects otherwise (expert bias, groups, sinkhorn or debug routing) cannot be measured: use #:count-from 'actual"))))

(define (shard-routing-counts model tokens)
  "Per MoE layer of MODEL, (counts . valid-tokens) of the experts it selects
for TOKENS, counted over every selected slot (capacity drops included), from
a forward in evaluation mode that changes no router state."
  (let ((was (model-training? model)) (e (assq-ref (model-config model) 'experts)))
    (dynamic-wind
      (lambda () (model-training! model #f))
      (lambda ()
        (tensor-free! (with-no-grad (lambda () (model-forward model tokens))))
        (map (lambda (r)
               (cons (map inexact->exact
                          (tensor->list (bincount (flatten (assq-ref r 'experts)) #:minlength e)))
                     (assq-ref r 'tokens)))
             (model-routing model)))
      (lambda () (model-training! model was)))))

;; The trackers' states for shard S of micro-batch M: BASE (the buffers
;; before m) plus the counts of the other shards of m (MEASURED: per shard,
;; per layer (counts . tokens)).
(define (tracker-states base measured s m w)
  (map (lambda (layer b)
         (and b
              (let ((others (filter-map (lambda (per-layer r) (and (not (= r s)) (list-ref per-layer layer)))
                                        measured (iota w))))
                (list (tensor (fold (lambda (c acc) (map + (car c) acc)) (tensor->list (car b)) others)
                              #:dtype 'f64)
                      (fold (lambda (c acc) (+ (cdr c) acc)) (cadr b) others)
                      (+ (* w m) w -1)))))
       (iota (length base)) base))

;;; ---- the noise streams ----------------------------------------------------------

(define (restore-rng-positions! model states)
  ;; STATES from %model-router-states at the start of the micro-batch
  (%model-load-router-states!
   "reference-run" model
   (map (lambda (now then) (list (car now) (cadr now) (caddr then)))
        (%model-router-states model) states)))

;;; ---- the run --------------------------------------------------------------------

(define* (reference-run #:key model optimizer dataset batch-size (grad-accum 1) (shards 1)
                        steps (clip #f) (ignore-index -100) (schedule #f) (on-shard #f))
  "Run STEPS optimizer steps of MODEL with OPTIMIZER on DATASET as SHARDS data
ranks would (see the header), GRAD-ACCUM micro-batches of BATCH-SIZE
sequences per step. CLIP, IGNORE-INDEX and SCHEDULE are make-trainer's
(SCHEDULE maps this run's steps 0, 1, … to the learning rate). ON-SHARD,
when given, is called as (ON-SHARD STEP M S) after the forward of shard S
of micro-batch M and before its backward. Returns the list of the steps'
alists."
  (unless (positive-int? shards) (fail "#:shards must be a positive integer, got ~s" shards))
  (unless (positive-int? steps) (fail "#:steps must be a positive integer, got ~s" steps))
  (unless (and (positive-int? batch-size) (zero? (modulo batch-size shards)))
    (fail "#:batch-size ~s must be a positive multiple of #:shards ~a" batch-size shards))
  (let* ((w shards) (n-micro grad-accum) (rows (/ batch-size w))
         (global? (and (assq 'global-batch (router-option model 'losses)) #t))
         (old-accum (router-option model 'grad-accum)))
    (when (and global? (> w 1)) (check-measurable model))
    ;; a trainer record, only for the trainer's shaping of the metrics (its
    ;; checks come before it changes anything)
    (let ((tr (make-trainer #:model model #:optimizer optimizer #:dataset dataset
                            #:batch-size batch-size #:grad-accum grad-accum #:clip clip
                            #:ignore-index ignore-index)))
      (dynamic-wind
        (lambda () (set-model-grad-accum! model (* n-micro w)))
        (lambda ()
          (map (lambda (k)
                 (when schedule (set-optimizer-lr! optimizer (schedule (- k 1))))
                 (reference-step model optimizer dataset batch-size n-micro w rows clip
                                 ignore-index global? on-shard tr k))
               (iota steps 1)))
        (lambda ()
          ;; a failed step leaves no partial gradient behind, as in trainer-step!
          (optimizer-zero-grad! optimizer)
          (model-zero-grad! model)
          (set-model-grad-accum! model old-accum))))))

(define (reference-step model o ds b n-micro w rows clip ignore-index global? on-shard tr k)
  (let* ((batches (map (lambda (_) (call-with-values (lambda () (dataset-next-batch ds b))
                                     (lambda (x y domains) (cons x y))))
                       (iota n-micro)))
         (total (apply + (map (lambda (xy) (target-count (cdr xy) ignore-index)) batches))))
    (when (zero? total) (fail "the step's ~a micro-batches hold no target token" n-micro))
    (unless (model-training? model) (model-training! model #t))
    (let ((ce-sum
           (fold
            (lambda (xy m sum)
              (let* ((xs (map (lambda (r) (shard (car xy) r rows)) (iota w)))
                     (ys (map (lambda (r) (shard (cdr xy) r rows)) (iota w)))
                     (measured (and global? (> w 1) (map (lambda (x) (shard-routing-counts model x)) xs)))
                     (base (and measured (%model-balance-trackers model)))
                     (rng (and (> w 1) (%model-router-states model))))
                (fold
                 (lambda (x y s sum)
                   (when (and rng (> s 0)) (restore-rng-positions! model rng))
                   (when measured
                     (%model-load-balance-trackers! model (tracker-states base measured s m w)))
                   (let* ((n (target-count y ignore-index))
                          (loss (model-loss model x y #:ignore-index ignore-index))
                          (factor (exact->inexact (/ n total)))
                          (scaled (if (= factor 1.0) loss (t* loss factor)))
                          (value (tensor-item loss)))
                     (when on-shard (on-shard k m s))
                     (backward! scaled)
                     (for-each tensor-free! (delete-duplicates (list scaled loss) eq?))
                     (+ sum (* n value))))
                 sum xs ys (iota w))))
            0.0 batches (iota n-micro))))
      (for-each (lambda (xy) (tensor-free! (car xy)) (tensor-free! (cdr xy))) batches)
      (let* ((params (optimizer-parameters o))
             (norm (if clip (clip-grad-norm! params clip) (grad-norm params))))
        (optimizer-step! o)
        (let ((before (%model-router-metrics model)))
          (model-step! model)
          (optimizer-zero-grad! o)
          (model-zero-grad! model)
          (let* ((after (%model-router-metrics model))
                 (line (step-metrics tr (/ ce-sum total) (optimizer-lr o) norm 0
                                     (local-routing-rows before after)))
                 (lr (optimizer-lr o))
                 (beta (map (lambda (r) (assq-ref r 'qb-beta)) after)))
            `((step . ,k)
              (loss . ,(/ ce-sum total))
              (lr . ,lr)
              (grad-norm . ,norm)
              (params . ,(map (lambda (p) (cons (car p) (tensor->list (flatten (cdr p)))))
                              (model-parameters model)))
              ,@(filter (lambda (e) (memq (car e) routing-keys)) line)
              ,@(if (any identity beta)
                    `((qb_beta . ,(map (lambda (t) (if t (tensor->list t) '())) beta)))
                    '()))))))))
