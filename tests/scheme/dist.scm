;;; dist.scm — with-ranks on the threads backend, process groups, the mesh
;;; and every collective from Scheme: hand-checkable values on 1 to 4 ranks
;;; (rank r contributes r+1, …), uneven all-to-all with zero sends, a
;;; dp=2 cp=2 tp=2 mesh on 8 ranks, gradients through the differentiable
;;; collectives, and the failure paths (a rank that raises, a timeout, bad
;;; arguments). tests/scheme/dist-mpi.sh runs the same API under mpirun.

(include "common.scm")

(test-begin "dist")

;; MOELAB_COMM_TIMEOUT is read once, at the first use of the timeout: a
;; value that is not a timeout is an error until set-comm-timeout! replaces it.
(setenv "MOELAB_COMM_TIMEOUT" "-1")
(test-group "MOELAB_COMM_TIMEOUT that is not a timeout"
  (test-moelab-error "comm-timeout says so" "MOELAB_COMM_TIMEOUT='-1' is not a timeout" (comm-timeout))
  (test-moelab-error "so does a collective" "MOELAB_COMM_TIMEOUT='-1' is not a timeout"
    (with-ranks 2 (lambda (r) (barrier))))
  (test-assert "set-comm-timeout! replaces it (the previous setting: NaN)"
    (nan? (set-comm-timeout! 30))))
(unsetenv "MOELAB_COMM_TIMEOUT")

;; A stuck collective fails after this long instead of hanging the suite.
(define default-timeout (set-comm-timeout! 30))

(define (tri n) (/ (* n (+ n 1)) 2))   ; 1 + 2 + … + n

(define (all-equal? expected results)
  (every (lambda (r) (close? r expected 1e-6)) results))

;;; ---- outside with-ranks: one rank, identities ---------------------------------------

