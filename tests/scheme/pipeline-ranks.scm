;;; pipeline-ranks.scm — pipeline-step! on N stages, run by pipeline-mpi.sh on
;;; N threads (moelab FILE N) and under `mpirun -np N moelab FILE N`. The
;;; activations are large ([64 256] f64, 128 KiB: past MPI's eager limits,
;;; so a send waits for its receive) and 1f1b has a steady phase (M = 2N),
;;; so a schedule whose messages do not pair up would hang here. Each rank
;;; prints, for each schedule, whether its stage's gradient (and on the last
;;; stage the losses) equal one process running every micro-batch through
;;; the whole model. With a second argument `fail', stage 1 raises in its
;;; second forward instead.

(use-modules (moelab) (srfi srfi-1))

(define stages (string->number (cadr (command-line))))
(define fail? (and (> (length (command-line)) 2) (string=? (caddr (command-line)) "fail")))
(define m (* 2 stages))
(define rows 64)
(define width 256)

(define (stage-weight p)
  (requires-grad! (t* (randn (list width width) #:dtype 'f64 #:seed (+ 10 p)) (/ 1.5 (sqrt width)))))

(define (micro-batch-data i)
  (randn (list rows width) #:dtype 'f64 #:seed (+ 100 i)))

(define (stage-forward p x w)
  (let ((y (ttanh (matmul x w))))
    (if (= p (- stages 1)) (t/ (tsum (t* y y)) m) y)))

(define (reference)
  (let* ((ws (map stage-weight (iota stages)))
         (losses (map (lambda (i)
                        (let ((loss (fold (lambda (p w x) (stage-forward p x w)) (micro-batch-data i) (iota stages) ws)))
                          (backward! loss)
                          (tensor-item loss)))
                      (iota m))))
    (cons losses (map (lambda (w) (tensor->list (tensor-grad w))) ws))))

(define (close? a b)
  (cond ((and (number? a) (number? b)) (<= (abs (- a b)) (* 1e-12 (max 1 (abs a) (abs b)))))
        ((and (pair? a) (pair? b)) (and (= (length a) (length b)) (every close? a b)))
        (else (equal? a b))))

(define expected (reference))

(define (run schedule)
  (with-ranks stages #:mesh `((pp . ,stages))
    (lambda (rank)
      (let* ((p (mesh-coord 'pp))
             (w (stage-weight p))
             (result (pipeline-step!
                      #:schedule schedule #:micro-batches m
                      #:forward (lambda (i input)
                                  (when (and fail? (= p 1) (= i 1)) (error "stage 1 gives up"))
                                  (stage-forward p (or input (micro-batch-data i)) w))
                      #:activation (lambda (i) (values (list rows width) 'f64))))
             (losses (assq-ref result 'losses)))
        (format #f "rank ~a: ~a M=~a: gradient ~a~a" rank (symbol->string schedule) m
                (if (close? (tensor->list (tensor-grad w)) (list-ref expected (+ p 1)))
                    "same as one process" "DIFFERS")
                (cond ((not losses) "")
                      ((close? losses (car expected)) ", losses same as one process")
                      (else ", losses DIFFER")))))))

(for-each (lambda (schedule)
            ;; one write per whole line: mpirun forwards each process's
            ;; output in the pieces it was written in
            (for-each (lambda (line)
                        (when line
                          (display (string-append line "\n"))
                          (force-output)))
                      (run schedule)))
          '(gpipe 1f1b))
