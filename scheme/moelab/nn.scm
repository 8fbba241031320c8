;;; (moelab nn) — the MoE transformer: a pre-norm decoder whose feed-forward
;;; blocks are MoE layers, with its parameters by name; and attention and
;;; RoPE on their own.
;;;
;;; Parameter names and shapes (a contract; outside tests set them):
;;;   "embed" [V D]   "norm" [D]   "lm-head" [V D] (absent when tied)
;;;   "layers.N.attn-norm" [D]  "layers.N.ffn-norm" [D]
;;;   "layers.N.attn.wq" [H·hd D]  ".wk" ".wv" [KV·hd D]  ".wo" [D H·hd]
;;;   "layers.N.moe.<the MoE layer's names>" (router.weight [E D], experts.w-gate …)
;;;   "layers.N.mlp.w-gate" "layers.N.mlp.w-up" [Fd D]  "layers.N.mlp.w-down" [D Fd]
;;; Buffers: "layers.N.moe.router.expert-bias" [E] (f32) with expert bias on.
;;;
;;; Parallel parts: #:stage, #:ep-group and #:dp-group make the model one
;;; rank's part of a parallel model (its pipeline stage's layers, its shard
;;; of every layer's experts, the routers' data-parallel group), with global
;;; names and the one-rank model's values; see make-moe-transformer.
;;;
;;; @example
;;; (define m (make-moe-transformer #:vocab 256 #:layers 2 #:hidden 64 #:heads 4
;;;             #:ffn 128 #:experts 4 #:top-k 2 #:max-seq 32))
;;; (define tokens (randint 0 256 '(2 32) #:seed 1))
;;; (define loss (model-loss m tokens tokens))
;;; (backward! loss)
;;; (tensor-grad (model-parameter m "layers.0.attn.wq"))
;;; (model-aux-losses m)          ; ⇒ (((micro-batch . 1.0…) (z . 1.3…)) …)
;;; @end example

(define-module (moelab nn)
  #:use-module (moelab primitives)
  #:use-module (moelab tensor)
  #:use-module (moelab dist)
  #:use-module ((oop goops) #:select (define-method))
  #:re-export (<moe-transformer>)
  #:export (make-moe-transformer moe-transformer? model-config
            model-stage model-ep-size model-expert-offset
            model-forward model-loss model-aux-losses model-routing model-moe-layers
            model-parameters model-parameter model-buffers set-model-parameter!
            model-zero-grad! model-step! model-training! model-training?
            set-model-grad-accum! model-flops
            attention rope))

;; The Scheme groups of a model that is part of a parallel model, kept beside
;; it (weakly keyed by the model) so that every collective call can check
;; they are still usable on this thread.
(define model-groups (make-object-property))

(define (groups-of m)
  (or (model-groups m) '()))

(define (group-arg who key g)
  (cond ((not g) #f)
        ((group? g) g)
        ((or (symbol? g) (and (pair? g) (list? g) (and-map symbol? g))) (mesh-group g))
        (else (scm-error 'wrong-type-arg who
                         "~a expects a group (from world-group or mesh-group), mesh dimensions such as 'ep, or #f; got ~s"
                         (list key g) (list g)))))

(define* (make-moe-transformer #:key (vocab 256) (layers 4) (hidden 256) (heads 4) (kv-heads #f)
                               (ffn 512) (experts 8) (top-k 2) (moe-every 1) (first-dense 0)
                               (dense-ffn 1024) (shared-experts 0) (shared-ffn #f)
                               (max-seq 256) (rope-theta 10000.0) (norm-eps 1e-5)
                               (tie-embeddings? #f) (init-std 0.02)
                               (router-options '()) (attention 'fused)
                               (dtype 'f32) (device 'cpu) (seed 0)
                               (ep-group #f) (dp-group #f) (stage #f))
  "A new MoE transformer (pre-norm decoder) with freshly initialised
parameters.

VOCAB (V), LAYERS (L), HIDDEN (D), HEADS (H; it must divide D and the head
dim D/H must be even) and KV-HEADS (KV, dividing H: grouped-query attention
when smaller; #f, the default, means H) size the attention; MAX-SEQ is the longest sequence, ROPE-THETA
the RoPE base, NORM-EPS the RMSNorm epsilon. Layer ℓ (from 0) gets an MoE
feed-forward block when ℓ ≥ FIRST-DENSE and (ℓ − FIRST-DENSE) is a multiple
of MOE-EVERY, else a dense SwiGLU MLP of width DENSE-FFN. The MoE layers have
EXPERTS experts of width FFN, TOP-K of them per token, and SHARED-EXPERTS
always-on experts (one MLP of width SHARED-EXPERTS·FFN, or SHARED-FFN when
given). TIE-EMBEDDINGS? computes the logits with \"embed\" (no \"lm-head\").

ROUTER-OPTIONS is a keyword list of make-router options for every MoE
layer, applied over the default @code{(#:losses ((micro-batch . 1e-2) (z
. 1e-3)))}; e.g. @code{'(#:score sigmoid #:expert-bias? #t #:losses ())}.
The routers compute in DTYPE ('f32 or 'f64, that of every parameter).
ATTENTION is 'fused (the blocked kernel) or 'plain (matmul and softmax: the
test oracle). DEVICE is 'cpu.

Init (SEED; identical for any thread count): matrices N(0, INIT-STD²), the
residual outputs (attn.wo and every w-down) scaled by 1/√(2·LAYERS), norms
1. Bad sizes raise a moelab-error naming the values.

One rank's part of a parallel model (the sizes stay those of the whole
model; names and layer numbers stay global; each tensor has the value it
has in the one-rank model of the same SEED):
@table @code
@item #:stage (FIRST . LAST)
the pipeline stage holding layers FIRST … LAST−1 (#f: all): \"embed\" on the
stage with FIRST = 0, \"norm\" and \"lm-head\" on the one with LAST = LAYERS.
Tied embeddings need the whole model on one stage.
@item #:ep-group G
every MoE layer's experts sharded over the group G (from mesh-group or
world-group, or mesh dimensions such as 'ep): this rank holds the E/|G| experts from model-expert-offset on,
and the forward is collective over G. EXPERTS must be a multiple of |G|.
@item #:dp-group G
the routers' data-parallel group (a group or mesh dimensions, e.g. '(dp ep)): global-batch counts, expert-bias and
quantile-balancing updates and the step metrics are summed over G.
@end table"
  (let ((ep (group-arg "make-moe-transformer" "#:ep-group" ep-group))
        (dp (group-arg "make-moe-transformer" "#:dp-group" dp-group)))
    (let ((m (%make-moe-transformer
              `((vocab . ,vocab) (layers . ,layers) (hidden . ,hidden) (heads . ,heads)
                (kv-heads . ,(or kv-heads heads)) (ffn . ,ffn) (experts . ,experts) (top-k . ,top-k)
                (moe-every . ,moe-every) (first-dense . ,first-dense) (dense-ffn . ,dense-ffn)
                (shared-experts . ,shared-experts) (shared-ffn . ,shared-ffn) (max-seq . ,max-seq)
                (rope-theta . ,rope-theta) (norm-eps . ,norm-eps) (tie-embeddings? . ,tie-embeddings?)
                (init-std . ,init-std) (attention . ,attention) (dtype . ,dtype) (device . ,device)
                (seed . ,seed) (ep-group . ,ep) (dp-group . ,dp) (stage . ,stage))
              router-options)))
      (let ((groups (filter identity (list ep dp))))
        (unless (null? groups) (set! (model-groups m) groups)))
      m)))

(define (moe-transformer? obj)
  "True when OBJ is a model made by make-moe-transformer."
  (%moe-transformer? obj))

(define (model-config m)
  "The configuration of the model M as an alist, one entry per keyword of
make-moe-transformer (vocab layers hidden heads kv-heads …) plus router: the
routers' effective options (as router-config gives them). For a part of a
parallel model it is the whole model's configuration (the same on every
rank; no #:stage and no groups), so it rebuilds the model for any layout."
  (%model-config m))

(define (model-stage m)
  "The layers of M as a pair (FIRST . LAST): M holds layers FIRST … LAST−1
(@code{(0 . L)} for a whole model)."
  (let ((p (%model-parallel-part m)))
    (cons (car p) (cadr p))))

(define (model-ep-size m)
  "The size of M's expert-parallel group (1 without #:ep-group): M holds
E/(model-ep-size M) experts of each MoE layer."
  (caddr (%model-parallel-part m)))

(define (model-expert-offset m)
  "The first (global) expert of M's experts.* shards: row i of such a tensor
is expert (model-expert-offset M) + i (0 without #:ep-group)."
  (cadddr (%model-parallel-part m)))

(define (model-forward m tokens)
  "The logits [B S V] of the model M for TOKENS, an i64 [B S] tensor of
token ids in [0, V) with S ≤ max-seq. Differentiable in every parameter;
records each MoE layer's routing (model-routing).

On a pipeline stage without \"embed\" (see #:stage) TOKENS is instead the
previous stage's hidden state [B S D] (the model dtype; it may require
grad), and a stage without the head returns its last layer's hidden state
[B S D] (before the final norm) instead of the logits."
  (%model-forward m tokens (groups-of m)))

(define* (model-loss m tokens targets #:key (ignore-index -100))
  "The mean cross-entropy (a 0-d tensor) of the model M's logits for TOKENS
[B S] against TARGETS [B S] (i64), over the targets that are not
IGNORE-INDEX (default -100). With the routers' default grad mode 'inject
each MoE layer's coefficient × ∂aux reaches the routers in backward! and the
value is the cross-entropy alone; in grad mode 'add the value is the
cross-entropy plus every layer's Σ coefficient × aux. On the last pipeline
stage TOKENS is the hidden state [B S D] as for model-forward; on another
stage model-loss raises a moelab-error (it holds no head)."
  (%model-loss m tokens targets ignore-index (groups-of m)))

(define (model-aux-losses m)
  "For each MoE layer of M (in layer order, see model-moe-layers), the alist
loss kind -> unscaled value of the last forward, e.g.
@code{(((micro-batch . 1.02) (z . 2.3)) …)}."
  (%model-aux-losses m))

(define (model-routing m)
  "For each MoE layer of M (in layer order), the routing of the last forward
as moe-last-routing gives it (#f before the first forward)."
  (%model-routing m))

(define (model-moe-layers m)
  "The layer numbers (from 0) of M's MoE layers, in order: the layers that
model-routing and model-aux-losses describe."
  (%model-moe-layers m))

(define (model-parameters m)
  "The trained parameters of M as an alist name -> tensor, in a fixed order
(embed, then per layer attn-norm, attn.wq/wk/wv/wo, ffn-norm, the moe.* or
mlp.* tensors, then norm and lm-head). The tensors are the live leaves: after
backward! their tensor-grad holds the gradients."
  (%model-parameters m))

(define (model-parameter m name)
  "The live parameter or buffer NAME (a string) of M; a moelab-error when
there is none."
  (or (%model-parameter m name)
      (throw 'moelab-error "model-parameter"
             (format #f "no parameter named ~s in this model (see model-parameters)" name)
             '() '(arg))))

(define (model-buffers m)
  "The state of M that is not trained, as an alist name -> tensor: each MoE
layer's expert bias (\"layers.N.moe.router.expert-bias\", f32 [E]) when
the routers use aux-loss-free balancing."
  (%model-buffers m))

(define (set-model-parameter! m name t)
  "Copy the tensor T (any float dtype, exactly the shape) into the parameter
or buffer NAME of M; a parameter's gradient is dropped. An unknown name or a
wrong shape raises a moelab-error and leaves M unchanged. With #:ep-group an
experts.* tensor takes the rank's shard [E/ep …] or the full [E …] tensor
(of which the rank's rows are taken)."
  (%set-model-parameter! m name t))

(define (model-zero-grad! m)
  "Drop the gradient of every parameter of M."
  (%model-zero-grad! m))

(define (model-step! m)
  "Tell every router of M that an optimizer step is over (call it after the
parameter update): the expert-bias update, the step's metrics, and the
reset of the per-step counters and global-batch buffers."
  (%model-step! m (groups-of m)))

(define* (model-training! m #:optional (flag #t))
  "Put M in training mode (FLAG #t, the default) or evaluation mode (#f): the
routers' jitter and load counters run only in training."
  (%model-training! m flag))

(define (model-training? m)
  "True when M is in training mode (the default)."
  (%model-training? m))

(define (set-model-grad-accum! m n)
  "Tell M's routers that an optimizer step accumulates N micro-batches: the
injected aux gradients are scaled by 1/N like the loss."
  (%set-model-grad-accum! m n))

(define* (model-flops m batch seq #:key (backward? #t))
  "Model FLOPs (2 per multiply-add, active experts only, causal attention
pairs) of M over BATCH sequences of SEQ tokens: forward and backward (3× the
forward), or the forward alone when BACKWARD? is #f. Always those of the
whole model, whatever part of it M holds."
  (%model-flops m batch seq backward?))

(define* (attention q k v #:key (causal? #t) (impl 'fused))
  "Scaled-dot-product attention: Q [B S H hd], K and V [B S KV hd] (KV
divides H; query head h reads kv head ⌊h·KV/H⌋) give [B S H hd] =
softmax(q kᵀ/√hd) v over the keys up to each query (all keys when CAUSAL? is
#f). IMPL 'fused is the blocked kernel that keeps O(B·H·S) statistics for
the backward; 'plain composes matmul and softmax."
  (%attention q k v causal? impl))

(define* (rope x #:key (theta 10000.0))
  "Rotary position embeddings of X [B S N hd] (hd even) with the rotate-half
pairing: element i pairs with i + hd/2 and the pair at position s turns by
s·THETA^(−2i/hd)."
  (%rope x theta))

;;; ---- printing ----------------------------------------------------------------------

(define-method (write (m <moe-transformer>) port)
  (display (%model-repr m) port))

(define-method (display (m <moe-transformer>) port)
  (display (%model-repr m) port))
