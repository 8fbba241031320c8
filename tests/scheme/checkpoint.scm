;;; checkpoint.scm — tensors on disk from Scheme: save-tensors and
;;; load-tensors round trips with exact values, metadata, damaged files
;;; refused by name; save-model / load-model! (a failed load changes
;;; nothing); save-checkpoint / load-checkpoint! (step directories,
;;; keep-last, the latest of a run, every part restored, NaN refused unless
;;; allowed, a failed load puts back what it had changed); the Mixtral
;;; export's names and layouts and its refusals. Exact resumption across
;;; processes and SIGKILL during writes: resume.sh; other readers:
;;; safetensors-interop.sh.

(include "common.scm")
(use-modules (ice-9 binary-ports) (rnrs bytevectors) (ice-9 ftw) (moelab primitives))

(test-begin "checkpoint")

(define top (string-append (dirname (current-filename)) "/../.."))
(define tmp (string-append (or (getenv "TMPDIR") "/tmp") "/moelab-checkpoint-test-" (number->string (getpid))))
(mkdir tmp)
(define (at name) (string-append tmp "/" name))

(define (flip-byte! file pos)
  ;; POS < 0 counts from the end (the data)
  (let* ((bv (call-with-input-file file get-bytevector-all #:binary #t))
         (pos (if (< pos 0) (+ pos (bytevector-length bv)) pos)))
    (bytevector-u8-set! bv pos (logxor 1 (bytevector-u8-ref bv pos)))
    (call-with-output-file file (lambda (p) (put-bytevector p bv)) #:binary #t)))

(define (copy-file* from to)
  (call-with-output-file to
    (lambda (p) (put-bytevector p (call-with-input-file from get-bytevector-all #:binary #t)))
    #:binary #t))

;;; ---- tensors ----------------------------------------------------------------------

(test-group "save-tensors and load-tensors"
  (let ((a (tensor '((1.5 -2.0) (0.25 3.0)) #:dtype 'f64))
        (b (tensor '(7 -8 9) #:dtype 'i32)))
    (save-tensors (at "t.safetensors") `(("a" . ,a) ("b" . ,b)) #:metadata '(("note" . "hi")))
    (let ((t (load-tensors (at "t.safetensors"))))
      (test-equal "names in order" '("a" "b") (map car t))
      (test-equal "f64 values" '((1.5 -2.0) (0.25 3.0)) (tensor->list (assoc-ref t "a")))
      (test-equal "i32 dtype" 'i32 (tensor-dtype (assoc-ref t "b")))
      (test-equal "i32 values" '(7 -8 9) (tensor->list (assoc-ref t "b"))))
    (let ((meta (tensor-file-metadata (at "t.safetensors"))))
      (test-equal "metadata" "hi" (assoc-ref meta "note"))
      (test-equal "checksum kind" "sha256" (assoc-ref meta "moelab.checksum"))
      (test-equal "checksum digits" 64 (string-length (assoc-ref meta "moelab.sha256"))))
    (test-moelab-error "metadata must be strings" "#:metadata must be an alist of strings"
                       (save-tensors (at "u.safetensors") `(("a" . ,a)) #:metadata '(("k" . 1))))
    (test-moelab-error "not a tensor" "entry 0 is not a (name . tensor) pair"
                       (save-tensors (at "u.safetensors") '(("a" . 1))))
    (test-assert "nothing written on error" (not (file-exists? (at "u.safetensors"))))
    (test-moelab-error "missing file" "cannot open" (load-tensors (at "none.safetensors")))
    (flip-byte! (at "t.safetensors") -3)
    (test-moelab-error "a flipped data byte" "t.safetensors: checksum mismatch"
                       (load-tensors (at "t.safetensors")))))

;;; ---- models -----------------------------------------------------------------------

(define* (tiny #:key (seed 1) (hidden 16) (extra '()))
  (make-moe-transformer #:vocab 256 #:layers 2 #:hidden hidden #:heads 2 #:ffn 16 #:experts 4 #:top-k 2
                        #:dense-ffn 16 #:max-seq 16 #:dtype 'f64 #:seed seed
                        #:router-options `(#:losses ((micro-batch . 1e-2)) ,@extra)))

(define (snapshot m)
  (map (lambda (e) (cons (car e) (tensor->list (cdr e)))) (append (model-parameters m) (model-buffers m))))

(test-group "save-model and load-model!"
  (let ((a (tiny #:seed 1 #:extra '(#:expert-bias? #t)))
        (b (tiny #:seed 2 #:extra '(#:expert-bias? #t)))
        (wide (tiny #:hidden 24 #:extra '(#:expert-bias? #t))))
    (set-model-parameter! a "layers.0.moe.router.expert-bias" (tensor '(0.5 -0.5 0.25 0.0)))
    (save-model a (at "a.safetensors") #:metadata '(("run" . "a")))
    (save-model wide (at "wide.safetensors"))
    (let ((t (load-tensors (at "a.safetensors"))))
      (test-equal "bias stays f32" 'f32 (tensor-dtype (assoc-ref t "layers.0.moe.router.expert-bias")))
      (test-equal "weights f64" 'f64 (tensor-dtype (assoc-ref t "embed"))))
    (let ((before (snapshot b)))
      (test-moelab-error "another shape" "tensor \"embed\" is [256 24] in the file, the model's is [256 16]"
                         (load-model! b (at "wide.safetensors")))
      (test-moelab-error "not a model file" "load-model!" (load-model! b (at "t.safetensors")))
      (test-equal "failed loads change nothing" before (snapshot b)))
    (load-model! b (at "a.safetensors"))
    (test-equal "loaded = saved" (snapshot a) (snapshot b))))

;;; ---- trainer checkpoints ------------------------------------------------------------

(define* (small-trainer #:key (seed 1) (batch-size 2) (domains #f))
  (let ((m (tiny #:seed seed #:extra '(#:expert-bias? #t #:jitter 0.1))))
    (make-trainer #:model m #:optimizer (make-adamw (model-parameters m) #:lr 1e-2)
                  #:dataset (make-text-dataset
                             #:domains (or domains `((c . ,(string-append top "/tests/data/spm-train.txt"))))
                             #:seq-len 16 #:seed 3)
                  #:batch-size batch-size)))

(define (trainer-snapshot tr)
  (list (trainer-steps tr) (trainer-tokens tr) (snapshot (trainer-model tr))
        (map (lambda (e) (cons (car e) (if (tensor? (cdr e)) (tensor->list (cdr e)) (cdr e))))
             (optimizer-state (trainer-optimizer tr)))
        (dataset-state (trainer-dataset tr))))

(test-group "save-checkpoint and load-checkpoint!"
  (let ((tr (small-trainer)) (run (at "run")))
    (trainer-step! tr) (trainer-step! tr)
    (test-equal "the step directory" (string-append run "/step-0000002") (save-checkpoint tr run))
    (test-equal "its files" '("model.safetensors" "optimizer.safetensors" "trainer.json")
                (scandir (string-append run "/step-0000002") (lambda (n) (not (string-prefix? "." n)))))
    (let ((tokens (trainer-tokens tr)))
      (trainer-load-state! tr '((step . 2) (tokens . 0) (lr . 1e-2) (batch-size . 2) (grad-accum . 1)))
      (save-checkpoint tr run)
      (test-equal "a step saved again replaces the old directory" 0
                  (assq-ref (assq-ref (%read-json-file "test" (string-append run "/step-0000002/trainer.json")) 'trainer)
                            'tokens))
      (test-equal "no temporary directory left" '()
                  (scandir run (lambda (n) (string-prefix? ".tmp" n))))
      (trainer-load-state! tr `((step . 2) (tokens . ,tokens) (lr . 1e-2) (batch-size . 2) (grad-accum . 1))))
    (trainer-step! tr)
    (save-checkpoint tr run #:keep-last 2)
    (trainer-step! tr)
    (save-checkpoint tr run #:keep-last 2)
    (test-equal "keep-last 2" '(3 4) (map car (checkpoint-steps run)))
    (test-equal "latest" (string-append run "/step-0000004") (latest-checkpoint run))
    ;; a fresh trainer takes the run's latest state, and both go on alike
    (let ((fresh (small-trainer #:seed 7)))
      (test-equal "load a run directory" (string-append run "/step-0000004") (load-checkpoint! fresh run))
      (test-equal "everything restored" (trainer-snapshot tr) (trainer-snapshot fresh))
      (trainer-step! tr) (trainer-step! fresh)
      (test-equal "the next step agrees" (trainer-snapshot tr) (trainer-snapshot fresh)))
    ;; NaN weights: refused unless asked, and nothing changes
    (let* ((bad (at "nan-step")) (fresh (small-trainer #:seed 7)) (before (trainer-snapshot fresh)))
      (mkdir bad)
      (for-each (lambda (f) (copy-file* (string-append run "/step-0000004/" f) (string-append bad "/" f)))
                '("optimizer.safetensors" "trainer.json"))
      (let ((t (load-tensors (string-append run "/step-0000004/model.safetensors"))))
        (save-tensors (string-append bad "/model.safetensors")
                      (map (lambda (e) (if (equal? (car e) "norm")
                                           (cons "norm" (t* (cdr e) (tensor +nan.0 #:dtype 'f64)))
                                           e))
                           t)))
      (test-moelab-error "NaN refused" "tensor \"norm\" has non-finite values" (load-checkpoint! fresh bad))
      (test-equal "refused: nothing changed" before (trainer-snapshot fresh))
      (load-checkpoint! fresh bad #:allow-non-finite? #t)
      (test-equal "allowed: loaded" 4 (trainer-steps fresh))
      (test-assert "allowed: the NaN is in" (nan? (car (tensor->list (model-parameter (trainer-model fresh) "norm"))))))
    ;; failures part way: the batch settings, the dataset (after the trainer
    ;; and optimizer were loaded), a damaged file
    (let* ((other (small-trainer #:seed 7 #:batch-size 3)) (before (trainer-snapshot other)))
      (test-moelab-error "another batch size" "batch-size 2" (load-checkpoint! other run))
      (test-equal "batch size: nothing changed" before (trainer-snapshot other)))
    (let* ((other (small-trainer #:seed 7 #:domains `((c . ,(string-append top "/tests/data/spm-train.txt"))
                                                      (s . ,(string-append top "/tests/reference/gen_router_refs.py")))))
           (before (trainer-snapshot other)))
      (test-moelab-error "another dataset" "dataset-load-state!" (load-checkpoint! other run))
      (test-equal "dataset: trainer and optimizer put back" before (trainer-snapshot other)))
    (let* ((other (small-trainer #:seed 7)) (before (trainer-snapshot other)))
      (flip-byte! (string-append run "/step-0000003/optimizer.safetensors") -5)
      (test-moelab-error "damaged optimizer file" "step-0000003/optimizer.safetensors: checksum mismatch"
                         (load-checkpoint! other (string-append run "/step-0000003")))
      (test-equal "damaged: nothing changed" before (trainer-snapshot other)))
    (test-moelab-error "no checkpoint" "no checkpoint in" (load-checkpoint! tr tmp))))

(test-group "trainer state and periodic checkpoints"
  (let* ((m (tiny #:extra '(#:expert-bias? #t)))
         (tr (make-trainer #:model m #:optimizer (make-sgd (model-parameters m) #:lr 0.5)
                           #:dataset (make-text-dataset #:domains `((c . ,(string-append top "/tests/data/spm-train.txt")))
                                                        #:seq-len 16)
                           #:batch-size 2 #:checkpoint-dir (at "every") #:checkpoint-every 2 #:keep-last 2)))
    (test-equal "trainer-checkpoint-dir" (at "every") (trainer-checkpoint-dir tr))
    (for-each (lambda (i) (trainer-step! tr)) (iota 5))
    (test-equal "every 2 steps, the last 2 kept" '(2 4) (map car (checkpoint-steps (at "every"))))
    (test-equal "trainer-state" '((step . 5) (tokens . 160) (lr . 0.5) (schedule? . #f) (batch-size . 2) (grad-accum . 1))
                (trainer-state tr))
    (trainer-load-state! tr '(("step" . 4) ("tokens" . 128) ("lr" . 0.25) ("batch-size" . 2) ("grad-accum" . 1)))
    (test-equal "trainer-load-state!" '(4 128 0.25) (list (trainer-steps tr) (trainer-tokens tr) (optimizer-lr (trainer-optimizer tr))))
    (test-moelab-error "another grad-accum" "grad-accum 2"
                       (trainer-load-state! tr '((step . 1) (tokens . 0) (lr . 1.0) (batch-size . 2) (grad-accum . 2))))
    (test-equal "refused: unchanged" 4 (trainer-steps tr))
    (test-moelab-error "#:checkpoint-every without a directory" "needs a #:checkpoint-dir"
                       (make-trainer #:model m #:optimizer (trainer-optimizer tr) #:dataset (trainer-dataset tr)
                                     #:checkpoint-every 3))))

;;; ---- Mixtral -------------------------------------------------------------------------

(test-group "export-hf-mixtral"
  (let* ((m (tiny))
         (hf (hf-mixtral-tensors m)))
    (test-equal "tensor count: 3 + 2 layers × (7 + 4 experts × 3)" 41 (length hf))
    (test-equal "w2 of expert 1 is w-down[1] transposed"
                (tensor->list (transpose (narrow (model-parameter m "layers.1.moe.experts.w-down") 0 1 1) 1 2))
                (list (tensor->list (assoc-ref hf "model.layers.1.block_sparse_moe.experts.1.w2.weight"))))
    (test-equal "gate" (tensor->list (model-parameter m "layers.0.moe.router.weight"))
                (tensor->list (assoc-ref hf "model.layers.0.block_sparse_moe.gate.weight")))
    (export-hf-mixtral m (at "hf"))
    (test-equal "files" '("config.json" "model.safetensors")
                (scandir (at "hf") (lambda (n) (not (string-prefix? "." n)))))
    (test-moelab-error "expert bias has no Mixtral equivalent" "aux-loss-free expert bias"
                       (export-hf-mixtral (tiny #:extra '(#:expert-bias? #t)) (at "hf2")))
    (test-moelab-error "dense layers" "every layer must be an MoE layer"
                       (export-hf-mixtral (make-moe-transformer #:vocab 16 #:layers 2 #:hidden 8 #:heads 2
                                                                #:ffn 8 #:experts 2 #:first-dense 1
                                                                #:dense-ffn 8 #:max-seq 8)
                                          (at "hf2")))
    (test-assert "nothing written" (not (file-exists? (at "hf2"))))))

(system* "rm" "-rf" tmp)
(test-end "checkpoint")
