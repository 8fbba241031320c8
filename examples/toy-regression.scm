;;; toy-regression.scm — train one MoE layer with plain SGD in a Scheme loop
;;; and watch the experts specialise.
;;;
;;;   moelab examples/toy-regression.scm          ; on the CPU
;;;   moelab examples/toy-regression.scm cuda     ; the same script on a GPU
;;;
;;; The task: tokens come from 4 clusters; each cluster has its own linear
;;; map, y = x·A_c. A single small MLP would have to fit four maps at once;
;;; the router can send each cluster to its own experts. A micro-batch
;;; load-balancing loss (Switch/GShard) keeps the experts evenly used.

(use-modules (moelab)
             (ice-9 format)
             (srfi srfi-1))

;;; The device is the one argument that changes: the layer's parameters live
;;; there and every batch is moved there; the rest of the script is the same.
(define device
  (let ((args (cdr (command-line))))
    (if (null? args) 'cpu (string->symbol (car args)))))
(unless (memq device '(cpu cuda))
  (format (current-error-port) "toy-regression: unknown device ~a (expected cpu or cuda)~%" device)
  (exit 2))
(when (and (eq? device 'cuda) (zero? (device-count 'cuda)))
  (format #t "toy-regression: skipped: device cuda requested but no GPU is available~a~%"
          (if (built-with-cuda?) "" " (moelab was built without CUDA)"))
  (exit 77))

(define D 16)         ; hidden size
(define clusters 4)
(define T 256)        ; tokens per batch
(define steps 300)
(define learning-rate 0.1)

;;; The layer: 4 SwiGLU experts of width 32, top-2, with the balance loss
;;; (in the router's default "inject" mode its gradient rides along with the
;;; model's, so the training loop needs nothing extra).
(define moe (make-moe-layer #:hidden D #:ffn 32 #:experts 4 #:top-k 2 #:activation 'swiglu
                            #:router-options '(#:losses ((micro-batch . 1e-2)))
                            #:seed 1 #:device device))
(format #t "~a~%" moe)

;;; The data: cluster centres [4 D], one linear map per cluster [4 D D].
(define centres (t* (randn (list clusters D) #:seed 10) 2.0))
(define maps (t* (randn (list clusters D D) #:seed 11) (/ 1.0 (sqrt D))))
(define cluster-of (map (lambda (t) (modulo t clusters)) (iota T)))   ; token t's cluster
(define cluster-mask (one-hot cluster-of clusters))                     ; [T 4]

(define (batch step)
  "Inputs [T D] (a centre plus noise) and targets [T D] for this step, on the
device (made on the CPU, so both devices see the same numbers)."
  (let* ((x (t+ (index-select centres 0 cluster-of)
                (t* (randn (list T D) #:seed (+ 100 step)) 0.5)))
         (y (fold (lambda (c acc)
                    (t+ acc (t* (to-dtype (narrow cluster-mask 1 c 1) 'f32)
                                (matmul x (tselect maps 0 c)))))
                  (zeros (list T D)) (iota clusters))))
    (values (tensor-to x device) (tensor-to y device))))

;;; One SGD step: forward, mean squared error, backward, then every live
;;; parameter (moe-parameters gives the layer's own tensors) moves against its
;;; gradient, under no-grad; finally the router closes the step.
(define (train-step! step)
  (call-with-values (lambda () (batch step))
    (lambda (x y)
      (moe-zero-grad! moe)
      (let* ((out (moe-forward moe x))
             (diff (t- out y))
             (loss (tmean (t* diff diff))))
        (backward! loss)
        (no-grad
         (for-each (lambda (p)
                     (let ((w (cdr p)))
                       (tensor-copy! w (t- w (t* learning-rate (tensor-grad w))))))
                   (moe-parameters moe)))
        (moe-step! moe)
        (tensor-item loss)))))

(define (show step loss)
  (let ((routing (moe-last-routing moe)))
    (format #t "step ~3d  loss ~8,4f  aux ~6,4f  tokens per expert ~a~%"
            step loss (or (assq-ref routing 'aux-total) 0)
            (assq-ref routing 'tokens-per-expert))))

(define losses
  (map (lambda (step)
         (let ((loss (train-step! step)))
           (when (or (= step 1) (zero? (modulo step 50))) (show step loss))
           loss))
       (iota steps 1)))

;;; Where each cluster goes: how many of its tokens pick each expert first.
(call-with-values (lambda () (batch 0))
  (lambda (x y)
    (no-grad (moe-forward moe x))
    (let ((first-choice (map car (tensor->list (assq-ref (moe-last-routing moe) 'experts)))))
      (format #t "top-1 expert of each cluster's tokens (counts per expert):~%")
      (for-each
       (lambda (c)
         (let ((mine (filter-map (lambda (e k) (and (= k c) e)) first-choice cluster-of)))
           (format #t "  cluster ~a: ~a~%" c
                   (map (lambda (e) (count (lambda (v) (= v e)) mine)) (iota 4)))))
       (iota clusters)))))

(define first-loss (car losses))
(define final-loss (/ (apply + (take-right losses 10)) 10))   ; the last 10 steps
(format #t "loss: first ~,4f, final (mean of the last 10 steps) ~,4f~%" first-loss final-loss)

;;; The example checks itself, so that `make check` notices if it rots.
(unless (< final-loss (* 0.1 first-loss))
  (format (current-error-port) "toy-regression: the loss did not fall tenfold (~a -> ~a)~%"
          first-loss final-loss)
  (exit 1))
