;;; model.scm — the MoE transformer from Scheme: make-moe-transformer with
;;; every keyword, parameters and buffers by name, the reference vectors of
;;; an independent PyTorch implementation (tests/reference/model_refs.txt,
;;; written by gen_model_refs.py: logits, loss, aux losses and every
;;; gradient in f64), the two aux-gradient modes, the per-step procedures,
;;; attention (fused vs plain) and RoPE, and the errors on bad input.

(include "common.scm")
(use-modules (ice-9 rdelim) (ice-9 match))

(test-begin "model")

(define (max-abs-diff a b)
  (tensor-item (tmax (tabs (t- (to-dtype a 'f64) (to-dtype b 'f64))))))

(define (tensors-close? a b tol)
  "#t when A and B have one shape and agree within TOL (absolute, or relative
to the largest magnitude of B); else what differs."
  (cond ((not (equal? (tensor-shape a) (tensor-shape b)))
         (list 'shapes (tensor-shape a) (tensor-shape b)))
        ((<= (max-abs-diff a b) (* tol (max 1 (tensor-item (tmax (tabs (to-dtype b 'f64)))))))
         #t)
        (else (list 'max-abs-diff (max-abs-diff a b)))))

;;; ---- the reference vectors -----------------------------------------------------------

(define here (dirname (current-filename)))

(define (read-cases file)
  "The cases of FILE as a list of (name settings tensors): settings an alist
key -> string, tensors an alist name -> tensor."
  (call-with-input-file file
    (lambda (port)
      (check-ref-format port file)
      (let loop ((cases '()) (name #f) (sets '()) (tens '()))
        (define (close) (if name (cons (list name (reverse sets) (reverse tens)) cases) cases))
        (let ((line (read-line port)))
          (if (eof-object? line)
              (reverse (close))
              (match (string-split line #\space)
                (("case" n) (loop (close) n '() '()))
                (("set" k v) (loop cases name (acons k v sets) tens))
                (("tensor" n dt nd . rest)
                 (let* ((nd (string->number nd))
                        (rest (filter (lambda (s) (not (string-null? s))) rest))
                        (shape (map string->number (list-head rest nd)))
                        (vals (map string->number (list-tail rest nd)))
                        (t (tensor (list->f64vector (map exact->inexact vals)) #:shape shape)))
                   (loop cases name sets
                         (acons n (if (string=? dt "i64") (to-dtype t 'i64) t) tens))))
                (_ (loop cases name sets tens)))))))))

(define cases (read-cases (string-append here "/../reference/model_refs.txt")))

(define (setting c key) (string->number (assoc-ref (cadr c) key)))
(define (ref c name) (assoc-ref (caddr c) name))

(define* (reference-model c #:key (grad-mode 'inject) (attention 'fused))
  "The model of case C in f64 with the reference's parameters."
  (let ((m (make-moe-transformer
            #:vocab (setting c "vocab") #:layers (setting c "layers") #:hidden (setting c "hidden")
            #:heads (setting c "heads") #:kv-heads (setting c "kv_heads") #:ffn (setting c "ffn")
            #:experts (setting c "experts") #:top-k (setting c "top_k")
            #:moe-every (setting c "moe_every") #:first-dense (setting c "first_dense")
            #:dense-ffn (setting c "dense_ffn") #:shared-experts (setting c "shared_experts")
            #:max-seq (setting c "max_seq") #:rope-theta (setting c "rope_theta")
            #:norm-eps (setting c "eps") #:tie-embeddings? (= 1 (setting c "tie"))
            #:router-options `(#:grad-mode ,grad-mode
                               #:losses ((micro-batch . ,(setting c "coeff_micro"))
                                         (z . ,(setting c "coeff_z"))))
            #:attention attention #:dtype 'f64)))
    (for-each (lambda (entry)
                (when (string-prefix? "p:" (car entry))
                  (set-model-parameter! m (substring (car entry) 2) (cdr entry))))
              (caddr c))
    m))

(define (check-case c grad-mode attention)
  (let* ((m (reference-model c #:grad-mode grad-mode #:attention attention))
         (what (format #f "~a ~a ~a" (car c) grad-mode attention))
         (tokens (ref c "tokens"))
         (targets (ref c "targets")))
    (test-equal (string-append what ": logits") #t
      (tensors-close? (model-forward m tokens) (ref c "logits") 1e-9))
    (let ((loss (model-loss m tokens targets)))
      (test-equal (string-append what ": loss") #t
        (tensors-close? loss (ref c (if (eq? grad-mode 'add) "total" "ce")) 1e-9))
      (test-equal (string-append what ": aux losses") #t
        (and (equal? (map (lambda (a) (map car a)) (model-aux-losses m))
                     (map (const '(micro-batch z)) (model-moe-layers m)))
             (close? (map (lambda (a) (map cdr a)) (model-aux-losses m))
                     (map (lambda (l)
                            (map (lambda (kind)
                                   (tensor-item (ref c (format #f "aux:~a:~a" l kind))))
                                 '(micro-batch z)))
                          (model-moe-layers m))
                     1e-9)))
      (backward! loss)
      (test-equal (string-append what ": every parameter's gradient") '()
        (filter-map (lambda (entry)
                      (let ((want (ref c (string-append "g:" (car entry)))))
                        (and (not (eq? #t (tensors-close? (tensor-grad (cdr entry)) want 1e-9)))
                             (car entry))))
                    (model-parameters m))))))

(test-group "against the PyTorch reference (f64, 1e-9)"
  (test-equal "two cases" 2 (length cases))
  (for-each (lambda (c) (check-case c 'inject 'fused)) cases)
  (check-case (car cases) 'add 'fused)
  (check-case (car cases) 'inject 'plain))

;;; ---- the contract ------------------------------------------------------------------------

(define m
  (make-moe-transformer #:vocab 64 #:layers 3 #:hidden 32 #:heads 4 #:kv-heads 2 #:ffn 16
                        #:experts 4 #:top-k 2 #:moe-every 1 #:first-dense 1 #:dense-ffn 48
                        #:shared-experts 1 #:shared-ffn #f #:max-seq 16 #:rope-theta 10000.0
                        #:norm-eps 1e-5 #:tie-embeddings? #f #:init-std 0.02
                        #:router-options '(#:score softmax #:expert-bias? #t
                                           #:losses ((micro-batch . 1e-2) (z . 1e-3)))
                        #:dtype 'f32 #:device 'cpu #:seed 0))

(test-group "make-moe-transformer"
  (test-assert "moe-transformer?" (and (moe-transformer? m) (not (moe-transformer? 3))))
  (test-assert "is-a <moe-transformer>" ((@ (oop goops) is-a?) m <moe-transformer>))
  (test-equal "kv-heads defaults to heads" 2
    (assq-ref (model-config (make-moe-transformer #:vocab 8 #:layers 1 #:hidden 8 #:heads 2 #:ffn 4
                                                  #:experts 2 #:max-seq 4))
              'kv-heads))
  (test-assert "prints" (string-prefix? "#<moe-transformer V=64 L=3" (format #f "~a" m)))
  (test-equal "model-config" '(64 3 2 1 #f)
    (map (lambda (k) (assq-ref (model-config m) k)) '(vocab layers kv-heads first-dense shared-ffn)))
  (test-equal "router options reach the routers" '(softmax #t f32)
    (map (lambda (k) (assq-ref (assq-ref (model-config m) 'router) k)) '(score expert-bias? dtype)))
  (test-equal "MoE layers after the dense one" '(1 2) (model-moe-layers m))
  (test-equal "names and shapes"
    '(("embed" 64 32) ("layers.0.attn-norm" 32) ("layers.0.attn.wq" 32 32) ("layers.0.attn.wk" 16 32)
      ("layers.0.attn.wv" 16 32) ("layers.0.attn.wo" 32 32) ("layers.0.ffn-norm" 32)
      ("layers.0.mlp.w-gate" 48 32) ("layers.0.mlp.w-up" 48 32) ("layers.0.mlp.w-down" 32 48))
    (map (lambda (e) (cons (car e) (tensor-shape (cdr e)))) (list-head (model-parameters m) 10)))
  (test-equal "an MoE layer's names"
    '(("layers.1.moe.router.weight" 4 32) ("layers.1.moe.experts.w-gate" 4 32 16)
      ("layers.1.moe.experts.w-up" 4 32 16) ("layers.1.moe.experts.w-down" 4 16 32)
      ("layers.1.moe.shared.w-gate" 32 16) ("layers.1.moe.shared.w-up" 32 16)
      ("layers.1.moe.shared.w-down" 16 32))
    (map (lambda (e) (cons (car e) (tensor-shape (cdr e))))
         (filter (lambda (e) (string-prefix? "layers.1.moe" (car e))) (model-parameters m))))
  (test-equal "last: norm, lm-head" '("norm" "lm-head") (map car (take-right (model-parameters m) 2)))
  (test-equal "buffers" '(("layers.1.moe.router.expert-bias" f32 4) ("layers.2.moe.router.expert-bias" f32 4))
    (map (lambda (e) (cons* (car e) (tensor-dtype (cdr e)) (tensor-shape (cdr e)))) (model-buffers m)))
  (test-equal "norms start at 1" '(1.0 1.0)
    (let ((n (tensor->list (model-parameter m "norm")))) (list (apply min n) (apply max n))))
  (test-equal "the same seed gives the same model" #t
    (tensors-close? (model-parameter m "layers.0.attn.wq")
                    (model-parameter (make-moe-transformer #:vocab 64 #:layers 3 #:hidden 32 #:heads 4
                                                           #:kv-heads 2 #:ffn 16 #:experts 4 #:first-dense 1
                                                           #:dense-ffn 48 #:shared-experts 1 #:max-seq 16)
                                     "layers.0.attn.wq")
                    0))
  (test-equal "tied: no lm-head" #f
    (assoc-ref (model-parameters (make-moe-transformer #:vocab 16 #:layers 1 #:hidden 8 #:heads 2
                                                       #:ffn 8 #:experts 2 #:top-k 1 #:max-seq 4
                                                       #:tie-embeddings? #t))
               "lm-head")))

(define tokens (randint 0 64 '(2 16) #:seed 3))

(test-group "forward, loss, routing, step"
  (test-equal "logits [B S V]" '(2 16 64) (tensor-shape (model-forward m tokens)))
  (let ((loss (model-loss m tokens tokens)))
    (test-assert "loss near ln V at init" (< (abs (- (tensor-item loss) (log 64))) 0.1))
    (backward! loss))
  (test-assert "gradients on every parameter"
    (every (lambda (e) (tensor-grad (cdr e))) (model-parameters m)))
  (test-equal "aux losses per MoE layer" '((micro-batch z) (micro-batch z))
    (map (lambda (a) (map car a)) (model-aux-losses m)))
  (test-equal "routing per MoE layer: every token counted K times" '(64 64)
    (map (lambda (r) (apply + (assq-ref r 'tokens-per-expert))) (model-routing m)))
  (model-step! m)
  (test-assert "model-step! moves the expert biases"
    (positive? (tensor-item (tsum (tabs (cdar (model-buffers m)))))))
  (model-zero-grad! m)
  (test-equal "model-zero-grad!" #f (tensor-grad (model-parameter m "embed")))
  (set-model-parameter! m "layers.1.moe.router.expert-bias" (tensor '(1 2 3 4)))
  (test-equal "set a buffer" '(1.0 2.0 3.0 4.0)
    (tensor->list (model-parameter m "layers.1.moe.router.expert-bias")))
  (set-model-parameter! m "norm" (full '(32) 2.0))
  (test-equal "set a parameter" 2.0 (tensor-ref (model-parameter m "norm") 5))
  (model-training! m #f)
  (test-equal "model-training!" #f (model-training? m))
  (model-training! m)
  (test-assert "model-training?" (model-training? m))
  (set-model-grad-accum! m 2)
  (test-equal "set-model-grad-accum! reaches the routers" 2
    (assq-ref (assq-ref (model-config m) 'router) 'grad-accum))
  (test-equal "model-flops: backward is 2× the forward" 3.0
    (/ (model-flops m 2 16) (model-flops m 2 16 #:backward? #f))))

(test-group "quantile balancing: qb-beta is a buffer"
  (let ((q (make-moe-transformer #:vocab 16 #:layers 2 #:hidden 8 #:heads 2 #:ffn 8 #:experts 4
                                 #:top-k 2 #:max-seq 8 #:dtype 'f64
                                 #:router-options '(#:routing quantile-balancing #:losses ()))))
    (test-equal "buffers: qb-beta [E] f32 per MoE layer"
      '(("layers.0.moe.router.qb-beta" f32 4) ("layers.1.moe.router.qb-beta" f32 4))
      (map (lambda (e) (cons* (car e) (tensor-dtype (cdr e)) (tensor-shape (cdr e)))) (model-buffers q)))
    (set-model-parameter! q "layers.1.moe.router.qb-beta" (tensor '(0.5 -0.5 0.25 -0.25) #:dtype 'f64))
    (test-equal "set-model-parameter! writes the router's own beta" '(0.5 -0.5 0.25 -0.25)
      (tensor->list (model-parameter q "layers.1.moe.router.qb-beta")))
    (test-equal "the other layer's beta is untouched" '(0.0 0.0 0.0 0.0)
      (tensor->list (model-parameter q "layers.0.moe.router.qb-beta")))))

;; 'add: the value is the cross-entropy plus Σ coefficient·aux; the same
;; gradients as 'inject (one micro-batch).
(test-group "aux-gradient modes"
  (let* ((make (lambda (mode)
                 (make-moe-transformer #:vocab 32 #:layers 2 #:hidden 16 #:heads 2 #:ffn 8 #:experts 4
                                       #:max-seq 8 #:dtype 'f64 #:seed 4
                                       #:router-options `(#:grad-mode ,mode
                                                          #:losses ((micro-batch . 0.5) (z . 0.25))))))
         (a (make 'add)) (i (make 'inject))
         (tok (randint 0 32 '(2 8) #:seed 5))
         (la (model-loss a tok tok)) (li (model-loss i tok tok))
         (aux (apply + (map (lambda (l) (+ (* 0.5 (assq-ref l 'micro-batch)) (* 0.25 (assq-ref l 'z))))
                            (model-aux-losses a)))))
    (test-equal "add = inject + Σ coefficient·aux" #t
      (close? (tensor-item la) (+ (tensor-item li) aux) 1e-12))
    (backward! la)
    (backward! li)
    (test-equal "the same gradients" #t
      (every (lambda (pa pi) (eq? #t (tensors-close? (tensor-grad (cdr pa)) (tensor-grad (cdr pi)) 1e-12)))
             (model-parameters a) (model-parameters i)))))

;;; ---- attention and RoPE ------------------------------------------------------------------------

(test-group "attention"
  (let* ((q (randn '(2 20 4 8) #:seed 1 #:dtype 'f64 #:requires-grad #t))
         (k (randn '(2 20 2 8) #:seed 2 #:dtype 'f64 #:requires-grad #t))
         (v (randn '(2 20 2 8) #:seed 3 #:dtype 'f64 #:requires-grad #t))
         (w (randn '(2 20 4 8) #:seed 4 #:dtype 'f64))
         (grads (lambda (impl causal?)
                  (for-each zero-grad! (list q k v))
                  (let ((o (attention q k v #:impl impl #:causal? causal?)))
                    (backward! (tsum (t* o w)))
                    (cons o (map tensor-grad (list q k v)))))))
    (for-each (lambda (causal?)
                (test-equal (format #f "fused = plain, values and gradients (causal? ~a)" causal?) #t
                  (every (lambda (a b) (eq? #t (tensors-close? a b 1e-12)))
                         (grads 'fused causal?) (grads 'plain causal?))))
              '(#t #f)))
  ;; two keys with scores 0 and ln 3: weights 1/4, 3/4
  (let* ((q (tensor '((((0.0 0.0))) (((1.0 0.0)))) #:dtype 'f64))
         (k (tensor `((((0.0 5.0))) (((,(* (log 3) (sqrt 2)) 0.0)))) #:dtype 'f64))
         (v (tensor '((((4.0 8.0))) (((0.0 4.0)))) #:dtype 'f64)))
    (test-values/tol "hand-computed" 1e-12 '((((4.0 8.0)) ((1.0 5.0))))
      (attention (reshape q '(1 2 1 2)) (reshape k '(1 2 1 2)) (reshape v '(1 2 1 2))))))

(test-group "rope"
  ;; hd 2, θ irrelevant for pair 0 (angle = position): (1, 0) turns to (cos s, sin s)
  (test-values/tol "position s turns pair 0 by s radians" 1e-6
    (list (list (list (list 1.0 0.0)) (list (list (cos 1) (sin 1))) (list (list (cos 2) (sin 2)))))
    (rope (reshape (tensor '(1 0 1 0 1 0)) '(1 3 1 2)))))

;;; ---- errors ----------------------------------------------------------------------------------------

(test-group "bad input"
  (test-moelab-error "tokens >= vocab" "tokens[0 1] = 64 is outside the vocabulary [0, 64)"
    (model-forward m (tensor '((1 64 2)) #:dtype 'i64)))
  (test-moelab-error "sequence longer than max-seq" "sequence length 17 exceeds #:max-seq 16"
    (model-loss m (randint 0 64 '(1 17)) (randint 0 64 '(1 17))))
  (test-moelab-error "heads not dividing hidden" "#:heads 3 does not divide #:hidden 32"
    (make-moe-transformer #:hidden 32 #:heads 3))
  (test-moelab-error "kv-heads not dividing heads" "#:kv-heads 3 does not divide #:heads 4"
    (make-moe-transformer #:hidden 32 #:heads 4 #:kv-heads 3))
  (test-moelab-error "unknown parameter" "no parameter or buffer named 'layers.9.attn.wq'"
    (set-model-parameter! m "layers.9.attn.wq" (zeros '(32 32))))
  (test-moelab-error "wrong shape" "'embed' is [64 32], got a [32 64] tensor"
    (set-model-parameter! m "embed" (zeros '(32 64))))
  (test-moelab-error "model-parameter of an unknown name" "no parameter named"
    (model-parameter m "nope"))
  (test-moelab-error "a device other than the cpu" "cpu only"
    (make-moe-transformer #:vocab 16 #:layers 1 #:hidden 8 #:heads 2 #:ffn 8 #:experts 2 #:device 'cuda))
  (test-moelab-error "dtype" "#:dtype must be f32 or f64, got bf16"
    (make-moe-transformer #:vocab 16 #:layers 1 #:hidden 8 #:heads 2 #:ffn 8 #:experts 2 #:dtype 'bf16))
  (test-moelab-error "odd head dim" "must be even"
    (make-moe-transformer #:hidden 12 #:heads 4))
  (test-moelab-error "unknown attention" "unknown #:attention 'flash'"
    (make-moe-transformer #:attention 'flash))
  (test-moelab-error "unknown router option" "make-moe-transformer"
    (make-moe-transformer #:router-options '(#:no-such-option 1)))
  (test-moelab-error "attention: kv heads" "do not divide"
    (attention (zeros '(1 2 3 4)) (zeros '(1 2 2 4)) (zeros '(1 2 2 4)))))

(test-end "model")
(exit-with-test-status)
