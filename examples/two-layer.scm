;;; two-layer.scm — a two-layer network, composed from moelab ops and trained
;;; for a few steps with plain gradient descent. Every gradient can be
;;; looked at along the way.
;;;
;;;   moelab examples/two-layer.scm            (or, in the build tree:
;;;   ./pre-inst-env guile examples/two-layer.scm)
;;;
;;; The task: XOR of two bits, which no single linear layer can learn.

(use-modules (moelab)
             (ice-9 format)     ; format with ~,4f
             (srfi srfi-1))     ; count

;;; The data: four inputs [4 2] and their classes.
(define inputs (tensor '((0 0) (0 1) (1 0) (1 1))))
(define labels '(0 1 1 0))

;;; The parameters: hidden layer of 16 units, then 2 class scores.
;;; #:requires-grad makes backward! fill (tensor-grad w).
(define w1 (t* (randn '(16 2) #:seed 1) 0.8))
(define b1 (zeros '(16)))
(define w2 (t* (randn '(2 16) #:seed 2) 0.5))
(define b2 (zeros '(2)))
(define params (list w1 b1 w2 b2))
(for-each requires-grad! params)

;;; The model: linear → relu → linear. (linear x w b) is x wᵀ + b.
(define (model x)
  (linear (relu (linear x w1 b1)) w2 b2))

(define (loss-of x)
  (cross-entropy (model x) labels))

;;; One step of gradient descent: clear old gradients, backpropagate, and
;;; move every parameter against its gradient. Updates happen under no-grad,
;;; so they are not recorded as part of the next step's graph.
(define (train-step! learning-rate)
  (for-each zero-grad! params)
  (let ((loss (loss-of inputs)))
    (backward! loss)
    (no-grad
     (for-each (lambda (p)
                 (tensor-copy! p (t- p (t* learning-rate (tensor-grad p)))))
               params))
    (tensor-item loss)))

(define (accuracy)
  (no-grad
   (let ((predicted (tensor->list (argmax (model inputs) #:dim 1))))
     (/ (count = predicted labels) (length labels)))))

(format #t "before training: loss ~,4f, accuracy ~a~%"
        (tensor-item (no-grad (loss-of inputs))) (accuracy))

;;; Look at the gradients of the first step.
(define first-loss (train-step! 0.3))
(format #t "step 1: loss ~,4f~%" first-loss)
(format #t "  gradient of b2: ~a~%" (tensor-grad b2))
(format #t "  gradient of w2 has shape ~a, largest |value| ~,4f~%"
        (tensor-shape (tensor-grad w2))
        (tensor-item (tmax (tabs (tensor-grad w2)))))

(define final-loss
  (let loop ((step 2) (loss first-loss))
    (when (zero? (modulo step 50))
      (format #t "step ~a: loss ~,4f~%" step loss))
    (if (> step 300) loss (loop (+ step 1) (train-step! 0.3)))))

(format #t "after training: loss ~,4f, accuracy ~a~%" final-loss (accuracy))
(format #t "class scores:~%~a~%" (no-grad (model inputs)))

;;; The example checks itself, so that `make check` notices if it rots.
(unless (and (< final-loss (* 0.2 first-loss)) (= (accuracy) 1))
  (format (current-error-port) "two-layer: training did not converge (loss ~a)~%" final-loss)
  (exit 1))
