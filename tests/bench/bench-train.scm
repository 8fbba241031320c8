;;; bench-train.scm — training speed and memory of the reference model next
;;; to the same model in PyTorch eager (tests/bench/train_torch.py), in one
;;; run: `make bench-train` (not part of make check).
;;;
;;; Reference config: V256 L4 D256 H4 E8 K2 F512, routers softmax top-2 with
;;; the micro-batch balancing loss (1e-2) and the z-loss (1e-3), B8 S256,
;;; AdamW (lr 1e-3, betas 0.9/0.95, wd 0.1), gradient clipping at 1.0, 2
;;; threads (BENCH_THREADS overrides), forward + backward + optimizer.
;;;
;;; The parent process makes the model, writes its initial weights and the
;;; batches to a temporary directory, then runs each side in a process of its
;;; own (so peak RSS is each side's alone): moelab (this file with --child,
;;; through trainer-step!) and PyTorch (train_torch.py, same weights and
;;; batches). The two take turns, a step each, so that both see the machine
;;; in the same state: a virtual machine's cores drift in speed by 5-10%
;;; from minute to minute, which, one side run after the other, moved the
;;; ratio by as much. It checks that the first three step losses agree to
;;; 1e-4 and prints tokens/s, peak RSS and the achieved model GFLOP/s
;;; against the sgemm rate measured in the same run, with the targets:
;;; tokens/s >= 1.6x PyTorch's, peak RSS <= 0.6x PyTorch's, GFLOP/s >= 70%
;;; of sgemm.

(use-modules (moelab) (ice-9 popen) (ice-9 rdelim) (ice-9 format) (ice-9 binary-ports)
             (srfi srfi-1) (srfi srfi-4))

(define threads (or (and=> (getenv "BENCH_THREADS") string->number) 2))
(define steps (or (and=> (getenv "BENCH_STEPS") string->number) 10))
(define warmup 2)                       ; steps left out of the timing
(define B 8)
(define S 256)
(define lr 1e-3)
(define corpus "data/corpus")

