;;; router.scm — (moelab router): make-router and its options, routing
;;; results for a hand-set gate, the load-balancing losses on hand-computed
;;; logits, gradients against finite differences, the global-batch tracker,
;;; presets, metrics, expert-bias updates, state save/load, and every bad
;;; input of the router contract (each a moelab-error that leaves the router unchanged).
;;;
;;; Hand computations use the canonical form L = E/(K·T²)·Σ_i c_i·P_i with c
;;; the top-k counts and P_i = Σ_t p_ti the summed loss scores.

(include "common.scm")

(test-begin "router")

(define ln3 (log 3))

(define (f64 data) (tensor data #:dtype 'f64))

(define (item t) (tensor-item t))

(define (aux-ref out kind) (item (assq-ref (routing-aux-losses out) kind)))

;; A router D=2, E=3, K=2 whose gate is W = ((1 0) (0 1) (-1 0)).
(define* (hand-router #:rest options)
  (let ((r (apply make-router #:hidden 2 #:experts 3 #:top-k 2 options)))
    (set-router-weight! r (tensor '((1 0) (0 1) (-1 0))))
    r))

;;; ---- make-router and its configuration -------------------------------------------------

(test-group "make-router"
  (let ((r (make-router #:hidden 16 #:experts 8 #:top-k 2)))
    (test-assert "router?" (router? r))
    (test-assert "a tensor is not a router" (not (router? (tensor '(1)))))
    (test-assert "is-a <router>" ((@ (oop goops) is-a?) r <router>))
    (test-equal "weight [E D] f32" '((8 16) f32)
      (list (tensor-shape (router-weight r)) (tensor-dtype (router-weight r))))
    (test-assert "weight is a parameter" (requires-grad? (router-weight r)))
    (test-equal "no expert bias by default" #f (router-bias r))
    (test-equal "defaults in router-config"
      '(16 8 2 f32 softmax #f auto #f #f auto 1.0 0.0 #f megatron probs #f #f () topk inject #f 0)
      (map (lambda (k) (assq-ref (router-config r) k))
           '(hidden experts top-k dtype score pre-softmax? normalize? groups group-top-k
             group-score-top scaling-factor jitter capacity-factor capacity-formula drop-policy
             pad-to-capacity? expert-bias? losses count-from grad-mode preset seed)))
    (test-assert "printed" (string-prefix? "#<router E=8 K=2 D=16 softmax post-softmax"
                                           (format #f "~a" r))))
  (test-equal "the seed fixes the weight" #t
    (equal? (tensor->list (router-weight (make-router #:hidden 4 #:experts 4 #:top-k 2 #:seed 7)))
            (tensor->list (router-weight (make-router #:hidden 4 #:experts 4 #:top-k 2 #:seed 7)))))
  (test-assert "another seed, another weight"
    (not (equal? (tensor->list (router-weight (make-router #:hidden 4 #:experts 4 #:top-k 2 #:seed 7)))
                 (tensor->list (router-weight (make-router #:hidden 4 #:experts 4 #:top-k 2 #:seed 8))))))
  (let ((c (router-config (make-router #:hidden 8 #:experts 8 #:top-k 2 #:preset 'deepseek-v3))))
    (test-equal "deepseek-v3: sigmoid, scaling 2.5, bias, sequence loss 1e-4"
      '(sigmoid 2.5 #t #f ((sequence . 1e-4)) 2 deepseek-v3 0.0)
      (map (lambda (k) (assq-ref c k))
           '(score scaling-factor expert-bias? bias-center? losses group-score-top preset loss-eps))))
  (test-equal "explicit keywords override the preset, wherever it is"
    '(1.0 sigmoid ((micro-batch . 0.5)))
    (let ((c (router-config (make-router #:hidden 8 #:experts 8 #:top-k 2 #:scaling-factor 1.0
                                         #:losses '((micro-batch . 0.5)) #:preset 'deepseek-v3))))
      (map (lambda (k) (assq-ref c k)) '(scaling-factor score losses))))
  (test-equal "olmo-core preset" '(add actual ((olmo-local-batch . 0.01) (z . 0.001)) #t)
    (let ((c (router-config (make-router #:hidden 4 #:experts 4 #:top-k 2 #:preset "olmo-core"))))
      (map (lambda (k) (assq-ref c k)) '(grad-mode count-from losses pre-softmax?))))
  (test-equal "torchtitan preset centers the bias" '(#t #t #f)
    (let ((c (router-config (make-router #:hidden 4 #:experts 4 #:top-k 2 #:preset 'torchtitan))))
      (map (lambda (k) (assq-ref c k)) '(expert-bias? bias-center? normalize?))))
  (test-equal "extension keywords, with or without '?'"
    '(f64 imbalance 2.0 #f 3 #f #t 1.5 position)
    (let ((c (router-config (make-router #:hidden 4 #:experts 4 #:top-k 2 #:dtype 'f64
                                         #:debug-routing 'imbalance #:norm-p 2 #:training #f
                                         #:grad-accum 3 #:k-in-f? #f #:per-token-loss #t
                                         #:capacity-factor 1.5 #:drop-policy "position"))))
      (map (lambda (k) (assq-ref c k))
           '(dtype debug-routing norm-p training? grad-accum k-in-f? per-token-loss?
             capacity-factor drop-policy))))
  (test-equal "groups and normalize? #t" '(2 1 2 #t)
    (let ((c (router-config (make-router #:hidden 4 #:experts 8 #:top-k 2 #:groups 2
                                         #:group-top-k 1 #:group-score-top 2 #:normalize? #t))))
      (map (lambda (k) (assq-ref c k)) '(groups group-top-k group-score-top normalize?))))
  (test-equal "router-config rebuilds the router" #t
    (let* ((r (make-router #:hidden 4 #:experts 8 #:top-k 2 #:preset 'megablocks #:capacity-factor 2
                           #:groups 4 #:group-top-k 2 #:seed 3))
           (options (append-map (lambda (p) (list (symbol->keyword (car p)) (cdr p)))
                                (router-config r))))
      (equal? (router-config (apply make-router options)) (router-config r))))
  (test-assert "printed with its preset"
    (string-contains (format #f "~a" (make-router #:hidden 4 #:experts 8 #:top-k 2 #:preset 'deepseek-v3))
                     "sigmoid")))

;;; ---- routing a hand-set gate -------------------------------------------------------------------

;; x0 = (1 .5): logits (1 .5 -1) → experts 0 1, weights softmax(1, .5)
;; x1 = (0 2):  logits (0 2 0)   → experts 1 0 (tie 0/2 → lower index), softmax(2, 0)
(define w0 (/ 1 (+ 1 (exp -0.5))))
(define w1 (/ 1 (+ 1 (exp -2))))

(test-group "router-forward"
  (let* ((r (hand-router #:pre-softmax? #f))
         (out (router-forward r (tensor '((1 0.5) (0 2))))))
    (test-assert "routing?" (routing? out))
    (test-assert "a router is not a routing" (not (routing? r)))
    (test-assert "is-a <routing>" ((@ (oop goops) is-a?) out <routing>))
    (test-equal "experts" '((0 1) (1 0)) (tensor->list (routing-experts out)))
    (test-equal "experts are i64" 'i64 (tensor-dtype (routing-experts out)))
    (test-values "weights (post-softmax over the two picked)"
      `((,w0 ,(- 1 w0)) (,w1 ,(- 1 w1))) (routing-weights out))
    (test-values "logits" '((1 0.5 -1) (0 2 0)) (routing-logits out))
    (test-values "probs (dense [T E])" `((,w0 ,(- 1 w0) 0) (,(- 1 w1) ,w1 0)) (routing-probs out))
    (test-equal "map" '((#t #t #f) (#t #t #f)) (tensor->list (routing-map out)))
    (test-equal "kept" '((#t #t) (#t #t)) (tensor->list (routing-kept out)))
    (test-equal "counts" '(2 2 0) (tensor->list (routing-counts out)))
    (test-equal "tokens, capacity, dropped" '(2 #f 0)
      (list (routing-tokens out) (routing-capacity out) (routing-dropped out)))
    (test-equal "no losses configured" '() (routing-aux-losses out))
    (test-equal "aux total 0" 0.0 (item (routing-aux-total out)))
    (test-assert "printed" (string-prefix? "#<routing T=2 K=2 E=3" (format #f "~a" out))))
  (let* ((r (hand-router #:pre-softmax? #t))
         (out (router-forward r (tensor '((1 0.5) (0 2))))))
    ;; pre-softmax: softmax over all three, no renormalisation
    (test-values "pre-softmax weights"
      (let ((z0 (+ (exp 1) (exp 0.5) (exp -1))) (z1 (+ 1 (exp 2) 1)))
        `((,(/ (exp 1) z0) ,(/ (exp 0.5) z0)) (,(/ (exp 2) z1) ,(/ 1 z1))))
      (routing-weights out)))
  (let* ((r (hand-router #:score 'sigmoid #:scaling-factor 2.5))
         (out (router-forward r (tensor '((1 0.5))))))
    ;; sigmoid, renormalised over the K = 2 (auto), times 2.5
    (test-values "sigmoid, renormalised, scaled"
      (let ((a (/ 1 (+ 1 (exp -1)))) (b (/ 1 (+ 1 (exp -0.5)))))
        `((,(* 2.5 (/ a (+ a b))) ,(* 2.5 (/ b (+ a b))))))
      (routing-weights out)))
  (let* ((r (make-router #:hidden 4 #:experts 8 #:top-k 2 #:seed 2))
         (out (router-forward r (randn '(2 3 4) #:seed 5))))
    (test-equal "[B S D] input: rows b-major" '((6 2) (6 2) (6 8))
      (map tensor-shape (list (routing-weights out) (routing-experts out) (routing-probs out)))))
  (let* ((r (hand-router))
         (out (router-forward r (tensor '((1 0.5) (0 2) (1 0) (0 1))) #:valid '(#t #f #t #t))))
    (test-equal "valid mask: tokens" 3 (routing-tokens out))
    (test-equal "valid mask: counts skip padding" 6
      (apply + (tensor->list (routing-counts out))))
    (test-equal "padded row not kept" '(#f #f) (list-ref (tensor->list (routing-kept out)) 1)))
  ;; capacity: 4 tokens, K = 1, E = 2, cf 1 → C = ⌈4·1/2⌉ = 2; all want expert 0
  (let* ((r (make-router #:hidden 2 #:experts 2 #:top-k 1 #:score 'sigmoid #:capacity-factor 1.0))
         (_ (set-router-weight! r (tensor '((1 0) (0 0)))))
         (out (router-forward r (tensor '((1 0) (3 0) (2 0) (4 0))))))
    (test-equal "capacity and dropped" '(2 2) (list (routing-capacity out) (routing-dropped out)))
    (test-equal "drop policy probs keeps the two largest weights" '((#f) (#t) (#f) (#t))
      (tensor->list (routing-kept out)))
    (test-equal "counts after dropping" '(2 0) (tensor->list (routing-counts out)))))

;;; ---- standalone losses: hand-computed values -------------------------------------------------

;; A = ((0 0) (ln3 0)): softmax rows (.5 .5) (.75 .25); top-1 → 0, 0 (tie → 0)
;;   c = (2 0), P = (1.25 .75): L = 2/(1·4)·(2·1.25) = 1.25
;; B = ((0 ln3) (0 0)): top-1 → 1, 0; c = (1 1), P = (.75 1.25): L = 1 (uniform)
(define A `((0 0) (,ln3 0)))
(define B `((0 ,ln3) (0 0)))

(test-group "load-balancing-loss values"
  (test-approximate "micro-batch, hand-computed" 1.25
    (item (load-balancing-loss 'micro-batch (f64 A) #:top-k 1 #:score 'softmax #:valid #f)) 1e-12)
  (test-approximate "uniform counts give exactly 1 (α)" 1.0
    (item (load-balancing-loss 'micro-batch (f64 B) #:top-k 1)) 1e-12)
  (test-approximate "uniform counts, f32" 1.0
    (item (load-balancing-loss 'micro-batch (tensor '((3 1 0 0) (0 0 2 5))) #:top-k 2)) 1e-6)
  ;; sigmoid: σ(ln3) = .75, σ(0) = .5 → s = (.6 .4); top-1 → 0: L = 2·.6 = 1.2
  (test-approximate "micro-batch, sigmoid scores" 1.2
    (item (load-balancing-loss 'micro-batch (f64 `((,ln3 0))) #:top-k 1 #:score 'sigmoid)) 1e-12)
  (test-approximate "k-in-f? #f gives K × the value" 2.0
    (item (load-balancing-loss 'micro-batch (tensor '((3 1 0 0) (0 0 2 5))) #:top-k 2 #:k-in-f? #f))
    1e-6)
  ;; valid mask: only token 1 of A counts: c = (1 0), P = (.75 .25), T = 1: L = 2·.75
  (test-approximate "micro-batch with a valid mask" 1.5
    (item (load-balancing-loss 'micro-batch (f64 A) #:top-k 1 #:valid '(#f #t))) 1e-12)
  (test-approximate "routing-ids count the given routing" (* 2/4 (+ (* 1 1.25) (* 1 0.75)))
    (item (load-balancing-loss 'micro-batch (f64 A) #:top-k 1 #:routing-ids '((1) (0)))) 1e-12)
  ;; sequence: two sequences A and B, the mean of their losses
  (test-approximate "sequence = mean over sequences" (/ (+ 1.25 1.0) 2)
    (item (load-balancing-loss 'sequence (f64 (list A B)) #:top-k 1)) 1e-12)
  (test-approximate "sequence with document bounds on [T E]" (/ (+ 1.25 1.0) 2)
    (item (load-balancing-loss 'sequence (f64 (append A B)) #:top-k 1 #:doc-bounds '(0 2 4))) 1e-12)
  (let ((z (randn '(7 6) #:dtype 'f64 #:seed 11)))
    (test-approximate "sequence with B = 1 equals micro-batch"
      (item (load-balancing-loss 'micro-batch z #:top-k 2 #:score 'sigmoid))
      (item (load-balancing-loss 'sequence (reshape z '(1 7 6)) #:top-k 2 #:score 'sigmoid)) 1e-12))
  ;; olmo-local-batch: E/K·Σ c_i·P̄_i/T... for A: 2/1·(2·1.25)/2/2 = 1.25
  (test-approximate "olmo-local-batch equals the canonical form" 1.25
    (item (load-balancing-loss 'olmo-local-batch (f64 A) #:top-k 1)) 1e-12)
  (test-approximate "olmo-local-batch with a divisor override" (* 1.25 2/4)
    (item (load-balancing-loss 'olmo-local-batch (f64 A) #:top-k 1 #:loss-div-factor 4)) 1e-12)
  ;; z-loss: lse(0,0) = ln2, lse(ln3,0) = ln4
  (test-approximate "z-loss" (/ (+ (expt (log 2) 2) (expt (log 4) 2)) 2)
    (item (z-loss (f64 A))) 1e-12)
  (test-approximate "z-loss with a mask" (expt (log 4) 2)
    (item (z-loss (f64 A) #:valid '(#f #t))) 1e-12)
  (test-approximate "z through load-balancing-loss" (expt (log 4) 2)
    (item (load-balancing-loss 'z (f64 A) #:valid '(#f #t))) 1e-12)
  ;; megablocks, one layer of L = 1: E/(K·T²)·Σ c·P, the canonical form
  (test-approximate "megablocks batched, one layer" 1.25
    (item (megablocks-batched-loss (list (f64 A)) #:top-k 1)) 1e-12)
  ;; two layers concatenated: E/(L·T·K)·⟨c_cat, mean_t p_cat⟩ = (1.25 + 1)/2
  (test-approximate "megablocks batched, two layers" 1.125
    (item (megablocks-batched-loss (list (f64 A) (f64 B)) #:top-k 1)) 1e-12)
  (test-approximate "megablocks per layer with num-layers 2" 0.625
    (item (load-balancing-loss 'megablocks (f64 A) #:top-k 1 #:num-layers 2)) 1e-12))

;;; ---- gradients against finite differences ------------------------------------------------------

(define (list-set-nested rows i j v)
  (map (lambda (row ri)
         (map (lambda (x cj) (if (and (= ri i) (= cj j)) v x)) row (iota (length row))))
       rows (iota (length rows))))

(define (finite-difference f rows h)
  ;; central differences of F (rows → number) at every element
  (map (lambda (row i)
         (map (lambda (x j)
                (/ (- (f (list-set-nested rows i j (+ x h))) (f (list-set-nested rows i j (- x h))))
                   (* 2 h)))
              row (iota (length row))))
       rows (iota (length rows))))

(define (loss-grad kind rows . options)
  (let* ((z (tensor rows #:dtype 'f64 #:requires-grad #t))
         (loss (apply load-balancing-loss kind z options)))
    (backward! loss)
    (tensor->list (tensor-grad z))))

(define logits-rows
  '((0.3 -1.2 0.8 0.1) (1.5 0.2 -0.4 0.9) (-0.7 0.6 0.35 -0.2) (0.05 -0.9 1.1 0.4) (0.6 0.55 -1.0 0.0)))

(test-group "gradients"
  (for-each
   (lambda (score)
     (for-each
      (lambda (kind)
        (test-assert (format #f "~a ~a: autograd = finite differences" kind score)
          (let ((analytic (loss-grad kind logits-rows #:top-k 2 #:score score))
                (numeric (finite-difference
                          (lambda (rows) (item (load-balancing-loss kind (f64 rows) #:top-k 2
                                                                    #:score score)))
                          logits-rows 1e-6)))
            (or (close? analytic numeric 1e-7) (list analytic numeric)))))
      '(micro-batch olmo-local-batch z)))
   '(softmax sigmoid))
  (test-assert "the gradient is not zero"
    (any (lambda (row) (any (lambda (x) (> (abs x) 1e-3)) row))
         (loss-grad 'micro-batch logits-rows #:top-k 2)))
  ;; sequence on [1 S E]: the same gradient as micro-batch
  (test-assert "sequence gradient with B = 1 equals micro-batch"
    (let* ((z (tensor (list logits-rows) #:dtype 'f64 #:requires-grad #t)))
      (backward! (load-balancing-loss 'sequence z #:top-k 2 #:score 'sigmoid))
      (close? (car (tensor->list (tensor-grad z)))
              (loss-grad 'micro-batch logits-rows #:top-k 2 #:score 'sigmoid) 1e-12))))

;;; ---- the global-batch tracker -------------------------------------------------------------------

(test-group "global-batch"
  (let ((tr (make-balance-tracker #:experts 2)))
    (test-assert "balance-tracker?" (balance-tracker? tr))
    (test-assert "is-a <balance-tracker>" ((@ (oop goops) is-a?) tr <balance-tracker>))
    (test-assert "printed" (string-prefix? "#<balance-tracker E=2 tokens=0" (format #f "~a" tr)))
    ;; first micro-batch A: the micro-batch loss 1.25
    (test-approximate "first micro-batch" 1.25
      (item (load-balancing-loss 'global-batch (f64 A) #:top-k 1 #:tracker tr)) 1e-12)
    ;; second B: c_acc = (3 1), T_acc = 4, P_B = (.75 1.25), T_mb = 2:
    ;; L = 2·(3/4·.75/2 + 1/4·1.25/2) = .875
    (test-approximate "second micro-batch sees the accumulated counts" 0.875
      (item (load-balancing-loss 'global-batch (f64 B) #:top-k 1 #:tracker tr)) 1e-12)
    (test-equal "accumulated counts, tokens, micro-batches" '((3.0 1.0) 4.0 2)
      (list (tensor->list (balance-tracker-counts tr)) (balance-tracker-tokens tr)
            (balance-tracker-micro-batches tr)))
    (balance-tracker-reset! tr)
    (test-equal "reset" '((0.0 0.0) 0.0 0)
      (list (tensor->list (balance-tracker-counts tr)) (balance-tracker-tokens tr)
            (balance-tracker-micro-batches tr)))
    (test-approximate "after reset: B alone" 1.0
      (item (load-balancing-loss 'global-batch (f64 B) #:top-k 1 #:tracker tr)) 1e-12))
  (let ((tr (make-balance-tracker #:experts 2 #:buffer? #f)))
    (load-balancing-loss 'global-batch (f64 A) #:top-k 1 #:tracker tr)
    (test-approximate "unbuffered: each micro-batch alone" 1.0
      (item (load-balancing-loss 'global-batch (f64 B) #:top-k 1 #:tracker tr)) 1e-12))
  (let ((tr (make-balance-tracker #:experts 2)))
    ;; another replica's counts given explicitly: A's (2 0) over 2 tokens
    (balance-tracker-add-counts! tr '(2 0) 2)
    (test-approximate "explicit counts of another rank" 0.875
      (item (load-balancing-loss 'global-batch (f64 B) #:top-k 1 #:tracker tr)) 1e-12))
  ;; two data-parallel ranks: rank 0 holds A, rank 1 B; c = (3 1), T = 4.
  ;; rank 0: 2·(3/4·1.25/2 + 1/4·.75/2) = 1.125, rank 1: .875; their mean is the
  ;; micro-batch loss of the concatenated batch, 2/16·(3·2 + 1·2) = 1
  (test-assert "over a dp group of 2 ranks"
    (close? (with-ranks 2
              (lambda (rank)
                (let ((tr (make-balance-tracker #:experts 2 #:group (world-group))))
                  (item (load-balancing-loss 'global-batch (f64 (if (zero? rank) A B)) #:top-k 1
                                             #:tracker tr)))))
            '(1.125 0.875) 1e-12))
  (test-approximate "the concatenated batch" 1.0
    (item (load-balancing-loss 'micro-batch (f64 (append A B)) #:top-k 1)) 1e-12))

;;; ---- routers with losses: values, gradient delivery --------------------------------------------

(test-group "router losses"
  (let* ((x (randn '(6 4) #:seed 3))
         (r (make-router #:hidden 4 #:experts 4 #:top-k 2 #:seed 1 #:dtype 'f64
                         #:losses '((micro-batch . 0.1) (z . 0.01))))
         (out (router-forward r x))
         (logits (routing-logits out)))
    (test-equal "aux kinds in order" '(micro-batch z) (map car (routing-aux-losses out)))
    (test-approximate "micro-batch value = standalone on the logits"
      (item (load-balancing-loss 'micro-batch (detach logits) #:top-k 2)) (aux-ref out 'micro-batch) 1e-12)
    (test-approximate "z value = standalone" (item (z-loss (detach logits))) (aux-ref out 'z) 1e-12)
    (test-approximate "aux total = Σ coeff·loss"
      (+ (* 0.1 (aux-ref out 'micro-batch)) (* 0.01 (aux-ref out 'z)))
      (item (routing-aux-total out)) 1e-12))
  ;; inject mode: backward of the model loss alone carries α·∂aux/∂W; add mode:
  ;; backward of the aux total gives the same gradient
  (let* ((x (randn '(8 4) #:seed 4))
         (options '(#:hidden 4 #:experts 4 #:top-k 2 #:seed 9 #:dtype f64
                    #:losses ((micro-batch . 0.1) (z . 0.01))))
         (ri (apply make-router #:grad-mode 'inject options))
         (ra (apply make-router #:grad-mode 'add options))
         (oi (router-forward ri x))
         (oa (router-forward ra x)))
    (backward! (t* (tsum (routing-weights oi)) 0))
    (backward! (routing-aux-total oa))
    (test-assert "inject = add (router weight gradient)"
      (close? (tensor->list (tensor-grad (router-weight ri)))
              (tensor->list (tensor-grad (router-weight ra))) 1e-10))
    (test-assert "and it is not zero"
      (any (lambda (row) (any (lambda (v) (> (abs v) 1e-6)) row))
           (tensor->list (tensor-grad (router-weight ri)))))))

;;; ---- metrics, expert bias, step, state -------------------------------------------------------------

;; E = 4, K = 1, W = I: a one-hot token e goes to expert e, with softmax
;; scores p = (e, 1, 1, 1)/(e + 3) in some order. Tokens 8, 10, 8, 6 per expert:
;; mean 8, max 10 → MaxVio 0.25, max/mean 1.25; variance (0+4+0+4)/4 = 2 →
;; CV √2/8; no expert dead; entropy H(p)/log 4 and selected mass e/(e+3) for
;; every token.
(define counts-8-10-8-6 '(8 10 8 6))
(define tokens-8-10-8-6
  (tensor (append-map (lambda (e n) (make-list n (map (lambda (j) (if (= j e) 1.0 0.0)) (iota 4))))
                      (iota 4) counts-8-10-8-6)))
(define expected-8-10-8-6
  (let* ((z (+ (exp 1) 3)) (top (/ (exp 1) z)) (low (/ 1 z)))
    `((max-violation-step . 0.25) (max-over-mean . 1.25) (cv . ,(/ (sqrt 2) 8)) (dead-fraction . 0.0)
      (entropy . ,(/ (- (+ (* top (log top)) (* 3 low (log low)))) (log 4)))
      (selected-mass . ,top) (dropped-fraction . 0.0))))
(define (check-8-10-8-6 who m)
  (test-equal (string-append who ": the step's counts, micro-batches, tokens, window")
    '((8.0 10.0 8.0 6.0) 1 32 ended)
    (cons (tensor->list (assq-ref m 'tokens-per-expert-step))
          (map (lambda (k) (assq-ref m k)) '(micro-batches tokens step-window))))
  (for-each (lambda (p)
              (test-approximate (string-append who ": " (symbol->string (car p)))
                (cdr p) (assq-ref m (car p)) 1e-6))
            expected-8-10-8-6))

(test-group "metrics after router-step! describe the step that ended"
  (let ((r (make-router #:hidden 4 #:experts 4 #:top-k 1 #:pre-softmax? #t)))
    (set-router-weight! r (eye 4))
    (router-forward r tokens-8-10-8-6)
    (router-step! r)
    (check-8-10-8-6 "router" (router-metrics r))
    (test-equal "routing-report #:window 'step after the step"
      "router (last step: 1 micro-batch): T=32 tokens, E=4 experts, K=1, dropped 0 slots"
      (car (string-split (call-with-output-string
                           (lambda (port) (routing-report r #:window 'step #:port port)))
                         #\newline)))))

(test-group "metrics and router-step!"
  (let* ((r (hand-router #:losses '((micro-batch . 0.01))))
         (out (router-forward r (tensor '((1 0.5) (0 2)))))
         (m (router-metrics r)))
    ;; counts (2 2 0): mean 4/3, max 2 → MaxVio .5; one of three experts dead
    (test-equal "tokens-per-expert" '(2.0 2.0 0.0) (tensor->list (assq-ref m 'tokens-per-expert)))
    (test-approximate "max-violation-batch" 0.5 (assq-ref m 'max-violation-batch) 1e-12)
    (test-approximate "dead-fraction" (/ 1 3) (assq-ref m 'dead-fraction) 1e-12)
    (test-equal "no global view before a step" '(#f #f)
      (list (assq-ref m 'tokens-per-expert-global) (assq-ref m 'max-violation-global)))
    (test-equal "micro-batches, tokens, step" '(1 2 0)
      (map (lambda (k) (assq-ref m k)) '(micro-batches tokens step)))
    (test-approximate "aux value of the step" (aux-ref out 'micro-batch)
      (assq-ref (assq-ref m 'aux-losses) 'micro-batch) 1e-6)
    (test-approximate "selected mass: the K = 2 of 3 softmax scores"
      (/ (+ (/ (+ (exp 1) (exp 0.5)) (+ (exp 1) (exp 0.5) (exp -1)))
            (/ (+ (exp 2) 1) (+ 1 (exp 2) 1)))
         2)
      (assq-ref m 'selected-mass) 1e-6)
    (router-step! r)
    (let ((m (router-metrics r)))
      (test-equal "global view after the step" '(2.0 2.0 0.0)
        (tensor->list (assq-ref m 'tokens-per-expert-global)))
      (test-approximate "max-violation-global" 0.5 (assq-ref m 'max-violation-global) 1e-12)
      (test-equal "the step window it closed: micro-batches, step, step-window" '(1 1 ended)
        (map (lambda (k) (assq-ref m k)) '(micro-batches step step-window)))
      (test-approximate "dead-fraction of the step just ended" (/ 1 3) (assq-ref m 'dead-fraction) 1e-12))
    (router-step! r)
    (let ((m (router-metrics r)))
      (test-equal "a step without forwards: an empty window, no statistics"
        '((0.0 0.0 0.0) 0 0 #f #f #f #f #f #f #f)
        (cons (tensor->list (assq-ref m 'tokens-per-expert-step))
              (map (lambda (k) (assq-ref m k))
                   '(micro-batches tokens dead-fraction cv max-over-mean max-violation-step entropy
                     selected-mass dropped-fraction))))
      (test-equal "its aux values are #f" #f (assq-ref (assq-ref m 'aux-losses) 'micro-batch)))
    (router-forward r (tensor '((1 0.5) (0 2))))
    (test-equal "the next forward starts the current window" '(current 1)
      (let ((m (router-metrics r))) (map (lambda (k) (assq-ref m k)) '(step-window micro-batches)))))
  (test-equal "a fresh router: an empty current window, no statistics" '(current 0 #f #f #f)
    (let ((m (router-metrics (hand-router))))
      (map (lambda (k) (assq-ref m k)) '(step-window tokens dead-fraction cv max-violation-batch))))
  (test-approximate "max-violation of a list" 1.0 (max-violation '(4 2 2 0)) 1e-12)
  (test-approximate "max-violation of a tensor" 0.0 (max-violation (tensor '(3 3 3) #:dtype 'i64)) 1e-12)
  (test-equal "balance-stats" '(1.0 0.25 2.0)
    (map (lambda (k) (assq-ref (balance-stats '(4 2 2 0)) k)) '(max-violation dead-fraction max-over-mean)))
  (test-moelab-error "balance-stats: a negative count" "expert 0 has -1" (balance-stats '(-1 2 3)))
  (test-moelab-error "max-violation: a NaN count" "expert 1 has nan" (max-violation (list 1 +nan.0)))
  (test-moelab-error "balance-tracker-add-counts!: a negative count" "non-negative"
    (balance-tracker-add-counts! (make-balance-tracker #:experts 2) '(1 -3) 4))
  ;; expert bias: every token goes to expert 0 (E = 4, K = 1, sigmoid):
  ;; b_i += u·sign(mean c − c_i) = (−u +u +u +u); centered: minus mean(Δ) = u/2
  (define (biased-router center?)
    (let ((r (make-router #:hidden 2 #:experts 4 #:top-k 1 #:score 'sigmoid #:expert-bias? #t
                          #:bias-rate 0.1 #:bias-center? center?)))
      (set-router-weight! r (tensor '((1 0) (0 0) (0 0) (0 0))))
      (router-forward r (tensor '((1 0) (2 0) (3 0))))
      (router-step! r)
      r))
  (test-values "bias update (sign rule)" '(-0.1 0.1 0.1 0.1) (router-bias (biased-router #f)))
  (test-values "bias update, centered" '(-0.15 0.05 0.05 0.05) (router-bias (biased-router #t)))
  (let ((r (biased-router #f)))
    (set-router-bias! r '(0 5 0 0))
    (test-equal "the bias steers selection, not the weights" '((1))
      (tensor->list (routing-experts (router-forward r (tensor '((1 0)))))))
    (test-values "weight from the unbiased score σ(0)" '((0.5))
      (routing-weights (router-forward r (tensor '((1 0))))))
    (test-values "bias in the metrics" '(0 5 0 0) (assq-ref (router-metrics r) 'bias)))
  ;; dp = 2: rank 0 routes to expert 0, rank 1 to expert 1; the summed counts
  ;; are balanced over the pair, so the bias of experts 0 and 1 stays put
  (test-assert "bias update sums counts over the dp group"
    (close? (with-ranks 2
              (lambda (rank)
                (let ((r (make-router #:hidden 2 #:experts 2 #:top-k 1 #:score 'sigmoid
                                      #:expert-bias? #t #:bias-rate 0.1)))
                  (set-router-weight! r (tensor '((1 0) (0 1))))
                  (router-set-groups! r #:dp (world-group))
                  (router-forward r (tensor (if (zero? rank) '((1 0) (2 0)) '((0 1) (0 2)))))
                  (router-step! r)
                  (tensor->list (router-bias r)))))
            '((0.0 0.0) (0.0 0.0)) 1e-12))
  (let* ((r1 (biased-router #f))
         (_ (router-forward r1 (tensor '((1 0) (1 0)))))
         (state (router-state r1))
         (r2 (make-router #:hidden 2 #:experts 4 #:top-k 1 #:score 'sigmoid #:expert-bias? #t)))
    (test-equal "state: bias and counters [3 E+1]" '((4) (3 5))
      (list (tensor-shape (assq-ref state 'bias)) (tensor-shape (assq-ref state 'counters))))
    (router-load-state! r2 state)
    (test-equal "router-load-state! restores the bias and counters" #t
      (equal? (map (lambda (p) (tensor->list (cdr p))) (router-state r2))
              (map (lambda (p) (tensor->list (cdr p))) state))))
  (let ((r (make-router #:hidden 2 #:experts 2 #:top-k 1 #:score 'sigmoid #:jitter 0.5 #:seed 1)))
    (router-training! r #f)
    (test-equal "not training: no jitter, no counting" '(#f 0)
      (list (assq-ref (router-config r) 'training?)
            (begin (router-forward r (tensor '((1 0))))
                   (assq-ref (router-metrics r) 'micro-batches))))
    (router-training! r #t))
  (let ((r (make-router #:hidden 2 #:experts 2 #:top-k 1 #:score 'sigmoid)))
    (router-forward r (tensor '((1 0))))
    (router-recomputing! r #t)
    (router-forward r (tensor '((1 0))))         ; replays the first forward
    (test-equal "recomputing: the replay does not count" 1
      (assq-ref (router-metrics r) 'micro-batches))
    (test-moelab-error "recomputing more forwards than recorded" "only 1 were recorded"
      (router-forward r (tensor '((1 0)))))
    (router-recomputing! r #f)
    (test-moelab-error "grad-accum < 1" "grad-accum must be >= 1"
      (router-set-grad-scale! r #:grad-accum 0)))
  ;; inject mode with M = 4 micro-batches: the injected gradient is 1/4
  (let ((grad (lambda (m)
                (let* ((r (make-router #:hidden 4 #:experts 4 #:top-k 2 #:seed 9 #:dtype 'f64
                                       #:losses '((micro-batch . 0.1)))))
                  (router-set-grad-scale! r #:grad-accum m)
                  (backward! (t* (tsum (routing-weights (router-forward r (randn '(8 4) #:seed 4)))) 0))
                  (tensor->list (tensor-grad (router-weight r)))))))
    (test-assert "router-set-grad-scale!: M = 4 scales the injected gradient by 1/4"
      (close? (map (lambda (row) (map (lambda (v) (* 4 v)) row)) (grad 4)) (grad 1) 1e-10)))
  (let ((r (make-router #:hidden 4 #:experts 4 #:top-k 2)))
    (router-set-grad-scale! r #:grad-accum 3)
    (test-equal "router-config shows the grad-accum router-set-grad-scale! set" 3
      (assq-ref (router-config r) 'grad-accum))))

;;; ---- reference vectors (tests/reference/router_refs.txt) ---------------------------------
;;; The cases check_router_refs runs in C, here through the Scheme API: each
;;; case's settings become make-router keywords (so the option parser must
;;; map every field as the C test does) or load-balancing-loss keywords.
;;; Format (see tests/unit/check_router_refs.c): "case NAME", "set KEY VALUE",
;;; "tensor NAME DTYPE NDIM DIMS… VALUES…" (NAME#m for micro-batch m); read
;;; by read-ref-cases (common.scm).


(define (ref-set c key) (assoc-ref (cadr c) key))
(define* (ref-num c key #:optional default)
  (let ((v (ref-set c key))) (if v (string->number v) default)))
(define* (ref-tensor c name #:optional m)
  (assoc-ref (caddr c) (if m (format #f "~a#~a" name m) name)))

(define (flat x) (if (list? x) (append-map flat x) (list (if (boolean? x) (if x 1 0) x))))

(define (ref-mismatch what got expected rtol)
  ;; #f when GOT (a tensor or number) matches the expected tensor, else a description
  (let* ((g (flat (if (tensor? got) (tensor->list got) got)))
         (e (flat (tensor->list expected)))
         (mx (fold (lambda (v m) (max m (abs v))) 0 e)))
    (cond ((not (= (length g) (length e))) (format #f "~a: ~a values, expected ~a" what (length g) (length e)))
          ((every (lambda (a b) (<= (abs (- a b)) (* rtol (+ (abs b) (* 1e-2 mx))))) g e) #f)
          (else (format #f "~a: ~a, expected ~a" what g e)))))

;; set KEY → make-router keyword and value
(define ref-keywords
  `(("hidden" #:hidden ,string->number) ("experts" #:experts ,string->number)
    ("top_k" #:top-k ,string->number) ("dtype" #:dtype ,string->symbol) ("score" #:score ,identity)
    ("pre_softmax" #:pre-softmax? bool) ("normalize" #:normalize? ,identity)
    ("norm_eps" #:norm-eps ,string->number) ("norm_p" #:norm-p ,string->number)
    ("groups" #:groups ,string->number) ("group_topk" #:group-top-k ,string->number)
    ("group_score_top" #:group-score-top ,string->number) ("scaling" #:scaling-factor ,string->number)
    ("score_offset" #:score-offset ,string->number) ("sinkhorn" #:sinkhorn? bool)
    ("debug" #:debug-routing ,identity)
    ("capacity" #:capacity-factor ,(lambda (v) (and (not (string=? v "none")) (string->number v))))
    ("capacity_formula" #:capacity-formula ,identity) ("ep" #:ep-size ,string->number)
    ("drop" #:drop-policy ,identity) ("pad" #:pad-to-capacity? bool)
    ("expert_bias" #:expert-bias? bool) ("bias_rate" #:bias-rate ,string->number)
    ("bias_center" #:bias-center? bool) ("count_from" #:count-from ,identity)
    ("loss_eps" #:loss-eps ,string->number) ("loss_div" #:loss-div-factor ,string->number)
    ("num_layers" #:num-moe-layers ,string->number) ("k_in_f" #:k-in-f? bool)
    ("global_buffer" #:global-buffer? bool) ("grad_mode" #:grad-mode ,identity)
    ("preset" #:preset ,identity) ("convention" #:convention ,string->symbol)
    ("losses" #:losses
     ,(lambda (v)
        (map (lambda (term)
               (let ((i (string-index term #\:)))
                 (cons (string->symbol (substring term 0 i)) (string->number (substring term (+ i 1))))))
             (string-split v #\,))))))

(define (ref-router-options c)
  (append-map (lambda (kv)
                (let ((spec (assoc-ref ref-keywords (car kv))))
                  (cond ((not spec) '())            ; op, micro_batches, step_every
                        ((eq? (cadr spec) 'bool) (list (car spec) (not (zero? (string->number (cdr kv))))))
                        (else (list (car spec) ((cadr spec) (cdr kv)))))))
              (cadr c)))

(define (leaf t) (tensor t #:dtype (tensor-dtype t) #:requires-grad #t))

(define (run-router-case c mode)
  ;; grad mode MODE (overriding the case's, as the C test does); #f when
  ;; everything matches, else the first mismatch
  ;; a case without a convention setting was computed with the exact forms
  (let* ((r (apply make-router (append (ref-router-options c)
                                       (if (ref-set c "convention") '() '(#:convention exact))
                                       (list #:grad-mode mode))))
         (rtol (if (equal? (ref-set c "dtype") "f32") 1e-4 1e-6))
         (micro (ref-num c "micro_batches" 1))
         (step-every (ref-num c "step_every" 0)))
    (set-router-weight! r (ref-tensor c "W"))
    (when (ref-tensor c "bias") (set-router-bias! r (ref-tensor c "bias")))
    (let loop ((m 0))
      (if (= m micro)
          (ref-mismatch "grad_W" (tensor-grad (router-weight r)) (ref-tensor c "grad_W") rtol)
          (let* ((x (leaf (ref-tensor c "x" m)))
                 (out (router-forward r x #:valid (ref-tensor c "valid" m)
                                      #:doc-bounds (ref-tensor c "bounds" m)))
                 (check (lambda (what got) (ref-mismatch (format #f "~a#~a" what m) got
                                                         (ref-tensor c what m) rtol))))
            (or (check "weights" (routing-weights out))
                (check "ids" (routing-experts out))
                (check "probs" (routing-probs out))
                (check "map" (routing-map out))
                (check "counts" (routing-counts out))
                (check "dropped" (routing-dropped out))
                (let ((want (count (lambda (t) (and (string-prefix? "aux." (car t))
                                                    (string-suffix? (format #f "#~a" m) (car t))))
                                   (caddr c))))
                  (and (not (= want (length (routing-aux-losses out))))
                       (format #f "~a losses, expected ~a" (length (routing-aux-losses out)) want)))
                (any (lambda (p) (check (format #f "aux.~a" (car p)) (cdr p))) (routing-aux-losses out))
                (begin
                  (let ((objective (t+ (tsum (t* (routing-weights out) (ref-tensor c "R" m)))
                                       (tsum (t* (routing-probs out) (ref-tensor c "Rp" m))))))
                    (backward! (if (eq? mode 'add) (t+ objective (routing-aux-total out)) objective)))
                  (check "grad_x" (tensor-grad x)))
                (and (> step-every 0) (zero? (modulo (+ m 1) step-every))
                     (begin (router-step! r)
                            (and (ref-tensor c "bias_after" m)
                                 (ref-mismatch "bias_after" (router-bias r) (ref-tensor c "bias_after" m)
                                               1e-4))))
                (loop (+ m 1))))))))

(define (run-loss-case c)
  (let* ((kind (string->symbol (ref-set c "kind")))
         (rtol (if (equal? (ref-set c "dtype") "f32") 1e-4 1e-6))
         (first (ref-tensor c "logits" 0))
         (tr (and (eq? kind 'global-batch)
                  (make-balance-tracker #:experts (last (tensor-shape first))))))
    (when (and tr (ref-tensor c "extra_counts"))
      (balance-tracker-add-counts! tr (ref-tensor c "extra_counts")
                                   (tensor-item (ref-tensor c "extra_tokens"))))
    (let loop ((m 0))
      (if (= m (ref-num c "calls" 1))
          #f
          (let* ((lg (leaf (ref-tensor c "logits" m)))
                 (loss (load-balancing-loss kind lg #:top-k (ref-num c "top_k" 1)
                                            #:score (string->symbol (ref-set c "score"))
                                            #:sigmoid-eps (ref-num c "loss_eps" 1e-20)
                                            #:score-offset (ref-num c "score_offset" 0)
                                            #:loss-div-factor (ref-num c "loss_div" #f)
                                            #:num-layers (ref-num c "num_layers" 1)
                                            #:k-in-f? (not (zero? (ref-num c "k_in_f" 1)))
                                            #:valid (ref-tensor c "valid" m)
                                            #:doc-bounds (ref-tensor c "bounds" m)
                                            #:routing-ids (ref-tensor c "routing_ids" m)
                                            #:tracker tr)))
            (or (ref-mismatch (format #f "value#~a" m) loss (ref-tensor c "value" m) rtol)
                (begin (backward! loss)
                       (ref-mismatch (format #f "grad#~a" m) (tensor-grad lg) (ref-tensor c "grad" m) rtol))
                (loop (+ m 1))))))))

(define (run-megablocks-case c)
  (let* ((n (ref-num c "layers" 1))
         (rtol (if (equal? (ref-set c "dtype") "f32") 1e-4 1e-6))
         (lgs (map (lambda (l) (leaf (ref-tensor c "logits" l))) (iota n)))
         (loss (megablocks-batched-loss lgs #:top-k (ref-num c "top_k" 1)
                                        #:routing-ids (map (lambda (l) (ref-tensor c "routing_ids" l)) (iota n))
                                        #:num-layers (ref-num c "num_layers" n))))
    (or (ref-mismatch "value" loss (ref-tensor c "value") rtol)
        (begin (backward! loss)
               (any (lambda (lg l) (ref-mismatch (format #f "grad#~a" l) (tensor-grad lg)
                                                 (ref-tensor c "grad" l) rtol))
                    lgs (iota n))))))

(define ref-cases
  (read-ref-cases (string-append (dirname (current-filename)) "/../reference/router_refs.txt")))

(test-group "reference vectors"
  (test-assert "at least 60 cases" (>= (length ref-cases) 60))
  (for-each
   (lambda (c)
     (let ((op (ref-set c "op")))
       (test-equal (string-append "reference " (car c)) #f
         (catch #t
           (lambda ()
             (cond ((equal? op "router")
                    (or (run-router-case c 'inject)
                        (let ((m (run-router-case c 'add))) (and m (string-append "add mode: " m)))))
                   ((equal? op "loss") (run-loss-case c))
                   ((equal? op "megablocks") (run-megablocks-case c))
                   (else (format #f "unknown op ~a" op))))
           (lambda (key . args) (format #f "raised ~a ~s" key args))))))
   ref-cases))

;;; ---- bad input ---------------------------------------------------------------------------------------

(define (mr . options) (apply make-router #:hidden 4 options))

(test-group "bad input"
  (test-moelab-error "K > E" "top-k 5 exceeds the 4 experts" (mr #:experts 4 #:top-k 5))
  (test-moelab-error "K < 1" "top-k must be >= 1" (mr #:experts 4 #:top-k 0))
  (test-moelab-error "E % groups" "must divide into groups"
    (mr #:experts 6 #:top-k 2 #:groups 4 #:group-top-k 1))
  (test-moelab-error "group-top-k > groups" "exceeds the 4 groups"
    (mr #:experts 8 #:top-k 2 #:groups 4 #:group-top-k 5))
  (test-moelab-error "K above the experts left by group limiting" "left by group limiting"
    (mr #:experts 8 #:top-k 3 #:groups 4 #:group-top-k 1))
  (test-moelab-error "post-softmax with K = 1" "pre-softmax" (mr #:experts 4 #:top-k 1))
  (test-moelab-error "capacity factor 0" "capacity factor must be > 0"
    (mr #:experts 4 #:top-k 2 #:capacity-factor 0))
  (test-moelab-error "capacity factor < 0" "capacity factor must be > 0"
    (mr #:experts 4 #:top-k 2 #:capacity-factor -1.5))
  (test-moelab-error "sinkhorn with a balance loss" "sinkhorn"
    (mr #:experts 4 #:top-k 2 #:sinkhorn? #t #:losses '((micro-batch . 1e-2))))
  (test-moelab-error "missing sizes" "hidden size" (make-router #:experts 4 #:top-k 2))
  (test-moelab-error "unknown keyword, named" "#:top-kk" (mr #:experts 4 #:top-kk 2))
  (test-moelab-error "bad value, keyword and value named" "#:score expects one of softmax sigmoid sqrtsoftplus, got tanh"
    (mr #:experts 4 #:top-k 2 #:score 'tanh))
  (test-moelab-error "bad loss kind" "#:losses" (mr #:experts 4 #:top-k 2 #:losses '((aux . 1))))
  (test-moelab-error "negative loss coefficient" "must be finite and >= 0"
    (mr #:experts 4 #:top-k 2 #:losses '((z . -1))))
  (test-moelab-error "unknown preset" "unknown preset 'nope'" (mr #:experts 4 #:top-k 2 #:preset 'nope))
  (test-moelab-error "odd keyword list" "keyword/value" (mr #:experts 4 #:top-k))
  (test-equal "errors are moelab-error with a status" 'arg
    (moelab-error-status (lambda () (mr #:experts 4 #:top-k 5))))
  (test-moelab-error "sequence loss on a 2-D input" "[B S E]"
    (load-balancing-loss 'sequence (f64 A) #:top-k 1))
  (test-moelab-error "NaN/Inf logits: how many and where" "1 NaN and 1 Inf values (first at token 1, expert 1)"
    (load-balancing-loss 'micro-batch (f64 '((0 0) (1 +nan.0) (+inf.0 0))) #:top-k 1))
  (test-moelab-error "z-loss of NaN logits" "NaN" (z-loss (f64 '((0 +nan.0)))))
  (test-moelab-error "loss: K > E" "load-balancing-loss" (load-balancing-loss 'micro-batch (f64 A) #:top-k 3))
  (test-moelab-error "loss: #:top-k missing" "#:top-k is required" (load-balancing-loss 'micro-batch (f64 A)))
  (test-moelab-error "loss: valid mask of the wrong shape" "load-balancing-loss"
    (load-balancing-loss 'micro-batch (f64 A) #:top-k 1 #:valid '(#t #t #t)))
  (test-moelab-error "global-batch without a tracker" "tracker"
    (load-balancing-loss 'global-batch (f64 A) #:top-k 1))
  (test-moelab-error "tracker of another E" "load-balancing-loss"
    (load-balancing-loss 'global-batch (f64 A) #:top-k 1 #:tracker (make-balance-tracker #:experts 3)))
  (test-moelab-error "unknown loss kind" "unknown loss kind 'switch'"
    (load-balancing-loss 'switch (f64 A) #:top-k 1))
  (test-wrong-type "router-forward on a non-router" (router-forward (tensor '(1)) (tensor '((1 0)))))
  ;; the router is unchanged by each failing call
  (let* ((r (hand-router #:expert-bias? #t #:losses '((micro-batch . 0.01))))
         (_ (router-forward r (tensor '((1 0.5) (0 2)))))
         (snapshot (lambda ()
                     (list (tensor->list (router-weight r))
                           (map (lambda (p) (and (cdr p) (tensor->list (cdr p)))) (router-state r))
                           (let ((m (router-metrics r)))
                             (list (tensor->list (assq-ref m 'tokens-per-expert))
                                   (assq-ref m 'micro-batches) (assq-ref m 'tokens))))))
         (before (snapshot)))
    (test-moelab-error "valid mask of the wrong shape" "valid mask"
      (router-forward r (tensor '((1 0) (0 1))) #:valid '(#t #t #t)))
    (test-moelab-error "NaN input → NaN logits, named" "NaN"
      (router-forward r (tensor '((1 0) (+nan.0 1)))))
    (test-moelab-error "input of the wrong width" "router-forward"
      (router-forward r (tensor '((1 0 0)))))
    (test-moelab-error "weight of the wrong shape" "expected shape [3 2], got [2 2]"
      (set-router-weight! r (tensor '((1 0) (0 1)))))
    (test-moelab-error "bias of the wrong shape" "set-router-bias!"
      (set-router-bias! r '(1 2)))
    (test-moelab-error "state of the wrong shape names counters and the shape" "counters must be [3 4], got [2 2]"
      (router-load-state! r `((bias . #f) (counters . ,(zeros '(2 2) #:dtype 'f64)))))
    (test-moelab-error "a bias of the wrong shape names bias" "bias must be [3], got [2]"
      (router-load-state! r `((bias . ,(zeros '(2))) (counters . ,(zeros '(3 4) #:dtype 'f64)))))
    (test-moelab-error "state without counters: says which key is missing" "no counters entry"
      (router-load-state! r `((bias . ,(zeros '(3))))))
    (test-moelab-error "state without bias: says which key is missing" "no bias entry"
      (router-load-state! r `((counters . ,(zeros '(3 4) #:dtype 'f64)))))
    (test-moelab-error "counters not a tensor" "counters must be a [3 E+1] tensor"
      (router-load-state! r '((bias . #f) (counters . #f))))
    (test-moelab-error "bias not a tensor" "bias must be an [E] tensor or #f"
      (router-load-state! r `((bias . (1 2 3)) (counters . ,(zeros '(3 4) #:dtype 'f64)))))
    (test-moelab-error "an unknown key" "unknown key"
      (router-load-state! r `((bias . #f) (counts . ,(zeros '(3 4) #:dtype 'f64)))))
    (test-moelab-error "not an alist" "expected the alist router-state returns"
      (router-load-state! r 'state))
    (test-equal "router unchanged after the errors" #t (equal? before (snapshot)))))

;;; ---- routing-report ----------------------------------------------------------------------------

;; D=2, E=4, K=1 with W = ((1 0) (0 1) (-1 0) (0 -1)): tokens x0 = 1, 2, 3 go
;; to expert 0 and the token (0 1) to expert 1, so the counts are (3 1 0 0):
;; shares 75% and 25%, experts 2 and 3 dead, mean 1, MaxVio 3/1 - 1 = 2,
;; CV = sqrt(((3-1)² + 0 + 1 + 1)/4) / 1 = sqrt(1.5) = 1.22.
(define report-w '((1 0) (0 1) (-1 0) (0 -1)))
(define report-x '((1 0) (2 0) (3 0) (0 1)))

(define* (report-router #:rest options)
  (let ((r (apply make-router #:hidden 2 #:experts 4 #:top-k 1 #:pre-softmax? #t options)))
    (set-router-weight! r (tensor report-w))
    r))

(define (report-lines obj . options)
  ;; the report of OBJ as a list of lines, and its return value
  (let* ((ret #f)
         (text (call-with-output-string
                 (lambda (port) (set! ret (apply routing-report obj #:port port options))))))
    (values (string-split (string-trim-right text #\newline) #\newline) ret)))

(define expert-lines-3100
  '("  expert 0  3   75.0%  ########################################"
    "  expert 1  1   25.0%  #############"
    "  expert 2  0    0.0%  dead"
    "  expert 3  0    0.0%  dead"))

(test-group "routing-report"
  (let* ((r (report-router #:losses '((micro-batch . 1e-2))))
         (out (router-forward r (tensor report-x)))
         ;; micro-batch loss by hand: E/(K·T²)·Σ_i c_i·P_i, P_i the summed softmax
         (probs (map (lambda (x)
                       (let* ((z (map (lambda (w) (+ (* (car w) (car x)) (* (cadr w) (cadr x))))
                                      report-w))
                              (s (apply + (map exp z))))
                         (map (lambda (zi) (/ (exp zi) s)) z)))
                     report-x))
         (p (apply map + probs))
         (loss (* (/ 4 (* 1 16)) (+ (* 3 (car p)) (* 1 (cadr p))))))
    (test-equal "counts of the hand-set gate" '(3 1 0 0) (tensor->list (routing-counts out)))
    (call-with-values (lambda () (report-lines out))
      (lambda (lines ret)
        (test-equal "returns the counts" '(3 1 0 0) ret)
        (test-equal "header" "routing: T=4 tokens, E=4 experts, K=1, capacity none, dropped 0 slots"
          (car lines))
        (test-equal "one line per expert: count, share, bar, dead" expert-lines-3100
          (list-head (cdr lines) 4))
        (test-equal "summary: MaxVio 2, CV sqrt(1.5), min, max, aux by hand"
          (format #f "MaxVio 2.00  CV 1.22  min 0  max 3  aux micro-batch=~a"
                  ((@ (ice-9 format) format) #f "~,4f" loss))
          (list-ref lines 5))
        (test-equal "six lines" 6 (length lines))))
    (test-assert "hand loss is the routing's" (close? loss (aux-ref out 'micro-batch) 1e-5))
    (test-equal "the summary agrees with max-violation and balance-stats"
      (list (format #f "~a" (max-violation '(3 1 0 0)))
            ((@ (ice-9 format) format) #f "~,2f" (assq-ref (balance-stats '(3 1 0 0)) 'cv)))
      '("2.0" "1.22"))
    (call-with-values (lambda () (report-lines out #:width 10))
      (lambda (lines ret)
        (test-equal "#:width scales the bars (10·1/3 rounds to 3)"
          '("  expert 0  3   75.0%  ##########" "  expert 1  1   25.0%  ###")
          (list (cadr lines) (caddr lines)))))
    ;; a router: the last forward's counts, then the step's, then the global ones
    (call-with-values (lambda () (report-lines r #:window 'step))
      (lambda (lines ret)
        (test-equal "router, step window: T and drops from the metrics"
          "router (step so far: 1 micro-batch): T=4 tokens, E=4 experts, K=1, dropped 0 slots"
          (car lines))
        (test-equal "router, step window: the same experts" expert-lines-3100
          (list-head (cdr lines) 4))))
    (test-moelab-error "global window before router-step!" "before the first optimizer step"
      (routing-report r #:window 'global #:port (%make-void-port "w")))
    (router-forward r (tensor '((0 1) (0 1) (1 0) (1 0))))   ; counts (2 2 0 0)
    (router-step! r)
    (call-with-values (lambda () (report-lines r))
      (lambda (lines ret)
        (test-equal "router after router-step!: last forward" '(2 2 0 0) ret)
        (test-equal "router: header without T" "router (last forward): E=4 experts, K=1" (car lines))
        (test-equal "router: MaxVio 2/1 - 1 = 1, CV 1"
          "MaxVio 1.00  CV 1.00  min 0  max 2" (list-ref lines 5))))
    (call-with-values (lambda () (report-lines r #:window 'global))
      (lambda (lines ret)
        (test-equal "router: global window sums the step's forwards" '(5 3 0 0) ret)
        (test-equal "global: shares of the counted slots"
          '("  expert 0  5   62.5%  ########################################"
            "  expert 1  3   37.5%  ########################")
          (list (cadr lines) (caddr lines)))
        (test-equal "global: MaxVio 5/2 - 1" "MaxVio 1.50" (substring (list-ref lines 5) 0 11))))
    (call-with-values (lambda () (report-lines r #:window 'step))
      (lambda (lines ret)
        (test-equal "step window after router-step!: the step that ended" '(5 3 0 0) ret)
        (test-equal "and its header says so"
          "router (last step: 2 micro-batches): T=8 tokens, E=4 experts, K=1, dropped 0 slots"
          (car lines))))
    (router-step! r)                    ; a step without forwards
    (call-with-values (lambda () (report-lines r #:window 'step))
      (lambda (lines ret)
        (test-equal "empty step window: no tokens, no expert called dead, no MaxVio, no aux"
          '((0 0 0 0) "  expert 3  0    0.0%  -" "MaxVio n/a  CV n/a  min 0  max 0")
          (list ret (list-ref lines 4) (list-ref lines 5))))))
  ;; capacity: ceil(T·K/E·1.0) = 1 per expert, expert 0 keeps 1 of its 3 tokens
  (let ((out (router-forward (report-router #:capacity-factor 1.0) (tensor report-x))))
    (call-with-values (lambda () (report-lines out))
      (lambda (lines ret)
        (test-equal "capacity: counts after drops" '(1 1 0 0) ret)
        (test-equal "capacity and dropped slots in the header"
          "routing: T=4 tokens, E=4 experts, K=1, capacity 1, dropped 2 slots" (car lines))
        (test-equal "shares are of the K·T slots, dropped ones included"
          '("  expert 0  1   25.0%  ########################################"
            "  expert 1  1   25.0%  ########################################")
          (list (cadr lines) (caddr lines)))
        (test-equal "MaxVio 1/0.5 - 1 = 1" "MaxVio 1.00  CV 1.00  min 0  max 1" (list-ref lines 5)))))
  ;; an MoE layer with the same gate: its last routing
  (let ((moe (make-moe-layer #:hidden 2 #:ffn 4 #:experts 4 #:top-k 1
                             #:router-options '(#:pre-softmax? #t))))
    (test-moelab-error "a layer before its first forward" "has not run a forward"
      (routing-report moe #:port (%make-void-port "w")))
    (set-moe-parameter! moe "router.weight" (tensor report-w))
    (moe-forward moe (tensor report-x))
    (call-with-values (lambda () (report-lines moe))
      (lambda (lines ret)
        (test-equal "layer: counts" '(3 1 0 0) ret)
        (test-equal "layer: header"
          "moe-layer (last forward): T=4 tokens, E=4 experts, K=1, capacity none, dropped 0 slots"
          (car lines))
        (test-equal "layer: experts" expert-lines-3100 (list-head (cdr lines) 4)))))
  (test-moelab-error "not a routing, router or layer" "expected a routing, a router or an MoE layer"
    (routing-report (tensor '(1 2)) #:port (%make-void-port "w")))
  (test-moelab-error "unknown window" "#:window expects last, step or global"
    (routing-report (report-router) #:window 'epoch #:port (%make-void-port "w")))
  (test-moelab-error "unknown window for a routing" "#:window expects last, step or global"
    (routing-report (router-forward (report-router) (tensor report-x)) #:window 'bogus
                    #:port (%make-void-port "w")))
  (test-moelab-error "unknown window for a layer" "#:window expects last, step or global"
    (let ((moe (make-moe-layer #:hidden 2 #:ffn 2 #:experts 4 #:top-k 1 #:router-options '(#:pre-softmax? #t))))
      (moe-forward moe (tensor report-x))
      (routing-report moe #:window 'bogus #:port (%make-void-port "w"))))
  (test-moelab-error "bad width" "#:width expects a positive integer"
    (routing-report (report-router) #:width 0 #:port (%make-void-port "w"))))

(test-end "router")
(exit-with-test-status)
