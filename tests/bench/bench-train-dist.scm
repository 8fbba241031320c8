;;; bench-train-dist.scm — the overheads of parallel training on thread
;;; ranks (make bench-train-dist): the share of a step that data parallelism
;;; spends in its gradient all-reduces (dp=2), and the share a pipeline
;;; stage spends waiting (pp=2, both schedules) next to the ideal bubble
;;; (P−1)/(M+P−1), with one process's step time for scale. On a machine with
;;; few cores the speed-up means little; the overheads do.
;;; Targets: communication ≤ 10% of the step for dp=2; the bubble within
;;; 1.2× the ideal.
;;;
;;; Model: f32, V256 L4 D128 H4 F256 E8 K2; B=8 sequences of 64 tokens per
;;; micro-batch, M=4 micro-batches per step; 2 warm-up steps, 6 timed.

(use-modules (moelab) (srfi srfi-1) (ice-9 format))

(define top (string-append (dirname (current-filename)) "/../.."))
(define corpus (string-append top "/data/corpus/c/train"))
(define (dataset)
  (make-text-dataset #:domains `((text . ,(if (file-exists? corpus) corpus (string-append top "/core"))))
                     #:seq-len 64 #:seed 0))
(define (model)
  (make-moe-transformer #:vocab 256 #:layers 4 #:hidden 128 #:heads 4 #:ffn 256 #:experts 8
                        #:top-k 2 #:max-seq 64 #:seed 1
                        #:router-options '(#:losses ((global-batch . 1e-2) (z . 1e-3)))))

(define warm-up 2)
(define timed 6)
(define micro-batches 4)

(define (stats-sum key stats) (apply + (map (lambda (s) (assq-ref s key)) stats)))

;; Run one configuration on this rank: step ms, the gradient reducers' time
;; in collectives (ms per step) and the pipeline's wait and total (ms per
;; step), all averaged over the timed steps.
(define* (run-rank #:key (mesh #f) (schedule '1f1b))
  (let* ((m (model))
         (tr (make-trainer #:model m #:optimizer (make-adamw (model-parameters m) #:lr 1e-3)
                           #:dataset (dataset) #:batch-size 8 #:grad-accum micro-batches
                           #:clip 1.0 #:mesh mesh #:pp-schedule schedule)))
    (for-each (lambda (_) (trainer-step! tr)) (iota warm-up))
    (let ((comm0 (stats-sum 'comm-seconds (trainer-comm-stats tr))))
      (let loop ((i 0) (step-ms 0.0) (wait-ms 0.0) (pipe-ms 0.0))
        (if (< i timed)
            (let* ((line (trainer-step! tr))
                   (p (trainer-pipeline-stats tr)))
              (loop (+ i 1) (+ step-ms (assq-ref line 'step_ms))
                    (+ wait-ms (if p (assq-ref p 'recv-ms) 0.0))
                    (+ pipe-ms (if p (assq-ref p 'total-ms) 0.0))))
            `((step-ms . ,(/ step-ms timed))
              (comm-ms . ,(/ (* 1000.0 (- (stats-sum 'comm-seconds (trainer-comm-stats tr)) comm0)) timed))
              (wait-ms . ,(/ wait-ms timed))
              (pipe-ms . ,(/ pipe-ms timed))))))))

(define (mean xs) (/ (apply + xs) (length xs)))

(define (run-mesh mesh schedule)
  (let ((per-rank (with-ranks (apply * (map cdr mesh)) #:mesh mesh
                    (lambda (rank) (run-rank #:mesh mesh #:schedule schedule)))))
    (map (lambda (key) (cons key (mean (map (lambda (r) (assq-ref r key)) per-rank))))
         '(step-ms comm-ms wait-ms pipe-ms))))

(define (pct x) (format #f "~5,1f%" (* 100 x)))

(format #t "bench-train-dist: ~a threads, ~a micro-batches of 8×64 tokens, L4 D128 E8 K2 f32~%~%"
        (num-threads) micro-batches)
(format #t "~16a ~5a ~9a ~9a ~9a ~9a ~6a~%" "run" "ranks" "step ms" "comm" "bubble" "ideal" "ratio")
(let ((one (run-rank)))
  (format #t "~16a ~5a ~9,1f ~9a ~9a ~9a ~6a~%" "one process" 1 (assq-ref one 'step-ms) "" "" "" ""))
(let ((dp (run-mesh '((dp . 2)) '1f1b)))
  (format #t "~16a ~5a ~9,1f ~9a ~9a ~9a ~6a~%" "dp=2" 2 (assq-ref dp 'step-ms)
          (pct (/ (assq-ref dp 'comm-ms) (assq-ref dp 'step-ms))) "" "" ""))
(for-each
 (lambda (schedule)
   (let* ((pp (run-mesh '((pp . 2)) schedule))
          (bubble (/ (assq-ref pp 'wait-ms) (assq-ref pp 'pipe-ms)))
          (ideal (exact->inexact (pipeline-bubble-fraction 2 micro-batches))))
     (format #t "~16a ~5a ~9,1f ~9a ~9a ~9a ~6,2f~%" (string-append "pp=2 " (symbol->string schedule)) 2
             (assq-ref pp 'step-ms) "" (pct bubble) (pct ideal) (/ bubble ideal))))
 '(gpipe 1f1b))
(format #t "~%comm: the dp=2 step's time in gradient all-reduces (target <= 10%);~%")
(format #t "bubble: a stage's time waiting for activations and gradients over its pipeline step;~%")
(format #t "ideal: (P-1)/(M+P-1); ratio: bubble / ideal (target <= 1.2).~%")
