;;; threads.scm — moelab from several Guile threads at once: backward passes
;;; into one shared parameter sum exactly (compared with the same passes run
;;; one after another), the loop that used to crash the process, and tensors
;;; made on one thread and collected (finalized) on another.

(include "common.scm")
(use-modules (ice-9 threads))

(test-begin "threads")

(define n-threads 4)
(define n-passes 300)
(define rows 2)
(define in 16)
(define out 8)

;; Integer-valued input of pass P on thread K: every gradient is a sum of
;; small integers, exact in f64 whatever the order of additions.
(define (pass-input k p)
  (tensor (map (lambda (r)
                 (map (lambda (i) (- (modulo (+ (* 7 (+ (* r in) i)) (* 3 k) p) 5) 2))
                      (iota in)))
               (iota rows))
          #:dtype 'f64))

(define (run-passes! w k)
  (do ((p 0 (+ p 1))) ((= p n-passes))
    (backward! (tsum (matmul (pass-input k p) w)))))

(define (fresh-leaf)
  (randn (list in out) #:dtype 'f64 #:seed 3 #:requires-grad #t))

(define (in-threads thunk-of-k)
  "Run (thunk-of-k k) for k = 0 .. n-threads-1 on threads of their own; the
list of results, or of the errors they raised."
  (map join-thread
       (map (lambda (k)
              (call-with-new-thread
               (lambda ()
                 (catch #t
                   (lambda () (thunk-of-k k) 'ok)
                   (lambda (key . args) (list key args))))))
            (iota n-threads))))

(test-group "shared parameter"
  (let ((sequential (fresh-leaf))
        (shared (fresh-leaf)))
    (for-each (lambda (k) (run-passes! sequential k)) (iota n-threads))
    ;; by hand: d sum(x·w) / dw[i][o] = the sum of column i of every x
    (test-equal "sequential sum, entry [5 2], by hand"
      (exact->inexact
       (apply + (append-map (lambda (k)
                              (append-map (lambda (p)
                                            (map (lambda (r)
                                                   (- (modulo (+ (* 7 (+ (* r in) 5)) (* 3 k) p) 5) 2))
                                                 (iota rows)))
                                          (iota n-passes)))
                            (iota n-threads))))
      (tensor-ref (tensor-grad sequential) 5 2))
    (test-equal "4 threads x 300 passes: every thread finished"
      (make-list n-threads 'ok)
      (in-threads (lambda (k) (run-passes! shared k))))
    (test-equal "the shared gradient is exactly the sequential sum"
      (tensor->list (tensor-grad sequential))
      (tensor->list (tensor-grad shared)))))

(test-group "random inputs, two threads (used to crash)"
  (let ((w (randn '(64 64) #:requires-grad #t)))
    (test-equal "both threads finish"
      '(ok ok)
      (map join-thread
           (map (lambda (k)
                  (call-with-new-thread
                   (lambda ()
                     (do ((i 0 (+ i 1))) ((= i 300) 'ok)
                       (backward! (tsum (matmul (randn '(32 64)) w)))))))
                '(0 1))))
    (test-assert "the gradient is finite"
      (every (lambda (row) (every (lambda (v) (= v v)) row))
             (tensor->list (tensor-grad w))))))

(test-group "finalizers on another thread"
  ;; Graph tensors made on worker threads and dropped there are released by
  ;; Guile's finalizer thread while other threads keep computing.
  (let ((w (randn '(32 32) #:dtype 'f64 #:requires-grad #t)))
    (test-equal "threads that drop their graphs finish"
      (make-list n-threads 'ok)
      (in-threads (lambda (k)
                    (do ((i 0 (+ i 1))) ((= i 200))
                      (tsum (t* (matmul (randn '(8 32) #:dtype 'f64) w) 2))
                      (when (zero? (modulo i 50)) (gc))))))
    (gc)
    (test-assert "the parameter is intact" (tensor? w))
    (test-equal "no gradient was made (no backward)" #f (tensor-grad w))))

(test-end "threads")
(exit-with-test-status)
