;;; qb-dp-ranks.scm — quantile-balancing routing over a data-parallel group of 2
;;; ranks, run by qb-dp.sh on 2 threads (moelab FILE) and under
;;; `mpirun -np 2 moelab FILE`. Each rank routes its own micro-batch of each
;;; of two steps; router-step! averages the quantiles over the dp group. Each
;;; rank prints β after each step and whether it equals β of one router that
;;; sees both ranks' micro-batches in each step (2 micro-batches, no group).

(use-modules (moelab) (ice-9 format))

(define (x step rank) (randn '(8 4) #:seed (+ 100 (* 10 step) rank) #:dtype 'f64 #:requires-grad #t))

(define (qb-router)
  (make-router #:hidden 4 #:experts 4 #:top-k 1 #:pre-softmax? #t #:dtype 'f64 #:seed 11
               #:routing 'quantile-balancing #:qb-ema 0.25))

(define (betas-one-process)
  ;; one router, both ranks' micro-batches in each step
  (let ((r (qb-router)))
    (map (lambda (step)
           (router-forward r (x step 0))
           (router-forward r (x step 1))
           (router-step! r)
           (tensor->list (router-qb-beta r)))
         '(0 1))))

(define (close? a b) (every (lambda (u v) (< (abs (- u v)) 1e-6)) a b))
(define (every p a b) (or (null? a) (and (p (car a) (car b)) (every p (cdr a) (cdr b)))))

(with-ranks 2
  (lambda (rank)
    (let* ((r (qb-router))
           (_ (router-set-groups! r #:dp (world-group)))
           (betas (map (lambda (step)
                         (router-forward r (x step rank))
                         (router-step! r)
                         (tensor->list (router-qb-beta r)))
                       '(0 1)))
           (single (betas-one-process)))
      ;; The ranks take turns, a barrier apart: on threads they share one
      ;; output port (and format), under mpirun one terminal; one write per line.
      (for-each
       (lambda (turn)
         (when (= turn rank)
           (display (format #f "rank ~a: beta step 1 (~{~,6f~^ ~}) step 2 (~{~,6f~^ ~}) ~a~%" rank
                            (car betas) (cadr betas)
                            (if (and (close? (car betas) (car single)) (close? (cadr betas) (cadr single)))
                                "same as one process with 2 micro-batches"
                                (format #f "DIFFERENT from one process: ~a" single))))
           (force-output))
         (barrier))
       '(0 1)))))
