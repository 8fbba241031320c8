;;; layer.scm — the MoE layer from Scheme: make-moe-layer, moe-forward,
;;; moe-last-routing, moe-parameters, set-moe-parameter! and the extras.
;;;
;;; The layer is checked against a naive dense reference written here with
;;; the tensor ops: every token goes through every expert (with copies of the
;;; layer's own parameters from moe-parameters), and the outputs are mixed
;;; with a dense [T E] matrix built from the routing weights, which the
;;; reference recomputes from its copy of the router weight and the expert
;;; ids the layer chose (the choice itself has no gradient). Outputs and the
;;; gradients of the input and of every parameter agree to 1e-10 in f64.

(include "common.scm")

(test-begin "layer")

;;; ---- helpers --------------------------------------------------------------------------

(define (max-abs-diff a b)
  (tensor-item (tmax (tabs (t- (to-dtype a 'f64) (to-dtype b 'f64))))))

(define (tensors-close? a b tol)
  "#t when A and B have the same shape and agree within TOL; else the shapes or
the largest difference (shown by the failure report)."
  (cond ((not (equal? (tensor-shape a) (tensor-shape b)))
         (list 'shapes (tensor-shape a) (tensor-shape b)))
        ((<= (max-abs-diff a b) tol) #t)
        (else (list 'max-abs-diff (max-abs-diff a b)))))

(define (leaf-copy t)
  "An independent leaf holding T's values (the reference's own parameter)."
  (requires-grad! (clone (detach t))))

;; The router's combine weights [T K] from logits Z [T E] and the chosen ids.
;; MODE: 'post (softmax over the K selected logits), 'pre (full softmax,
;; picked, not renormalised), 'sigmoid (σ, renormalised when K > 1).
(define (reference-weights z ids mode)
  (case mode
    ((post) (softmax (gather z 1 ids) #:dim 1))
    ((pre) (gather (softmax z #:dim 1) 1 ids))
    ((sigmoid)
     (let ((s (sigmoid (gather z 1 ids))))
       (if (> (cadr (tensor-shape ids)) 1)
           (t/ s (t+ (tsum s #:dim 1 #:keepdim #t) 1e-20))
           s)))))

(define (mlp x wg wu wd bg bu bd activation)
  "One expert: x [T D] -> [T D]; WG #f for the GELU activations."
  (let* ((add (lambda (a b) (if b (t+ a b) a)))
         (up (add (matmul x wu) bu))
         (h (case activation
              ((swiglu) (t* (silu (add (matmul x wg) bg)) up))
              ((gelu) (gelu up))
              ((gelu-tanh) (gelu up #:approximate 'tanh)))))
    (add (matmul h wd) bd)))

;; The dense reference: X [T D] (a leaf), P the alist of leaf copies of the
;; layer's parameters, ROUTING the layer's record (ids and kept mask).
(define (reference-forward x p routing activation mode)
  (let* ((ref (lambda (name) (assoc-ref p name)))
         (pick (lambda (name e) (let ((w (ref name))) (and w (tselect w 0 e)))))
         (ids (assq-ref routing 'experts))
         (kept (to-dtype (assq-ref routing 'kept) 'f64))
         (wr (ref "router.weight"))
         (E (car (tensor-shape wr)))
         (w (t* (reference-weights (matmul x (transpose wr)) ids mode) kept))
         ;; dense [T E]: Σ_k w[t k]·[ids[t k] = e]
         (dense (tsum (t* (to-dtype (one-hot ids E) 'f64) (unsqueeze w 2)) #:dim 1))
         (routed
          (fold (lambda (e acc)
                  (t+ acc (t* (narrow dense 1 e 1)
                              (mlp x (pick "experts.w-gate" e) (pick "experts.w-up" e)
                                   (pick "experts.w-down" e) (pick "experts.b-gate" e)
                                   (pick "experts.b-up" e) (pick "experts.b-down" e)
                                   activation))))
                (zeros-like x) (iota E))))
    (values
     (if (ref "shared.w-up")
         (let ((s (mlp x (ref "shared.w-gate") (ref "shared.w-up") (ref "shared.w-down")
                       (ref "shared.b-gate") (ref "shared.b-up") (ref "shared.b-down")
                       activation)))
           (t+ routed (if (ref "shared.gate") (t* s (sigmoid (matmul x (ref "shared.gate")))) s)))
         routed)
     w)))

;; Run the layer and the reference on the same input; backward through
;; Σ out·R on both; return an alist of checks (each #t or the difference).
(define* (compare-with-reference moe #:key (T 7) (activation 'swiglu) (mode 'post) (seed 11)
                                 (input #f))
  (let* ((D (assq-ref (moe-layer-config moe) 'hidden))
         (x0 (or input (randn (list T D) #:seed seed #:dtype 'f64)))
         (r (randn (tensor-shape x0) #:seed (+ seed 1) #:dtype 'f64))
         (x (leaf-copy x0))
         (xr (leaf-copy x0))
         (params (moe-parameters moe))
         (refp (map (lambda (p) (cons (car p) (leaf-copy (cdr p)))) params)))
    (moe-zero-grad! moe)
    (let ((y (moe-forward moe x))
          (routing (moe-last-routing moe)))
      (call-with-values (lambda () (reference-forward xr refp routing activation mode))
        (lambda (yr wr)
          (backward! (tsum (t* y r)))
          (backward! (tsum (t* yr r)))
          `((output . ,(tensors-close? y yr 1e-10))
            (weights . ,(tensors-close? (assq-ref routing 'weights) wr 1e-12))
            (grad-x . ,(tensors-close? (tensor-grad x) (tensor-grad xr) 1e-10))
            ,@(map (lambda (p q)
                     (cons (string->symbol (string-append "grad " (car p)))
                           (tensors-close? (tensor-grad (cdr p)) (tensor-grad (cdr q)) 1e-10)))
                   params refp)))))))

(define (all-checks-pass? checks)
  (if (every (lambda (c) (eq? (cdr c) #t)) checks)
      #t
      (remove (lambda (c) (eq? (cdr c) #t)) checks)))

(define-syntax-rule (test-reference name expr)
  (test-equal name #t (all-checks-pass? expr)))

(define f64-router '(#:dtype f64))

;;; ---- the layer against the dense reference (f64) -----------------------------------------

(test-group "dense reference, f64"
  (test-reference "SwiGLU, K=2"
    (compare-with-reference
     (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:dtype 'f64
                     #:router-options f64-router #:seed 3)))
  (test-reference "SwiGLU, K=1 (pre-softmax)"
    (compare-with-reference
     (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 1 #:dtype 'f64
                     #:router-options '(#:dtype f64 #:pre-softmax? #t) #:seed 4)
     #:mode 'pre))
  (test-reference "GELU, K=2"
    (compare-with-reference
     (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:activation 'gelu #:dtype 'f64
                     #:router-options f64-router #:seed 5)
     #:activation 'gelu))
  (test-reference "GELU, K=1 (pre-softmax)"
    (compare-with-reference
     (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 1 #:activation 'gelu #:dtype 'f64
                     #:router-options '(#:dtype f64 #:pre-softmax? #t) #:seed 6)
     #:activation 'gelu #:mode 'pre))
  (test-reference "GELU-tanh, sigmoid router, K=3 of 5"
    (compare-with-reference
     (make-moe-layer #:hidden 4 #:ffn 3 #:experts 5 #:top-k 3 #:activation 'gelu-tanh
                     #:dtype 'f64 #:router-options '(#:dtype f64 #:score sigmoid) #:seed 7)
     #:activation 'gelu-tanh #:mode 'sigmoid))
  (test-reference "SwiGLU with biases (set to non-zero values)"
    (let ((moe (make-moe-layer #:hidden 5 #:ffn 4 #:experts 3 #:top-k 2 #:bias? #t
                               #:dtype 'f64 #:router-options f64-router #:seed 8)))
      (for-each (lambda (name seed)
                  (let ((p (moe-parameter moe name)))
                    (set-moe-parameter! moe name (randn (tensor-shape p) #:seed seed #:dtype 'f64))))
                '("experts.b-gate" "experts.b-up" "experts.b-down") '(81 82 83))
      (compare-with-reference moe)))
  (test-reference "shared experts (SwiGLU, Ns=2)"
    (compare-with-reference
     (make-moe-layer #:hidden 6 #:ffn 3 #:experts 4 #:top-k 2 #:shared-experts 2 #:dtype 'f64
                     #:router-options f64-router #:seed 9)))
  (test-reference "gated shared expert (GELU, Fs=7)"
    (compare-with-reference
     (make-moe-layer #:hidden 6 #:ffn 3 #:experts 4 #:top-k 2 #:activation 'gelu
                     #:shared-experts 1 #:shared-ffn 7 #:shared-gate? #t #:dtype 'f64
                     #:router-options f64-router #:seed 10)
     #:activation 'gelu))
  (test-reference "capacity mode: dropped slots contribute nothing"
    (compare-with-reference
     (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:dtype 'f64
                     #:router-options '(#:dtype f64 #:capacity-factor 0.5) #:seed 12)
     #:T 16))
  (test-reference "K = 8 of 8 experts"
    (compare-with-reference
     (make-moe-layer #:hidden 5 #:ffn 3 #:experts 8 #:top-k 8 #:dtype 'f64
                     #:router-options f64-router #:seed 14)))
  ;; Feature 0 is about 10 for every token and the router weight favours
  ;; expert 0 (then 1) along it: every token picks expert 0 first, expert 1
  ;; second; experts 2 and 3 get nothing (and zero gradients).
  (let ((input (t+ (t* (randn '(6 4) #:seed 15 #:dtype 'f64) 0.1)
                   (tensor '(10 0 0 0) #:dtype 'f64)))
        (router (tensor '((1 0.1 0 0) (0.5 0 0.1 0) (-1 0 0 0.1) (-1 0.1 0.1 0)) #:dtype 'f64)))
    (let ((moe (make-moe-layer #:hidden 4 #:ffn 3 #:experts 4 #:top-k 1 #:dtype 'f64
                               #:router-options '(#:dtype f64 #:pre-softmax? #t) #:seed 16)))
      (set-moe-parameter! moe "router.weight" router)
      (test-reference "K=1: all tokens to one expert" (compare-with-reference moe #:input input #:mode 'pre))
      (test-equal "all tokens on expert 0" '(6 0 0 0)
        (assq-ref (moe-last-routing moe) 'tokens-per-expert))
      (test-values "empty experts: zero gradients" (make-list 2 (make-list 4 (make-list 3 0)))
        (narrow (tensor-grad (moe-parameter moe "experts.w-up")) 0 2 2)))
    (let ((moe (make-moe-layer #:hidden 4 #:ffn 3 #:experts 4 #:top-k 2 #:dtype 'f64
                               #:router-options f64-router #:seed 17)))
      (set-moe-parameter! moe "router.weight" router)
      (test-reference "K=2: two experts take everything, two are empty"
        (compare-with-reference moe #:input input))
      (test-equal "counts" '(6 6 0 0) (assq-ref (moe-last-routing moe) 'tokens-per-expert))))
  (test-reference "T = 1"
    (compare-with-reference
     (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:dtype 'f64
                     #:router-options f64-router #:seed 13)
     #:T 1)))

(test-group "f32 layer against the f64 reference"
  (let* ((moe (make-moe-layer #:hidden 8 #:ffn 6 #:experts 4 #:top-k 2 #:seed 21))
         (x (randn '(9 8) #:seed 22))
         (y (moe-forward moe x))
         (routing (moe-last-routing moe))
         (p64 (map (lambda (p) (cons (car p) (to-dtype (detach (cdr p)) 'f64))) (moe-parameters moe))))
    (test-equal "output dtype follows the input" 'f32 (tensor-dtype y))
    (test-equal "f32 to 1e-5" #t
      (call-with-values
          (lambda () (reference-forward (to-dtype x 'f64) p64 routing 'swiglu 'post))
        (lambda (yr w) (tensors-close? y yr 1e-5))))))

;; Central differences of f = Σ moe(x)·R along random directions, against
;; <∇f, v> from backward! (the routing stays put for ε = 1e-6).
(test-group "finite differences, f64"
  (let* ((moe (make-moe-layer #:hidden 5 #:ffn 4 #:experts 4 #:top-k 2 #:shared-experts 1
                              #:shared-gate? #t #:dtype 'f64 #:router-options f64-router #:seed 18))
         (x (randn '(6 5) #:seed 19 #:dtype 'f64 #:requires-grad #t))
         (r (randn '(6 5) #:seed 20 #:dtype 'f64))
         (f (lambda (x) (tensor-item (tsum (t* (moe-forward moe x) r)))))
         (eps 1e-6)
         (dot (lambda (a b) (tensor-item (tsum (t* a b))))))
    (backward! (tsum (t* (moe-forward moe x) r)))
    (let ((v (randn '(6 5) #:seed 21 #:dtype 'f64))
          (x0 (detach x)))
      (test-equal "input" #t
        (close? (/ (- (f (t+ x0 (t* v eps))) (f (t- x0 (t* v eps)))) (* 2 eps))
                (dot (tensor-grad x) v) 1e-6)))
    (for-each
     (lambda (name seed)
       (let* ((p (moe-parameter moe name))
              (g (clone (tensor-grad p)))
              (p0 (clone (detach p)))
              (v (randn (tensor-shape p) #:seed seed #:dtype 'f64))
              (at (lambda (sign)
                    (set-moe-parameter! moe name (t+ p0 (t* v (* sign eps))))
                    (f (detach x)))))
         (test-equal name #t
           (close? (/ (- (at 1) (at -1)) (* 2 eps)) (dot g v) 1e-6))
         (set-moe-parameter! moe name p0)))
     (map car (moe-parameters moe))
     (iota (length (moe-parameters moe)) 30))))

;;; ---- the routing record ---------------------------------------------------------------------

(test-group "moe-last-routing"
  (let* ((moe (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:seed 31))
         (x1 (randn '(10 6) #:seed 32))
         (x2 (randn '(10 6) #:seed 33)))
    (test-equal "#f before the first forward" #f (moe-last-routing moe))
    (moe-forward moe x1)
    (let* ((r1 (moe-last-routing moe))
           (w1 (tensor->list (assq-ref r1 'weights)))
           (ids (tensor->list (assq-ref r1 'experts)))
           (per-expert (map (lambda (e) (count (lambda (row) (memv e row)) ids)) (iota 4))))
      (test-equal "weights [T K]" '(10 2) (tensor-shape (assq-ref r1 'weights)))
      (test-equal "experts [T K] i64" '(i64 (10 2))
        (list (tensor-dtype (assq-ref r1 'experts)) (tensor-shape (assq-ref r1 'experts))))
      (test-equal "kept: all (dropless)" (make-list 20 #t)
        (concatenate (tensor->list (assq-ref r1 'kept))))
      (test-equal "tokens-per-expert counts the ids" per-expert (assq-ref r1 'tokens-per-expert))
      (test-equal "counts [E] = tokens-per-expert" per-expert (tensor->list (assq-ref r1 'counts)))
      (test-equal "dropless: capacity #f, nothing dropped" '(#f 0 10 20)
        (map (lambda (k) (assq-ref r1 k)) '(capacity dropped tokens rows)))
      (test-equal "no losses: none recorded" '(() #f)
        (list (assq-ref r1 'aux-losses) (assq-ref r1 'aux-total)))
      (test-assert "post-softmax weights of a token sum to 1"
        (every (lambda (row) (close? (apply + row) 1 1e-6)) w1))
      (moe-forward moe x2)
      (test-equal "the record's tensors survive the next forward" #t
        (close? (tensor->list (assq-ref r1 'weights)) w1 0))
      (test-assert "and the new record differs"
        (not (close? (tensor->list (assq-ref (moe-last-routing moe) 'weights)) w1 1e-6)))))
  (let* ((moe (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:seed 34
                              #:router-options '(#:capacity-factor 0.5)))
         (y (moe-forward moe (randn '(16 6) #:seed 35)))
         (r (moe-last-routing moe)))
    ;; C = ⌈T·K/E · cf⌉ = ⌈16·2/4 · 0.5⌉ = 4
    (test-equal "capacity" 4 (assq-ref r 'capacity))
    (test-assert "no expert above capacity" (every (lambda (c) (<= c 4)) (assq-ref r 'tokens-per-expert)))
    (test-equal "dropped = T·K − kept" (- 32 (apply + (assq-ref r 'tokens-per-expert)))
      (assq-ref r 'dropped))
    (test-equal "kept mask agrees" (apply + (assq-ref r 'tokens-per-expert))
      (count identity (concatenate (tensor->list (assq-ref r 'kept)))))))

(test-group "valid mask"
  (let* ((moe (make-moe-layer #:hidden 4 #:ffn 3 #:experts 3 #:top-k 2 #:seed 41))
         (x (randn '(2 3 4) #:seed 42))
         (valid (tensor '((#t #t #f) (#t #f #t)) #:dtype 'bool))
         (y (moe-forward moe x #:valid valid))
         (r (moe-last-routing moe)))
    (test-equal "valid tokens" 4 (assq-ref r 'tokens))
    (test-equal "padding tokens get no expert" '((#f #f) (#f #f))
      (list (list-ref (tensor->list (assq-ref r 'kept)) 2)
            (list-ref (tensor->list (assq-ref r 'kept)) 4)))
    (test-values "a padding token's output is zero (no shared MLP)" '(0 0 0 0)
      (tselect (tselect y 0 0) 0 2))
    (test-equal "tokens-per-expert sums to 2·4" 8 (apply + (assq-ref r 'tokens-per-expert)))))

;;; ---- shapes ----------------------------------------------------------------------------------

(test-group "[B S D] input"
  (let* ((moe (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:seed 51))
         (x (randn '(2 5 6) #:seed 52))
         (y (moe-forward moe x))
         (y2 (moe-forward moe (reshape x '(10 6)))))
    (test-equal "same shape out" '(2 5 6) (tensor-shape y))
    (test-equal "equals the [T D] forward (b-major tokens)" #t
      (tensors-close? (reshape y '(10 6)) y2 0))
    (test-equal "routing over B·S tokens" '(10 2) (tensor-shape (assq-ref (moe-last-routing moe) 'weights)))))

;;; ---- parameters -------------------------------------------------------------------------------

(test-group "parameter names and layouts (the contract)"
  (define (layout moe)
    (map (lambda (p) (list (car p) (tensor-shape (cdr p)))) (moe-parameters moe)))
  (test-equal "SwiGLU"
    '(("router.weight" (4 6)) ("experts.w-gate" (4 6 5)) ("experts.w-up" (4 6 5))
      ("experts.w-down" (4 5 6)))
    (layout (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2)))
  (test-equal "GELU: no gate"
    '(("router.weight" (4 6)) ("experts.w-up" (4 6 5)) ("experts.w-down" (4 5 6)))
    (layout (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:activation 'gelu)))
  (test-equal "shared experts: Fs = Ns·F"
    '(("router.weight" (4 6)) ("experts.w-gate" (4 6 5)) ("experts.w-up" (4 6 5))
      ("experts.w-down" (4 5 6)) ("shared.w-gate" (6 10)) ("shared.w-up" (6 10))
      ("shared.w-down" (10 6)))
    (layout (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:shared-experts 2)))
  (test-equal "biases and a shared gate"
    '(("router.weight" (3 4)) ("experts.w-up" (3 4 2)) ("experts.w-down" (3 2 4))
      ("experts.b-up" (3 2)) ("experts.b-down" (3 4)) ("shared.w-up" (4 5))
      ("shared.w-down" (5 4)) ("shared.b-up" (5)) ("shared.b-down" (4)) ("shared.gate" (4 1)))
    (layout (make-moe-layer #:hidden 4 #:ffn 2 #:experts 3 #:top-k 1 #:activation 'gelu #:bias? #t
                            #:shared-experts 1 #:shared-ffn 5 #:shared-gate? #t
                            #:router-options '(#:pre-softmax? #t))))
  (let ((moe (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:dtype 'f64)))
    (test-equal "dtypes: experts f64, router f32 by default" '(f32 f64 f64 f64)
      (map (lambda (p) (tensor-dtype (cdr p))) (moe-parameters moe)))
    (test-assert "leaves requiring grad"
      (every (lambda (p) (and (tensor-leaf? (cdr p)) (requires-grad? (cdr p)))) (moe-parameters moe))))
  (test-equal "same seed, same parameters" #t
    (let ((a (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:seed 5))
          (b (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:seed 5)))
      (every (lambda (p q) (eq? #t (tensors-close? (cdr p) (cdr q) 0)))
             (moe-parameters a) (moe-parameters b))))
  (test-assert "another seed, other parameters"
    (let ((a (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:seed 5))
          (b (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:seed 6)))
      (> (max-abs-diff (moe-parameter a "experts.w-up") (moe-parameter b "experts.w-up")) 1e-3))))

(test-group "set-moe-parameter!"
  (let* ((moe (make-moe-layer #:hidden 3 #:ffn 2 #:experts 2 #:top-k 1 #:activation 'gelu
                              #:router-options '(#:pre-softmax? #t) #:seed 61))
         (live (moe-parameter moe "experts.w-down"))
         (new (tensor '(((1 2 3) (4 5 6)) ((7 8 9) (10 11 12))) #:dtype 'f64)))
    (set-moe-parameter! moe "experts.w-down" new)
    (test-values "round trip (f64 value into an f32 parameter)"
      '(((1 2 3) (4 5 6)) ((7 8 9) (10 11 12)))
      (moe-parameter moe "experts.w-down"))
    (test-values "copied in place: earlier handles see it" '(((1 2 3) (4 5 6)) ((7 8 9) (10 11 12)))
      live)
    (test-equal "still f32" 'f32 (tensor-dtype live))
    (set-moe-parameter! moe "router.weight" (tensor '((1 0 0) (0 1 0))))
    (test-values "router.weight" '((1 0 0) (0 1 0)) (moe-parameter moe "router.weight"))
    ;; the router now sends x = (1 0 0) to expert 0 and (0 1 0) to expert 1
    (moe-forward moe (tensor '((5 0 0) (0 5 0))))
    (test-equal "the new router weight routes" '((0) (1))
      (tensor->list (assq-ref (moe-last-routing moe) 'experts)))
    (let ((y (moe-forward moe (tensor '((1 1 1))))))
      (backward! (tsum y))
      (test-assert "a gradient after backward" (tensor-grad live))
      (set-moe-parameter! moe "experts.w-down" new)
      (test-equal "setting drops the gradient" #f (tensor-grad live)))
    (test-moelab-error "wrong shape" "[2 2 3]"
      (set-moe-parameter! moe "experts.w-down" (zeros '(2 3 2))))
    (test-moelab-error "unknown name lists the known ones" "experts.w-up"
      (set-moe-parameter! moe "experts.w-gate" (zeros '(2 3 2))))
    (test-moelab-error "moe-parameter: unknown name" "router.weight"
      (moe-parameter moe "router.bias"))
    (test-wrong-type "name must be a string" (set-moe-parameter! moe 'experts.w-up (zeros '(2 3 2))))))

;;; ---- gradients and training bits ---------------------------------------------------------------

(test-group "grads, zero-grad, training mode"
  (let* ((moe (make-moe-layer #:hidden 4 #:ffn 3 #:experts 3 #:top-k 2 #:seed 71))
         (y (moe-forward moe (randn '(5 4) #:seed 72))))
    (backward! (tsum (t* y y)))
    (test-assert "every parameter has a gradient"
      (every (lambda (p) (tensor-grad (cdr p))) (moe-parameters moe)))
    (moe-zero-grad! moe)
    (test-assert "moe-zero-grad! drops them"
      (every (lambda (p) (not (tensor-grad (cdr p)))) (moe-parameters moe)))
    (test-assert "training by default" (moe-training? moe))
    (moe-training! moe #f)
    (test-assert "evaluation mode" (not (moe-training? moe)))
    (moe-training! moe)
    (test-assert "training again" (moe-training? moe))))

(test-group "aux loss, metrics, moe-step!"
  (let* ((moe (make-moe-layer #:hidden 4 #:ffn 3 #:experts 4 #:top-k 2 #:seed 81
                              #:router-options '(#:dtype f64 #:losses ((micro-batch . 0.1)))))
         (x (randn '(6 4) #:seed 82))
         (y (moe-forward moe x))
         (r (moe-last-routing moe))
         ;; L = E/(K·T²) Σ_i c_i P_i with P_i = Σ_t softmax(z)_{t i}
         (z (matmul (to-dtype x 'f64) (transpose (detach (moe-parameter moe "router.weight")))))
         (P (tensor->list (tsum (softmax z #:dim 1) #:dim 0)))
         (c (assq-ref r 'tokens-per-expert))
         (expected (* (/ 4 (* 2 36)) (apply + (map * c P)))))
    (test-equal "aux-losses: the micro-batch loss, by hand" #t
      (close? (assq-ref (assq-ref r 'aux-losses) 'micro-batch) expected 1e-12))
    (test-equal "aux-total = 0.1·loss" #t (close? (assq-ref r 'aux-total) (* 0.1 expected) 1e-12))
    (test-equal "moe-aux-loss is that total" #t
      (close? (tensor-item (moe-aux-loss moe)) (* 0.1 expected) 1e-12))
    (test-equal "no losses: moe-aux-loss is #f" #f
      (let ((m (make-moe-layer #:hidden 4 #:ffn 3 #:experts 4 #:top-k 2)))
        (moe-forward m x)
        (moe-aux-loss m)))
    (let ((m (moe-metrics moe)))
      (test-equal "metrics: tokens per expert of the batch" c
        (map inexact->exact (tensor->list (assq-ref m 'tokens-per-expert))))
      (test-equal "metrics: step 0" 0 (assq-ref m 'step)))
    (moe-step! moe)
    (test-equal "moe-step! completes a step" 1 (assq-ref (moe-metrics moe) 'step))))

;; One forward of 32 tokens routed (8 10 8 6) by a router with W = I (E = 4,
;; K = 1, one-hot tokens, scores p = (e, 1, 1, 1)/(e + 3)), then moe-step!:
;; the metrics describe that step, by hand: mean 8, MaxVio 10/8 - 1 = 0.25,
;; CV = √((0+4+0+4)/4)/8 = √2/8, nobody dead, entropy H(p)/log 4, selected
;; mass e/(e+3).
(test-group "moe-metrics after moe-step! describe the step that ended"
  (let ((moe (make-moe-layer #:hidden 4 #:ffn 2 #:experts 4 #:top-k 1
                             #:router-options '(#:pre-softmax? #t)))
        (x (tensor (append-map (lambda (e n) (make-list n (map (lambda (j) (if (= j e) 1.0 0.0)) (iota 4))))
                               (iota 4) '(8 10 8 6))))
        (z (+ (exp 1) 3)))
    (set-moe-parameter! moe "router.weight" (eye 4))
    (moe-forward moe x)
    (moe-step! moe)
    (let ((m (moe-metrics moe)))
      (test-equal "tokens per expert: the forward, and the step that ended" '((8.0 10.0 8.0 6.0) (8.0 10.0 8.0 6.0))
        (list (tensor->list (assq-ref m 'tokens-per-expert)) (tensor->list (assq-ref m 'tokens-per-expert-step))))
      (test-equal "micro-batches, tokens, step, step-window" '(1 32 1 ended)
        (map (lambda (k) (assq-ref m k)) '(micro-batches tokens step step-window)))
      (test-equal "dead-fraction 0, not 1" 0.0 (assq-ref m 'dead-fraction))
      (test-approximate "max-violation-step 0.25" 0.25 (assq-ref m 'max-violation-step) 1e-12)
      (test-approximate "max-over-mean 1.25" 1.25 (assq-ref m 'max-over-mean) 1e-12)
      (test-approximate "cv √2/8" (/ (sqrt 2) 8) (assq-ref m 'cv) 1e-12)
      (test-approximate "entropy H(p)/log 4"
        (/ (- (+ (* (/ (exp 1) z) (log (/ (exp 1) z))) (* 3 (/ 1 z) (log (/ 1 z))))) (log 4))
        (assq-ref m 'entropy) 1e-6)
      (test-approximate "selected mass e/(e+3)" (/ (exp 1) z) (assq-ref m 'selected-mass) 1e-6))
    (moe-step! moe)
    (let ((m (moe-metrics moe)))
      (test-equal "then an empty step: zero counts, no statistics" '((0.0 0.0 0.0 0.0) 0 #f #f #f)
        (cons (tensor->list (assq-ref m 'tokens-per-expert-step))
              (map (lambda (k) (assq-ref m k)) '(tokens dead-fraction cv entropy)))))))

;;; ---- objects and errors -------------------------------------------------------------------------

(test-group "the layer object"
  (let ((moe (make-moe-layer #:hidden 16 #:ffn 32 #:experts 4 #:top-k 2)))
    (test-assert "moe-layer?" (moe-layer? moe))
    (test-assert "moe-layer? of a tensor" (not (moe-layer? (zeros '(2)))))
    (test-assert "is-a <moe-layer>" ((@ (oop goops) is-a?) moe <moe-layer>))
    (test-equal "printed" "#<moe-layer D=16 F=32 E=4 K=2 swiglu>" (format #f "~a" moe))
    (test-equal "written" "#<moe-layer D=16 F=32 E=4 K=2 swiglu>" (format #f "~s" moe))
    (test-equal "config"
      '(16 32 4 2 swiglu 0 f32 1)
      (map (lambda (k) (assq-ref (moe-layer-config moe) k))
           '(hidden ffn experts top-k activation shared-ffn dtype ep-size))))
  (test-equal "printed with shared experts, gelu, f64"
    "#<moe-layer D=4 F=2 E=2 K=1 gelu shared=6 gated f64>"
    (format #f "~a" (make-moe-layer #:hidden 4 #:ffn 2 #:experts 2 #:top-k 1 #:activation 'gelu
                                    #:shared-experts 3 #:shared-gate? #t #:dtype 'f64
                                    #:router-options '(#:pre-softmax? #t))))
  (test-equal "a graph outlives its layer" '(5 4)
    (let* ((x (randn '(5 4) #:seed 1 #:requires-grad #t))
           (y (moe-forward (make-moe-layer #:hidden 4 #:ffn 3 #:experts 3 #:top-k 2) x)))
      (gc) (gc)
      (backward! (tsum (t* y y)))
      (tensor-shape (tensor-grad x))))
  (test-equal "many layers come and go (finalizers)" 50
    (let loop ((i 0))
      (if (= i 50) i
          (begin (moe-forward (make-moe-layer #:hidden 8 #:ffn 8 #:experts 4 #:top-k 2)
                              (randn '(4 8)))
                 (gc)
                 (loop (+ i 1)))))))

(test-group "bad inputs raise moelab-error"
  (let ((moe (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2)))
    (test-moelab-error "wrong hidden size" "[T 6]" (moe-forward moe (zeros '(3 5))))
    (test-moelab-error "1-D input" "moe-forward" (moe-forward moe (zeros '(6))))
    (test-moelab-error "integer input" "moe-forward" (moe-forward moe (zeros '(3 6) #:dtype 'i64)))
    (test-wrong-type "not a layer" (moe-forward (zeros '(2)) (zeros '(3 6)))))
  (test-moelab-error "K > E" "make-moe-layer"
    (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 5))
  (test-moelab-error "unknown activation" "relu2"
    (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:activation 'relu2))
  (test-moelab-error "missing #:hidden" "hidden" (make-moe-layer #:ffn 5 #:experts 4))
  (test-moelab-error "hidden 0" "#:hidden" (make-moe-layer #:hidden 0 #:ffn 5 #:experts 4))
  (test-moelab-error "negative shared-experts" "shared-experts"
    (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:shared-experts -1))
  (test-moelab-error "shared gate without shared experts" "shared"
    (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:shared-gate? #t))
  (test-moelab-error "bf16 parameters" "f32 or f64"
    (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:dtype 'bf16))
  (test-moelab-error "unknown device" "unknown device"
    (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:device 'tpu))
  (test-moelab-error "bad router option" "make-moe-layer"
    (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:router-options '(#:score cosine)))
  (test-moelab-error "K=1 post-softmax (router check)" "pre-softmax"
    (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 1))
  (test-wrong-type "ep-group of the wrong type"
    (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:ep-group 42)))

;;; ---- expert parallelism -------------------------------------------------------------------------

(test-group "expert parallelism (2 ranks as threads) equals EP = 1"
  (let* ((x (randn '(8 6) #:seed 91 #:dtype 'f64))
         (single (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:dtype 'f64
                                 #:router-options f64-router #:seed 92))
         (y1 (tensor->list (moe-forward single x)))
         (results
          (with-ranks 2
            (lambda (rank)
              (let* ((moe (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:top-k 2 #:dtype 'f64
                                          #:router-options f64-router #:seed 92
                                          #:ep-group (world-group)))
                     (y (moe-forward moe x)))
                (list (tensor->list y)
                      (tensor-shape (moe-parameter moe "experts.w-up"))
                      (assq-ref (moe-layer-config moe) 'first-expert)
                      (format #f "~a" moe)))))))
    (test-assert "outputs equal on both ranks"
      (every (lambda (r) (close? (car r) y1 1e-12)) results))
    (test-equal "each rank holds 2 experts" '((2 6 5) (2 6 5)) (map cadr results))
    (test-equal "first experts" '(0 2) (map caddr results))
    (test-equal "printed with ep" "#<moe-layer D=6 F=5 E=4 K=2 swiglu f64 ep=2>" (cadddr (car results))))
  (test-equal "#:ep-group 'ep names the mesh dimension" '((0 2) (2 2))
    (with-ranks 2 #:mesh '((ep . 2))
      (lambda (rank)
        (let ((moe (make-moe-layer #:hidden 4 #:ffn 3 #:experts 4 #:top-k 2 #:ep-group 'ep)))
          (map (lambda (k) (assq-ref (moe-layer-config moe) k)) '(first-expert local-experts))))))
  (let ((escaped (car (with-ranks 2
                        (lambda (rank)
                          (make-moe-layer #:hidden 4 #:ffn 3 #:experts 4 #:top-k 2
                                          #:ep-group (world-group)))))))
    (test-moelab-error "a forward after its with-ranks has returned" "with-ranks"
      (moe-forward escaped (zeros '(2 4))))))

;; #:device 'cuda: parameters on the GPU, the router on the host. Here
;; without a GPU only the error; with one, the same numbers as the CPU layer
;; (tests/gpu/check_gpu_moe.c compares every gradient too).
(test-group "#:device"
  (test-equal "cpu by default" 'cpu
    (assq-ref (moe-layer-config (make-moe-layer #:hidden 4 #:ffn 3 #:experts 4)) 'device))
  (if (zero? (device-count 'cuda))
      (test-moelab-error "cuda without a GPU" "device cuda requested"
        (make-moe-layer #:hidden 4 #:ffn 3 #:experts 4 #:device 'cuda))
      (let* ((x (randn '(9 6) #:seed 5))
             (cpu (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:seed 3))
             (gpu (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:seed 3 #:device 'cuda))
             (y (moe-forward cpu x))
             (yg (moe-forward gpu (tensor-to x 'cuda))))
        (test-equal "config says cuda" 'cuda (assq-ref (moe-layer-config gpu) 'device))
        (test-equal "experts on cuda" 'cuda (tensor-device (moe-parameter gpu "experts.w-up")))
        (test-equal "router on the host" 'cpu (tensor-device (moe-parameter gpu "router.weight")))
        (test-equal "output on cuda" 'cuda (tensor-device yg))
        (test-assert "same output as the cpu layer"
          (close? (tensor->list (tensor-to yg 'cpu)) (tensor->list y) 1e-5))
        (test-moelab-error "no biases on cuda yet" "biases"
          (make-moe-layer #:hidden 6 #:ffn 5 #:experts 4 #:bias? #t #:device 'cuda))
        (test-moelab-error "a cpu input to a cuda layer" "tensor-to" (moe-forward gpu x)))))

(test-end "layer")
(exit-with-test-status)
