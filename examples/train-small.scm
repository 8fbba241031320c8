;;; train-small.scm — a small MoE language model on the six-domain corpus
;;; (data/corpus, built by scripts/make-corpus): a few minutes on two cores.
;;; moelab train configuration
;;;
;;;   moelab train examples/train-small.scm
;;;   moelab train examples/train-small.scm --steps 50 --set z=0 --set lr=3e-3
;;;
;;; `moelab train' evaluates this file in a fresh module that uses (moelab);
;;; (setting 'KEY DEFAULT) reads `--set KEY=VALUE' from the command line. The
;;; value of the last expression is the trainer.

(define corpus (setting 'corpus "data/corpus"))
(define domains
  (map (lambda (d) (cons d (string-append corpus "/" (symbol->string d))))
       '(bible fortune c scheme python info)))

(define seq-len (setting 'seq-len 256))
(define steps (setting 'steps 500))
(define lr (setting 'lr 3e-3))

(define model
  (make-moe-transformer #:vocab 256 #:layers 2 #:hidden 128 #:heads 4 #:ffn 128
                        #:experts 8 #:top-k 2 #:max-seq seq-len
                        #:router-options `(#:score softmax
                                           #:losses ((,(setting 'balance 'global-batch)
                                                      . ,(setting 'balance-coefficient 1e-2))
                                                     (z . ,(setting 'z 1e-3))))
                        #:seed (setting 'seed 0)))

(make-trainer
 #:model model
 #:optimizer (make-adamw (model-parameters model) #:lr lr #:weight-decay 0.1)
 #:dataset (make-text-dataset #:domains domains #:seq-len seq-len #:seed 0)
 #:val-dataset (make-text-dataset #:domains domains #:seq-len seq-len #:split 'val)
 #:batch-size (setting 'batch-size 8)
 #:grad-accum 1
 #:schedule (make-lr-schedule 'cosine #:lr lr #:warmup (min 20 (quotient steps 5)) #:total steps
                             #:min-lr (/ lr 10))
 #:clip 1.0
 #:log (setting 'log "runs/train-small/metrics.jsonl")
 #:eval-every 100
 #:eval-batches 4
 #:config `((example . "train-small")))
