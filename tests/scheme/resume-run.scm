;;; resume-run.scm — the moelab side of resume.sh. Modes (VARIANT names the
;;; routing: micro global seq bias qb, or dp2: global-batch balancing with an
;;; expert bias, data parallel over 2 thread ranks):
;;;   straight VARIANT DIR   40 steps, metrics in DIR/VARIANT-straight.jsonl
;;;   first VARIANT DIR      20 steps with a checkpoint every 10 (keep-last 1)
;;;   second VARIANT DIR     a new trainer loads DIR/VARIANT-run, 20 steps more
;;;   compare VARIANT DIR    the final states and the step lines agree
;;;   before VARIANT DIR     straight, then first (one process)
;;;   after VARIANT DIR      second, then compare (another process)
;;;   kill-writer DIR        from the latest checkpoint in DIR/run (if any),
;;;                          a step and a checkpoint, again, until killed
;;; Each run ends by saving its final state (parameters, buffers, optimizer
;;; moments, router counters) to DIR/VARIANT-MODE-final.safetensors.
(use-modules (moelab) (moelab primitives) (srfi srfi-1) (ice-9 match))

(define top (string-append (dirname (current-filename)) "/../.."))

(define (make-run variant dir log checkpoint-dir)
  (let* ((losses (match variant
                   ("micro" '((micro-batch . 1e-2) (z . 1e-3)))
                   ("global" '((global-batch . 1e-2)))
                   ("seq" '((sequence . 1e-2)))
                   ("bias" '())
                   ("qb" '((z . 1e-3)))
                   ("dp2" '((global-batch . 1e-2)))))
         (extra (match variant
                  ((or "bias" "dp2") '(#:expert-bias? #t #:bias-rate 1e-2))
                  ;; β moves with an EMA of each step's quantiles, averaged
                  ;; over the step's 2 micro-batches
                  ("qb" '(#:routing quantile-balancing #:qb-ema 0.5))
                  (_ '())))
         (m (make-moe-transformer #:vocab 256 #:layers 2 #:hidden 16 #:heads 2 #:ffn 16
                                  #:experts 4 #:top-k 2 #:dense-ffn 16 #:max-seq 16
                                  #:router-options `(#:losses ,losses #:jitter 0.1 ,@extra) #:seed 5))
         (ds (make-text-dataset #:domains `((c . ,(string-append top "/tests/data/spm-train.txt"))
                                            (scheme . ,(string-append top "/tests/reference/gen_router_refs.py")))
                                #:seq-len 16 #:seed 9))
         (o (make-adamw (model-parameters m) #:lr 1e-2 #:weight-decay 0.1)))
    (make-trainer #:model m #:optimizer o #:dataset ds #:batch-size 2
                  #:grad-accum (if (member variant '("global" "qb" "dp2")) 2 1)
                  #:mesh (and (equal? variant "dp2") '((dp . 2)))
                  #:schedule (make-lr-schedule 'cosine #:lr 1e-2 #:warmup 5 #:total 40 #:min-lr 1e-3)
                  #:clip 1.0 #:log (string-append dir "/" log)
                  #:checkpoint-dir checkpoint-dir #:checkpoint-every (and checkpoint-dir 10)
                  #:keep-last 1)))

(define (final-state tr)
  (let ((m (trainer-model tr)))
    (append (model-parameters m) (model-buffers m)
            (map (lambda (e) (cons (car e) (if (tensor? (cdr e)) (cdr e) (tensor (cdr e) #:dtype 'i64))))
                 (optimizer-state (trainer-optimizer tr)))
            (map (lambda (l s) (cons (format #f "router.~a.counters" l) (car s)))
                 (model-moe-layers m) (%model-router-states m)))))

(define (run-steps tr n)
  (let loop ((i 0)) (when (< i n) (trainer-step! tr) (loop (+ i 1)))))

(define (finish tr variant mode dir)
  (trainer-close! tr)
  ;; dp2: the ranks hold the same model; rank 0's state is written
  (when (zero? (current-rank))
    (save-tensors (format #f "~a/~a-~a-final.safetensors" dir variant mode) (final-state tr))))

(define (on-ranks variant proc)
  ;; (PROC) on the ranks VARIANT trains on: 2 thread ranks for dp2
  (if (equal? variant "dp2")
      (with-ranks 2 #:mesh '((dp . 2)) (lambda (rank) (proc)))
      (proc)))

(define (step-lines file)
  ;; the step lines without the header and without the wall-clock fields
  (map (lambda (r) (remove (lambda (e) (memq (car e) '(tokens_per_s step_ms))) r))
       (cdr (read-jsonl file))))

(define (fail fmt . args) (apply format (current-error-port) fmt args) (newline (current-error-port)) (exit 1))

(define (main args)
 (match args
  (("before" v dir) (main (list "straight" v dir)) (main (list "first" v dir)))
  (("after" v dir) (main (list "second" v dir)) (main (list "compare" v dir)))
  (("straight" v dir)
   (on-ranks v
     (lambda ()
       (let ((tr (make-run v dir (string-append v "-straight.jsonl") #f)))
         (run-steps tr 40)
         (finish tr v "straight" dir)))))
  (("first" v dir)
   (on-ranks v
     (lambda ()
       (let ((tr (make-run v dir (string-append v "-a.jsonl") (string-append dir "/" v "-run"))))
         (run-steps tr 20)
         (unless (equal? (map car (checkpoint-steps (string-append dir "/" v "-run"))) '(20))
           (fail "keep-last 1 should leave step 20 alone, found ~s" (checkpoint-steps (string-append dir "/" v "-run"))))
         (finish tr v "first" dir)))))
  (("second" v dir)
   (on-ranks v
     (lambda ()
       (let ((tr (make-run v dir (string-append v "-b.jsonl") #f)))
         (load-checkpoint! tr (string-append dir "/" v "-run"))
         (unless (= (trainer-steps tr) 20) (fail "resumed at step ~a" (trainer-steps tr)))
         (run-steps tr 20)
         (finish tr v "second" dir)))))
  (("compare" v dir)
   (let ((a (load-tensors (format #f "~a/~a-straight-final.safetensors" dir v)))
         (b (load-tensors (format #f "~a/~a-second-final.safetensors" dir v))))
     (unless (equal? (map car a) (map car b)) (fail "~a: different tensors" v))
     (for-each (lambda (x y)
                 (unless (equal? (tensor->list (cdr x)) (tensor->list (cdr y)))
                   (fail "~a: ~a differs between the straight and the resumed run" v (car x))))
               a b)
     (let ((straight (step-lines (format #f "~a/~a-straight.jsonl" dir v)))
           (resumed (append (step-lines (format #f "~a/~a-a.jsonl" dir v))
                            (step-lines (format #f "~a/~a-b.jsonl" dir v)))))
       (unless (= (length straight) 40) (fail "~a: ~a step lines" v (length straight)))
       (for-each (lambda (x y i)
                   (unless (equal? x y) (fail "~a: step line ~a differs:~%~s~%~s" v i x y)))
                 straight resumed (iota 40 1)))
     (format #t "ok   ~a: 40 steps straight = 20 + save + new process + load + 20 (~a tensors bit for bit, 40 step lines)~%"
             v (length a))))
  (("kill-writer" dir)
   (let ((tr (make-run "bias" dir "kill.jsonl" #f))
         (run (string-append dir "/run")))
     ;; go on from the newest complete checkpoint, as --resume would
     (when (and (file-exists? run) (latest-checkpoint run))
       (load-checkpoint! tr run))
     (let loop ()
       (trainer-step! tr)
       (save-checkpoint tr (string-append dir "/run"))
       (loop))))))

(main (cdr (command-line)))
