;;; dist-checkpoint.scm — checkpoints of parallel runs (make-trainer #:mesh
;;; on thread ranks), with a tiny f64 model, 2 micro-batches a step,
;;; global-batch balancing and an aux-loss-free expert bias (a router buffer):
;;;  - dp=2 (router jitter on): 4 steps straight equal 2 steps, a periodic checkpoint, a fresh
;;;    trainer that loads it and 2 more, bit for bit (every rank's
;;;    parameters, buffers, optimizer moments and step lines);
;;;  - the files of a parallel run hold what a one-process run's hold (the
;;;    same names, order, shapes and dtypes); under ZeRO-1 the moments
;;;    gathered from their owners equal those of the run without it;
;;;  - dp=2×ep=2 (ZeRO-1) → one process, one process → pp=2 → one process,
;;;    one process → ep=2: the next steps of the loaded trainer equal the
;;;    saved run's own continuation (to 1e-10: the reductions add in
;;;    another order);
;;;  - a load that fails on the ranks changes nothing on any of them.

(include "common.scm")
(use-modules (ice-9 ftw) (srfi srfi-1))

(test-begin "dist-checkpoint")

(define top (string-append (dirname (current-filename)) "/../.."))
(define tmp (string-append (or (getenv "TMPDIR") "/tmp") "/moelab-dist-checkpoint-" (number->string (getpid))))
(mkdir tmp)
(define (at name) (string-append tmp "/" name))

