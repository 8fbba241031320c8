;;; model-parallel.scm — the MoE transformer as one rank's part of a
;;; parallel model (make-moe-transformer #:stage #:ep-group #:dp-group),
;;; against the one-rank model of the same seed in f64: two pipeline stages
;;; on the ranks of a '((pp . 2)) mesh pass the hidden state forward and its
;;; gradient back and reproduce the full model's loss and every gradient;
;;; two ranks of an '((ep . 2)) mesh hold half the experts each and
;;; reproduce the full model's loss and gradients on their rows (the expert
;;; shards: the sum over both ranks' rows); the errors.

(include "common.scm")
(use-modules (srfi srfi-1))

(test-begin "model-parallel")

(define (max-abs-diff a b)
  (tensor-item (tmax (tabs (t- (to-dtype a 'f64) (to-dtype b 'f64))))))

(define (same? a b tol)
  (and (equal? (tensor-shape a) (tensor-shape b)) (<= (max-abs-diff a b) tol)))

(define sizes
  '(#:vocab 16 #:layers 2 #:hidden 8 #:heads 2 #:kv-heads 1 #:ffn 6 #:experts 4 #:top-k 2
    #:max-seq 8 #:dense-ffn 10 #:dtype f64 #:seed 5))

(define (model . more)
  (apply make-moe-transformer (append sizes more)))

(define tokens (randint 0 16 '(4 5) #:seed 1))
(define targets (randint 0 16 '(4 5) #:seed 2))

(define (rows t first n) (narrow t 0 first n))

;; name -> gradient of every parameter of M (copies)
(define (grads m)
  (map (lambda (p) (cons (car p) (detach (tensor-grad (cdr p))))) (model-parameters m)))

;;; ---- pipeline stages ------------------------------------------------------------------

(define full (model #:first-dense 1))
(define full-loss (model-loss full tokens targets))
(backward! full-loss)
(define full-grads (grads full))

(test-group "two stages on a '((pp . 2)) mesh"
  (let* ((box (make-vector 2 #f))
         (results
          (with-ranks 2 #:mesh '((pp . 2))
            (lambda (rank)
              (let* ((stage (if (zero? (mesh-coord 'pp)) '(0 . 1) '(1 . 2)))
                     (m (model #:first-dense 1 #:stage stage))
                     (same-init (every (lambda (p)
                                         (same? (cdr p) (model-parameter full (car p)) 0))
                                       (model-parameters m))))
                (if (zero? (mesh-coord 'pp))
                    (let ((h (model-forward m tokens)))
                      (vector-set! box 0 h)
                      (barrier)                       ; the hidden state is sent
                      (barrier)                       ; its gradient came back
                      (backward! h (vector-ref box 1))
                      (list (model-stage m) same-init (tensor-shape h) #f (grads m)
                            (model-config m) (format #f "~a" m)))
                    (begin
                      (barrier)
                      (let* ((h (requires-grad! (detach (vector-ref box 0))))
                             (loss (model-loss m h targets)))
                        (backward! loss)
                        (vector-set! box 1 (tensor-grad h))
                        (barrier)
                        (list (model-stage m) same-init #f (tensor-item loss) (grads m)
                              (model-config m) (format #f "~a" m))))))))))
    (define (field i) (map (lambda (r) (list-ref r i)) results))
    (test-equal "model-stage" '((0 . 1) (1 . 2)) (field 0))
    (test-equal "each stage holds the full model's values" '(#t #t) (field 1))
    (test-equal "stage 0 gives the hidden state [B S D]" '(4 5 8) (car (field 2)))
    (test-assert "stage 1's loss is the full model's"
      (< (abs (- (cadr (field 3)) (tensor-item full-loss))) 1e-10))
    (let ((stage-grads (append (car (field 4)) (cadr (field 4)))))
      (test-equal "the stages split the parameters"
        (sort (map car full-grads) string<?) (sort (map car stage-grads) string<?))
      (test-equal "every gradient is the full model's" '()
        (filter-map (lambda (g)
                      (and (not (same? (cdr g) (assoc-ref full-grads (car g)) 1e-10)) (car g)))
                    stage-grads)))
    (test-equal "model-config is the whole model's on both stages"
      (list (model-config full) (model-config full)) (field 5))
    (test-equal "printed with the stage"
      "#<moe-transformer V=16 L=2 D=8 H=2/1 E=4 K=2 F=6 f64 stage [0, 1)"
      (string-take (car (field 6)) (string-length "#<moe-transformer V=16 L=2 D=8 H=2/1 E=4 K=2 F=6 f64 stage [0, 1)")))))

(test-group "stage errors"
  (let ((s0 (model #:stage '(0 . 1)))
        (s1 (model #:stage '(1 . 2))))
    (test-equal "a whole model's stage" '(0 . 2) (model-stage full))
    (test-assert "stage 0 has embed, no head"
      (and (model-parameter s0 "embed") (not (assoc "norm" (model-parameters s0)))))
    (test-moelab-error "the loss on a stage without the head" "layers [0, 1) of 2 and not the head"
      (model-loss s0 tokens targets))
    (test-moelab-error "tokens into a stage without embed" "hidden state [B S 8] (f64), got a i64 [4 5]"
      (model-forward s1 tokens))
    (test-moelab-error "a hidden state into the first stage" "holds \"embed\" and takes token ids"
      (model-forward s0 (zeros '(4 5 8) #:dtype 'f64)))
    (test-moelab-error "a hidden state of the wrong width" "got a f64 [4 5 6]"
      (model-forward s1 (zeros '(4 5 6) #:dtype 'f64)))
    (test-moelab-error "targets of another shape" "must be [B S] of the hidden state [4 5 8]"
      (model-loss s1 (zeros '(4 5 8) #:dtype 'f64) (rows targets 0 3)))
    (test-moelab-error "an empty stage" "#:stage (1 . 1)" (model #:stage '(1 . 1)))
    (test-moelab-error "a stage past the last layer" "#:stage (0 . 3)" (model #:stage '(0 . 3)))
    (test-moelab-error "(0 . 0)" "#:stage (0 . 0) holds no layer" (model #:stage '(0 . 0)))
    (test-moelab-error "tied embeddings on a partial stage" "would live on two stages"
      (model #:stage '(0 . 1) #:tie-embeddings? #t))
    (test-equal "tied embeddings with every layer on the stage" '(0 . 2)
      (model-stage (model #:stage '(0 . 2) #:tie-embeddings? #t)))
    (test-moelab-error "a stage that is not a pair" "#:stage must be #f or a pair"
      (model #:stage 1))))

;;; ---- expert parallelism ----------------------------------------------------------------

(test-group "experts over an '((ep . 2)) mesh"
  (let* ((router '(#:expert-bias? #t #:bias-rate 0.01))
         (one (model #:router-options router))  ; each rank's rows on its own
         (both (model #:router-options router)) ; both ranks' rows: the expert grads add up
         (per-rank
          (map (lambda (r)
                 (model-zero-grad! one)
                 (let ((loss (model-loss one (rows tokens (* 2 r) 2) (rows targets (* 2 r) 2))))
                   (backward! loss)
                   (backward! (model-loss both (rows tokens (* 2 r) 2) (rows targets (* 2 r) 2)))
                   (cons (tensor-item loss) (grads one))))
               '(0 1)))
         (results
          (with-ranks 2 #:mesh '((ep . 2))
            (lambda (rank)
              (let* ((m (model #:router-options router #:ep-group 'ep #:dp-group (mesh-group 'ep)))
                     (loss (model-loss m (rows tokens (* 2 rank) 2) (rows targets (* 2 rank) 2))))
                (backward! loss)
                (let ((g (grads m)))
                  (model-step! m)
                  (set-model-parameter! m "layers.1.moe.experts.w-up"
                                        (t* 2 (model-parameter both "layers.1.moe.experts.w-up")))
                  (list (model-expert-offset m) (model-ep-size m) (tensor-item loss) g
                        (map (lambda (b) (cons (car b) (detach (cdr b)))) (model-buffers m))
                        (detach (model-parameter m "layers.1.moe.experts.w-up"))
                        (model-config m) (model-stage m)))))))
         (_ (model-step! both)))
    (define (field i) (map (lambda (r) (list-ref r i)) results))
    (test-equal "model-expert-offset" '(0 2) (field 0))
    (test-equal "model-ep-size" '(2 2) (field 1))
    (test-equal "model-stage: every layer" '((0 . 2) (0 . 2)) (field 7))
    (test-assert "each rank's loss is the full model's on its rows"
      (every (lambda (l r) (< (abs (- l (car r))) 1e-10)) (field 2) per-rank))
    (test-equal "dense and router gradients: the full model's on the rank's rows; expert shards: the rows of the sum over ranks"
      '(() ())
      (map (lambda (g r rank)
             (filter-map
              (lambda (p)
                (let ((expect (if (string-contains (car p) ".experts.")
                                  (narrow (tensor-grad (model-parameter both (car p))) 0 (* 2 rank) 2)
                                  (assoc-ref (cdr r) (car p)))))
                  (and (not (same? (cdr p) expect 1e-10)) (car p))))
              g))
           (field 3) per-rank '(0 1)))
    (test-assert "the expert bias counts both ranks' tokens (dp group)"
      (every (lambda (bufs)
               (every (lambda (b) (same? (cdr b) (model-parameter both (car b)) 1e-7)) bufs))
             (field 4)))
    (test-assert "the expert bias moved"
      (> (tensor-item (tmax (tabs (cdar (car (field 4)))))) 0))
    (test-assert "set-model-parameter! takes the full [E ...] tensor: the rank's rows"
      (every (lambda (t rank)
               (same? t (narrow (t* 2 (model-parameter both "layers.1.moe.experts.w-up")) 0 (* 2 rank) 2) 0))
             (field 5) '(0 1)))
    (test-equal "model-config is the whole model's" (list (model-config one) (model-config one))
      (field 6))))

(test-group "expert-parallel errors"
  (test-equal "E not a multiple of the ep size" '(#t #t)
    (with-ranks 2 #:mesh '((ep . 2))
      (lambda (rank)
        (raises 'moelab-error "#:experts 3 is not a multiple of the ep group's size 2"
                (lambda () (model #:experts 3 #:top-k 1 #:ep-group 'ep))))))
  (test-wrong-type "a group of the wrong type" (model #:ep-group 42))
  (let ((escaped (car (with-ranks 2
                        (lambda (rank) (model #:ep-group (world-group)))))))
    (test-moelab-error "a forward after its with-ranks has returned" "with-ranks"
      (model-forward escaped tokens))
    (test-moelab-error "a step after its with-ranks has returned" "with-ranks"
      (model-step! escaped))))

(test-end "model-parallel")
(exit-with-test-status)
