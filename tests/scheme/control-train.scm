;;; control-train.scm — a `moelab train' configuration small enough for the
;;; control-plane tests (tests/scheme/control.scm, control-mpi.sh): a tiny MoE
;;; on tests/data/corpus. (setting 'corpus …) gives the corpus directory;
;;; with --set paused=#t, rank 0's trainer starts paused (the whole job waits
;;; at its first step boundary).
(define corpus (setting 'corpus "tests/data/corpus"))
(define domains (map (lambda (d) (cons d (string-append corpus "/" (symbol->string d))))
                     '(alpha beta)))
(define steps (setting 'steps 4))
(define model
  (make-moe-transformer #:vocab 256 #:layers 1 #:hidden 16 #:heads 2 #:ffn 16
                        #:experts 2 #:top-k 2 #:max-seq 4 #:seed 1))
(define tr
 (make-trainer
 #:model model
 #:optimizer (make-sgd (model-parameters model) #:lr 0.1)
 #:dataset (make-text-dataset #:domains domains #:seq-len 4 #:seed 0)
 #:batch-size 2
 #:print-every 1))
(when (and (setting 'paused #f) (zero? (current-rank)))
  (trainer-pause! tr))
tr
