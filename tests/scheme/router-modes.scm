;;; router-modes.scm — the frameworks' conventions (#:convention 'megatron,
;;; OLMo-core's z-loss divisor, MegaBlocks' uniform debug routing) and the
;;; newer routing modes (sqrtsoftplus, routing replay, random debug logits,
;;; quantile balancing): values computed by hand or recomputed here in Scheme
;;; from the router's logits, data-parallel β over with-ranks, and every bad
;;; input as a moelab-error that leaves the router unchanged. Gradients and
;;; the full matrix of cases are in tests/reference (check_router_conv_refs).

(include "common.scm")
(use-modules (srfi srfi-1))

(test-begin "router-modes")

(define ln3 (log 3))
(define (f64 data) (tensor data #:dtype 'f64))
(define (item t) (tensor-item t))
(define (aux-ref out kind) (item (assq-ref (routing-aux-losses out) kind)))
(define (void-port) (%make-void-port "w"))

;; D=2, E=3, K=2 with the gate W = ((1 0) (0 1) (-1 0)): x = (a b) gives z = (a b -a).
(define* (hand-router #:rest options)
  (let ((r (apply make-router #:hidden 2 #:experts 3 #:top-k 2 options)))
    (set-router-weight! r (tensor '((1 0) (0 1) (-1 0))))
    r))

(define (logsumexp row) (log (apply + (map exp row))))
(define (softmax row) (let ((s (apply + (map exp row)))) (map (lambda (v) (/ (exp v) s)) row)))
(define (sqrtsoftplus v) (sqrt (log (+ 1 (exp v)))))

;;; ---- conventions -----------------------------------------------------------------------

(test-group "convention keyword and presets"
  (define (conv . options) (assq-ref (router-config (apply make-router #:hidden 2 #:experts 4 #:top-k 2 options))
                                     'convention))
  (test-equal "default exact" 'exact (conv))
  (test-equal "megatron preset" 'megatron (conv #:preset 'megatron))
  (test-equal "deepseek-v3 preset" 'megatron (conv #:preset 'deepseek-v3))
  (test-equal "qwen-global preset" 'megatron (conv #:preset 'qwen-global))
  (test-equal "olmo-core preset stays exact" 'exact (conv #:preset 'olmo-core))
  (test-equal "explicit exact overrides the preset" 'exact (conv #:preset 'megatron #:convention 'exact))
  (test-equal "explicit megatron" 'megatron (conv #:convention 'megatron))
  (test-equal "olmo-core divides the z-loss" #t
    (assq-ref (router-config (make-router #:hidden 2 #:experts 4 #:top-k 2 #:preset 'olmo-core)) 'z-loss-div?))
  (test-equal "megablocks keeps the debug weights" #t
    (assq-ref (router-config (make-router #:hidden 2 #:experts 4 #:top-k 2 #:preset 'megablocks))
              'debug-keep-weights?))
  (test-moelab-error "unknown convention, value named" "#:convention expects one of exact megatron, got nope"
    (make-router #:hidden 2 #:experts 4 #:top-k 2 #:convention 'nope))
  (test-moelab-error "unknown convention of a loss" "#:convention expects one of exact megatron, got nope"
    (load-balancing-loss 'micro-batch (f64 '((1 0))) #:top-k 1 #:convention 'nope)))

;; Two sequences of two tokens, E=2, K=1: sequence 0 = (ln3 0) (0 ln3), sequence 1
;; = (ln3 0) then padding. Exact: L_0 = 2/4·(1·1 + 1·1) = 1, L_1 = 2/1·(1·0.75) = 1.5,
;; mean 1.25. Megatron: T̄ = Σc/(K·B) = 3/2 for both: (1/2)·2/(9/4)·(2 + 0.75) = 11/9.
(test-group "sequence loss with padding"
  (define z (f64 `(((,ln3 0) (0 ,ln3)) ((,ln3 0) (0 0)))))
  (define valid '((#t #t) (#t #f)))
  (test-approximate "exact: each sequence's own length" 1.25
    (item (load-balancing-loss 'sequence z #:top-k 1 #:valid valid)) 1e-12)
  (test-approximate "megatron: the average length" (/ 11 9)
    (item (load-balancing-loss 'sequence z #:top-k 1 #:valid valid #:convention 'megatron)) 1e-12)
  (let ((full (f64 `(((,ln3 0) (0 ,ln3)) ((,ln3 0) (0 ,ln3))))))
    (test-approximate "equal lengths: exact" 1.0 (item (load-balancing-loss 'sequence full #:top-k 1)) 1e-12)
    (test-approximate "equal lengths: megatron agrees" 1.0
      (item (load-balancing-loss 'sequence full #:top-k 1 #:convention 'megatron)) 1e-12))
  ;; the router: same numbers through make-router's #:convention
  (let ((r (make-router #:hidden 2 #:experts 2 #:top-k 1 #:pre-softmax? #t #:dtype 'f64
                        #:convention 'megatron #:losses '((sequence . 1e-2)))))
    (set-router-weight! r (tensor '((1 0) (0 1))))
    (test-approximate "router, megatron" (/ 11 9)
      (aux-ref (router-forward r (f64 `(((,ln3 0) (0 ,ln3)) ((,ln3 0) (0 0)))) #:valid valid) 'sequence)
      1e-12)))

;; Global-batch, E=2, K=1: call 1 = ((ln3 0) (ln3 0)): c = (2 0), P = (1.5 0.5): both 1.5.
;; Call 2 = ((0 ln3)): c = (0 1), P = (.25 .75), accumulated (2 1) over 3 tokens.
;; Exact: 2·(2/3·.25 + 1/3·.75) = 5/6. Megatron: counts/(M·T_cur) = (2 1)/2: 2·(.25 + .5·.75) = 1.25.
(test-group "global-batch loss under accumulation"
  (define (two-calls . options)
    (let ((tr (make-balance-tracker #:experts 2)))
      (list (item (apply load-balancing-loss 'global-batch (f64 `((,ln3 0) (,ln3 0))) #:top-k 1 #:tracker tr
                         options))
            (item (apply load-balancing-loss 'global-batch (f64 `((0 ,ln3))) #:top-k 1 #:tracker tr options)))))
  (test-assert "exact" (close? (two-calls) (list 1.5 (/ 5 6)) 1e-12))
  (test-assert "megatron" (close? (two-calls #:convention 'megatron) '(1.5 1.25) 1e-12))
  (let ((tr (make-balance-tracker #:experts 2)))
    (load-balancing-loss 'global-batch (f64 `((,ln3 0))) #:top-k 1 #:tracker tr #:convention 'megatron)
    (test-approximate "equal micro-batches agree" (item (load-balancing-loss 'micro-batch (f64 `((,ln3 0) (0 ,ln3))) #:top-k 1))
      (item (load-balancing-loss 'global-batch (f64 `((0 ,ln3))) #:top-k 1 #:tracker tr #:convention 'megatron))
      1e-12)))

(test-group "capacity as Megatron reports it"
  ;; T = 6, K = 2, E = 8, cf = 8: ceil(6·2/8·8) = 12 > T; exact reports the clamp, 6
  (define x (randn '(6 4) #:seed 3))
  (define (cap . options)
    (routing-capacity (router-forward (apply make-router #:hidden 4 #:experts 8 #:top-k 2 #:capacity-factor 8
                                             options)
                                      x)))
  (test-equal "megatron: as computed" 12 (cap #:preset 'megatron))
  (test-equal "exact: clamped to T" 6 (cap #:preset 'megatron #:convention 'exact))
  (test-equal "the routing is the same"
    (tensor->list (routing-experts (router-forward (make-router #:hidden 4 #:experts 8 #:top-k 2
                                                                #:capacity-factor 8 #:preset 'megatron) x)))
    (tensor->list (routing-experts (router-forward (make-router #:hidden 4 #:experts 8 #:top-k 2
                                                                #:capacity-factor 8) x))))
  (test-equal "below T both agree" 3
    (routing-capacity (router-forward (make-router #:hidden 4 #:experts 8 #:top-k 2 #:capacity-factor 2
                                                   #:preset 'megatron)
                                      x))))

(test-group "OLMo-core's z-loss divisor"
  ;; lse of (0 0) is ln 2: Σ over two tokens = 2 ln²2; divided by 4 = ln²2/2
  (define z (f64 '((0 0) (0 0))))
  (test-approximate "mean by default" (expt (log 2) 2) (item (z-loss z)) 1e-12)
  (test-approximate "#:div-factor" (/ (expt (log 2) 2) 2) (item (z-loss z #:div-factor 4)) 1e-12)
  (test-moelab-error "a divisor <= 0" "#:div-factor must be > 0" (z-loss z #:div-factor 0))
  (let* ((x (f64 '((1 0) (0 2) (3 1))))
         (r (hand-router #:preset 'olmo-core #:loss-div-factor 32 #:dtype 'f64))
         (out (router-forward r x))
         (sum (apply + (map (lambda (row) (expt (logsumexp row) 2)) (tensor->list (routing-logits out))))))
    (test-approximate "preset olmo-core: the z-loss divides by the loss divisor" (/ sum 32) (aux-ref out 'z) 1e-12)
    (test-approximate "without the preset: the mean" (/ sum 3)
      (aux-ref (router-forward (hand-router #:pre-softmax? #t #:loss-div-factor 32 #:dtype 'f64
                                            #:losses '((z . 1e-3)))
                               x)
               'z)
      1e-12)))

(test-group "uniform debug routing: MegaBlocks keeps the weights"
  (define x (f64 '((1 0) (0 2) (3 1) (-1 1))))
  (define plain (router-forward (hand-router #:preset 'megablocks #:dtype 'f64) x))
  (define mb (router-forward (hand-router #:preset 'megablocks #:dtype 'f64 #:debug-routing 'uniform) x))
  (define olmo (router-forward (hand-router #:preset 'olmo-core #:dtype 'f64 #:debug-routing 'uniform) x))
  (define forced '((0 1) (2 0) (1 2) (0 1)))
  (test-equal "megablocks: forced ids" forced (tensor->list (routing-experts mb)))
  (test-equal "megablocks: the router's own top-k weights"
    (tensor->list (routing-weights plain)) (tensor->list (routing-weights mb)))
  (test-equal "olmo-core: forced ids" forced (tensor->list (routing-experts olmo)))
  (test-assert "olmo-core: the forced experts' scores"
    (close? (tensor->list (routing-weights olmo))
            (map (lambda (row ids) (let ((p (softmax row))) (map (lambda (i) (list-ref p i)) ids)))
                 (tensor->list (routing-logits olmo)) forced)
            1e-12)))

;;; ---- sqrtsoftplus --------------------------------------------------------------------------

(test-group "sqrtsoftplus"
  ;; x = (1 0): z = (1 0 -1), s = sqrt(softplus z); top-2 = experts 0 1, renormalised
  (let* ((r (hand-router #:score 'sqrtsoftplus #:dtype 'f64 #:losses '((micro-batch . 1e-2))))
         (out (router-forward r (f64 '((1 0)))))
         (s (map sqrtsoftplus '(1 0 -1)))
         (d (+ (car s) (cadr s) 1e-20)))
    (test-equal "experts" '((0 1)) (tensor->list (routing-experts out)))
    (test-assert "weights s/(sum of the K)" (close? (tensor->list (routing-weights out))
                                                    (list (list (/ (car s) d) (/ (cadr s) d))) 1e-14))
    ;; micro-batch loss, T = 1: E/K·Σ c_i p_i with p = s/Σs and c = (1 1 0)
    (test-approximate "loss scores s/(sum s)" (* 3/2 (/ (+ (car s) (cadr s)) (apply + s)))
      (aux-ref out 'micro-batch) 1e-12))
  (test-equal "a standalone loss takes it" #t
    (real? (item (load-balancing-loss 'micro-batch (f64 '((1 0 -1))) #:top-k 1 #:score 'sqrtsoftplus))))
  (test-equal "with group limiting and an expert bias"
    '(4 2)
    (tensor-shape (routing-experts (router-forward (make-router #:hidden 4 #:experts 8 #:top-k 2 #:groups 4
                                                                #:group-top-k 2 #:expert-bias? #t
                                                                #:score 'sqrtsoftplus)
                                                   (randn '(4 4) #:seed 2)))))
  (test-moelab-error "unknown score, choices named" "one of softmax sigmoid sqrtsoftplus, got tanh"
    (make-router #:hidden 2 #:experts 4 #:top-k 2 #:score 'tanh)))

;;; ---- routing replay ----------------------------------------------------------------------------

(test-group "routing replay"
  ;; x = (1 0): z = (1 0 -1); replaying experts (2 1): post-softmax over (-1 0)
  (let* ((r (hand-router #:dtype 'f64 #:losses '((micro-batch . 1e-2))))
         (out (router-forward r (f64 '((1 0))) #:experts '((2 1)))))
    (test-equal "the given experts" '((2 1)) (tensor->list (routing-experts out)))
    (test-assert "weights: the score function at those ids"
      (close? (tensor->list (routing-weights out)) (list (softmax '(-1 0))) 1e-14))
    (test-equal "counts follow the given ids" '(0 1 1) (tensor->list (routing-counts out)))
    ;; count-from 'topk: the loss counts the scores' own top-2 (experts 0 1) → 3/2·(p0 + p1)
    (test-approximate "the loss counts its own top-k ('topk)"
      (* 3/2 (apply + (list-head (softmax '(1 0 -1)) 2))) (aux-ref out 'micro-batch) 1e-12)
    (test-approximate "or the given ids ('actual)"
      (* 3/2 (apply + (cdr (softmax '(1 0 -1)))))
      (aux-ref (router-forward (hand-router #:dtype 'f64 #:count-from 'actual #:losses '((micro-batch . 1e-2)))
                               (f64 '((1 0))) #:experts '((2 1)))
               'micro-batch)
      1e-12))
  ;; record a run, replay it on a fresh router: the same experts, weights and gradients
  (let* ((make (lambda* (#:key (seed 7))
                 (make-router #:hidden 4 #:experts 6 #:top-k 2 #:dtype 'f64 #:seed seed #:replay 'record
                              #:score 'sigmoid #:losses '((micro-batch . 1e-2)))))
         (xs (list (randn '(5 4) #:seed 1 #:dtype 'f64) (randn '(3 4) #:seed 2 #:dtype 'f64)))
         (r1 (make))
         (outs1 (map (lambda (x) (router-forward r1 x)) xs))
         (rec (router-replay-record r1))
         (r2 (make #:seed 8)))
    (set-router-weight! r2 (router-weight r1))
    (router-replay! r2 rec)
    (let ((outs2 (map (lambda (x) (router-forward r2 x)) xs)))
      (test-equal "the record: one entry per forward" 2 (length rec))
      (test-equal "the record is the routing" (map (lambda (o) (tensor->list (routing-experts o))) outs1)
        (map tensor->list rec))
      (test-equal "replayed experts equal the recorded ones" (map tensor->list rec)
        (map (lambda (o) (tensor->list (routing-experts o))) outs2))
      (test-equal "replayed weights equal the recorded run's"
        (map (lambda (o) (tensor->list (routing-weights o))) outs1)
        (map (lambda (o) (tensor->list (routing-weights o))) outs2))
      (for-each (lambda (o) (backward! (tsum (routing-weights o)))) outs1)
      (for-each (lambda (o) (backward! (tsum (routing-weights o)))) outs2)
      (test-equal "and the same gradient w.r.t. the weight"
        (tensor->list (tensor-grad (router-weight r1))) (tensor->list (tensor-grad (router-weight r2)))))
    (test-equal "after the list the router selects again"
      (tensor->list (routing-experts (router-forward r1 (car xs))))
      (tensor->list (routing-experts (router-forward r2 (car xs)))))
    (test-equal "clear? empties the record" 3 (length (router-replay-record r1 #:clear? #t)))
    (test-equal "emptied" '() (router-replay-record r1)))
  (let ((r (hand-router)))
    (router-forward r (tensor '((1 0))) #:experts '((2 1)))
    (router-recomputing! r #t)
    (test-equal "a recomputed forward routes as the replayed original" '((2 1))
      (tensor->list (routing-experts (router-forward r (tensor '((1 0)))))))
    (router-recomputing! r #f))
  (let* ((r (hand-router #:replay 'record))
         (x (tensor '((1 0) (0 1))))
         (steps (lambda () (assq-ref (router-metrics r) 'micro-batches))))
    (router-forward r x)
    (test-moelab-error "an id out of range, named" "id 3 at token 1, slot 0 is outside [0, 3)"
      (router-forward r x #:experts '((0 1) (3 1))))
    (test-moelab-error "a negative id" "outside [0, 3)" (router-forward r x #:experts '((0 1) (-1 1))))
    (test-moelab-error "the wrong shape, named" "#:experts must be i64 [2 2]"
      (router-forward r x #:experts '((0 1 2) (0 1 2))))
    (test-moelab-error "an expert twice in a row" "token 1 lists expert 2 twice"
      (router-forward r x #:experts '((0 1) (2 2))))
    (test-equal "errors leave the router unchanged: counters" 1 (steps))
    (test-equal "errors leave the router unchanged: record" 1 (length (router-replay-record r)))
    (test-moelab-error "router-replay! checks K" "entry 0 must be i64 [T 2]"
      (router-replay! r (list (tensor '((0 1 2)) #:dtype 'i64))))
    (router-replay! r (list (tensor '((1 0) (2 2)) #:dtype 'i64)))
    (test-moelab-error "a bad replayed entry raises when it is used" "lists expert 2 twice"
      (router-forward r x))
    (router-replay! r '())
    (test-equal "'() stops a replay" '(2 2) (tensor-shape (routing-experts (router-forward r x))))))

;;; ---- random debug routing ----------------------------------------------------------------------

(test-group "random debug routing"
  (define x (randn '(16 4) #:seed 4))
  (define (rr seed) (make-router #:hidden 4 #:experts 8 #:top-k 2 #:debug-routing 'random #:seed seed))
  (define out (router-forward (rr 5) x))
  (define z (tensor->list (routing-logits out)))
  (test-assert "the logits are uniform draws in [0, 1)"
    (every (lambda (row) (every (lambda (v) (and (>= v 0) (< v 1))) row)) z))
  (test-assert "the experts are their top-k"
    (equal? (tensor->list (routing-experts out))
            (map (lambda (row) (list-head (sort (iota 8) (lambda (a b) (> (list-ref row a) (list-ref row b)))) 2))
                 z)))
  (test-assert "weights: softmax over the selected random logits"
    (close? (tensor->list (routing-weights out))
            (map (lambda (row ids) (softmax (map (lambda (i) (list-ref row i)) ids)))
                 z (tensor->list (routing-experts out)))
            1e-6))
  (test-equal "seeded: the same seed routes the same way" (tensor->list (routing-experts out))
    (tensor->list (routing-experts (router-forward (rr 5) x))))
  (test-assert "another seed routes differently"
    (not (equal? (tensor->list (routing-experts out)) (tensor->list (routing-experts (router-forward (rr 6) x))))))
  (test-assert "every expert gets tokens (16·2 slots over 8)"
    (every positive? (tensor->list (routing-counts (router-forward (rr 5) (randn '(64 4) #:seed 9))))))
  (test-equal "no gradient reaches the gate weight: the weights are constants" #f
    (requires-grad? (routing-weights out))))

;;; ---- quantile balancing ---------------------------------------------------------------------------

;; Quantile balancing recomputed from the router's logits: α_t = (K+1)-th largest
;; of z_t − β, q_e = (T·K/E + 1)-th largest over tokens of z_e − α.
(define (nth-largest lst n) (list-ref (sort lst >) n))
(define (quantiles z beta k)
  (let* ((e (length beta))
         (n (quotient (* (length z) k) e))
         (alpha (map (lambda (row) (nth-largest (map - row beta) k)) z)))
    (map (lambda (j) (nth-largest (map (lambda (row a) (- (list-ref row j) a)) z alpha) n)) (iota e))))
(define (mean l) (/ (apply + l) (length l)))
(define (centred l) (let ((m (mean l))) (map (lambda (v) (- v m)) l)))
(define* (qb-router #:rest options)
  (apply make-router #:hidden 4 #:experts 4 #:top-k 1 #:pre-softmax? #t #:dtype 'f64
         #:routing 'quantile-balancing #:seed 11 options))

(test-group "quantile balancing"
  (define x1 (randn '(8 4) #:seed 21 #:dtype 'f64 #:requires-grad #t))
  (define x2 (randn '(8 4) #:seed 22 #:dtype 'f64 #:requires-grad #t))
  (let* ((r (qb-router #:qb-ema 0.5))
         (o1 (router-forward r x1))
         (z1 (tensor->list (routing-logits o1))))
    (test-equal "β starts at zero" '(0.0 0.0 0.0 0.0) (tensor->list (router-qb-beta r)))
    (test-equal "step 1 routes by the top-1 of z"
      (map (lambda (row) (list (list-index (lambda (v) (= v (apply max row))) row))) z1)
      (tensor->list (routing-experts o1)))
    (router-step! r)
    (let ((beta1 (centred (map (lambda (q) (* 0.5 q)) (quantiles z1 '(0 0 0 0) 1)))))
      (test-assert "β after one step: ema·0 + (1 − ema)·q, centred"
        (close? (tensor->list (router-qb-beta r)) beta1 1e-6))
      (let* ((b (tensor->list (router-qb-beta r)))
             (o2 (router-forward r x2))
             (z2 (tensor->list (routing-logits o2))))
        (test-equal "step 2 routes by the top-1 of z − β"
          (map (lambda (row) (let ((v (map - row b))) (list (list-index (lambda (u) (= u (apply max v))) v))))
               z2)
          (tensor->list (routing-experts o2)))
        (test-assert "weights: the score function at the chosen ids"
          (close? (tensor->list (routing-weights o2))
                  (map (lambda (row ids) (list (list-ref (softmax row) (car ids))))
                       z2 (tensor->list (routing-experts o2)))
                  1e-12))
        (router-step! r)
        (test-assert "β after two steps: 0.5·β + 0.5·q, centred"
          (close? (tensor->list (router-qb-beta r))
                  (centred (map (lambda (b q) (+ (* 0.5 b) (* 0.5 q))) b (quantiles z2 b 1)))
                  1e-6))
        (test-assert "β in the metrics"
          (equal? (tensor->list (router-qb-beta r)) (tensor->list (assq-ref (router-metrics r) 'qb-beta))))
        (let ((s (router-state r))
              (fresh (qb-router)))
          (router-load-state! fresh s)
          (test-equal "router-state holds qb-beta; router-load-state! restores it"
            (tensor->list (router-qb-beta r)) (tensor->list (router-qb-beta fresh)))
          (test-equal "a quantile-balancing router's counters: a fourth row for the step's quantile sums"
            '(4 5) (tensor-shape (assq-ref s 'counters)))))))
  ;; two micro-batches on one rank = one micro-batch on each of dp = 2 ranks
  (let* ((w (router-weight (qb-router)))
         (one (qb-router)))
    (router-forward one x1)
    (router-forward one x2)
    (router-step! one)
    (test-assert "two micro-batches: β from their mean quantiles"
      (close? (tensor->list (router-qb-beta one))
              (centred (map (lambda (a b) (/ (+ a b) 2))
                            (quantiles (tensor->list (routing-logits (router-forward (qb-router) x1))) '(0 0 0 0) 1)
                            (quantiles (tensor->list (routing-logits (router-forward (qb-router) x2))) '(0 0 0 0) 1)))
              1e-6))
    (test-assert "dp = 2 over with-ranks: the same β on both ranks"
      (every (lambda (b) (close? b (tensor->list (router-qb-beta one)) 1e-7))
             (with-ranks 2
               (lambda (rank)
                 (let ((r (qb-router)))
                   (router-set-groups! r #:dp (world-group))
                   (router-forward r (if (zero? rank) x1 x2))
                   (router-step! r)
                   (tensor->list (router-qb-beta r))))))))
  ;; tp = 2: each rank holds half the tokens; the quantiles see the gathered logits
  (let* ((rows (tensor->list x1))
         (half (lambda (rank) (tensor (if (zero? rank) (list-head rows 4) (list-tail rows 4))
                                      #:dtype 'f64 #:requires-grad #t)))
         (whole (qb-router)))
    (router-forward whole x1)
    (router-step! whole)
    (test-assert "tp = 2: the quantiles of the whole micro-batch on both ranks"
      (every (lambda (b) (close? b (tensor->list (router-qb-beta whole)) 1e-7))
             (with-ranks 2
               (lambda (rank)
                 (let ((r (qb-router)))
                   (router-set-groups! r #:tp (world-group))
                   (router-forward r (half rank))
                   (router-step! r)
                   (tensor->list (router-qb-beta r))))))))
  (let ((r (qb-router)))
    (router-forward r x1)
    (test-moelab-error "T·K not divisible by E while updating β, values named"
      "T·K = 7·1 = 7 is not divisible by E = 4"
      (router-forward r (randn '(7 4) #:seed 3 #:dtype 'f64 #:requires-grad #t)))
    (test-moelab-error "a padding mask" "takes no padding mask" (router-forward r x1 #:valid (make-list 8 #t)))
    (router-step! r)
    (test-assert "errors leave the router unchanged: β from the one good forward"
      (close? (tensor->list (router-qb-beta r))
              (centred (quantiles (tensor->list (routing-logits (router-forward (qb-router) x1))) '(0 0 0 0) 1))
              1e-6))
    (let ((b (tensor->list (router-qb-beta r))))
      (with-no-grad (lambda () (router-forward r (randn '(7 4) #:seed 3 #:dtype 'f64))))
      (router-training! r #f)
      (router-forward r (randn '(5 4) #:seed 4 #:dtype 'f64 #:requires-grad #t))
      (router-training! r #t)
      (router-step! r)
      (test-equal "evaluation and no-grad route any T and leave β alone" b (tensor->list (router-qb-beta r)))))
  (test-moelab-error "group limiting" "takes no group limiting"
    (make-router #:hidden 4 #:experts 8 #:top-k 2 #:routing 'quantile-balancing #:groups 4 #:group-top-k 2))
  (test-moelab-error "a balancing-loss coefficient" "takes no balancing loss; 'micro-batch' has coefficient 0.01"
    (make-router #:hidden 4 #:experts 8 #:top-k 2 #:routing 'quantile-balancing #:losses '((micro-batch . 1e-2))))
  (test-equal "the z-loss is allowed" #t
    (router? (make-router #:hidden 4 #:experts 8 #:top-k 2 #:routing 'quantile-balancing #:losses '((z . 1e-3)))))
  (test-moelab-error "K = E" "needs top-k < experts"
    (make-router #:hidden 4 #:experts 4 #:top-k 4 #:pre-softmax? #t #:routing 'quantile-balancing))
  (test-moelab-error "qb-ema out of range" "qb-ema must be in [0, 1), got 1"
    (make-router #:hidden 4 #:experts 8 #:top-k 2 #:routing 'quantile-balancing #:qb-ema 1))
  (test-moelab-error "qb-ema without quantile balancing" "without quantile-balancing"
    (make-router #:hidden 4 #:experts 8 #:top-k 2 #:qb-ema 0.5))
  (test-moelab-error "unknown routing mode" "#:routing expects one of topk quantile-balancing, got nope"
    (make-router #:hidden 4 #:experts 8 #:top-k 2 #:routing 'nope))
  (test-equal "no β without quantile balancing" #f (router-qb-beta (make-router #:hidden 4 #:experts 8 #:top-k 2)))
  (test-moelab-error "set-router-qb-beta! without quantile balancing" "no quantile-balancing bias"
    (set-router-qb-beta! (make-router #:hidden 4 #:experts 8 #:top-k 2) '(0 0 0 0 0 0 0 0)))
  (let ((r (qb-router)))
    (set-router-qb-beta! r '(1 2 3 4))
    (test-equal "set-router-qb-beta!" '(1.0 2.0 3.0 4.0) (tensor->list (router-qb-beta r)))
    (test-moelab-error "set-router-qb-beta! of the wrong shape" "expected shape [4]"
      (set-router-qb-beta! r '(1 2)))
    (test-moelab-error "a state's qb-beta of the wrong shape" "qb-beta must be"
      (router-load-state! r `((bias . #f) (counters . ,(assq-ref (router-state r) 'counters))
                              (qb-beta . ,(tensor '(1 2))))))
    (test-equal "unchanged after the bad inputs" '(1.0 2.0 3.0 4.0) (tensor->list (router-qb-beta r)))))

(test-end "router-modes")
(exit-with-test-status)
