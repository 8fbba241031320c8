;;; dist-train-cases.scm — the module (dist-train-cases): a parallel training
;;; run (make-trainer #:mesh) compared, step by step, with the one-process
;;; reference of tests/scheme/dist-reference.scm. Used by dist-train.scm
;;; (thread ranks) and dist-train-rank.scm (one process per rank).
;;;
;;; (compare-run VARIANT MESH SCHEDULE [EXTRA]) runs 5 optimizer steps of M = 2
;;; micro-batches of a tiny f64 model on this rank (inside with-ranks) and
;;; returns #t or a description of the first difference: the step's loss,
;;; gradient norm and every routing metric of its line, every parameter the
;;; rank holds after the step (its slice of the reference's), and the
;;; quantile-balancing β of its routers, all within 1e-10.

(define-module (dist-train-cases)
  #:use-module (moelab)
  #:use-module (moelab primitives)
  #:use-module (dist-reference)
  #:use-module (srfi srfi-1)
  #:use-module (ice-9 format)
  #:use-module (ice-9 threads)
  #:export (variants meshes compare-run mesh-size reference-steps))

;; the source tree: this file is tests/scheme/dist-train-cases.scm in it
(define top (string-append (dirname (%search-load-path "dist-train-cases.scm")) "/../.."))

(define (dataset)
  (make-text-dataset #:domains `((c . ,(string-append top "/core/moe"))) #:seq-len 8 #:seed 0))

(define (tiny-model options)
  (make-moe-transformer #:vocab 256 #:layers 2 #:hidden 16 #:heads 2 #:ffn 16 #:experts 4
                        #:top-k 2 #:dense-ffn 16 #:max-seq 8 #:dtype 'f64
                        #:router-options options #:seed 3))

(define steps 5)
(define batch-size 4)
(define grad-accum 2)

;; name → router options
(define variants
  '((micro-batch #:losses ((micro-batch . 1e-1)))
    (global-batch #:losses ((global-batch . 1e-1)))
    (sequence #:losses ((sequence . 1e-1)))
    (z #:losses ((micro-batch . 1e-2) (z . 1e-2)))
    (expert-bias #:score sigmoid #:expert-bias? #t #:bias-rate 1e-2 #:losses ())
    (quantile-balancing #:routing quantile-balancing #:qb-ema 0.5 #:losses ((z . 1e-3)))))

;; (mesh . schedule)
(define meshes
  '((((dp . 2)) . 1f1b)
    (((ep . 2)) . 1f1b)
    (((pp . 2)) . gpipe)
    (((pp . 2)) . 1f1b)
    (((dp . 2) (ep . 2)) . 1f1b)
    (((pp . 2) (dp . 2)) . 1f1b)))

(define (mesh-size mesh) (apply * (map cdr mesh)))

(define (data-size mesh)
  (* (or (assq-ref mesh 'dp) 1) (or (assq-ref mesh 'ep) 1)))

(define routing-keys '(aux max_vio max_vio_global cv entropy dead_fraction dropped_fraction
                       tokens_per_expert expert_bias))

;; The reference's steps per (variant, shards), computed once per process.
(define cache (make-hash-table))
(define cache-lock (make-mutex))

(define (reference-steps variant shards)
  (with-mutex cache-lock
    (or (hash-ref cache (cons variant shards))
        (let* ((m (tiny-model (assq-ref variants variant)))
               (r (reference-run #:model m #:optimizer (make-adamw (model-parameters m) #:lr 1e-2)
                                 #:dataset (dataset) #:batch-size batch-size #:grad-accum grad-accum
                                 #:shards shards #:steps steps #:clip 1.0)))
          (hash-set! cache (cons variant shards) r)
          r))))

(define (close? a b)
  (cond ((and (number? a) (number? b))
         (or (and (nan? a) (nan? b)) (<= (abs (- a b)) (* 1e-10 (max 1.0 (abs a) (abs b))))))
        ((and (not a) (not b)) #t)
        ((and (pair? a) (pair? b)) (and (close? (car a) (car b)) (close? (cdr a) (cdr b))))
        (else (equal? a b))))

(define (slice-of full name local offset experts)
  ;; the part of the reference's FULL numbers that this rank holds
  (if (string-contains name ".experts.")
      (let ((per (/ (length full) experts)))
        (list-head (list-tail full (* offset per)) (length local)))
      full))

(define* (compare-run variant mesh schedule #:optional (extra '()))
  (let* ((options (assq-ref variants variant))
         (want (reference-steps variant (data-size mesh)))
         (m (tiny-model options))
         (tr (apply make-trainer #:model m #:optimizer (make-adamw (model-parameters m) #:lr 1e-2)
                    #:dataset (dataset) #:batch-size batch-size #:grad-accum grad-accum
                    #:clip 1.0 #:mesh mesh #:pp-schedule schedule extra))
         (rm (trainer-model tr))
         (offset (model-expert-offset rm))
         (first-layer (car (model-stage rm))))
    (let loop ((k 1) (want want))
      (if (> k steps)
          #t
          (let* ((line (trainer-step! tr))
                 (w (car want))
                 (params (map (lambda (p) (cons (car p) (tensor->list (flatten (cdr p)))))
                              (model-parameters rm)))
                 (betas (map (lambda (r) (let ((b (assq-ref r 'qb-beta))) (and b (tensor->list b))))
                             (%model-router-metrics rm)))
                 (want-betas (let ((b (assq-ref w 'qb_beta)))
                               (and b (list-head (list-tail b first-layer) (length betas)))))
                 (checks
                  (append
                   `((loss ,(assq-ref line 'loss) ,(assq-ref w 'loss))
                     (grad_norm ,(assq-ref line 'grad_norm) ,(assq-ref w 'grad-norm)))
                   (map (lambda (key) (list key (assq-ref line key) (assq-ref w key))) routing-keys)
                   (map (lambda (p)
                          (list (car p) (cdr p)
                                (let ((full (assoc-ref (assq-ref w 'params) (car p))))
                                  (and full (slice-of full (car p) (cdr p) offset 4)))))
                        params)
                   (if want-betas `((qb-beta ,betas ,want-betas)) '())))
                 (bad (find (lambda (c) (not (close? (cadr c) (caddr c)))) checks)))
            (if bad
                (format #f "rank ~a step ~a: ~a is ~s, the reference has ~s"
                        (current-rank) k (car bad) (cadr bad) (caddr bad))
                (loop (+ k 1) (cdr want))))))))
