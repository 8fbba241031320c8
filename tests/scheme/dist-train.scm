;;; dist-train.scm — parallel training is exact: for every balancing variant
;;; (micro-batch, global-batch, sequence-wise, z, aux-loss-free expert bias,
;;; quantile balancing) and every mesh (dp=2, ep=2, pp=2 with GPipe and
;;; 1F1B, dp=2×ep=2, pp=2×dp=2) on thread ranks, 5 optimizer steps of 2
;;; micro-batches give the losses, parameters and logged metrics of the
;;; one-process reference (tests/scheme/dist-reference.scm) to 1e-10; the
;;; configurations that cannot be exact are refused with their reason; a
;;; rank that fails stops the run with an error naming it. The same
;;; comparison runs under mpirun in dist-train-mpi.sh.

(include "common.scm")
(add-to-load-path (dirname (current-filename)))
(use-modules (dist-train-cases) (srfi srfi-1))

(test-begin "dist-train")

;; a tiny f64 model and text from this source tree
(define top (string-append (dirname (current-filename)) "/../.."))
(define (dataset)
  (make-text-dataset #:domains `((c . ,(string-append top "/core/moe"))) #:seq-len 8 #:seed 0))
(define* (model #:key (options '(#:losses ((micro-batch . 1e-1)))) (tied? #f) (experts 4))
  (make-moe-transformer #:vocab 256 #:layers 2 #:hidden 16 #:heads 2 #:ffn 16 #:experts experts
                        #:top-k 2 #:dense-ffn 16 #:max-seq 8 #:dtype 'f64 #:tie-embeddings? tied?
                        #:router-options options #:seed 3))


(for-each
 (lambda (mesh-case)
   (let ((mesh (car mesh-case)) (schedule (cdr mesh-case)))
     (for-each
      (lambda (variant)
        (test-equal (format #f "~a, ~s~a: every rank equals the reference" (car variant) mesh
                            (if (assq 'pp mesh) (format #f " (~a)" schedule) ""))
          (make-list (mesh-size mesh) #t)
          (with-ranks (mesh-size mesh) #:mesh mesh
            (lambda (rank) (compare-run (car variant) mesh schedule)))))
      variants)))
 meshes)

(test-equal "ZeRO-1 over dp=2 x ep=2 (optimizer state sharded): the reference's steps"
  '(#t #t #t #t)
  (with-ranks 4 #:mesh '((dp . 2) (ep . 2))
    (lambda (rank) (compare-run 'global-batch '((dp . 2) (ep . 2)) '1f1b '(#:zero 1)))))

;;; ---- what a parallel trainer tells -----------------------------------------------------

(test-equal "trainer-mesh, trainer-pipeline-stats, trainer-comm-stats on pp=2 x dp=2"
  '(((pp . 2) (dp . 2) (ep . 1)) #t 2 #t 1 #t)
  (let ((results
         (with-ranks 4 #:mesh '((pp . 2) (dp . 2))
           (lambda (rank)
             (let* ((mo (model))
                    (tr (make-trainer #:model mo #:optimizer (make-adamw (model-parameters mo))
                                      #:dataset (dataset)
                                      #:batch-size 4 #:grad-accum 2 #:mesh '((pp . 2) (dp . 2)))))
               (trainer-step! tr)
               (trainer-step! tr)
               (let ((p (trainer-pipeline-stats tr)) (c (trainer-comm-stats tr)))
                 (list (trainer-mesh tr)
                       (>= (assq-ref p 'total-ms) (assq-ref p 'recv-ms) 0)
                       (assq-ref p 'micro-batches)
                       (eq? (assq-ref p 'schedule) '1f1b)
                       (length c)                                  ; one reducer: no ep
                       (= (assq-ref (car c) 'steps) 2))))))))
    (if (every (lambda (r) (equal? r (car results))) results) (car results) results)))

(test-equal "a one-process trainer has no mesh, pipeline or reducers"
  '(#f #f ())
  (let* ((mo (model))
         (tr (make-trainer #:model mo #:optimizer (make-adamw (model-parameters mo))
                           #:dataset (dataset)
                           #:batch-size 2)))
    (list (trainer-mesh tr) (trainer-pipeline-stats tr) (trainer-comm-stats tr))))

(test-equal "trainer-routing-report #:rank: that rank alone prints, its own slots (2 rows × 8 tokens × K 2 × M 2)"
  '((#f "") ((64.0 #t) (128.0 #t)))
  (with-ranks 2 #:mesh '((dp . 2))
    (lambda (rank)
      (let* ((mo (model))
             (tr (make-trainer #:model mo #:optimizer (make-adamw (model-parameters mo))
                               #:dataset (dataset)
                               #:batch-size 4 #:grad-accum 2 #:mesh '((dp . 2)))))
        (trainer-step! tr)
        (let* ((text #f)
               (own (call-with-output-string
                     (lambda (port) (set! text (trainer-routing-report tr #:rank 1 #:port port)))))
               (all (trainer-routing-report tr #:port (%make-void-port "w"))))
          (if (= rank 0)
              (list text own)
              (list (list (apply + (car text)) (and (string-contains own "rank 1's own rows") #t))
                    (list (apply + (car all)) #t))))))))

;;; ---- configuration errors --------------------------------------------------------------

(define (refusal n mesh . args)
  ;; the message make-trainer raises on rank 0 of N ranks, or #f
  (let ((m (apply (lambda* (#:key (model-args '()) (batch-size 4) (extra '()))
                    (list model-args batch-size extra))
                  args)))
    (catch 'moelab-error
      (lambda ()
        (with-ranks n #:mesh mesh
          (lambda (rank)
            (let ((mo (apply model (car m))))
              (apply make-trainer #:model mo #:optimizer (make-adamw (model-parameters mo))
                     #:dataset (dataset) #:batch-size (cadr m) #:mesh mesh (caddr m)))))
        #f)
      (lambda (key who fmt args . _) (apply format #f fmt args)))))

(define (says? text . words)
  (and (string? text) (every (lambda (w) (string-contains text w)) words)))

(test-assert "a mesh that is not the world's size"
  (says? (catch 'moelab-error
           (lambda ()
             (with-ranks 2 #:mesh '((dp . 2))
               (lambda (rank)
                 (let ((mo (model)))
                   (make-trainer #:model mo #:optimizer (make-adamw (model-parameters mo))
                                 #:dataset (dataset) #:batch-size 4 #:mesh '((dp . 4))))))
             #f)
           (lambda (key who fmt args . _) (apply format #f fmt args)))
         "4 ranks" "the world has 2"))
(test-assert "a batch that does not split over the data ranks"
  (says? (refusal 2 '((dp . 2)) #:batch-size 3) "#:batch-size 3" "multiple of 2"))
(test-assert "experts that do not split over ep"
  (says? (refusal 2 '((ep . 2)) #:model-args '(#:experts 3)) "3 experts" "ep=2"))
(test-assert "tied embeddings under pp"
  (says? (refusal 2 '((pp . 2)) #:model-args '(#:tied? #t)) "tied embeddings"))
(test-assert "grad mode add under pp"
  (says? (refusal 2 '((pp . 2)) #:model-args '(#:options (#:grad-mode add #:losses ((micro-batch . 1e-1)))))
         "grad mode 'add" "injection"))
(test-assert "stage layers that do not add up"
  (says? (refusal 2 '((pp . 2)) #:extra '(#:stage-layers (1 2))) "adds up to 3 layers" "has 2"))
(test-assert "an unknown mesh dimension"
  (says? (refusal 2 '((tp . 2))) "unknown mesh dimension tp"))

;;; ---- a failing rank --------------------------------------------------------------------

(test-assert "a rank that fails mid-step stops the run, naming the rank"
  (let ((text
         (catch 'moelab-error
           (lambda ()
             (with-ranks 2 #:mesh '((dp . 2))
               (lambda (rank)
                 (let* ((mo (model))
                        (tr (make-trainer #:model mo #:optimizer (make-adamw (model-parameters mo))
                                          #:dataset (dataset) #:batch-size 4 #:grad-accum 2
                                          #:mesh '((dp . 2)))))
                   (trainer-step! tr)
                   (when (= rank 1) (error "rank 1 gives up"))
                   (trainer-step! tr))))
             #f)
           (lambda (key who fmt args . _) (apply format #f fmt args)))))
    (says? text "rank 1" "gives up")))

;;; ---- the whole model ---------------------------------------------------------------------

(test-assert "model-gather-parameters: every rank gets the one-process model's tensors"
  (let ((want (map (lambda (p) (cons (car p) (tensor->list (flatten (cdr p))))) (model-parameters (model)))))
    (every (lambda (got) (equal? got want))
           (with-ranks 4 #:mesh '((pp . 2) (ep . 2))
             (lambda (rank)
               (let* ((mo (model))
                      (tr (make-trainer #:model mo #:optimizer (make-adamw (model-parameters mo))
                                        #:dataset (dataset) #:batch-size 4 #:mesh '((pp . 2) (ep . 2)))))
                 (map (lambda (p) (cons (car p) (tensor->list (flatten (cdr p)))))
                      (model-gather-parameters (trainer-model tr)))))))))

(test-end "dist-train")