(test-group "outside with-ranks"
  (test-equal "current-rank" 0 (current-rank))
  (test-equal "world-size" 1 (world-size))
  (test-assert "world-group is a group" (group? (world-group)))
  (test-assert "is-a <group>" ((@ (oop goops) is-a?) (world-group) <group>))
  (test-assert "group? of a tensor" (not (group? (tensor '(1)))))
  (test-equal "trivial group: size, rank, name, ranks" '(1 0 "self" (0))
    (let ((g (world-group))) (list (group-size g) (group-rank g) (group-name g) (group-ranks g))))
  (test-equal "printed" "#<group self: rank 0 of 1>" (format #f "~a" (world-group)))
  (test-equal "mesh-group 'dp is this rank alone" '(1 0) 
    (let ((g (mesh-group 'dp))) (list (group-size g) (group-rank g))))
  (test-equal "mesh-group of several dims" 1 (group-size (mesh-group '(dp cp tp))))
  (test-equal "mesh-coord" '(0 0 0 0 0) (map mesh-coord '(tp cp ep dp pp)))
  (test-assert "not launched by mpirun" (not (mpi-launched?)))
  (let ((t (tensor '(1 2 3))))
    (test-eq "all-reduce! returns its tensor" t (all-reduce! t))
    (test-values "all-reduce! sum is the identity" '(1 2 3) t)
    (test-values "all-reduce! avg" '(1 2 3) (all-reduce! t #:op 'avg))
    (test-values "all-reduce" '(1 2 3) (all-reduce t #:op 'max)))
  (test-values "all-gather" '((1 2)) (all-gather (tensor '((1 2)))))
  (test-equal "all-gather of a 0-d tensor" '(1) (tensor-shape (all-gather (scalar-tensor 5))))
  (test-values "reduce-scatter" '(4 5) (reduce-scatter (tensor '(4 5))))
  (test-equal "all-to-all: rows and splits" '((7.0 8.0) (2))
    (call-with-values (lambda () (all-to-all (tensor '(7 8)) '(2)))
      (lambda (t splits) (list (tensor->list t) splits))))
  (test-values "broadcast!" '(1 2) (broadcast! (tensor '(1 2)) #:root 0))
  (test-assert "barrier" (begin (barrier) #t))
  (test-values "#:group given explicitly" '(3) (all-reduce! (tensor '(3)) #:group (world-group))))

;;; ---- with-ranks -----------------------------------------------------------------------

(test-group "with-ranks"
  (test-equal "results in rank order" '(0 1 4 9) (with-ranks 4 (lambda (rank) (* rank rank))))
  (test-equal "one rank" '(0) (with-ranks 1 (lambda (rank) rank)))
  (test-equal "current-rank and world-size inside" '((0 3) (1 3) (2 3))
    (with-ranks 3 (lambda (rank) (list (current-rank) (world-size)))))
  (test-equal "world-group inside" '((3 0 "world" (0 1 2)) (3 1 "world" (0 1 2)) (3 2 "world" (0 1 2)))
    (with-ranks 3 (lambda (rank)
                    (let ((g (world-group)))
                      (list (group-size g) (group-rank g) (group-name g) (group-ranks g))))))
  (test-equal "back to one rank afterwards" '(0 1) (list (current-rank) (world-size)))
  (test-equal "tensors come back for inspection" '((1.0) (2.0))
    (map tensor->list (with-ranks 2 (lambda (rank) (tensor (list (+ rank 1)))))))
  (test-equal "the caller's parameters" '(3 3)
    (parameterize ((tensor-print-limit 3))
      (with-ranks 2 (lambda (rank) (tensor-print-limit)))))
  (test-equal "the caller's output port" "rank 1"
    (with-output-to-string
      (lambda ()
        (with-ranks 2 (lambda (rank) (when (= rank 1) (display "rank 1")))))))
  (test-equal "the caller's grad mode" '((#f #f) (#t #t))
    (list (with-no-grad (lambda () (with-ranks 2 (lambda (rank) (grad-enabled?)))))
          (with-ranks 2 (lambda (rank) (grad-enabled?)))))
  (test-equal "nested with-ranks (threads inside a rank)" '((0 1) (10 11))
    (with-ranks 2 (lambda (r) (with-ranks 2 (lambda (s) (+ (* 10 r) s))))))
  (test-equal "#:mesh after the procedure" '(0 1)
    (with-ranks 2 (lambda (rank) (mesh-coord 'dp)) #:mesh '((dp . 2))))
  (test-equal "printed inside" "#<group world: rank 1 of 2 (threads)>"
    (cadr (with-ranks 2 (lambda (rank) (format #f "~a" (world-group))))))
  (test-assert "printed after the with-ranks ended"
    (string-contains (format #f "~a" (car (with-ranks 2 (lambda (rank) (world-group))))) "ended")))

;;; ---- every collective on 1, 2, 3 and 4 ranks ---------------------------------------------

(for-each
 (lambda (n)
   (test-group (format #f "~a rank~:p" n)
     ;; rank r contributes (r+1, 10(r+1))
     (define (mine rank dtype) (tensor (list (+ rank 1) (* 10 (+ rank 1))) #:dtype dtype))
     (test-assert "all-reduce! sum (f32)"
       (all-equal? (list (tri n) (* 10 (tri n)))
                   (with-ranks n (lambda (r) (tensor->list (all-reduce! (mine r 'f32)))))))
     (test-assert "all-reduce! sum (i64)"
       (all-equal? (list (tri n) (* 10 (tri n)))
                   (with-ranks n (lambda (r) (tensor->list (all-reduce! (mine r 'i64) #:op 'sum))))))
     (test-assert "all-reduce! avg (f64)"
       (all-equal? (list (/ (tri n) n) (/ (* 10 (tri n)) n))
                   (with-ranks n (lambda (r) (tensor->list (all-reduce! (mine r 'f64) #:op 'avg))))))
     (test-assert "all-reduce! max"
       (all-equal? (list n (* 10 n))
                   (with-ranks n (lambda (r) (tensor->list (all-reduce! (mine r 'f32) #:op 'max))))))
     (test-assert "all-reduce! min"
       (all-equal? '(1 10)
                   (with-ranks n (lambda (r) (tensor->list (all-reduce! (mine r 'f32) #:op 'min))))))
     (test-equal "all-reduce: a new tensor, the input untouched"
       (map (lambda (r) (list (list (tri n) (* 10 (tri n))) (list (+ r 1) (* 10 (+ r 1))))) (iota n))
       (with-ranks n (lambda (r)
                       (let* ((x (mine r 'i64)) (y (all-reduce x)))
                         (list (tensor->list y) (tensor->list x))))))
     (test-equal "all-gather: ranks in order"
       (make-list n (map (lambda (r) (exact->inexact (+ r 1))) (iota n)))
       (with-ranks n (lambda (r) (tensor->list (all-gather (tensor (list (+ r 1))))))))
     (test-equal "all-gather of rows"
       (make-list n (map (lambda (r) (list (+ r 1) (* 10 (+ r 1)))) (iota n)))
       (with-ranks n (lambda (r) (tensor->list (all-gather (tensor (list (list (+ r 1) (* 10 (+ r 1))))
                                                                   #:dtype 'i64))))))
     ;; rank r holds (r+1)(i+1) at i: block r of the sum is (r+1)·tri(n)
     (test-equal "reduce-scatter sum"
       (map (lambda (r) (list (* (+ r 1) (tri n)))) (iota n))
       (with-ranks n (lambda (r)
                       (tensor->list (reduce-scatter
                                      (tensor (map (lambda (i) (* (+ r 1) (+ i 1))) (iota n))
                                              #:dtype 'i64))))))
     (test-equal "reduce-scatter max"
       (map (lambda (r) (list (* n (+ r 1)))) (iota n))
       (with-ranks n (lambda (r)
                       (tensor->list (reduce-scatter
                                      (tensor (map (lambda (i) (* (+ r 1) (+ i 1))) (iota n))
                                              #:dtype 'i64)
                                      #:op 'max)))))
     ;; rank p sends 10p+q to rank q: rank q receives (q, 10+q, 20+q, …)
     (test-equal "all-to-all, even splits"
       (map (lambda (q) (list (map (lambda (p) (+ (* 10 p) q)) (iota n)) (make-list n 1))) (iota n))
       (with-ranks n (lambda (p)
                       (call-with-values
                           (lambda () (all-to-all (tensor (map (lambda (q) (+ (* 10 p) q)) (iota n))
                                                          #:dtype 'i64)
                                                  #f))
                         (lambda (t splits) (list (tensor->list t) splits))))))
     (test-equal "broadcast! from the last rank"
       (make-list n (list (exact->inexact n)))
       (with-ranks n (lambda (r) (tensor->list (broadcast! (tensor (list (+ r 1))) #:root (- n 1))))))
     (test-equal "broadcast! from rank 0 (i64)"
       (make-list n '(1 10))
       (with-ranks n (lambda (r) (tensor->list (broadcast! (mine r 'i64))))))
     (test-equal "barrier" (make-list n 'passed)
       (with-ranks n (lambda (r) (barrier) (barrier #:group (world-group)) 'passed)))))
 '(1 2 3 4))

(test-group "4 ranks, literal values"
  (test-equal "sum" '((10 100) (10 100) (10 100) (10 100))
    (with-ranks 4 (lambda (r) (tensor->list (all-reduce! (tensor (list (+ r 1) (* 10 (+ r 1))) #:dtype 'i64))))))
  (test-equal "avg" '((2.5 25.0) (2.5 25.0) (2.5 25.0) (2.5 25.0))
    (with-ranks 4 (lambda (r) (tensor->list (all-reduce! (tensor (list (+ r 1) (* 10 (+ r 1))) #:dtype 'f64)
                                                         #:op 'avg)))))
  (test-equal "all-gather" '(1.0 2.0 3.0 4.0)
    (caddr (with-ranks 4 (lambda (r) (tensor->list (all-gather (tensor (list (+ r 1)))))))))
  (test-equal "reduce-scatter" '((10) (20) (30) (40))
    (with-ranks 4 (lambda (r) (tensor->list (reduce-scatter (tensor (map (lambda (i) (* (+ r 1) (+ i 1))) (iota 4))
                                                                    #:dtype 'i64)))))))

(test-group "zero-size tensors"
  (test-equal "all-reduce! of nothing" '(() ())
    (with-ranks 2 (lambda (r) (tensor->list (all-reduce! (zeros '(0)))))))
  (test-equal "all-gather of [0 3]" '((0 3) (0 3))
    (with-ranks 2 (lambda (r) (tensor-shape (all-gather (zeros '(0 3))))))))

;;; ---- uneven all-to-all -------------------------------------------------------------------

;; Rows (v, -v) for the values VS: a [k 2] tensor, [0 2] when VS is empty.
(define (rows vs)
  (if (null? vs)
      (zeros '(0 2) #:dtype 'f64)
      (tensor (map (lambda (v) (list v (- v))) vs) #:dtype 'f64)))

(define (first-column t)
  (map (lambda (row) (inexact->exact (car row))) (tensor->list t)))

(test-group "uneven all-to-all"
  ;; rank 0 sends (0) to itself and (1 2) to rank 1; rank 1 sends nothing to
  ;; rank 0 and (10) to itself
  (test-equal "2 ranks" '(((0) (1 0)) ((1 2 10) (2 1)))
    (with-ranks 2 (lambda (r)
                    (call-with-values
                        (lambda () (all-to-all (tensor (if (= r 0) '(0 1 2) '(10)) #:dtype 'i64)
                                               (if (= r 0) '(1 2) '(0 1))))
                      (lambda (t splits) (list (tensor->list t) splits))))))
  ;; send splits (row counts to ranks 0 1 2):
  ;;   rank 0: (2 0 1) of rows 0 1 2;  rank 1: (0 0 0), no rows at all;
  ;;   rank 2: (1 3 0) of rows 20 21 22 23
  ;; so rank 0 gets 0 1 | - | 20, rank 1 gets - | - | 21 22 23, rank 2 gets 2 | - | -
  (test-equal "3 ranks with zero sends, rows of 2"
    '(((0 1 20) (2 0 1) (2))
      ((21 22 23) (0 0 3) (2))
      ((2) (1 0 0) (2)))
    (with-ranks 3 (lambda (r)
                    (call-with-values
                        (lambda ()
                          (all-to-all (rows (list-ref '((0 1 2) () (20 21 22 23)) r))
                                      (list-ref '((2 0 1) (0 0 0) (1 3 0)) r)))
                      (lambda (t splits)
                        (list (first-column t) splits (cdr (tensor-shape t))))))))
  (test-equal "a rank that receives nothing" '((0 2) (0 0))
    (cadr (with-ranks 2 (lambda (r)
                          (call-with-values
                              (lambda () (all-to-all (rows (if (= r 0) '(1 2) '()))
                                                     (if (= r 0) '(2 0) '(0 0))
                                                     #:group (world-group)))
                            (lambda (t splits) (list (tensor-shape t) splits))))))))

;;; ---- mesh specs (the core's parser) -------------------------------------------------------------

(test-group "parse-mesh"
  (test-equal "commas, in the spec's order" '((pp . 2) (dp . 2)) (parse-mesh "pp=2,dp=2"))
  (test-equal "spaces and NAME:SIZE" '((dp . 2) (cp . 2) (tp . 2)) (parse-mesh " dp:2 cp=2, tp=2 "))
  (test-equal "any size, whatever the world" '((ep . 3)) (parse-mesh "ep=3"))
  (test-equal "the empty mesh" '() (parse-mesh ""))
  (test-equal "what with-ranks takes" '(0 1 0 1)
    (with-ranks 4 #:mesh (parse-mesh "tp=2,dp=2") (lambda (rank) (mesh-coord 'tp))))
  (test-moelab-error "text that does not parse is named" "cannot parse 'dp=2,,ep'" (parse-mesh "dp=2,,ep"))
  (test-moelab-error "an unknown dimension is named" "unknown dimension 'xp'" (parse-mesh "xp=2"))
  (test-moelab-error "a dimension twice" "dimension pp given twice" (parse-mesh "pp=2 pp=2"))
  (test-moelab-error "a size of 0" "dimension dp has size 0" (parse-mesh "dp=0"))
  (test-moelab-error "the caller is named" "moelab train --mesh"
    (parse-mesh "dp" #:who "moelab train --mesh"))
  (test-equal "the error is an arg error" 'arg (moelab-error-status (lambda () (parse-mesh "dp=x"))))
  (test-wrong-type "a symbol is not a spec" (parse-mesh 'dp=2)))

;;; ---- the mesh: dp=2 cp=2 tp=2 on 8 ranks -------------------------------------------------------
;;; world rank = tp + 2 cp + 4 dp

(define mesh '((dp . 2) (cp . 2) (tp . 2)))

(define (on-mesh proc) (with-ranks 8 #:mesh mesh proc))

(test-group "mesh dp=2 cp=2 tp=2"
  (test-equal "coordinates (tp cp dp ep pp)"
    '((0 0 0 0 0) (1 0 0 0 0) (0 1 0 0 0) (1 1 0 0 0) (0 0 1 0 0) (1 0 1 0 0) (0 1 1 0 0) (1 1 1 0 0))
    (on-mesh (lambda (r) (map mesh-coord '(tp cp dp ep pp)))))
  (test-equal "all-reduce over tp sums pairs" '(1 1 5 5 9 9 13 13)
    (on-mesh (lambda (r) (tensor-item (all-reduce! (tensor r #:dtype 'i64) #:group (mesh-group 'tp))))))
  (test-equal "#:group 'tp is (mesh-group 'tp)" '(1 1 5 5 9 9 13 13)
    (on-mesh (lambda (r) (tensor-item (all-reduce! (tensor r #:dtype 'i64) #:group 'tp)))))
  (test-equal "all-reduce over dp" '(4 6 8 10 4 6 8 10)
    (on-mesh (lambda (r) (tensor-item (all-reduce! (tensor r #:dtype 'i64) #:group 'dp)))))
  (test-equal "all-reduce over (dp cp)" '(12 16 12 16 12 16 12 16)
    (on-mesh (lambda (r) (tensor-item (all-reduce! (tensor r #:dtype 'i64) #:group '(dp cp))))))
  (test-equal "all-reduce over (tp cp)" '(6 6 6 6 22 22 22 22)
    (on-mesh (lambda (r) (tensor-item (all-reduce! (tensor r #:dtype 'i64) #:group '(tp cp))))))
  (test-equal "all-reduce over the world" (make-list 8 28)
    (on-mesh (lambda (r) (tensor-item (all-reduce! (tensor r #:dtype 'i64) #:group '(dp cp tp))))))
  (test-equal "all-gather over cp" '((0 2) (1 3) (0 2) (1 3) (4 6) (5 7) (4 6) (5 7))
    (on-mesh (lambda (r) (tensor->list (all-gather (tensor (list r) #:dtype 'i64) #:group 'cp)))))
  (test-equal "rank 5: sizes of tp, (dp cp), world, ep, ()" '(2 4 8 1 1)
    (list-ref (on-mesh (lambda (r) (map (lambda (d) (group-size (mesh-group d)))
                                        '(tp (dp cp) (dp cp tp) ep ()))))
              5))
  (test-equal "rank 5 in (dp cp): members, its rank, name" '((1 3 5 7) 2 "dp cp")
    (list-ref (on-mesh (lambda (r) (let ((g (mesh-group '(dp cp))))
                                     (list (group-ranks g) (group-rank g) (group-name g)))))
              5))
  (test-equal "tp groups" '((0 1) (0 1) (2 3) (2 3) (4 5) (4 5) (6 7) (6 7))
    (on-mesh (lambda (r) (group-ranks (mesh-group 'tp)))))
  (test-equal "dp groups stride by 4" '((0 4) (1 5) (2 6) (3 7) (0 4) (1 5) (2 6) (3 7))
    (on-mesh (lambda (r) (group-ranks (mesh-group 'dp)))))
  ;; tp groups {0 1 2} and {3 4 5}: 1+1+1 and 3+4+5
  (test-equal "tp of size 3" '(3 3 3 12 12 12)
    (with-ranks 6 #:mesh '((dp . 2) (tp . 3))
      (lambda (r) (tensor-item (all-reduce! (tensor (if (< r 3) 1 (+ r 0)) #:dtype 'i64)
                                            #:group 'tp #:op 'sum))))))

;;; ---- autograd through collectives ----------------------------------------------------------

(test-group "autograd"
  ;; x_r = (r+1, 2(r+1)); y = all-gather(x) = (1 2 2 4 3 6 4 8) on every rank.
  ;; The loss is the sum over ranks of sum(y) on each: the gradient of x_r is
  ;; the reduce-scatter of the ones of 4 ranks, 4 everywhere.
  (test-equal "all-gather: values and gradient of the summed loss"
    (make-list 4 '((1.0 2.0 2.0 4.0 3.0 6.0 4.0 8.0) (4.0 4.0)))
    (with-ranks 4 (lambda (r)
                    (let* ((x (tensor (list (+ r 1) (* 2 (+ r 1))) #:dtype 'f64 #:requires-grad #t))
                           (y (all-gather x)))
                      (backward! (tsum y))
                      (list (tensor->list y) (tensor->list (tensor-grad x)))))))
  ;; rank q weights y by (q+1)·(1 2 … 8): the gradient of x_r is
  ;; (1+2+3+4)·(2r+1, 2r+2)
  (test-equal "all-gather: weighted losses" '((10.0 20.0) (30.0 40.0) (50.0 60.0) (70.0 80.0))
    (with-ranks 4 (lambda (q)
                    (let* ((x (tensor (list (+ q 1) (* 2 (+ q 1))) #:dtype 'f64 #:requires-grad #t))
                           (w (t* (arange 1 9 #:dtype 'f64) (+ q 1))))
                      (backward! (tsum (t* (all-gather x) w)))
                      (tensor->list (tensor-grad x))))))
  (test-equal "all-gather records a node" "all-gather"
    (car (with-ranks 1 (lambda (r) (tensor-grad-fn (all-gather (tensor '(1) #:requires-grad #t)))))))
  ;; y = Σ_r x_r on every rank; loss_q = (q+1)·sum(y): dx_r = 1+2+3+4
  (test-equal "all-reduce sum" (make-list 4 '(10.0 10.0))
    (with-ranks 4 (lambda (q)
                    (let ((x (tensor '(1 2) #:dtype 'f64 #:requires-grad #t)))
                      (backward! (tsum (t* (all-reduce x) (+ q 1))))
                      (tensor->list (tensor-grad x))))))
  ;; loss_q = (q+1)·y_q with y_q = block q of the sum: dx_r = (1 2 3 4) on every rank
  (test-equal "reduce-scatter" (make-list 4 '(1.0 2.0 3.0 4.0))
    (with-ranks 4 (lambda (q)
                    (let ((x (tensor '(5 6 7 8) #:dtype 'f64 #:requires-grad #t)))
                      (backward! (tsum (t* (reduce-scatter x) (+ q 1))))
                      (tensor->list (tensor-grad x))))))
  ;; rank 0 sends (a) to itself and (b c) to rank 1; rank 1 sends (d) to itself.
  ;; y0 = (a), y1 = (b c d); loss0 = 5·y0, loss1 = (6 7 8)·y1
  (test-equal "uneven all-to-all sends the gradients back" '((5.0 6.0 7.0) (8.0))
    (with-ranks 2 (lambda (r)
                    (let ((x (tensor (if (= r 0) '(1 2 3) '(4)) #:dtype 'f64 #:requires-grad #t)))
                      (call-with-values (lambda () (all-to-all x (if (= r 0) '(1 2) '(0 1))))
                        (lambda (y splits)
                          (backward! (tsum (t* y (tensor (if (= r 0) '(5) '(6 7 8)) #:dtype 'f64))))
                          (tensor->list (tensor-grad x)))))))))

;;; ---- failures -----------------------------------------------------------------------------

(define (with-ranks-error thunk)
  "The message of the moelab-error with-ranks raises (and its status), or
what happened instead."
  (catch 'moelab-error
    (lambda () (list 'returned (thunk)))
    (lambda (key subr message args rest)
      (list subr (apply format #f message args) (car rest)))))

(define (elapsed thunk)
  (let ((start (get-internal-real-time)))
    (thunk)
    (/ (- (get-internal-real-time) start) internal-time-units-per-second)))

(test-group "a rank that raises"
  (let* ((result #f)
         (seconds (elapsed
                   (lambda ()
                     (set! result
                       (with-ranks-error
                        (lambda ()
                          (with-ranks 4 (lambda (rank)
                                          (when (= rank 2) (error "boom on rank" rank))
                                          (all-reduce! (tensor '(1 2)))
                                          (barrier)))))))))
         (message (cadr result)))
    (test-equal "with-ranks raises moelab-error" "with-ranks" (car result))
    (test-assert "naming the failed rank" (string-contains message "rank 2 failed"))
    (test-assert "with the original message" (string-contains message "boom on rank 2"))
    (test-assert "and the ranks that failed after it" (string-contains message "ranks 0, 1, 3 failed too"))
    (test-equal "status" 'state (caddr result))
    (test-assert "no hang: the others fail at once" (< seconds 10)))
  (test-equal "peers see the failed rank in their collective"
    '(#t #t #f)
    (let ((seen (make-vector 3 #f)))
      (catch 'moelab-error
        (lambda ()
          (with-ranks 3 (lambda (rank)
                          (when (= rank 2) (error "gone"))
                          (catch 'moelab-error
                            (lambda () (barrier))
                            (lambda (key subr message args rest)
                              (vector-set! seen rank
                                           (and (string=? subr "barrier")
                                                (string-contains message "rank 2 failed")
                                                (string-contains message "gone")
                                                #t))
                              (error "stopped"))))))
        (lambda _ #f))
      (vector->list seen)))
  (test-equal "a moelab-error in a rank keeps its status" 'shape
    (caddr (with-ranks-error
            (lambda ()
              (with-ranks 2 (lambda (rank)
                              (if (= rank 1) (matmul (zeros '(2 3)) (zeros '(4 5))) (barrier))))))))
  (test-assert "its message names the procedure"
    (string-contains (cadr (with-ranks-error
                            (lambda () (with-ranks 2 (lambda (rank) (when (= rank 1) (matmul (zeros '(2 3)) (zeros '(4 5))))
                                                     (barrier))))))
                     "rank 1 failed: In procedure matmul"))
  (test-assert "a rank that returns while the others wait"
    (string-contains (cadr (with-ranks-error
                            (lambda () (with-ranks 2 (lambda (rank) (when (= rank 0) (barrier)))))))
                     "returned without entering barrier"))
  (test-assert "collectives out of order"
    (string-contains (cadr (with-ranks-error
                            (lambda () (with-ranks 2 (lambda (rank)
                                                       (if (= rank 0)
                                                           (barrier)
                                                           (all-reduce! (tensor '(1)))))))))
                     "out of order"))
  (test-assert "sizes that differ across ranks"
    (string-contains (cadr (with-ranks-error
                            (lambda () (with-ranks 2 (lambda (rank) (all-gather (zeros (list (+ rank 1)))))))))
                     "size mismatch"))
  (test-equal "work goes on afterwards" '(3.0 3.0)
    (with-ranks 2 (lambda (r) (tensor-item (all-reduce! (tensor (+ r 1))))))))

(test-group "timeout"
  (let* ((previous (set-comm-timeout! 0.2))
         (result #f)
         (seconds (elapsed
                   (lambda ()
                     (set! result
                       (with-ranks-error
                        (lambda ()
                          (with-ranks 2 (lambda (rank)
                                          (when (= rank 1) (usleep 1000000))
                                          (barrier))))))))))
    (test-equal "set-comm-timeout! returns the previous setting" 30.0 previous)
    (test-equal "comm-timeout" 0.2 (comm-timeout))
    (set-comm-timeout! previous)
    (test-assert "timed out" (string-contains (cadr result) "timed out after 0.2 s"))
    (test-assert "naming the rank waited for" (string-contains (cadr result) "waiting for rank 1"))
    (test-assert "well before the late rank would have arrived twice" (< seconds 10))
    (test-equal "restored" 30.0 (comm-timeout)))
  (test-moelab-error "a negative timeout" "-1 is not a timeout: give a positive number of seconds, or #f"
    (set-comm-timeout! -1))
  (test-moelab-error "a timeout of 0" "0 is not a timeout" (set-comm-timeout! 0))
  (test-moelab-error "NaN" "+nan.0 is not a timeout" (set-comm-timeout! +nan.0))
  (test-wrong-type "a symbol" (set-comm-timeout! 'forever))
  (test-equal "the setting is unchanged" 30.0 (comm-timeout))
  (test-equal "#f: forever (the previous setting comes back)" 30.0 (set-comm-timeout! #f))
  (test-equal "comm-timeout: #f" #f (comm-timeout))
  (test-equal "+inf.0 is forever too" #f (begin (set-comm-timeout! +inf.0) (comm-timeout)))
  (test-equal "set-comm-timeout! returns #f after forever" #f (set-comm-timeout! 30))
  (test-equal "rational seconds" 0.5 (begin (set-comm-timeout! 1/2) (comm-timeout)))
  (set-comm-timeout! 30))

;;; ---- point to point ------------------------------------------------------------------

(test-group "send! and recv!"
  (test-equal "recv-like" '(#f (1.0 2.0 3.0))
    (with-ranks 2
      (lambda (rank)
        (if (= rank 0)
            (begin (send! (tensor '(1 2 3)) 1 #:tag 7) #f)
            (tensor->list (recv-like '(3) 'f32 0 #:tag 7))))))
  (test-equal "a ring: send first, then receive (the threads backend does not wait)"
    '((20.0) (0.0) (10.0))
    (with-ranks 3
      (lambda (rank)
        (send! (tensor (list (* 10 rank))) (modulo (+ rank 1) 3))
        (tensor->list (recv! (zeros '(1)) (modulo (- rank 1) 3))))))
  (test-equal "recv! fills its tensor and returns it; send! returns its tensor" '(#t #t (5 6))
    (cadr (with-ranks 2
            (lambda (rank)
              (let ((t (zeros '(2) #:dtype 'i64)))
                (if (= rank 0)
                    (begin (tensor-copy! t (tensor '(5 6) #:dtype 'i64)) (eq? t (send! t 1)))
                    (list (eq? t (recv! t 0)) #t (tensor->list t))))))))
  (test-equal "tags match sends to receives, whatever the order" '((2.0) (1.0))
    (cadr (with-ranks 2
            (lambda (rank)
              (if (= rank 0)
                  (begin (send! (tensor '(1)) 1 #:tag 1) (send! (tensor '(2)) 1 #:tag 2))
                  (let* ((b (recv-like '(1) 'f32 0 #:tag 2))
                         (a (recv-like '(1) 'f32 0 #:tag 1)))
                    (map tensor->list (list b a))))))))
  (test-equal "over a mesh dimension: stage 0 to stage 1 along pp" '(#f #f 0 1)
    (with-ranks 4 #:mesh '((pp . 2) (dp . 2))
      (lambda (rank)
        (if (= (mesh-coord 'pp) 0)
            (begin (send! (tensor (list rank) #:dtype 'i32) 1 #:group 'pp) #f)
            (tensor-item (recv-like '(1) 'i32 0 #:group 'pp))))))
  (test-moelab-error "a receive of the wrong size" "size mismatch"
    (with-ranks 2 (lambda (rank)
                    (if (= rank 0)
                        (send! (zeros '(3)) 1)
                        (recv! (zeros '(2)) 0)))))
  (test-moelab-error "a send to itself" "cannot send to itself" (send! (zeros '(1)) 0))
  (test-moelab-error "a rank out of the group" "peer 3 is not a rank of the group (size 2)"
    (with-ranks 2 (lambda (rank) (recv! (zeros '(1)) 3))))
  (test-moelab-error "a negative tag" "tag -1 is negative"
    (with-ranks 2 (lambda (rank) (send! (zeros '(1)) (- 1 rank) #:tag -1))))
  (test-moelab-error "recv! refuses a tensor that requires grad" "recv!"
    (with-ranks 2 (lambda (rank)
                    (if (= rank 0)
                        (send! (zeros '(1)) 1)
                        (recv! (zeros '(1) #:requires-grad #t) 0)))))
  (let ((previous (set-comm-timeout! 0.2)))
    (test-moelab-error "a receive nobody answers times out" "timed out after 0.2 s"
      (with-ranks 2 (lambda (rank)
                      (if (= rank 1) (recv! (zeros '(1)) 0 #:tag 3) (usleep 1000000)))))
    (set-comm-timeout! previous))
  (test-moelab-error "a receive from a rank that returned" "rank 0 returned without sending tag 3"
    (with-ranks 2 (lambda (rank) (when (= rank 1) (recv! (zeros '(1)) 0 #:tag 3))))))

;;; ---- Scheme values between ranks ------------------------------------------------------

(define sample-datum
  '((lr . 3e-4) (steps . 100) (name . "a \"quoted\"\nline, ünïcode") #(1 2 #\x) #vu8(0 255)
    #:keyword sym 0.1 -7/3 #t #f ()))

(test-group "broadcast-value and all-gather-values"
  (test-equal "root 0's value everywhere"
    (make-list 3 sample-datum)
    (with-ranks 3 (lambda (rank) (broadcast-value (and (= rank 0) sample-datum)))))
  (test-equal "another root; the others' values are ignored" '(2 2 2)
    (with-ranks 3 (lambda (rank) (broadcast-value rank #:root 2))))
  (test-equal "over a mesh dimension" '((a 0) (a 1) (a 0) (a 1))
    (with-ranks 4 #:mesh '((dp . 2) (tp . 2))
      (lambda (rank) (broadcast-value (list 'a rank) #:group 'dp))))
  (test-equal "outside with-ranks: the value itself" sample-datum (broadcast-value sample-datum))
  (test-equal "all-gather-values: every rank's value, in rank order"
    (make-list 3 '("" "a" "aa"))
    (with-ranks 3 (lambda (rank) (all-gather-values (make-string rank #\a)))))
  (test-equal "values of any shape and length" 
    (make-list 2 (list sample-datum 42))
    (with-ranks 2 (lambda (rank) (all-gather-values (if (= rank 0) sample-datum 42)))))
  (test-equal "over a group, in its rank order" '((0 2) (1 3) (0 2) (1 3))
    (with-ranks 4 #:mesh '((dp . 2) (tp . 2))
      (lambda (rank) (all-gather-values rank #:group 'dp))))
  (test-equal "outside with-ranks: a list of one" '((x 1)) (all-gather-values '(x 1)))
  (test-moelab-error "a procedure cannot travel: every rank says so"
    "broadcast-value: the value of rank 0: #<procedure"
    (with-ranks 2 (lambda (rank) (broadcast-value (lambda () rank)))))
  (test-equal "the other ranks raise too" '(value value)
    (map (lambda (r) (and (pair? r) (car r)))
         (with-ranks 2 (lambda (rank)
                         (catch 'moelab-error
                           (lambda () (broadcast-value (current-output-port)) 'no-error)
                           (lambda (key subr message args rest) rest))))))
  (test-moelab-error "a tensor cannot travel either, named by its rank"
    "all-gather-values: the value of rank 2: #<tensor"
    (with-ranks 3 (lambda (rank) (all-gather-values (if (= rank 2) (tensor '(1)) rank)))))
  (test-moelab-error "one rank alone checks the value too" "does not read back as itself"
    (broadcast-value (make-hash-table)))
  (test-equal "work goes on afterwards" '(1 1) (with-ranks 2 (lambda (r) (broadcast-value 1)))))

;;; ---- gradient reduction in buckets ------------------------------------------------------

;; Rank R's loss for micro-batch M: sum(A*w1) + sum(B*w2) + sum(C*w2) and,
;; except on rank 1, sum(D*w3), with A B C D small dyadic coefficients: the
;; gradients are sums of them, exact in f64.
(define (coefs base n rank m) (map (lambda (j) (+ base (* 0.5 j) (* 0.25 rank) (* 2 m))) (iota n)))

(define (micro-batch-loss w1 w2 w3 rank m)
  (let* ((term (lambda (w c) (tsum (t* w (tensor c #:dtype 'f64)))))
         (loss (t+ (term w1 (coefs 1 2 rank m))
                   (t+ (term w2 (coefs 2 3 rank m)) (term w2 (coefs 10 3 rank m))))))
    (if (= rank 1) loss (t+ loss (term w3 (coefs 3 1 rank m))))))

(define (expected-grads n divisor)
  ;; the sums over ranks and the two micro-batches, divided
  (define (total f) (/ (apply + (append-map (lambda (r) (append-map (lambda (m) (f r m)) '(0 1))) (iota n)))
                       divisor))
  (list (map (lambda (j) (total (lambda (r m) (list (list-ref (coefs 1 2 r m) j))))) (iota 2))
        (map (lambda (j) (total (lambda (r m) (list (list-ref (coefs 2 3 r m) j)
                                                    (list-ref (coefs 10 3 r m) j)))))
             (iota 3))
        (list (total (lambda (r m) (if (= r 1) '() (coefs 3 1 r m)))))))

(define (grad-sync-run n divisor steps)
  ;; per rank: the gradients after each step and the stats
  (with-ranks n
    (lambda (rank)
      (let* ((w1 (zeros '(2) #:dtype 'f64 #:requires-grad #t))
             (w2 (zeros '(3) #:dtype 'f64 #:requires-grad #t))
             (w3 (zeros '(1) #:dtype 'f64 #:requires-grad #t))
             (sync (make-grad-sync `(("w1" . ,w1) ("w2" . ,w2) ("w3" . ,w3))
                                   #:divisor divisor #:bucket-bytes 8))
             (grads (map (lambda (step)
                           (for-each zero-grad! (list w1 w2 w3))
                           (backward! (micro-batch-loss w1 w2 w3 rank 0))
                           (grad-sync-arm! sync)
                           (backward! (micro-batch-loss w1 w2 w3 rank 1))
                           (grad-sync-wait! sync)
                           (map (lambda (w) (tensor->list (tensor-grad w))) (list w1 w2 w3)))
                         (iota steps))))
        (let ((result (list grads (grad-sync-stats sync) (grad-sync-buckets sync)
                            (format #f "~a" sync))))
          (grad-sync-free! sync)
          result)))))

(test-group "make-grad-sync"
  (let ((runs (grad-sync-run 2 #f 2)))
    (test-equal "gradients after each step: sum over the ranks / 2, exactly"
      (make-list 2 (make-list 2 (expected-grads 2 2)))
      (map car runs))
    (test-equal "buckets of 8 bytes: w3, w2, w1 (last first)" '((f64 8 (2)) (f64 24 (1)) (f64 16 (0)))
      (list-ref (car runs) 2))
    (test-equal "step 1 starts nothing during backward, step 2 all 3 buckets" '(2 6 3 0 96)
      (map (lambda (key) (assq-ref (cadar runs) key)) '(steps buckets buckets-early buckets-stale bytes)))
    (test-assert "times" (let ((s (cadar runs)))
                           (and (>= (assq-ref s 'comm-seconds) (assq-ref s 'wait-seconds) 0))))
    (test-equal "printed" "#<grad-sync 3 parameters over world: rank 1 of 2>" (list-ref (cadr runs) 3)))
  (test-equal "4 ranks and a divisor of 8" (make-list 4 (list (expected-grads 4 8)))
    (map car (grad-sync-run 4 8 1)))
  (test-equal "one rank: the gradients divided" (list (list (expected-grads 1 1)))
    (map car (grad-sync-run 1 #f 1)))
  (test-equal "over mesh dimensions: sums within each dp group, divided by its size"
    ;; world rank = ep + 2*dp: the dp groups are {0 2} and {1 3}
    '((1.0) (2.0) (1.0) (2.0))
    (with-ranks 4 #:mesh '((dp . 2) (ep . 2))
      (lambda (rank)
        (let* ((w (zeros '(1) #:requires-grad #t))
               (sync (make-grad-sync (list w) #:group 'dp)))
          (grad-sync-arm! sync)
          (backward! (tsum (t* w (tensor (list rank)))))
          (grad-sync-wait! sync)
          (grad-sync-free! sync)
          (tensor->list (tensor-grad w))))))
  (let* ((w (zeros '(2) #:requires-grad #t))
         (s (make-grad-sync (list w))))
    (test-assert "grad-sync?" (and (grad-sync? s) (not (grad-sync? w))))
    (test-moelab-error "wait before arm" "not armed: call grad-sync-arm!" (grad-sync-wait! s))
    (test-equal "the error names the procedure" "grad-sync-wait!"
      (catch 'moelab-error (lambda () (grad-sync-wait! s)) (lambda (k subr . _) subr)))
    (grad-sync-arm! s)
    (grad-sync-wait! s)
    (test-equal "no gradient anywhere: zeros" '(0.0 0.0) (tensor->list (tensor-grad w)))
    (grad-sync-free! s)
    (grad-sync-free! s)
    (test-moelab-error "freed" "has been freed" (grad-sync-arm! s))
    (backward! (tsum w))
    (test-equal "no hook after free" '(1.0 1.0) (tensor->list (tensor-grad w))))
  (test-moelab-error "a parameter that does not require grad"
    "parameter 1 (f32 [3]) does not require grad"
    (make-grad-sync (list (zeros '(2) #:requires-grad #t) (zeros '(3)))))
  (test-moelab-error "a parameter twice" "parameter 1 (f32 [2]) is parameter 0 again"
    (let ((w (zeros '(2) #:requires-grad #t))) (make-grad-sync (list w w))))
  (test-moelab-error "no parameters" "no parameters" (make-grad-sync '()))
  (test-moelab-error "a divisor of 0" "divisor 0 is not a positive finite number"
    (make-grad-sync (list (zeros '(2) #:requires-grad #t)) #:divisor 0))
  (test-moelab-error "a negative bucket size" "bucket size -1 bytes is negative"
    (make-grad-sync (list (zeros '(2) #:requires-grad #t)) #:bucket-bytes -1))
  (test-wrong-type "not a list" (make-grad-sync (zeros '(2) #:requires-grad #t)))
  (test-wrong-type "not tensors" (make-grad-sync '(1 2)))
  (test-moelab-error "a freed tensor" "freed"
    (let ((w (zeros '(1) #:requires-grad #t)))
      (tensor-free! w)
      (make-grad-sync (list (zeros '(1) #:requires-grad #t) w))))
  (test-wrong-type "not a grad sync" (grad-sync-arm! 'sync))
  (test-moelab-error "a grad sync after its with-ranks" "can no longer be used"
    (grad-sync-arm! (car (with-ranks 2 (lambda (rank)
                                         (make-grad-sync (list (zeros '(1) #:requires-grad #t)))))))))

(test-group "wrong arguments"
  (test-moelab-error "bad op symbol" "unknown reduce op 'prod'" (all-reduce! (tensor '(1)) #:op 'prod))
  (test-equal "bad op names the procedure" "all-reduce"
    (catch 'moelab-error (lambda () (all-reduce (tensor '(1)) #:op 'mean)) (lambda (k subr . _) subr)))
  (test-moelab-error "bad op on a rank" "unknown reduce op"
    (with-ranks 2 (lambda (r) (reduce-scatter (zeros '(2)) #:op 'median))))
  (test-wrong-type "op not a symbol" (all-reduce! (tensor '(1)) #:op "sum"))
  (test-moelab-error "ops that differ across ranks are named" "reduce op mismatch: rank 0 passed sum, rank 1 passed max"
    (with-ranks 2 (lambda (r) (all-reduce! (tensor '(1)) #:op (if (= r 0) 'sum 'max)))))
  (test-moelab-error "a global-batch loss with different expert counts names the experts"
    "the ranks of group 'world' count different experts: rank 0 has 4 experts, rank 1 has 8"
    (with-ranks 2 #:mesh '((dp . 2))
      (lambda (rank)
        (let* ((experts (if (= rank 0) 4 8))
               (tracker (make-balance-tracker #:experts experts #:group 'dp)))
          (load-balancing-loss 'global-batch (randn (list 8 experts) #:seed 1)
                               #:top-k 2 #:tracker tracker)))))
  (test-moelab-error "reduce-scatter too" "reduce op mismatch: rank 0 passed avg, rank 1 passed min"
    (with-ranks 2 (lambda (r) (reduce-scatter (zeros '(2)) #:op (if (= r 0) 'avg 'min)))))
  (test-moelab-error "bad root outside with-ranks" "root 1 is not a rank of the group (size 1)"
    (broadcast! (tensor '(1)) #:root 1))
  (test-moelab-error "bad root on 2 ranks" "root 5 is not a rank"
    (with-ranks 2 (lambda (r) (broadcast! (tensor '(1)) #:root 5))))
  (test-moelab-error "negative root" "root -1"
    (with-ranks 2 (lambda (r) (broadcast! (tensor '(1)) #:root -1))))
  (test-moelab-error "mesh product is not N" "mesh dp=2 cp=2 tp=2 makes 8 ranks, but 4 ranks were asked for"
    (with-ranks 4 #:mesh mesh (lambda (r) r)))
  (test-moelab-error "unknown mesh dimension" "unknown mesh dimension 'xp'"
    (with-ranks 2 #:mesh '((xp . 2)) (lambda (r) r)))
  (test-moelab-error "a mesh dimension twice" "given twice"
    (with-ranks 4 #:mesh '((dp . 2) (dp . 2)) (lambda (r) r)))
  (test-moelab-error "a mesh size of 0" "has size 0"
    (with-ranks 1 #:mesh '((dp . 0)) (lambda (r) r)))
  (test-wrong-type "a mesh that is not an alist" (with-ranks 2 #:mesh 'dp (lambda (r) r)))
  (test-moelab-error "0 ranks" "positive integer" (with-ranks 0 (lambda (r) r)))
  (test-moelab-error "too many ranks" "1 to 4096" (with-ranks 5000 (lambda (r) r)))
  (test-wrong-type "no procedure" (with-ranks 2))
  (test-wrong-type "not a procedure" (with-ranks 2 'x))
  (test-moelab-error "unknown keyword" "#:meshes" (with-ranks 2 #:meshes '() (lambda (r) r)))
  (test-moelab-error "mesh-group without a mesh" "no mesh"
    (with-ranks 2 (lambda (r) (mesh-group 'dp))))
  (test-moelab-error "mesh-group: unknown dimension" "unknown dimension 'zz'" (mesh-group 'zz))
  (test-moelab-error "mesh-group: unknown dimension on a mesh" "unknown dimension 'zz'"
    (with-ranks 2 #:mesh '((dp . 2)) (lambda (r) (mesh-group '(dp zz)))))
  (test-wrong-type "mesh-group of a string" (mesh-group "dp"))
  (test-moelab-error "mesh-coord: unknown dimension" "unknown dimension 'zz'" (mesh-coord 'zz))
  (test-wrong-type "#:group of a number" (barrier #:group 5))
  (test-moelab-error "all-to-all: one split per rank" "3 send splits for a group of 2 ranks"
    (with-ranks 2 (lambda (r) (all-to-all (zeros '(3)) '(1 1 1)))))
  (test-moelab-error "all-to-all: splits that do not add up" "all-to-all"
    (with-ranks 2 (lambda (r) (all-to-all (zeros '(3)) '(1 1)))))
  (test-wrong-type "all-to-all: a negative split" (all-to-all (zeros '(3)) '(-1)))
  (test-moelab-error "reduce-scatter: dim 0 must divide" "reduce-scatter"
    (with-ranks 2 (lambda (r) (reduce-scatter (zeros '(3))))))
  (test-moelab-error "all-reduce! refuses a tensor that requires grad" "all-reduce!"
    (all-reduce! (tensor '(1) #:requires-grad #t)))
  (test-moelab-error "a group after its with-ranks" "can no longer be used"
    (barrier #:group (car (with-ranks 2 (lambda (r) (world-group))))))
  (test-equal "its size is still known" 2 (group-size (car (with-ranks 2 (lambda (r) (world-group))))))
  (test-equal "another rank's group" '(ok "belongs to rank 0")
    (let ((g0 #f))
      (cadr (with-ranks 2 (lambda (r)
                            (when (= r 0) (set! g0 (world-group)))
                            (barrier)
                            (let ((message (and (= r 1)
                                                (catch 'moelab-error
                                                  (lambda () (barrier #:group g0) "used")
                                                  (lambda (key subr message . _)
                                                    (if (string-contains message "belongs to rank 0")
                                                        "belongs to rank 0"
                                                        message))))))
                              (barrier)
                              (list 'ok message))))))))

(set-comm-timeout! default-timeout)
(test-end "dist")
(exit-with-test-status)
