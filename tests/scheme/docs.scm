;;; docs.scm — the public API as a whole: (use-modules (moelab)) gives every
;;; public binding; each procedure and macro has a docstring; each name is
;;; used by at least one of the Scheme test suites.

(include "common.scm")
(use-modules (ice-9 rdelim) (ice-9 documentation))

(test-begin "docs")

(define moelab-interface (resolve-interface '(moelab)))

(define exported
  (sort (module-map (lambda (name var) name) moelab-interface)
        (lambda (a b) (string<? (symbol->string a) (symbol->string b)))))

(define (binding name) (module-ref moelab-interface name))

(define (documentation name)
  ;; what ,describe shows
  (let ((value (binding name)))
    (or (object-documentation value)
        (and (macro? value) (procedure-documentation (macro-transformer value))))))

(define contract
  ;; names that code outside this repository calls (contract names)
  '(tensor zeros ones randn arange tensor->list tensor-shape tensor-dtype tensor-ref
    tensor->f32vector matmul softmax log-softmax cross-entropy topk gather index-add
    rms-norm t+ t- t* t/ requires-grad! backward! tensor-grad zero-grad! detach
    with-no-grad no-grad register-hook! define-autograd-function tensor-free!
    ;; ranks, groups, collectives
    with-ranks current-rank world-size mesh-group group-size group-rank
    all-reduce! all-gather reduce-scatter all-to-all broadcast! barrier
    ;; the MoE layer
    make-moe-layer moe-forward moe-last-routing moe-parameters set-moe-parameter!
    ;; routers and load-balancing losses
    make-router router-weight set-router-weight! router-forward routing-weights
    routing-experts routing-probs routing-map routing-aux-losses router-step!
    router-metrics load-balancing-loss make-balance-tracker balance-tracker-reset!
    z-loss max-violation
    ;; data
    make-text-dataset dataset-next-batch dataset-state dataset-load-state! train-tokenizer
    ;; the transformer
    make-moe-transformer model-forward model-loss model-aux-losses model-routing
    model-parameters model-buffers set-model-parameter! model-config model-zero-grad!
    model-step!
    ;; optimizers, schedules, metrics files
    make-adamw make-sgd optimizer-step! optimizer-zero-grad! optimizer-lr set-optimizer-lr!
    optimizer-state clip-grad-norm! make-lr-schedule make-metrics-log metrics-log-write! read-jsonl
    ;; plots and notebooks
    plot-lines plot-heatmap plot-bars plot-jsonl display-html display-svg display-figure
    ;; the trainer
    make-trainer trainer-step! trainer-run! trainer-evaluate trainer-pause! trainer-resume!
    current-trainer model-gather-parameters
    ;; checkpoints
    save-tensors load-tensors save-model load-model! save-checkpoint load-checkpoint!
    export-hf-mixtral))

(test-group "the contract"
  (for-each (lambda (name)
              (test-assert (string-append "exported: " (symbol->string name))
                (memq name exported)))
            contract))

(test-group "docstrings"
  (for-each
   (lambda (name)
     (let ((value (binding name)))
       (when (or (procedure? value) (macro? value))
         (test-assert (string-append "documented: " (symbol->string name))
           (let ((doc (documentation name)))
             (and (string? doc) (> (string-length doc) 10)))))))
   exported))

;; Every public name must appear in a test suite (this file lists the
;; exports, so it does not count).
(define suites '("tensor.scm" "ops.scm" "autograd.scm" "errors.scm" "printing.scm" "dist.scm" "pipeline.scm"
                 "layer.scm" "router.scm" "data.scm" "router-modes.scm" "model.scm" "model-parallel.scm"
                 "train.scm" "plot.scm" "notebook.scm" "trainer.scm" "checkpoint.scm"
                 "dist-train.scm"))

(define here (dirname (current-filename)))

(define test-text
  (string-concatenate
   (map (lambda (file)
          (call-with-input-file (string-append here "/" file) read-string))
        suites)))

(define (delimiter? c)
  (or (char-whitespace? c) (memv c '(#\( #\) #\' #\`))))

(define (used? name)
  (let ((s (symbol->string name)))
    (let loop ((start 0))
      (let ((i (string-contains test-text s start)))
        (and i
             (or (and (or (zero? i) (delimiter? (string-ref test-text (- i 1))))
                      (let ((end (+ i (string-length s))))
                        (or (= end (string-length test-text))
                            (delimiter? (string-ref test-text end)))))
                 (loop (+ i 1))))))))

(test-group "tests"
  (for-each (lambda (name)
              (unless (memq name '(%moelab-libdir %moelab-have-cuda? %moelab-have-mpi?
                                   %moelab-scheme-dir %moelab-scheme-ccache-dir))
                (test-assert (string-append "tested: " (symbol->string name)) (used? name))))
            exported))

(test-end "docs")
(exit-with-test-status)
