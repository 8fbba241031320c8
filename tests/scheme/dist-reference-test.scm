;;; dist-reference-test.scm — the one-process reference of data-parallel
;;; training (tests/scheme/dist-reference.scm) checked on its own: with one
;;; shard it is trainer-step! for every balancing scheme; with two shards it
;;; is the step assembled by hand, its global-batch trackers hold what the
;;; scope says at every shard, and it agrees with one shard exactly where the
;;; maths says it must (and only there). A tiny f64 model (L2 D16 E4 K2,
;;; B4 S8) on text from this source tree.

(include "common.scm")
(add-to-load-path (dirname (current-filename)))
(use-modules (dist-reference) (moelab primitives))

(test-begin "dist-reference")

(define top (string-append (dirname (current-filename)) "/../.."))

(define (dataset)
  (make-text-dataset #:domains `((c . ,(string-append top "/core/moe"))) #:seq-len 8 #:seed 0))

(define (tiny-model options)
  (make-moe-transformer #:vocab 256 #:layers 2 #:hidden 16 #:heads 2 #:ffn 16 #:experts 4
                        #:top-k 2 #:dense-ffn 16 #:max-seq 8 #:dtype 'f64
                        #:router-options options #:seed 3))

(define* (reference options #:key (shards 1) (steps 3) (sgd? #f) (on-shard #f) (schedule #f))
  (let ((m (tiny-model options)))
    (reference-run #:model m
                   #:optimizer (if sgd? (make-sgd (model-parameters m) #:lr 0.5)
                                   (make-adamw (model-parameters m) #:lr 1e-2))
                   #:dataset (dataset) #:batch-size 4 #:grad-accum 2 #:shards shards
                   #:steps steps #:clip 1.0 #:schedule schedule #:on-shard on-shard)))

(define (param-lists m)
  (map (lambda (p) (cons (car p) (tensor->list (flatten (cdr p))))) (model-parameters m)))

(define (max-abs-difference a b)
  ;; over two ((name . numbers) …) lists
  (apply max (map (lambda (x y) (apply max (map (lambda (u v) (abs (- u v))) (cdr x) (cdr y)))) a b)))

(define routing-keys '(aux max_vio max_vio_global cv entropy dead_fraction dropped_fraction
                       tokens_per_expert expert_bias))

;;; ---- one shard: the trainer ---------------------------------------------------------

;; The trainer's steps as (loss grad_norm params routing-metrics qb-betas).
(define* (trainer-steps options #:key (schedule #f))
  (let* ((m (tiny-model options))
         (tr (make-trainer #:model m #:optimizer (make-adamw (model-parameters m) #:lr 1e-2)
                           #:dataset (dataset) #:batch-size 4 #:grad-accum 2 #:clip 1.0
                           #:schedule schedule)))
    (map (lambda (_)
           (let ((line (trainer-step! tr)))
             (list (assq-ref line 'loss) (assq-ref line 'grad_norm) (param-lists m)
                   (filter (lambda (e) (memq (car e) routing-keys)) line)
                   (map (lambda (r) (let ((b (assq-ref r 'qb-beta))) (if b (tensor->list b) '())))
                        (%model-router-metrics m)))))
         (iota 3))))

(define* (same-as-trainer? options #:key (schedule #f))
  ;; #t, or the first step and item that differ (for the failure report)
  (let loop ((want (trainer-steps options #:schedule schedule))
             (got (reference options #:schedule schedule)) (step 1))
    (if (null? want)
        #t
        (let* ((w (car want)) (g (car got))
               (checks `((loss ,(car w) ,(assq-ref g 'loss))
                         (grad-norm ,(cadr w) ,(assq-ref g 'grad-norm))
                         (params ,(caddr w) ,(assq-ref g 'params))
                         (metrics ,(list-ref w 3) ,(filter (lambda (e) (memq (car e) routing-keys)) g))
                         (qb-beta ,(list-ref w 4) ,(or (assq-ref g 'qb_beta) (list-ref w 4)))))
               (bad (find (lambda (c) (not (close? (cadr c) (caddr c) 1e-12))) checks)))
          (if bad
              (list 'step step (car bad))
              (loop (cdr want) (cdr got) (+ step 1)))))))

(for-each
 (lambda (case)
   (test-equal (string-append "one shard is trainer-step!: " (car case)) #t
     (same-as-trainer? (cdr case))))
 '(("micro-batch" #:losses ((micro-batch . 1e-1)))
   ("global-batch" #:losses ((global-batch . 1e-1)))
   ("sequence" #:losses ((sequence . 1e-1)))
   ("z" #:losses ((z . 1e-2)))
   ("expert bias" #:score sigmoid #:expert-bias? #t #:bias-rate 1e-2 #:losses ())
   ("quantile balancing" #:routing quantile-balancing #:qb-ema 0.5 #:losses ((z . 1e-3)))))

(let ((warmup (make-lr-schedule 'cosine #:lr 1e-2 #:warmup 2 #:total 3)))
  (test-equal "one shard is trainer-step!: a learning-rate schedule" #t
    (same-as-trainer? '(#:losses ((micro-batch . 1e-1))) #:schedule warmup))
  (test-equal "… whose rates the steps report" (map warmup '(0 1 2))
    (map (lambda (s) (assq-ref s 'lr)) (reference '(#:losses ()) #:schedule warmup))))

;; the cases above compare routing metrics that are really there
(test-assert "the metrics compared include expert_bias and qb_beta"
  (and (assq 'expert_bias (car (reference '(#:score sigmoid #:expert-bias? #t #:losses ()) #:steps 1)))
       (pair? (car (assq-ref (car (reference '(#:routing quantile-balancing #:losses ()) #:steps 1))
                             'qb_beta)))))

;;; ---- two shards, two micro-batches, by hand ----------------------------------------

;; W = 2, M = 2, B = 4, S = 8: each shard is 2 rows of 16 target tokens, the
;; step has N = 64, so each shard's mean is scaled by 16/64; the routers
;; inject 1/(M·W) = 1/4 of each shard's aux gradient. Returns per step
;; (loss grad-norm params aux-mean tokens-per-expert).
(define (by-hand options)
  (let* ((m (tiny-model options)) (o (make-sgd (model-parameters m) #:lr 0.5)) (ds (dataset)))
    (set-model-grad-accum! m 4)
    (map (lambda (_)
           (let ((batches (map (lambda (_) (call-with-values (lambda () (dataset-next-batch ds 4))
                                                    (lambda (x y domains) (list x y))))
                               '(0 1)))
                 (losses '()) (aux '()) (counts '()))
             (for-each
              (lambda (xy)
                (for-each
                 (lambda (r)
                   (let ((loss (model-loss m (narrow (car xy) 0 (* 2 r) 2) (narrow (cadr xy) 0 (* 2 r) 2))))
                     (set! losses (cons (tensor-item loss) losses))
                     (set! aux (cons (map (lambda (a) (assq-ref a 'micro-batch)) (model-aux-losses m)) aux))
                     (set! counts (cons (map (lambda (r) (assq-ref r 'tokens-per-expert)) (model-routing m))
                                        counts))
                     (backward! (t* loss 0.25))))
                 '(0 1)))
              batches)
             (let ((norm (clip-grad-norm! (optimizer-parameters o) 1.0)))
               (optimizer-step! o)
               (model-step! m)
               (optimizer-zero-grad! o)
               (model-zero-grad! m)
               (list (/ (apply + losses) 4) norm (param-lists m)
                     (apply map (lambda xs (/ (apply + xs) 4)) aux)              ; per layer
                     (apply map (lambda layers (apply map + layers)) counts)))))  ; [L][E]
         '(0 1 2))))

(let ((want (by-hand '(#:losses ((micro-batch . 1e-1)))))
      (got (reference '(#:losses ((micro-batch . 1e-1))) #:shards 2 #:sgd? #t)))
  (test-assert "two shards: the losses are the token means of the steps"
    (close? (map car want) (map (lambda (g) (assq-ref g 'loss)) got) 1e-12))
  (test-assert "two shards: the gradient norms"
    (close? (map cadr want) (map (lambda (g) (assq-ref g 'grad-norm)) got) 1e-12))
  (test-assert "two shards: the parameters after each step"
    (close? (map caddr want) (map (lambda (g) (assq-ref g 'params)) got) 1e-12))
  (test-assert "two shards: the aux metric is the mean over the four shards' losses"
    (close? (map cadddr want) (map (lambda (g) (assq-ref (assq-ref g 'aux) 'micro-batch)) got) 1e-12))
  (test-assert "two shards: tokens per expert add up the four shards"
    (close? (map (lambda (w) (list-ref w 4)) want) (map (lambda (g) (assq-ref g 'tokens_per_expert)) got)
            0)))

;;; ---- global-batch: what each shard's tracker holds ---------------------------------

;; At shard s of micro-batch m a rank's tracker holds the counts of every
;; shard of micro-batches 0…m (its own included), the tokens of those shards
;; and m+1 micro-batches (here W·(m+1): see the reference's header). The
;; counts are taken independently from the routing of each shard's own
;; training forward.
(let ((seen '())   ; ((step m s) trackers routing-counts), newest first
      (model (tiny-model '(#:losses ((global-batch . 1e-1))))))
  (reference-run #:model model #:optimizer (make-sgd (model-parameters model) #:lr 0.5)
                 #:dataset (dataset) #:batch-size 4 #:grad-accum 2 #:shards 2 #:steps 2
                 #:on-shard (lambda (k m s)
                              (set! seen (cons (list (list k m s) (%model-balance-trackers model)
                                                     (map (lambda (r) (assq-ref r 'tokens-per-expert))
                                                          (model-routing model)))
                                               seen))))
  (define (routing-counts k m s) (caddr (assoc (list k m s) seen)))
  (define (expected k m)
    ;; per layer, the sum over m' <= m and both shards
    (apply map (lambda layers (apply map + layers))
           (append-map (lambda (m2) (map (lambda (s) (routing-counts k m2 s)) '(0 1))) (iota (+ m 1)))))
  (test-equal "global-batch: the reference ran 2 steps × 2 micro-batches × 2 shards" 8 (length seen))
  (test-assert "global-batch: every shard's trackers hold all shards' counts of the micro-batches so far"
    (every (lambda (e)
             (let ((k (car (car e))) (m (cadr (car e))))
               (close? (map (lambda (t) (tensor->list (car t))) (cadr e)) (expected k m) 0)))
           seen))
  (test-assert "global-batch: … their tokens and micro-batches"
    (every (lambda (e)
             (let ((m (cadr (car e))))
               (every (lambda (t) (and (= (cadr t) (* (+ m 1) 2 16)) (= (caddr t) (* 2 (+ m 1)))))
                      (cadr e))))
           seen))
  (test-assert "global-batch: the two shards of a micro-batch see the same buffer"
    (every (lambda (e)
             (let ((other (assoc (list (car (car e)) (cadr (car e)) (- 1 (caddr (car e)))) seen)))
               (close? (map (lambda (t) (tensor->list (car t))) (cadr e))
                       (map (lambda (t) (tensor->list (car t))) (cadr other)) 0)))
           seen)))

;;; ---- the noise streams ----------------------------------------------------------------

;; Every rank's router stream advances by its own forwards only: after a step
;; of two shards the streams stand where a one-shard run over half the batch
;; (one rank's tokens) leaves them, and both shards of a micro-batch start
;; from the same position.
(define (rng-positions m) (map caddr (%model-router-states m)))
(let* ((options '(#:jitter 0.1 #:losses ((micro-batch . 1e-1))))
       (two (tiny-model options)) (one-rank (tiny-model options)) (seen '()))
  (reference-run #:model two #:optimizer (make-sgd (model-parameters two)) #:dataset (dataset)
                 #:batch-size 4 #:grad-accum 2 #:shards 2 #:steps 2
                 #:on-shard (lambda (k m s) (set! seen (cons (cons (list k m s) (rng-positions two)) seen))))
  (reference-run #:model one-rank #:optimizer (make-sgd (model-parameters one-rank)) #:dataset (dataset)
                 #:batch-size 2 #:grad-accum 2 #:shards 1 #:steps 2)
  (test-assert "noise: after the run the streams stand where one rank's forwards leave them"
    (and (positive? (car (rng-positions two))) (equal? (rng-positions two) (rng-positions one-rank))))
  (test-assert "noise: both shards of a micro-batch draw from the same position"
    (every (lambda (e) (equal? (cdr e) (assoc-ref seen (list (car (car e)) (cadr (car e)) 0)))) seen)))

;;; ---- one shard against two ----------------------------------------------------------

;; With equal shards (same length, no padding, no capacity), the W = 2 step
;; has the W = 1 step's gradient wherever each shard's loss is a mean of
;; per-token or per-sequence terms with shard-independent weights: the
;; cross-entropy (scaled by n/N), the sequence loss (a mean over sequences,
;; B/W per shard), the z-loss (a mean over tokens) and the global-batch loss
;; (f_i from the same accumulated counts for both shards, times a mean of
;; scores over the shard's tokens). The micro-batch loss E·Σ f_i·P_i
;; multiplies two means over the shard: the mean of the shards' products is
;; not the product over the micro-batch, so it must differ.
(define (one-vs-two options)
  (let ((one (reference options #:sgd? #t)) (two (reference options #:shards 2 #:sgd? #t)))
    (list one two
          (max-abs-difference (assq-ref (last one) 'params) (assq-ref (last two) 'params)))))

(for-each
 (lambda (case)
   (let* ((r (one-vs-two (cdr case))) (one (car r)) (two (cadr r)))
     (test-assert (string-append "one shard = two shards: " (car case))
       (and (< (caddr r) 1e-12)
            (every (lambda (a b)
                     (and (close? (assq-ref a 'loss) (assq-ref b 'loss) 1e-12)
                          (close? (assq-ref a 'grad-norm) (assq-ref b 'grad-norm) 1e-12)
                          (every (lambda (k) (close? (assq-ref a k) (assq-ref b k) 1e-12)) routing-keys)))
                   one two)))))
 '(("no aux loss" #:losses ())
   ("sequence" #:losses ((sequence . 1e-1)))
   ("z" #:losses ((z . 1e-1)))
   ("global-batch" #:losses ((global-batch . 1e-1)))
   ;; Megatron's f_i = (c^acc/micro-batches)/(K·this micro-batch's tokens)
   ("global-batch, Megatron's convention" #:convention megatron #:losses ((global-batch . 1e-1)))))

(let ((r (one-vs-two '(#:losses ((micro-batch . 1e-1))))))
  (test-assert "one shard ≠ two shards: micro-batch (parameters)" (> (caddr r) 1e-4))
  (test-assert "one shard ≠ two shards: micro-batch (aux metric)"
    (> (abs (- (car (assq-ref (assq-ref (car (car r)) 'aux) 'micro-batch))
               (car (assq-ref (assq-ref (car (cadr r)) 'aux) 'micro-batch))))
       1e-4)))

;;; ---- what it refuses ------------------------------------------------------------------

(test-moelab-error "a batch that the shards do not divide" "multiple of #:shards"
  (reference '(#:losses ()) #:shards 3))
(test-moelab-error "global-batch counts it cannot measure (expert bias, top-k counts)" "cannot be measured"
  (reference '(#:score sigmoid #:expert-bias? #t #:losses ((global-batch . 1e-2))) #:shards 2))
(test-moelab-error "no steps" "#:steps"
  (reference '(#:losses ()) #:steps 0))

(define (grad-accum-of m) (assq-ref (assq-ref (model-config m) 'router) 'grad-accum))
(let ((m (tiny-model '(#:score sigmoid #:expert-bias? #t #:losses ((global-batch . 1e-2))))))
  (set-model-grad-accum! m 3)
  (catch 'moelab-error
    (lambda () (reference-run #:model m #:optimizer (make-sgd (model-parameters m)) #:dataset (dataset)
                              #:batch-size 4 #:grad-accum 2 #:shards 2 #:steps 1))
    (lambda _ #f))
  (test-equal "a refused run leaves the model's grad-accum alone" 3 (grad-accum-of m)))
(let ((m (tiny-model '(#:losses ((micro-batch . 1e-2))))))
  (reference-run #:model m #:optimizer (make-sgd (model-parameters m)) #:dataset (dataset)
                 #:batch-size 4 #:grad-accum 2 #:shards 2 #:steps 1
                 #:on-shard (lambda (k mb s) (unless (= (grad-accum-of m) 4) (error "grad-accum" (grad-accum-of m)))))
  (test-equal "a run injects with 1/(M·W) and gives the model its grad-accum back" 1 (grad-accum-of m)))

;;; ---- the tracker bindings -----------------------------------------------------------------

(let ((m (tiny-model '(#:losses ((global-batch . 1e-2) (z . 1e-3))))))
  (%model-load-balance-trackers! m (list (list (tensor '(1 2 3 4) #:dtype 'f64) 10.0 1) #f))
  (test-equal "%model-load-balance-trackers!: loads a layer, #f leaves one alone"
    '(((1.0 2.0 3.0 4.0) 10.0 1) ((0.0 0.0 0.0 0.0) 0.0 0))
    (map (lambda (t) (list (tensor->list (car t)) (cadr t) (caddr t))) (%model-balance-trackers m)))
  (test-moelab-error "%model-load-balance-trackers!: counts of the wrong size" "counts must be [4]"
    (%model-load-balance-trackers! m (list #f (list (tensor '(1 2 3) #:dtype 'f64) 1.0 0))))
  (test-moelab-error "%model-load-balance-trackers!: one state per MoE layer" "the model has 2"
    (%model-load-balance-trackers! m (list #f)))
  (test-moelab-error "%model-load-balance-trackers!: negative tokens" "tokens >= 0"
    (%model-load-balance-trackers! m (list (list (tensor '(0 0 0 0) #:dtype 'f64) -1.0 0) #f)))
  (test-equal "… and a refused load changes nothing" '(1.0 2.0 3.0 4.0)
    (tensor->list (car (car (%model-balance-trackers m)))))
  (test-equal "%model-balance-trackers: #f for a router without a global-batch loss" '(#f #f)
    (%model-balance-trackers (tiny-model '(#:losses ((micro-batch . 1e-2))))))
  (test-moelab-error "%model-load-balance-trackers!: a layer without a tracker" "no global-batch tracker"
    (%model-load-balance-trackers! (tiny-model '(#:losses ()))
                                   (list (list (tensor '(0 0 0 0) #:dtype 'f64) 0.0 0) #f))))

(test-end "dist-reference")
(exit-with-test-status)