(define (dataset)
  (make-text-dataset #:domains `((c . ,(string-append top "/core/moe"))) #:seq-len 8 #:seed 0))

(define (tiny-model jitter)
  (make-moe-transformer #:vocab 256 #:layers 2 #:hidden 16 #:heads 2 #:ffn 16 #:experts 4
                        #:top-k 2 #:dense-ffn 16 #:max-seq 8 #:dtype 'f64 #:seed 3
                        #:router-options `(#:losses ((global-batch . 1e-1)) #:expert-bias? #t
                                           #:bias-rate 1e-2 #:jitter ,jitter)))

(define* (make-run #:key (mesh #f) (zero #f) (batch-size 4) (checkpoint-dir #f) (jitter 0.0))
  (let ((m (tiny-model jitter)))
    (make-trainer #:model m #:optimizer (make-adamw (model-parameters m) #:lr 1e-2 #:weight-decay 0.1)
                  #:dataset (dataset) #:batch-size batch-size #:grad-accum 2 #:clip 1.0
                  #:mesh mesh #:zero zero #:pp-schedule 'gpipe
                  #:checkpoint-dir checkpoint-dir #:checkpoint-every (and checkpoint-dir 2))))

(define (steps! tr n)
  ;; N steps; their lines without the wall-clock fields
  (map (lambda (_)
         (remove (lambda (e) (memq (car e) '(tokens_per_s step_ms))) (trainer-step! tr)))
       (iota n)))

(define (as-lists alist)
  (map (lambda (e) (cons (car e) (if (tensor? (cdr e)) (tensor->list (cdr e)) (cdr e)))) alist))

(define (rank-state tr)
  ;; what this rank holds: parameters, buffers, optimizer state
  (let ((m (trainer-model tr)))
    (as-lists (append (model-parameters m) (model-buffers m) (optimizer-state (trainer-optimizer tr))))))

(define (close? a b)
  (cond ((and (number? a) (number? b))
         (or (and (nan? a) (nan? b)) (<= (abs (- a b)) (* 1e-10 (max 1.0 (abs a) (abs b))))))
        ((and (pair? a) (pair? b)) (and (close? (car a) (car b)) (close? (cdr a) (cdr b))))
        (else (equal? a b))))

(define (lines-close? reference lines)
  ;; every field of the one-process lines REFERENCE agrees with LINES
  (every (lambda (r l) (every (lambda (e) (close? (cdr e) (assq-ref l (car e)))) r))
         reference lines))

(define (file-layout path)
  ;; the names, shapes and dtypes of a safetensors file, in its order
  (map (lambda (e) (list (car e) (tensor-shape (cdr e)) (tensor-dtype (cdr e)))) (load-tensors path)))

(define (all-true? results) (every (lambda (r) (eq? r #t)) results))

;;; ---- dp=2: straight = save + load ------------------------------------------------------

(let ((results
       (with-ranks 2 #:mesh '((dp . 2))
         (lambda (rank)
           ;; router jitter: the routers' random streams go on where they were
           (let* ((straight (make-run #:mesh '((dp . 2)) #:jitter 0.1))
                  (a (steps! straight 4))
                  (first (make-run #:mesh '((dp . 2)) #:checkpoint-dir (at "dp2") #:jitter 0.1))
                  (b (steps! first 2))
                  (second (make-run #:mesh '((dp . 2)) #:jitter 0.1)))
             (load-checkpoint! second (at "dp2"))
             (let ((c (steps! second 2)))
               (list (equal? a (append b c))
                     (equal? (rank-state straight) (rank-state second))
                     (trainer-steps second))))))))
  (test-equal "dp=2: a periodic checkpoint, one set of files"
    '("step-0000002") (scandir (at "dp2") (lambda (n) (not (member n '("." ".."))))))
  (test-equal "dp=2: 4 steps straight = 2 + save + load + 2: the step lines, bit for bit"
    '(#t #t) (map car results))
  (test-equal "dp=2: every rank's parameters, buffers and moments, bit for bit"
    '(#t #t) (map cadr results))
  (test-equal "dp=2: the resumed trainers are at step 4" '(4 4) (map caddr results)))

;;; ---- dp=2 × ep=2 (ZeRO-1) → one process ----------------------------------------------

(define (save-after-2 mesh dir zero)
  ;; on every rank: 2 steps, save into DIR, 2 more steps; the lines of the
  ;; last 2 and the whole model gathered
  (let ((results
         (with-ranks (apply * (map cdr mesh)) #:mesh mesh
           (lambda (rank)
             (let ((tr (make-run #:mesh mesh #:zero zero)))
               (steps! tr 2)
               (let* ((step-dir (save-checkpoint tr dir))
                      (lines (steps! tr 2)))
                 (list step-dir lines (as-lists (model-gather-parameters (trainer-model tr))))))))))
    (car results)))

(let* ((one (make-run))
       (_ (steps! one 2))
       (one-dir (save-checkpoint one (at "one")))
       (zero (save-after-2 '((dp . 2) (ep . 2)) (at "dpep") 1))
       (plain (save-after-2 '((dp . 2) (ep . 2)) (at "dpep-plain") #f))
       (file (lambda (dir name) (string-append dir "/step-0000002/" name))))
  (test-equal "the step directory every rank returns" (string-append (at "dpep") "/step-0000002") (car zero))
  (test-equal "dp=2×ep=2: model.safetensors has a one-process run's names, order, shapes, dtypes"
    (file-layout (file (at "one") "model.safetensors")) (file-layout (file (at "dpep") "model.safetensors")))
  (test-equal "dp=2×ep=2 with ZeRO-1: optimizer.safetensors has a one-process run's layout"
    (file-layout (file (at "one") "optimizer.safetensors")) (file-layout (file (at "dpep") "optimizer.safetensors")))
  (test-equal "ZeRO-1: the moments gathered from their owners equal the unsharded run's"
    (as-lists (load-tensors (file (at "dpep-plain") "optimizer.safetensors")))
    (as-lists (load-tensors (file (at "dpep") "optimizer.safetensors"))))
  (test-assert "ZeRO-1: the moments are not zero"
    (positive? (tensor-item (tsum (tabs (assoc-ref (load-tensors (file (at "dpep") "optimizer.safetensors"))
                                                   "layers.1.moe.experts.w-up.exp_avg"))))))
  (let ((tr (make-run)))
    (load-checkpoint! tr (at "dpep"))
    (let ((lines (steps! tr 2)))
      (test-assert "dp=2×ep=2 → one process: the next 2 step lines equal the parallel run's"
        (lines-close? lines (cadr zero)))
      (test-assert "dp=2×ep=2 → one process: then the parameters equal the parallel run's"
        (close? (as-lists (model-parameters (trainer-model tr))) (caddr zero)))))

  ;; ---- one process → pp=2 → one process, one process → ep=2 ---------------------------
  (let ((reference (steps! one 2))
        (reference-params (as-lists (model-parameters (trainer-model one)))))
    (for-each
     (lambda (mesh)
       (let ((results
              (with-ranks 2 #:mesh mesh
                (lambda (rank)
                  (let ((tr (make-run #:mesh mesh)))
                    (load-checkpoint! tr one-dir)
                    (let ((lines (steps! tr 2)))
                      (save-checkpoint tr (at (format #f "~a" (caar mesh))))
                      (list (lines-close? reference lines)
                            (close? reference-params (as-lists (model-gather-parameters (trainer-model tr))))
                            (and (eq? (caar mesh) 'pp)
                                 (begin (steps! tr 2) (as-lists (model-gather-parameters (trainer-model tr))))))))))))
         (test-equal (format #f "one process → ~s: the next 2 step lines on every rank" mesh)
           '(#t #t) (map car results))
         (test-equal (format #f "one process → ~s: then the parameters" mesh)
           '(#t #t) (map cadr results))
         (when (eq? (caar mesh) 'pp)
           (let ((tr (make-run)))
             (load-checkpoint! tr (at "pp"))
             (steps! tr 2)
             (test-assert "pp=2 → one process: 2 more steps reach the pp=2 run's parameters"
               (close? (as-lists (model-parameters (trainer-model tr))) (caddr (car results))))))))
     '(((pp . 2)) ((ep . 2))))))

;;; ---- failures --------------------------------------------------------------------------

(test-equal "a save that rank 0 cannot write: every rank raises (none waits for it)"
  '(#t #t)
  (begin
    (call-with-output-file (at "plain-file") (lambda (p) (display "x" p)))
    (with-ranks 2 #:mesh '((dp . 2))
      (lambda (rank)
        (let ((tr (make-run #:mesh '((dp . 2)))))
          (steps! tr 1)
          (catch #t
            (lambda () (save-checkpoint tr (at "plain-file/run")) #f)
            (lambda (key . args)
              (if (zero? rank)
                  (eq? key 'system-error)
                  (and (string-contains (cadr args) "world rank 0 could not write the checkpoint")
                       (string-contains (apply format #f (cadr args) (caddr args)) "Not a directory")
                       #t)))))))))

;;; a failed load

(test-equal "a checkpoint of another batch size: every rank refuses it and stays at step 0"
  '((#t 0 #t) (#t 0 #t))
  (with-ranks 2 #:mesh '((dp . 2))
    (lambda (rank)
      (let* ((tr (make-run #:mesh '((dp . 2)) #:batch-size 8))
             (before (rank-state tr))
             (said (catch 'moelab-error
                     (lambda () (load-checkpoint! tr (at "one")) #f)
                     (lambda (key who fmt args . _) (apply format #f fmt args)))))
        (list (and (string? said) (string-contains said "batch-size 4") #t)
              (trainer-steps tr)
              (equal? before (rank-state tr)))))))

(system* "rm" "-rf" tmp)
(test-end "dist-checkpoint")
