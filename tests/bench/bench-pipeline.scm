;;; bench-pipeline.scm — pipeline-step! on thread ranks: how much of a step
;;; the stages spend waiting, next to the ideal bubble (P-1)/(M+P-1), and
;;; the step time next to one process running the same micro-batches
;;; through the whole model: `make bench-pipeline` (not part of make check).
;;;
;;; The model: P stages (BENCH_STAGES, default 2) of L = 2 layers
;;; x ↦ tanh(x W), W [D D] with D = 512, f32, micro-batches of 256 rows; the
;;; last stage's loss is the mean of squares. The step time is the median of
;;; BENCH_REPEATS (default 5) steps after one warm-up. On thread ranks the
;;; OpenMP threads are divided between the stages, so one process uses them
;;; all on each layer while each stage uses its share.

(use-modules (moelab) (ice-9 format) (ice-9 match) (srfi srfi-1))

(define stages (or (and=> (getenv "BENCH_STAGES") string->number) 2))
(define repeats (or (and=> (getenv "BENCH_REPEATS") string->number) 5))
(define layers 2)
(define width 512)
(define rows 256)

(define (stage-weights p)
  (map (lambda (l)
         (requires-grad! (t* (randn (list width width) #:seed (+ (* 10 p) l)) (/ 1.0 (sqrt width)))))
       (iota layers)))

(define (micro-batch-data i) (randn (list rows width) #:seed (+ 1000 i)))

(define (stage-forward p ws x m)
  (let ((y (fold (lambda (w x) (ttanh (matmul x w))) x ws)))
    (if (= p (- stages 1)) (t/ (tmean (t* y y)) m) y)))

(define (median xs)
  (let ((s (sort xs <)))
    (list-ref s (quotient (length s) 2))))

(define (now-ms) (/ (get-internal-real-time) (/ internal-time-units-per-second 1000.0)))

;; One process: every micro-batch through every stage, forward and backward.
(define (one-process-ms m)
  (let ((ws (map stage-weights (iota stages))))
    (define (step)
      (let ((t0 (now-ms)))
        (for-each (lambda (i)
                    (backward! (fold (lambda (p w x) (stage-forward p w x m))
                                     (micro-batch-data i) (iota stages) ws)))
                  (iota m))
        (- (now-ms) t0)))
    (step)
    (median (map (lambda (_) (step)) (iota repeats)))))

;; → (step-ms idle-share): the median step time (the slowest stage's), and
;; the share of it the stages spent in receives and sends (mean over stages).
(define (pipelined m schedule)
  (let ((runs
         (with-ranks stages #:mesh `((pp . ,stages))
           (lambda (rank)
             (let* ((p (mesh-coord 'pp)) (ws (stage-weights p)))
               (define (step)
                 (pipeline-step! #:schedule schedule #:micro-batches m
                   #:forward (lambda (i input) (stage-forward p ws (or input (micro-batch-data i)) m))
                   #:activation (lambda (i) (values (list rows width) 'f32))))
               (step)
               (map (lambda (_)
                      (let ((r (step)))
                        (barrier #:group 'pp)
                        (list (assq-ref r 'total-ms)
                              (/ (+ (assq-ref r 'recv-ms) (assq-ref r 'send-ms)) (assq-ref r 'total-ms)))))
                    (iota repeats)))))))
    ;; runs: per rank, per repeat (total idle-share)
    (let ((totals (apply map (lambda per-rank (apply max (map car per-rank))) runs))
          (idle (apply map (lambda per-rank (/ (apply + (map cadr per-rank)) stages)) runs)))
      (list (median totals) (median idle)))))

(format #t "pipeline-step!: ~a stages of ~a layers tanh(x W), D ~a, ~a rows per micro-batch, f32~%"
        stages layers width rows)
(format #t "~%| schedule | M | step ms | one process ms | idle share | ideal bubble |~%")
(format #t "|---|---|---|---|---|---|~%")
(for-each
 (lambda (m)
   (let ((alone (one-process-ms m)))
     (for-each
      (lambda (schedule)
        (match-let (((ms idle) (pipelined m schedule)))
          (format #t "| ~a | ~a | ~,1f | ~,1f | ~,2f | ~,2f |~%"
                  (symbol->string schedule) m ms alone idle
                  (exact->inexact (pipeline-bubble-fraction stages m)))))
      '(gpipe 1f1b))))
 '(1 2 4 8))
