;;; collectives.scm — every collective on N ranks, the same script in one
;;; process and under mpirun:
;;;
;;;   moelab examples/collectives.scm 4                 N ranks as threads
;;;   mpirun -np 4 moelab examples/collectives.scm 4    one process per rank
;;;
;;; Both print the same lines, one per rank (under mpirun each process prints
;;; its own rank's, so the order of the lines may differ). N defaults to 4;
;;; an even N gets a mesh of data-parallel (dp) by tensor-parallel (tp = 2)
;;; ranks, an odd N a data-parallel mesh only.

(use-modules (moelab)
             (srfi srfi-1))

(define n
  (let ((args (cdr (command-line))))
    (if (pair? args) (string->number (car args)) 4)))

(define mesh
  (if (even? n)
      `((dp . ,(quotient n 2)) (tp . 2))
      `((dp . ,n))))

(define (numbers t)
  ;; a tensor's values as exact integers where they are whole, for printing
  (map (lambda (v) (if (and (real? v) (integer? v)) (inexact->exact v) v))
       (tensor->list t)))

;;; What one rank does. Rank r contributes r+1 wherever it can, so every
;;; number below can be checked by hand.
(define (step rank)
  (let* ((mine (tensor (list (+ rank 1)) #:dtype 'f64))
         ;; sum over every rank: 1 + 2 + … + N
         (total (numbers (all-reduce! (tensor (list (+ rank 1)) #:dtype 'f64))))
         ;; the biggest over the tensor-parallel pair (or the rank alone)
         (tp-max (numbers (all-reduce! (tensor (list (+ rank 1))) #:group 'tp #:op 'max)))
         ;; the data-parallel group's contributions, in rank order
         (dp-all (numbers (all-gather mine #:group 'dp)))
         ;; rank r keeps block r of the sum of (rank+1)·(1 2 … N)
         (scattered (numbers (reduce-scatter (t* (arange 1 (+ n 1) #:dtype 'f64) (+ rank 1)))))
         ;; rank 0's (1) everywhere
         (from-root (numbers (broadcast! (tensor (list (+ rank 1))) #:root 0))))
    ;; uneven all-to-all: rank r sends (r + q) mod 3 rows to rank q (zero
    ;; rows too), row k of rank r holding 100r + k
    (let* ((splits (map (lambda (q) (modulo (+ rank q) 3)) (iota n)))
           (rows (tensor (map (lambda (k) (+ (* 100 rank) k)) (iota (apply + splits)))
                         #:dtype 'i64)))
      (call-with-values (lambda () (all-to-all rows splits))
        (lambda (received recv-splits)
          ;; a gradient through all-gather: the loss, summed over all ranks, is
          ;; Σ_q (q+1)·sum(all-gather(x)), so every x gets 1 + 2 + … + N
          (let ((x (tensor '(1 1) #:dtype 'f64 #:requires-grad #t)))
            (backward! (t* (tsum (all-gather x)) (+ rank 1)))
            (barrier)
            (format #f "rank ~a (dp ~a, tp ~a): total ~a, tp max ~a, dp gather ~a, reduce-scatter ~a, broadcast ~a, all-to-all ~a from ~a, gradient ~a, ~a"
                    rank (mesh-coord 'dp) (mesh-coord 'tp) total tp-max dp-all scattered from-root
                    (numbers received) recv-splits (numbers (tensor-grad x))
                    (point-to-point-and-values rank))))))))

;;; A ring of sends (rank r sends 10r to the next rank and receives from the
;;; previous one), Scheme values between ranks, and data-parallel gradients
;;; in buckets: two steps of two micro-batches, the gradient of sum(w·(r+1, 1))
;;; averaged over the dp group, its bucket started during the second step's
;;; backward. (Lines stay under 256 bytes: mpirun may split longer ones.)
(define (point-to-point-and-values rank)
  (send! (tensor (list (* 10 rank))) (modulo (+ rank 1) n) #:tag 1)
  (let* ((ring (numbers (recv-like '(1) 'f32 (modulo (- rank 1) n) #:tag 1)))
         (config (broadcast-value (and (= rank 0) '(0.5 "run"))))
         (dp-ranks (all-gather-values rank #:group 'dp))
         (w (zeros '(2) #:dtype 'f64 #:requires-grad #t))
         (sync (make-grad-sync (list w) #:group 'dp))
         (micro-batch (lambda ()
                        (backward! (tsum (t* w (tensor (list (+ rank 1) 1) #:dtype 'f64)))))))
    (for-each (lambda (step)
                (zero-grad! w)
                (micro-batch)
                (grad-sync-arm! sync)
                (micro-batch)
                (grad-sync-wait! sync))
              '(1 2))
    (let ((early (assq-ref (grad-sync-stats sync) 'buckets-early)))
      (grad-sync-free! sync)
      (format #f "ring ~a, value ~s, dp ranks ~a, dp grad ~a, ~a early"
              ring config dp-ranks (numbers (tensor-grad w)) early))))

;;; Under mpirun the list holds this process's line only (#f elsewhere).
;;; Each line goes out in one write, so that mpirun, which merges the
;;; processes' output, never splits it.
(for-each (lambda (line)
            (when line
              (display (string-append line "\n"))
              (force-output)))
          (with-ranks n #:mesh mesh step))
