;;; (moelab) — everything: (use-modules (moelab)).
;;;
;;; Re-exports the public bindings of
;;;   (moelab tensor)    making, inspecting, converting and printing tensors
;;;   (moelab ops)       every op (t+ matmul softmax cross-entropy topk …)
;;;   (moelab autograd)  backward!, tensor-grad, no-grad, hooks,
;;;                      define-autograd-function
;;;   (moelab dist)      with-ranks, process groups, the mesh, collectives
;;;   (moelab pipeline)  pipeline parallelism: pipeline-step!, the gpipe and 1f1b schedules
;;;   (moelab router)    routers, routings, load-balancing losses, balance trackers
;;;   (moelab layer)     the MoE layer: make-moe-layer, moe-forward, parameters
;;;   (moelab data)      tokenizers, token files, multi-domain text datasets
;;;   (moelab nn)        the MoE transformer: make-moe-transformer, model-loss, attention
;;;   (moelab train)     optimizers, clip-grad-norm!, lr schedules, metrics files
;;;   (moelab checkpoint) safetensors files, save-model/load-model!, Mixtral export
;;;   (moelab plot)      figures through gnuplot: lines, heatmaps, bars, metrics files
;;;   (moelab notebook)  rich display in notebooks: display-html, display-svg, display-figure
;;;   (moelab trainer)   make-trainer, trainer-step!, trainer-run!, trainer-evaluate
;;;   (moelab config)    %moelab-version and build facts
;;;
;;; @example
;;; (use-modules (moelab))
;;; (define w (randn '(3 4) #:seed 1 #:requires-grad #t))
;;; (define x (randn '(2 4) #:seed 2))
;;; (define loss (tmean (t* (linear x w) (linear x w))))
;;; (backward! loss)
;;; (tensor-grad w)
;;; @end example

(define-module (moelab))

;; Copy every public binding of the parts into this module's public
;; interface (keeping "replaces a core binding" marks, e.g. for exp), so that
;; the interface lists them all by name: ,describe and completion see them.
(eval-when (expand load eval)
  (let ((public (module-public-interface (current-module))))
    (for-each
     (lambda (part)
       (let ((iface (resolve-interface part)))
         (module-for-each
          (lambda (name var)
            (when (hashq-ref (module-replacements iface) name)
              (hashq-set! (module-replacements public) name #t))
            (module-add! public name var))
          iface)))
     '((moelab tensor) (moelab ops) (moelab autograd) (moelab dist) (moelab pipeline) (moelab layer) (moelab router)
       (moelab data) (moelab nn) (moelab train) (moelab checkpoint) (moelab trainer) (moelab plot)
       (moelab notebook)
       (moelab config)))))
