;;; memory.scm — native tensor memory is reported to Guile's collector, so a
;;; loop that drops its results stays bounded without explicit (gc): forwards
;;; of an MoE layer with grad enabled (each result holds a graph of saved
;;; activations many times its own size) keep the resident set under twice
;;; what it was after the first 20. A hold on the reports (the trainer's
;;; step) keeps the collector from running on growth inside it, reports that
;;; growth when it ends, and ends on a non-local exit too.

(include "common.scm")
(use-modules (ice-9 rdelim))

(test-begin "memory")

(define page-size 4096)

(define (resident-bytes)
  "This process's resident set, from /proc/self/statm (second field, pages)."
  (call-with-input-file "/proc/self/statm"
    (lambda (port)
      (* page-size (string->number (cadr (string-split (read-line port) #\space)))))))

(test-group "forward-only loop"
  (let ((moe (make-moe-layer #:hidden 128 #:ffn 256 #:experts 8 #:seed 1))
        (x (randn '(512 128) #:seed 2 #:requires-grad #t))
        (forwards 80))
    (let loop ((i 1) (after-20 #f) (peak 0))
      (if (> i forwards)
          (begin
            (test-assert "the layer output still has a graph"
              (requires-grad? (moe-forward moe x)))
            (test-equal "80 forwards stay under 2x the resident set after 20"
              #t
              (or (< peak (* 2 after-20))
                  (list 'after-20 after-20 'peak peak))))
          (begin
            (moe-forward moe x)       ; dropped at once
            (let ((rss (resident-bytes)))
              (loop (+ i 1)
                    (if (= i 20) rss after-20)
                    (if (> i 20) (max peak rss) peak))))))))

(define held (@ (moelab primitives) %call-with-memory-reports-held))
(define (collections) (assq-ref (gc-stats) 'gc-times))

(test-group "held reports"
  ;; 30 tensors of 4 MiB, far past the collector's heap: reported one by
  ;; one, they would set off collections
  (let* ((before (collections))
         (kept+inside (held (lambda ()
                              (let ((ts (map (lambda (i) (zeros '(1048576))) (iota 30))))
                                (cons ts (collections))))))
         (after (collections)))
    (test-equal "no collection while held" before (cdr kept+inside))
    (test-assert "the growth is reported when the hold ends" (> after before))
    (for-each tensor-free! (car kept+inside)))
  (let ((before #f))
    (catch 'leave
      (lambda () (held (lambda () (set! before (collections)) (throw 'leave))))
      (lambda _ #t))
    (let ((ts (map (lambda (i) (zeros '(1048576))) (iota 30))))
      (test-assert "a non-local exit ends the hold" (> (collections) before))
      (for-each tensor-free! ts))))

(test-end "memory")
(exit-with-test-status)