(define (make-model)
  (make-moe-transformer #:vocab 256 #:layers 4 #:hidden 256 #:heads 4 #:kv-heads 4 #:ffn 512
                        #:experts 8 #:top-k 2 #:max-seq S
                        #:router-options '(#:score softmax #:losses ((micro-batch . 1e-2) (z . 1e-3)))
                        #:seed 0))

(define (token-file) (string-append (or (getenv "TMPDIR") "/tmp") "/bench-train-tokens.u16"))

;; The batches: a token file of corpus text (the first 64 KiB of each domain
;; of data/corpus, or seeded random bytes without it), written by the parent
;; and read by both sides, so neither process holds a whole corpus.
(define (write-tokens!)
  (write-token-file
   (token-file)
   (if (file-exists? (string-append corpus "/bible/train"))
       (append-map (lambda (d)
                     (let ((bv (call-with-input-file (string-append corpus "/" d "/train")
                                 (lambda (p) (get-bytevector-n p 65536)) #:binary #t)))
                       (u8vector->list bv)))
                   '("bible" "fortune" "c" "scheme" "python" "info"))
       (randint 0 256 (list (* 64 (+ S 1))) #:seed 1))))

(define (make-data)
  (make-text-dataset #:domains `((text . ,(token-file))) #:seq-len S #:seed 0))

;; Each product is freed at once, as numpy's are: left to the collector, every
;; repetition would take fresh pages and time their faults instead of BLAS.
(define (sgemm-gflops)
  (let ((a (randn '(1024 1024) #:seed 1)) (b (randn '(1024 1024) #:seed 2)) (reps 5))
    (tensor-free! (matmul a b))
    (let ((t0 (get-internal-real-time)))
      (do ((i 0 (+ i 1))) ((= i reps)) (tensor-free! (matmul a b)))
      (/ (* 2.0 (expt 1024 3) reps)
         (/ (- (get-internal-real-time) t0) (exact->inexact internal-time-units-per-second))
         1e9))))

(define (write-f32 path t)
  (call-with-output-file path
    (lambda (port) (put-bytevector port (tensor->f32vector (to-dtype t 'f32))))
    #:binary #t))

;;; ---- the moelab side (a process of its own) ----------------------------------------

(define (child)
  (set-num-threads! threads)
  (let* ((m (make-model))
         (tr (make-trainer #:model m
                           #:optimizer (make-adamw (model-parameters m) #:lr lr #:betas '(0.9 . 0.95)
                                                   #:eps 1e-8 #:weight-decay 0.1)
                           #:dataset (make-data) #:batch-size B #:clip 1.0))
         (metrics (map (lambda (i)
                         ;; a step each time the parent asks (a line on stdin)
                         (when (eof-object? (read-line))
                           (format (current-error-port) "bench-train: stdin ended at step ~a~%" i)
                           (exit 1))
                         (let ((x (trainer-step! tr)))
                           (format #t "step ~,3f~%" (assq-ref x 'step_ms))
                           (force-output)
                           x))
                       (iota steps)))
         (_ (read-line))                ; the other side is idle now
         (timed (drop metrics warmup))
         (step-s (/ (apply + (map (lambda (x) (assq-ref x 'step_ms)) timed)) (length timed) 1000.0)))
    (display (json-line `((losses . ,(map (lambda (x) (assq-ref x 'loss)) metrics))
                          (step_s . ,step-s)
                          (tokens_per_s . ,(/ (* B S) step-s))
                          (peak_rss . ,(peak-rss))
                          (sgemm_gflops . ,(sgemm-gflops))
                          (model_gflop . ,(/ (model-flops m B S) 1e9)))))
    (newline)))

;;; ---- the parent ----------------------------------------------------------------------

;; A side: a process that takes a step each time it reads a line, answers
;; "step MS", and at one more line measures its sgemm rate and prints its
;; results as one JSON line.
(define (start-side . cmd)
  (cons cmd (apply open-pipe* OPEN_BOTH cmd)))

(define (take-step! side)
  (let ((port (cdr side)))
    (display "step\n" port)
    (force-output port)
    (let ((l (read-line port)))
      (unless (and (string? l) (string-prefix? "step " l))
        (format (current-error-port) "bench-train: ~a answered ~s to a step~%" (car side) l)
        (exit 1)))))

(define (side-json side)
  ;; ask the side for its results: the last line of its output, as JSON
  (let ((cmd (car side)) (port (cdr side)))
    (display "results\n" port)
    (force-output port)
    (let* ((lines (let loop ((acc '()))
                    (let ((l (read-line port)))
                      (if (eof-object? l) (reverse acc) (loop (cons l acc))))))
           (status (close-pipe port)))
      (unless (and (zero? status) (pair? lines))
        (format (current-error-port) "bench-train: ~a failed:~%~{  ~a~%~}" cmd lines)
        (exit 1))
      (let ((file (string-append (tmpdir) "/line.jsonl")))
        (call-with-output-file file (lambda (p) (display (last lines) p) (newline p)))
        (car (read-jsonl file))))))

(define %tmp #f)
(define (tmpdir)
  (unless %tmp
    (set! %tmp (string-append (or (getenv "TMPDIR") "/tmp") "/bench-train." (number->string (getpid))))
    (mkdir %tmp))
  %tmp)

(define (export-run dir)
  (write-tokens!)
  (let ((m (make-model)) (ds (make-data)))
    (for-each (lambda (p) (write-f32 (string-append dir "/" (car p) ".f32") (cdr p)))
              (model-parameters m))
    (let ((batches (map (lambda (i) (call-with-values (lambda () (dataset-next-batch ds B)) list))
                        (iota steps))))
      (write-f32 (string-append dir "/tokens.f32") (cat (map car batches) #:dim 0))
      (write-f32 (string-append dir "/targets.f32") (cat (map cadr batches) #:dim 0)))
    (call-with-output-file (string-append dir "/manifest.json")
      (lambda (port)
        (display (json-line
                  `((config . ((vocab . 256) (layers . 4) (hidden . 256) (heads . 4) (kv-heads . 4)
                               (experts . 8) (top-k . 2) (norm-eps . 1e-5) (rope-theta . 10000.0)))
                    (params . ,(map (lambda (p) (cons (car p) (tensor-shape (cdr p)))) (model-parameters m)))
                    (losses . ((micro-batch . 1e-2) (z . 1e-3)))
                    (steps . ,steps) (warmup . ,warmup) (batch . ,B) (seq . ,S) (threads . ,threads)
                    (lr . ,lr) (betas . (0.9 0.95)) (eps . 1e-8) (weight_decay . 0.1)
                    (no_decay . ("norm" "bias")) (clip . 1.0)))
                 port)))))

(define (parent torch-script)
  (let ((dir (tmpdir)))
    (export-run dir)
    (let* ((sides (list (start-side "/usr/bin/python3" torch-script dir)
                        (start-side "guile" "--no-auto-compile" (current-filename) "--child")))
           (_ (do ((i 0 (+ i 1))) ((= i steps)) ; turns, each side first every other step
                (for-each take-step! (if (even? i) sides (reverse sides)))))
           (torch (side-json (car sides)))
           (me (side-json (cadr sides)))
           (ref (lambda (r k) (assq-ref r k)))
           (flop (ref me 'model_gflop))
           (sgemm (ref me 'sgemm_gflops))
           (gflops-me (/ flop (ref me 'step_s)))
           (gflops-torch (/ flop (ref torch 'step_s)))
           (diffs (map (lambda (a b) (abs (- a b)))
                       (take (ref me 'losses) 3) (take (ref torch 'losses) 3))))
      (system* "rm" "-rf" dir (token-file))
      (format #t "bench-train: V256 L4 D256 H4 E8 K2 F512, B~a S~a, AdamW + clip 1.0, ~a threads, ~a steps (~a timed), f32 products on ~a~%"
              B S threads steps (- steps warmup) (matmul-cpu-kernel))
      (format #t "first three losses  moelab ~{~,8f ~}~%                    torch  ~{~,8f ~}  max |diff| ~,2e ~a~%"
              (take (ref me 'losses) 3) (take (ref torch 'losses) 3) (apply max diffs)
              (if (< (apply max diffs) 1e-4) "(ok, < 1e-4)" "(MISMATCH, >= 1e-4)"))
      (format #t "~%~20a ~12@a ~12@a ~10@a  ~a~%" "" "moelab" "pytorch" "ratio" "target")
      (format #t "~20a ~12,0f ~12,0f ~10,2f  >= 1.60 ~a~%" "tokens/s" (ref me 'tokens_per_s)
              (ref torch 'tokens_per_s) (/ (ref me 'tokens_per_s) (ref torch 'tokens_per_s))
              (if (>= (/ (ref me 'tokens_per_s) (ref torch 'tokens_per_s)) 1.6) "met" "MISSED"))
      (format #t "~20a ~12,1f ~12,1f ~10,2f  <= 0.60 ~a~%" "peak RSS (MiB)" (/ (ref me 'peak_rss) 1048576.0)
              (/ (ref torch 'peak_rss) 1048576.0) (/ (ref me 'peak_rss) (ref torch 'peak_rss))
              (if (<= (/ (ref me 'peak_rss) (ref torch 'peak_rss)) 0.6) "met" "MISSED"))
      (format #t "~20a ~12,1f ~12,1f~%" "step (ms)" (* 1000 (ref me 'step_s)) (* 1000 (ref torch 'step_s)))
      (format #t "~20a ~12,2f ~12,2f~%" "model GFLOP/s" gflops-me gflops-torch)
      (format #t "~20a ~12,2f ~12,2f~%" "sgemm GFLOP/s" sgemm (ref torch 'sgemm_gflops))
      (format #t "~20a ~11,1f% ~11,1f%           >= 70% ~a~%" "of sgemm" (* 100 (/ gflops-me sgemm))
              (* 100 (/ gflops-torch (ref torch 'sgemm_gflops)))
              (if (>= (/ gflops-me sgemm) 0.7) "met" "MISSED"))
      (format #t "(model FLOPs per step: ~,2f GFLOP, forward + backward; torch ~a)~%" flop (ref torch 'torch)))))

(let ((args (command-line)))
  (cond ((member "--child" args) (child))
        ((= (length args) 2) (parent (cadr args)))
        (else (format (current-error-port) "usage: bench-train.scm TRAIN_TORCH.PY~%") (exit 2))))
