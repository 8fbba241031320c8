;;; (moelab layer) — the MoE layer: a router, token dispatch, E expert MLPs
;;; and the weighted combine (plus optional shared experts), on one rank or
;;; with the experts sharded over an expert-parallel group.
;;;
;;; Parameter names and layouts (a contract; outside tests set them):
;;;   "router.weight"  [E D]
;;;   "experts.w-gate" [E D F]  (SwiGLU only)   "experts.w-up" [E D F]
;;;   "experts.w-down" [E F D]
;;;   "experts.b-gate" [E F] "experts.b-up" [E F] "experts.b-down" [E D]  (#:bias? #t)
;;;   "shared.w-gate" [D Fs] (SwiGLU)  "shared.w-up" [D Fs]  "shared.w-down" [Fs D]
;;;   "shared.b-gate" [Fs] "shared.b-up" [Fs] "shared.b-down" [D]          (#:bias? #t)
;;;   "shared.gate"   [D 1]  (#:shared-gate? #t)
;;; A SwiGLU expert computes y_e(x) = (silu(x·Wg_e) ⊙ (x·Wu_e))·Wd_e, a GELU
;;; one gelu(x·Wu_e)·Wd_e; the output is Σ_k w_k · y_{e_k}(x) with the
;;; router's weights, plus the shared MLP (times σ(x·g) when gated).
;;;
;;; @example
;;; (define moe (make-moe-layer #:hidden 16 #:ffn 32 #:experts 4 #:top-k 2
;;;               #:router-options '(#:losses ((micro-batch . 1e-2)))))
;;; (define y (moe-forward moe (randn '(64 16) #:seed 1)))     ; [64 16]
;;; (assq-ref (moe-last-routing moe) 'tokens-per-expert)       ; ⇒ (35 33 34 26)
;;; (backward! (tmean (t* y y)))
;;; (tensor-grad (assoc-ref (moe-parameters moe) "experts.w-up"))
;;; @end example

(define-module (moelab layer)
  #:use-module (moelab primitives)
  #:use-module (moelab tensor)
  #:use-module (moelab dist)
  #:use-module ((oop goops) #:select (define-method))
  #:use-module (srfi srfi-1)
  #:re-export (<moe-layer>)
  #:export (make-moe-layer moe-layer? moe-layer-config
            moe-forward moe-last-routing
            moe-parameters moe-parameter set-moe-parameter!
            moe-aux-loss moe-zero-grad! moe-training! moe-training?
            moe-step! moe-metrics))

;; The Scheme group of an expert-parallel layer, kept beside it (weakly keyed
;; by the layer) so every forward can check the group is still usable.
(define layer-group (make-object-property))

(define (ep-group-of who g)
  (cond ((not g) #f)
        ((group? g) g)
        ((or (symbol? g) (and (list? g) (every symbol? g))) (mesh-group g))
        (else (scm-error 'wrong-type-arg who
                         "expected a group, #f or mesh dimensions (e.g. 'ep), got ~s"
                         (list g) (list g)))))

(define* (make-moe-layer #:key hidden ffn experts (top-k 2) (activation 'swiglu)
                         (shared-experts 0) (shared-ffn #f) (shared-gate? #f) (bias? #f)
                         (dtype 'f32) (router-options '()) (ep-group #f) (seed 0)
                         (device 'cpu))
  "A new MoE layer with freshly initialised parameters.

HIDDEN (D), FFN (F, each expert's inner width), EXPERTS (E) and TOP-K (K,
default 2) size it. ACTIVATION is 'swiglu (default), 'gelu or 'gelu-tanh.
SHARED-EXPERTS Ns > 0 adds an always-on MLP of width Ns·F (SHARED-FFN
overrides the width), with a sigmoid gate when SHARED-GATE? is true. BIAS?
adds biases to the expert and shared MLPs. DTYPE ('f32 or 'f64) is that of
the expert and shared parameters.

ROUTER-OPTIONS is a keyword list with the options of make-router, e.g.
@code{'(#:score sigmoid #:dtype f64 #:losses ((micro-batch . 1e-2)))};
hidden, experts, top-k and seed come from the layer. EP-GROUP shards the
experts over a process group (a group, or mesh dimensions such as 'ep; #f:
none): each rank holds E/|ep| experts and the forward is collective over
the group. SEED fixes the initialisation: expert weights ~ N(0, 1/D) (down
projections N(0, 1/F)), biases zero, router weight N(0, 0.02²); expert e's
weights depend only on SEED and e.

DEVICE ('cpu or 'cuda) is where the expert and shared parameters live and
where moe-forward expects its input; the router stays on the host (its
weight and moe-last-routing are CPU tensors). A 'cuda layer starts from the
same values as the 'cpu layer of the same SEED; it needs f32, no BIAS? and
no EP-GROUP for now, and raises a moelab-error when no GPU is available."
  (define (need name v)
    (unless v
      (throw 'moelab-error "make-moe-layer" (string-append "missing #:" name) '() '(arg))))
  (need "hidden" hidden)
  (need "ffn" ffn)
  (need "experts" experts)
  (let* ((g (ep-group-of "make-moe-layer" ep-group))
         (moe (%make-moe-layer (list hidden ffn experts top-k) activation
                               (list shared-experts shared-ffn shared-gate?) bias? dtype
                               router-options g seed device)))
    (when g (set! (layer-group moe) g))
    moe))

(define (moe-layer? obj)
  "True when OBJ is an MoE layer (from make-moe-layer)."
  (%moe-layer? obj))

(define (moe-layer-config moe)
  "The configuration of the layer MOE as an alist: hidden ffn experts top-k
activation shared-ffn (0: no shared experts) shared-gate? bias? dtype
router-dtype ep-size local-experts first-expert seed device."
  (%moe-layer-config moe))

(define* (moe-forward moe x #:key (valid #f))
  "The layer MOE applied to X, [T D] or [B S D] (float), giving a tensor of
the same shape and dtype. VALID ([T] or [B S] bool tensor, #t = real token;
#f: all real) keeps padding tokens away from the experts (they get only the
shared MLP). Differentiable in X and every parameter; the router's aux
losses ride along (or, in its add grad mode, are in moe-aux-loss). The
routing is recorded for moe-last-routing."
  (%moe-forward moe x valid (layer-group moe)))

(define (moe-last-routing moe)
  "The routing of the last forward of MOE as an alist, or #f before the first:
@table @code
@item weights
[T K] combine weights (the router's dtype; in the graph)
@item experts
[T K] i64 expert ids
@item kept
[T K] bool: the slot reached its expert (valid token, not dropped)
@item counts
[E] i64 tokens per expert
@item tokens-per-expert
the same counts as a list
@item dropped
slots dropped by capacity
@item capacity
tokens per expert allowed (#f: dropless)
@item tokens
valid tokens
@item rows
rows dispatched to the experts (padding to capacity included)
@item aux-losses
alist loss kind -> unscaled value
@item aux-total
Σ coefficient·loss, or #f without losses
@end table
The tensors are the layer's own, kept alive by these objects: they remain
valid after the next forward."
  (%moe-last-routing moe))

(define (moe-parameters moe)
  "The parameters of MOE as an alist name -> tensor, in a fixed order
(\"router.weight\", \"experts.w-gate\", \"experts.w-up\", \"experts.w-down\",
the biases, then \"shared.*\"; absent ones skipped). The tensors are the live
parameters (leaves requiring grad): after backward! their tensor-grad holds
the gradients. Under expert parallelism the \"experts.*\" tensors are this
rank's shard [E/|ep| …]."
  (%moe-parameters moe))

(define (moe-parameter moe name)
  "The live parameter NAME (a string, see moe-parameters) of MOE; a
moelab-error listing the known names when there is none."
  (or (assoc-ref (moe-parameters moe) name)
      (throw 'moelab-error "moe-parameter"
             (format #f "no parameter named ~s in this layer (known: ~a)" name
                     (string-join (map car (moe-parameters moe)) ", "))
             '() '(arg))))

(define (set-moe-parameter! moe name t)
  "Copy the tensor T (any float dtype) into the parameter NAME of MOE; T must
have the parameter's shape (under expert parallelism an \"experts.*\"
parameter also takes the full [E …] tensor, of which this rank's shard is
kept). The parameter's gradient is dropped. An unknown NAME raises
moelab-error listing the known ones."
  (%set-moe-parameter! moe name t))

(define (moe-aux-loss moe)
  "The weighted sum of the router's aux losses at the last forward of MOE (a
0-d tensor), or #f without losses or before a forward. With the router's
grad mode 'add it is differentiable: add it to the model loss; in the
default 'inject mode the gradient already rides along and this is the value
only."
  (%moe-aux-loss moe))

(define (moe-zero-grad! moe)
  "Drop the gradient of every parameter of MOE."
  (%moe-zero-grad! moe))

(define* (moe-training! moe #:optional (flag #t))
  "Put MOE in training mode (FLAG #t, the default) or evaluation mode (#f):
the router's jitter, aux losses and load counters run only in training."
  (%moe-training! moe flag))

(define (moe-training? moe)
  "True when MOE is in training mode (the default)."
  (%moe-training? moe))

(define (moe-step! moe)
  "Tell MOE's router that an optimizer step is over: the expert-bias update
(aux-loss-free balancing, when on), the step's metrics, and the reset of the
per-step counters. Call it after the parameter update."
  (%moe-step! moe))

(define (moe-metrics moe)
  "The routing metrics of MOE's router as an alist (tokens per expert over
the last batch and the step, max violation, dead experts, entropy, dropped
fraction, aux-loss values, …; see router-metrics). Read right after
moe-step!, the step statistics describe the step that just ended; an empty
window gives #f statistics."
  (%moe-metrics moe))

;;; ---- printing -------------------------------------------------------------------

(define (layer->string moe)
  (let* ((c (%moe-layer-config moe))
         (ref (lambda (k) (assq-ref c k))))
    (string-append
     (format #f "#<moe-layer D=~a F=~a E=~a K=~a ~a" (ref 'hidden) (ref 'ffn) (ref 'experts)
             (ref 'top-k) (ref 'activation))
     (if (positive? (ref 'shared-ffn))
         (format #f " shared=~a~a" (ref 'shared-ffn) (if (ref 'shared-gate?) " gated" ""))
         "")
     (if (ref 'bias?) " bias" "")
     (if (eq? (ref 'dtype) 'f32) "" (format #f " ~a" (ref 'dtype)))
     (if (> (ref 'ep-size) 1) (format #f " ep=~a" (ref 'ep-size)) "")
     (if (eq? (ref 'device) 'cpu) "" (format #f " ~a" (ref 'device)))
     ">")))

(define-method (write (moe <moe-layer>) port)
  (display (layer->string moe) port))

(define-method (display (moe <moe-layer>) port)
  (display (layer->string moe) port))
