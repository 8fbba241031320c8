;;; (moelab router) — MoE routers and the load-balancing losses (the maths
;;; is in the manual, "Routers and balancing losses"; the C core in core/moe/).
;;;
;;; A router scores each token against E experts with a gate weight [E D],
;;; picks K of them (top-k, group-limited, sinkhorn or debug routing), applies
;;; capacity, and computes the balance losses it was configured with. Presets
;;; ('megatron 'olmo-core 'torchtitan 'megablocks 'deepseek-v3 'qwen-global)
;;; set every convention of that framework; explicit keywords override them.
;;; The losses also stand alone, as differentiable functions of logits.
;;;
;;; @example
;;; (define r (make-router #:hidden 16 #:experts 8 #:top-k 2
;;;             #:losses '((micro-batch . 1e-2) (z . 1e-3))))
;;; (define out (router-forward r (randn '(32 16) #:seed 1)))
;;; (routing-experts out)            ; i64[32 2]
;;; (routing-aux-losses out)         ; ((micro-batch . #<tensor …>) (z . #<tensor …>))
;;; (router-step! r)                 ; after the optimizer step
;;; (assq-ref (router-metrics r) 'max-violation-global)
;;; (routing-report out)             ; tokens per expert, shares, dead experts, MaxVio
;;;
;;; (define z (randn '(64 8) #:dtype 'f64 #:requires-grad #t))
;;; (backward! (load-balancing-loss 'micro-batch z #:top-k 2))
;;; (tensor-grad z)
;;; @end example

(define-module (moelab router)
  #:use-module (moelab primitives)
  #:use-module (moelab tensor)
  #:use-module (moelab dist)
  #:use-module ((oop goops) #:select (define-method))
  #:use-module ((ice-9 format) #:select (format))
  #:use-module (srfi srfi-1)
  #:re-export (<router> <routing> <balance-tracker>)
  #:export (make-router router? router-config router-weight set-router-weight!
            router-bias set-router-bias! router-set-groups! router-training!
            router-recomputing! router-set-grad-scale!
            router-forward router-step! router-metrics router-state router-load-state!
            router-replay! router-replay-record router-qb-beta set-router-qb-beta!
            routing? routing-weights routing-experts routing-probs routing-map
            routing-kept routing-logits routing-counts routing-aux-losses
            routing-aux-total routing-tokens routing-capacity routing-dropped
            load-balancing-loss z-loss megablocks-batched-loss
            make-balance-tracker balance-tracker? balance-tracker-reset!
            balance-tracker-counts balance-tracker-tokens balance-tracker-micro-batches
            balance-tracker-add-counts!
            max-violation balance-stats
            routing-report))

;;; ---- arguments ------------------------------------------------------------------------

(define (as-mask who m)
  ;; #f, a tensor, or a (nested) list of booleans/numbers
  (cond ((or (not m) (tensor? m)) m)
        ((list? m) (tensor m #:dtype 'bool))
        (else (scm-error 'wrong-type-arg who "expected a mask tensor, a list or #f, got ~s"
                         (list m) (list m)))))

(define (as-ids who v)
  (cond ((or (not v) (tensor? v)) v)
        ((list? v) (tensor v #:dtype 'i64))
        (else (scm-error 'wrong-type-arg who "expected an i64 tensor, a list or #f, got ~s"
                         (list v) (list v)))))

(define (as-counts who v)
  (cond ((tensor? v) v)
        ((and (list? v) (every real? v)) (tensor v #:dtype 'f64))
        (else (scm-error 'wrong-type-arg who "expected a counts tensor [E] or a list of numbers, got ~s"
                         (list v) (list v)))))

(define (as-group who g)
  ;; #f (size 1), a group, or mesh dimensions such as 'dp or '(cp tp)
  (cond ((or (not g) (group? g)) g)
        ((or (symbol? g) (and (list? g) (every symbol? g))) (mesh-group g))
        (else (scm-error 'wrong-type-arg who "expected a group, mesh dimensions or #f, got ~s"
                         (list g) (list g)))))

;;; ---- routers ------------------------------------------------------------------------------

(define (make-router . options)
  "A router, configured by keywords (defaults in brackets):

@table @code
@item #:hidden D, #:experts E, #:top-k K
Sizes (required). The gate weight is [E D], N(0, 0.02²) from #:seed.
@item #:score ['softmax]
'sigmoid, or 'sqrtsoftplus (s = sqrt(softplus(z)), Megatron-Core's; handled
like sigmoid: selection on s (+ expert bias), weights renormalised when K > 1,
loss scores s/(sum s + 1e-20)).
@item #:pre-softmax? [#f]
softmax over all E then top-k (else top-k on the logits, softmax over the K).
@item #:normalize? ['auto]
renormalise the K weights: 'auto (sigmoid with K > 1), #t or #f.
@item #:groups [#f], #:group-top-k [#f], #:group-score-top ['auto]
group-limited routing: keep the best group-top-k of G groups, a group
scored by the sum of its top m scores ('auto: m = floor(K/group-top-k)).
@item #:scaling-factor [1.0], #:jitter [0.0]
@item #:capacity-factor [#f], #:capacity-formula ['megatron], #:drop-policy ['probs], #:pad-to-capacity? [#f]
capacity per expert, 'megatron (ceil(T·K/E·cf)) or 'megablocks
(floor(cf·K·T·ep/E)); drop the lowest-weight ('probs) or latest
('position) tokens.
@item #:expert-bias? [#f], #:bias-rate [1e-3], #:bias-center? [#f]
aux-loss-free balancing: a selection-only bias updated by router-step!.
@item #:losses ['()]
an alist (kind . coefficient), kinds micro-batch sequence global-batch
olmo-local-batch olmo-instance megablocks z.
@item #:count-from ['topk]
counts for the losses from the plain top-k of the loss scores, or 'actual.
@item #:grad-mode ['inject]
'inject: the aux gradient rides on the routing weights' backward; 'add: add
(routing-aux-total out) to the model loss yourself.
@item #:preset [#f]
'megatron 'olmo-core 'torchtitan 'megablocks 'deepseek-v3 'qwen-global,
applied first; other keywords override it.
@item #:convention ['exact]
or 'megatron (set by the presets 'megatron, 'deepseek-v3 and 'qwen-global;
an explicit 'exact overrides them). Under 'megatron the sequence loss gives
every sequence the micro-batch's average valid length sum(c)/(K·B); the
global-batch loss averages the accumulated counts over the micro-batches
seen and normalises by the current micro-batch's valid tokens;
routing-capacity reports ceil(T·K/E·cf) even above T (the routing is the
same). Equal sequence lengths and equal micro-batches make both agree.
@item #:routing ['topk]
or 'quantile-balancing: select each token's top-K of z − β with a
per-expert bias β (f32, zero at first). While training with grad enabled each
forward also takes, for every expert, the (T·K/E + 1)-th largest over tokens
of z − α (α_t the (K+1)-th largest of z_t − β; the logits gathered over tp×cp
first); router-step! sets β ← ema·β + (1 − ema)·mean of those over the
step's micro-batches and the data-parallel group, re-centred to zero mean.
T·K must then divide by E. Weights come from the score function at the
chosen experts. No group limiting, expert bias, padding mask or balancing
loss coefficient (the z-loss is allowed).
@item #:qb-ema [0]
the EMA factor of β's update (0 replaces β).
@item #:replay [#f]
'record keeps every forward's expert ids (router-replay-record).
@item #:seed [0]
@end table

Extensions (the C config fields): #:dtype ['f32 or 'f64], #:norm-eps
[1e-20], #:norm-p [1], #:score-offset [0], #:sinkhorn? [#f],
#:debug-routing [#f; 'uniform: slot i to expert i mod E; 'imbalance: a
seeded skewed draw; 'random: the logits replaced by seeded uniform random
numbers in [0, 1), routed as usual, no gradient to the weight — forced
routing for load tests], #:debug-skew [4], #:debug-keep-weights? [#f;
#t under 'megablocks: uniform debug routing keeps the weights of the
router's own top-k (MegaBlocks) instead of gathering the forced experts'
scores], #:ep-size [1], #:loss-eps [1e-20], #:loss-div-factor [0 =
default], #:z-loss-div? [#f; #t under 'olmo-core: the z-loss divides its
sum by #:loss-div-factor when that is set, as OLMo-core passes the same
divisor to both losses], #:num-moe-layers [1],
#:k-in-f? [#t], #:global-buffer? [#t], #:grad-accum [1],
#:per-token-loss? [#f], #:pp-size [1], #:training? [#t]. A boolean keyword
may drop its '?'. Invalid settings (K > E, E not divisible by the groups,
capacity factor <= 0, …) raise moelab-error."
  (%make-router options))

(define (router? obj)
  "True when OBJ is a router (from make-router)."
  (%router? obj))

(define (router-config r)
  "The effective configuration of router R (after its preset) as an alist
keyed by make-router's keyword names: ((hidden . 16) (experts . 8) (top-k . 2)
(dtype . f32) (score . softmax) … (preset . #f)). Values are as make-router
takes them, so the keywords and values of this alist rebuild the router."
  (%router-config r))

(define (router-weight r)
  "The gate weight [E D] of router R (the live parameter: it requires grad,
and backward! fills its tensor-grad)."
  (%router-weight r))

(define (set-router-weight! r w)
  "Copy the tensor W [E D] (any float dtype) into the gate weight of R; its
gradient is dropped."
  (%set-router-weight! r w))

(define (router-bias r)
  "The expert bias [E] f32 of router R (selection only), or #f when R has no
expert bias."
  (%router-bias r))

(define (set-router-bias! r b)
  "Copy the tensor (or list) B [E] into the expert bias of R."
  (%set-router-bias! r (if (list? b) (tensor b) b)))

(define* (router-set-groups! r #:key (tp #f) (cp #f) (dp #f))
  "Set the tensor-, context- and data-parallel groups of R: each a group,
mesh dimensions ('tp, '(dp cp)) or #f (size 1). TP and CP split a
micro-batch's tokens (counts of the micro-batch, sequence and instance losses
are summed over them); DP shares the optimizer step (global-batch counts and
the bias update are summed over cp, tp and dp)."
  (%router-set-groups! r (as-group "router-set-groups!" tp) (as-group "router-set-groups!" cp)
                       (as-group "router-set-groups!" dp)))

(define (router-training! r on?)
  "Training mode on or off: jitter, losses and counters only work in training."
  (%router-mode! r 'training on?))

(define (router-recomputing! r on?)
  "Recomputation mode (activation checkpointing): forwards neither count nor
advance the global buffer and replay the original forwards' noise and counts."
  (%router-mode! r 'recomputing on?))

(define* (router-set-grad-scale! r #:key (grad-accum 1) (per-token-loss? #f))
  "Set the micro-batches per optimizer step M (the injected gradient is scaled
by |cp|/M) and per-token-loss mode (scale by the micro-batch's valid tokens)."
  (%router-grad-scale! r grad-accum per-token-loss?))

(define* (router-forward r x #:key (valid #f) (doc-bounds #f) (experts #f))
  "Route X [T D] or [B S D] with router R; returns a routing. VALID is a mask
[T] or [B S] (tensor or list; true = real token) or #f; DOC-BOUNDS the
document starts over the T tokens (i64 [N+1], 0 … T) for packed sequences.
EXPERTS (i64 [T K], tensor or list) replays a routing: those experts are used
instead of selecting, their weights are the scores at those ids normalised as
the score function does, the routing and expert-bias counts follow them, and
the balancing losses count as #:count-from says ('topk: the loss scores' own
top-k, as Megatron-Core; 'actual: EXPERTS). Ids out of range, a wrong shape or
an expert twice in a row raise moelab-error. Rows of the results are in token
order, b-major for [B S D]."
  (%router-forward r x (as-mask "router-forward" valid) (as-ids "router-forward" doc-bounds)
                   (as-ids "router-forward" experts)))

(define (router-replay! r ids-list)
  "Replay a recorded sequence of routings on R: the next forwards route with
the expert ids of IDS-LIST ([T K] i64 tensors or lists), one entry per call,
as router-forward's #:experts does; after the last entry R selects again.
'() stops a replay. Use it with the list router-replay-record returned to
reproduce a run with its routing fixed."
  (%router-replay! r (map (lambda (v) (as-ids "router-replay!" v)) ids-list)))

(define* (router-replay-record r #:key (clear? #f))
  "The expert ids [T K] of every forward of R so far, oldest first (R made
with #:replay 'record; '() otherwise). With CLEAR? the record is emptied
afterwards."
  (%router-record r clear?))

(define (router-qb-beta r)
  "A copy of the quantile-balancing bias β [E] f32 of R, or #f when R does not
route by quantile balancing."
  (%router-qb-beta r))

(define (set-router-qb-beta! r b)
  "Copy B [E] (tensor or list) into the quantile-balancing bias β of R."
  (%set-router-qb-beta! r (if (list? b) (tensor b) b)))

(define (router-step! r)
  "End of an optimizer step for R: update the expert bias (sign rule) and, for
quantile balancing, β (from the step's quantiles averaged over its
micro-batches and the data-parallel group), record the global metrics, reset
the counters and the global-batch buffer. Collective over R's groups."
  (%router-step! r))

(define (router-metrics r)
  "The metrics of R as an alist: tokens-per-expert (last forward),
tokens-per-expert-step, tokens-per-expert-global ([E] f64 tensors; the last
is #f before the first router-step!), bias, max-violation-batch,
max-violation-step, max-violation-global (#f before a step), cv,
max-over-mean, dead-fraction, entropy (normalised by log E), selected-mass,
dropped-fraction, aux-losses (alist kind . mean unscaled value over the
step), micro-batches, tokens, step, step-window and qb-beta (β [E] of
quantile balancing, or #f).

The step window (the -step counts and everything from cv on) is the
optimizer step in progress, or, until the next forward after a
router-step!, the step that router-step! ended: step-window says which
('current or 'ended). So metrics read right after router-step! describe the
step just taken. A window without tokens (before the first forward, or a
step with none) has zero counts and #f for every statistic, never a
dead-fraction of 1."
  (%router-metrics r))

(define (router-state r)
  "The state of R for a checkpoint: an alist (bias . [E] f32 or #f),
(counters . [3 E+1] f64: bias-update counts, global-batch buffer, step metric
counts, each followed by its token total) and, for a quantile-balancing
router, (qb-beta . [E] f32: its bias β); such a router's counters have a
fourth row, the quantiles summed over the step's micro-batches so far
followed by their count ([4 E+1])."
  (let ((s (%router-state r))
        (beta (%router-qb-beta r)))
    `((bias . ,(car s)) (counters . ,(cadr s)) ,@(if beta `((qb-beta . ,beta)) '()))))

(define (router-load-state! r state)
  "Restore a state from router-state into R: STATE is an alist with the keys
bias (an [E] tensor, or #f for a router without expert bias), counters (a
[3 E+1] tensor, or [4 E+1] with a quantile-balancing router's quantile sums;
three rows clear them) and, for a quantile-balancing router, qb-beta (an [E]
float tensor). A missing or unknown key, or a value of the wrong kind or shape,
raises moelab-error naming the key; R is then unchanged."
  (define (fail fmt . args)
    (throw 'moelab-error "router-load-state!" fmt args '(arg)))
  (unless (and (list? state) (every pair? state))
    (fail "expected the alist router-state returns (keys bias, counters and qb-beta), got ~s" state))
  (for-each (lambda (entry)
              (unless (memq (car entry) '(bias counters qb-beta))
                (fail "unknown key ~s in the state (the keys are bias, counters and qb-beta)" (car entry))))
            state)
  (let ((bias (assq 'bias state)) (counters (assq 'counters state))
        (beta (assq-ref state 'qb-beta)) (own-beta (%router-qb-beta r)))
    (unless counters
      (fail "the state has no counters entry (a [3 E+1] tensor, as router-state makes)"))
    (unless (tensor? (cdr counters))
      (fail "counters must be a [3 E+1] tensor, got ~s" (cdr counters)))
    (unless bias
      (fail "the state has no bias entry (an [E] tensor, or #f for a router without expert bias)"))
    (unless (or (not (cdr bias)) (tensor? (cdr bias)))
      (fail "bias must be an [E] tensor or #f, got ~s" (cdr bias)))
    (when (and beta (not own-beta))
      (fail "the state holds a quantile-balancing qb-beta but the router does not route by quantile balancing"))
    (when (and beta (not (and (tensor? beta) (equal? (tensor-shape beta) (tensor-shape own-beta))
                              (memq (tensor-dtype beta) '(f32 f64 bf16)))))
      (fail "qb-beta must be a float tensor ~a, got ~s" (tensor-shape own-beta) beta))
    (%router-load-state! r (cdr bias) (cdr counters))
    (when beta (%set-router-qb-beta! r beta))))

(define-method (write (r <router>) port) (display (%router-repr r) port))
(define-method (display (r <router>) port) (display (%router-repr r) port))

;;; ---- routings -------------------------------------------------------------------------------

(define (routing? obj)
  "True when OBJ is a routing (from router-forward)."
  (%routing? obj))

;; Each field of a routing is one accessor: (NAME out) → (%routing-ref out 'FIELD).
(define-syntax-rule (define-routing-field name field doc)
  (define (name out)
    doc
    (%routing-ref out 'field)))

(define-routing-field routing-weights weights
  "The routing weights [T K] of OUT (router dtype, differentiable; 0 for
dropped or padded slots).")

(define-routing-field routing-experts experts
  "The selected experts [T K] i64 of OUT, by descending selection score.")

(define-routing-field routing-probs probs
  "The dense weights [T E] of OUT (0 off the routing map; differentiable).")

(define-routing-field routing-map map
  "The routing map [T E] bool of OUT (pad-to-capacity adds filler entries).")

(define-routing-field routing-kept kept
  "[T K] bool: the slots of OUT actually routed (valid token, not dropped).")

(define-routing-field routing-logits logits
  "The gate logits [T E] of OUT (in the autograd graph).")

(define-routing-field routing-counts counts
  "Tokens per expert [E] i64 of OUT (kept slots).")

(define-routing-field routing-aux-total aux-total
  "The sum of OUT's losses times their coefficients (0-d tensor). In add mode
add it to the model loss; in inject mode it is for logging.")

(define-routing-field routing-tokens tokens
  "The number of valid tokens OUT routed.")

(define-routing-field routing-capacity capacity
  "The capacity C per expert of OUT, or #f without capacity.")

(define-routing-field routing-dropped dropped
  "The number of valid slots OUT dropped for capacity.")

(define (routing-aux-losses out)
  "The losses of OUT as an alist (kind . 0-d tensor), each unscaled by its
coefficient. In add mode they are differentiable."
  (%routing-aux-losses out))

(define-method (write (o <routing>) port) (display (%routing-repr o) port))
(define-method (display (o <routing>) port) (display (%routing-repr o) port))

;;; ---- standalone losses ----------------------------------------------------------------------

(define* (load-balancing-loss kind logits #:key (top-k #f) (score 'softmax) (valid #f)
                              (doc-bounds #f) (routing-ids #f) (tracker #f) (group #f)
                              (sigmoid-eps 1e-20) (score-offset 0) (loss-div-factor #f)
                              (num-layers 1) (k-in-f? #t) (convention 'exact))
  "The unscaled (coefficient 1) balance loss KIND of LOGITS as a 0-d tensor,
differentiable in LOGITS. KIND is 'micro-batch (logits [T E]), 'sequence
(logits [B S E], or [T E] with DOC-BOUNDS), 'global-batch (needs #:tracker from
make-balance-tracker), 'olmo-local-batch, 'olmo-instance, 'megablocks or 'z.
TOP-K (K) is required; SCORE is 'softmax or 'sigmoid (scores
s/(sum s + SIGMOID-EPS) after adding SCORE-OFFSET). VALID masks padding ([T] or
[B S]). ROUTING-IDS [T K] counts that routing instead of the top-k of the
scores. GROUP (a group or mesh dimensions) sums counts and token totals over
tp×cp. LOSS-DIV-FACTOR overrides OLMo-core's divisor, NUM-LAYERS is
MegaBlocks' MoE layer count, K-IN-F? #f drops the 1/K in f (HF's convention).
CONVENTION 'megatron follows Megatron-Core's arithmetic: 'sequence gives every
sequence the average valid length sum(c)/(K·B); 'global-batch averages the
tracker's counts over its micro-batches and normalises by this call's
tokens ('exact, the default, normalises by the tokens accumulated). SCORE may
also be 'sqrtsoftplus. NaN or Inf logits raise moelab-error."
  (unless (or top-k (memq kind '(z "z")))
    (throw 'moelab-error "load-balancing-loss" "#:top-k is required" '() '(arg)))
  (%load-balancing-loss
   kind logits
   (list #:top-k (or top-k 1) #:score score
         #:valid (as-mask "load-balancing-loss" valid)
         #:doc-bounds (as-ids "load-balancing-loss" doc-bounds)
         #:routing-ids (as-ids "load-balancing-loss" routing-ids)
         #:tracker tracker #:group (as-group "load-balancing-loss" group)
         #:sigmoid-eps sigmoid-eps #:score-offset score-offset
         #:loss-div-factor loss-div-factor #:num-layers num-layers #:k-in-f? k-in-f?
         #:convention convention)))

(define* (z-loss logits #:key (valid #f) (div-factor #f))
  "The router z-loss of LOGITS [T E] (or [B S E]): the mean over valid tokens
of (logsumexp_i z_ti)², as a 0-d tensor, differentiable in LOGITS. With
DIV-FACTOR d (> 0) the sum over valid tokens is divided by d instead, as
OLMo-core divides it by the balancing loss's divisor."
  (%z-loss logits (as-mask "z-loss" valid) div-factor))

(define* (megablocks-batched-loss logits-list #:key (top-k #f) (score 'softmax)
                                  (routing-ids #f) (num-layers #f))
  "MegaBlocks' batched load-balancing loss over the layers of one pipeline
stage: LOGITS-LIST holds each layer's logits [T E] (same T), ROUTING-IDS an
optional list of each layer's actual routing [T K] (#f entries: top-k of the
scores). NUM-LAYERS is the model's MoE layer count (default: the list's
length). Returns E/(L·T·K)·<c_cat, mean_t p_cat> as a 0-d tensor."
  (unless top-k
    (throw 'moelab-error "megablocks-batched-loss" "#:top-k is required" '() '(arg)))
  (%megablocks-batched-loss
   logits-list
   (and routing-ids (map (lambda (v) (as-ids "megablocks-batched-loss" v)) routing-ids))
   (list #:top-k top-k #:score score #:num-layers (or num-layers (length logits-list)))))

;;; ---- balance trackers -------------------------------------------------------------------------

(define* (make-balance-tracker #:key experts (group #f) (groups '()) (buffer? #t))
  "A tracker of the global-batch counts over EXPERTS experts. Each
global-batch loss that uses it adds this micro-batch's counts, summed over
GROUP (the data-parallel group; a group, mesh dimensions or #f), then over
each of GROUPS (further factor groups). With BUFFER? (the default) the counts
accumulate over the micro-batches of an optimizer step until
balance-tracker-reset!."
  (unless (exact-integer? experts)
    (scm-error 'wrong-type-arg "make-balance-tracker" "#:experts expects an integer, got ~s"
               (list experts) (list experts)))
  (let ((tr (%make-balance-tracker
             experts
             (map (lambda (g) (as-group "make-balance-tracker" g))
                  (if group (cons group groups) groups)))))
    (unless buffer? (%balance-tracker-buffer! tr #f))
    tr))

(define (balance-tracker? obj)
  "True when OBJ is a balance tracker."
  (%balance-tracker? obj))

(define (balance-tracker-reset! tr)
  "Clear the buffer of TR (call after the optimizer step)."
  (%balance-tracker-reset! tr))

(define (balance-tracker-counts tr)
  "The counts [E] f64 accumulated in TR."
  (car (%balance-tracker-state tr)))

(define (balance-tracker-tokens tr)
  "The valid tokens accumulated in TR."
  (cadr (%balance-tracker-state tr)))

(define (balance-tracker-micro-batches tr)
  "The micro-batches accumulated in TR since its last reset."
  (caddr (%balance-tracker-state tr)))

(define (balance-tracker-add-counts! tr counts tokens)
  "Add COUNTS [E] (tensor or list) and TOKENS to the buffer of TR without a
collective: e.g. the other data-parallel ranks' counts, given explicitly."
  (%balance-tracker-add! tr (as-counts "balance-tracker-add-counts!" counts) tokens))

(define (tracker-repr tr)
  (let ((s (%balance-tracker-state tr)))
    (string-append "#<balance-tracker E=" (number->string (list-ref s 3))
                   " tokens=" (number->string (inexact->exact (list-ref s 1)))
                   " micro-batches=" (number->string (list-ref s 2))
                   (if (list-ref s 4) "" " unbuffered") ">")))

(define-method (write (tr <balance-tracker>) port) (display (tracker-repr tr) port))
(define-method (display (tr <balance-tracker>) port) (display (tracker-repr tr) port))

;;; ---- balance statistics -------------------------------------------------------------------------

(define (max-violation counts)
  "MaxVio of COUNTS [E] (tensor or list): (max_i c_i - mean c) / mean c, a number."
  (%max-violation (as-counts "max-violation" counts)))

(define (balance-stats counts)
  "Balance statistics of COUNTS [E] as an alist: max-violation, cv
(std/mean), max-over-mean, dead-fraction, total."
  (%balance-stats (as-counts "balance-stats" counts)))
;;; ---- routing reports ---------------------------------------------------------------------

;; What a report shows, gathered from a routing, a router or a layer: COUNTS
;; exact integers; TOKENS and DROPPED #f when the source does not record
;; them; CAPACITY a number, #f (no capacity) or 'unknown.
(define (report-data title counts k tokens capacity dropped aux)
  (list title (map (lambda (c) (inexact->exact (round c))) counts) k tokens capacity dropped aux))

(define (report-error fmt . args)
  (throw 'moelab-error "routing-report" fmt args '(arg)))

(define (aux-number v) (if (tensor? v) (tensor-item v) v))

(define (metrics-data title m k window)
  ;; the 'last, 'step or 'global window of router metrics M
  (case window
    ((step)
     (let ((tokens (assq-ref m 'tokens)) (n (assq-ref m 'micro-batches))
           (dropped (assq-ref m 'dropped-fraction)))   ; #f without tokens
       (report-data (format #f "~a (~a: ~a micro-batch~a)" title
                            (if (eq? (assq-ref m 'step-window) 'ended) "last step" "step so far")
                            n (if (= n 1) "" "es"))
                    (tensor->list (assq-ref m 'tokens-per-expert-step)) k tokens 'unknown
                    (if dropped (inexact->exact (round (* dropped k tokens))) 0)
                    ;; the aux means of an empty step are not values
                    (if (zero? n) '() (assq-ref m 'aux-losses)))))
    ((global)
     (let ((g (assq-ref m 'tokens-per-expert-global)))
       (unless g (report-error "no global counts before the first optimizer step (router-step!)"))
       (report-data (format #f "~a (last step, global)" title) (tensor->list g) k #f 'unknown #f
                    '())))
    ((last)
     (report-data (format #f "~a (last forward)" title)
                  (tensor->list (assq-ref m 'tokens-per-expert)) k #f 'unknown #f '()))
    (else (report-error "#:window expects last, step or global, got ~s" window))))

(define (gather-report obj window)
  (cond
   ((routing? obj)
    (report-data "routing" (tensor->list (routing-counts obj))
                 (cadr (tensor-shape (routing-experts obj))) (routing-tokens obj)
                 (routing-capacity obj) (routing-dropped obj) (routing-aux-losses obj)))
   ((router? obj)
    (metrics-data "router" (router-metrics obj) (assq-ref (router-config obj) 'top-k) window))
   ((%moe-layer? obj)
    (let ((k (assq-ref (%moe-layer-config obj) 'top-k)))
      (if (eq? window 'last)
          (let ((r (or (%moe-last-routing obj)
                       (report-error "the MoE layer has not run a forward yet"))))
            (report-data "moe-layer (last forward)" (tensor->list (assq-ref r 'counts)) k
                         (assq-ref r 'tokens) (assq-ref r 'capacity) (assq-ref r 'dropped)
                         (assq-ref r 'aux-losses)))
          (metrics-data "moe-layer" (%moe-metrics obj) k window))))
   (else (report-error "expected a routing, a router or an MoE layer, got ~s" obj))))

(define (fmt-value x)
  (cond ((not (real? x)) "n/a")
        ((or (zero? x) (and (>= (abs x) 1e-3) (< (abs x) 1e5))) (format #f "~,4f" x))
        (else (format #f "~,3e" x))))

(define (digits n) (string-length (number->string n)))

(define* (routing-report obj #:key (port (current-output-port)) (width 40) (window 'last))
  "Print to PORT a readable report of what a router did, and return its
counts per expert as a list of exact integers. OBJ is a routing (from
router-forward), a router, or an MoE layer.

The first line says what is reported: T (valid tokens), E, K, the capacity
per expert and the dropped slots, where the source records them. Then one
line per expert: its id, tokens routed to it, its share of the K·T slots
(of the counted slots when T is not recorded), and a bar of '#' of up to
WIDTH characters scaled to the largest count (at least one '#' for a
non-zero count), or @samp{dead} for an expert with no token (@samp{-} when
the window has no token at all). The last line
gives MaxVio (max/mean - 1), CV (std/mean, population std), min and max of
the counts, and the unscaled aux losses when there are any. Every number
comes from the counts, so it is exact:

@example
routing: T=4 tokens, E=4 experts, K=1, capacity none, dropped 0 slots
  expert 0  3   75.0%  ########################################
  expert 1  1   25.0%  #############
  expert 2  0    0.0%  dead
  expert 3  0    0.0%  dead
MaxVio 2.00  CV 1.22  min 0  max 3
@end example

For a router or a layer, WINDOW picks the counts: 'last (default) the last
forward (a layer's moe-last-routing: T, capacity, drops and aux losses; a
router's tokens-per-expert metric: counts only), 'step the step window of
router-metrics (the optimizer step so far, or the step router-step! just
ended: T, dropped slots, mean aux losses) or 'global the last completed
step summed over the data-parallel group (counts only). Any other WINDOW
is an error, whatever OBJ is.
Anything else for OBJ, a layer before its first forward or 'global before
the first router-step! raise moelab-error."
  (unless (and (exact-integer? width) (positive? width))
    (report-error "#:width expects a positive integer, got ~s" width))
  (unless (memq window '(last step global))
    (report-error "#:window expects last, step or global, got ~s" window))
  (let* ((data (gather-report obj window))
         (title (list-ref data 0)) (counts (list-ref data 1)) (k (list-ref data 2))
         (tokens (list-ref data 3)) (capacity (list-ref data 4)) (dropped (list-ref data 5))
         (aux (filter (lambda (p) (real? (aux-number (cdr p)))) (list-ref data 6)))
         (e (length counts))
         (total (apply + counts))
         (top (apply max counts))
         (slots (if tokens (* k tokens) total)))
    (format port "~a: ~@[T=~a tokens, ~]E=~a experts, K=~a~a~@[, dropped ~a slots~]~%"
            title tokens e k
            (cond ((number? capacity) (format #f ", capacity ~a" capacity))
                  ((and tokens (not capacity)) ", capacity none")
                  (else ""))
            dropped)
    (for-each
     (lambda (id c)
       (format port "  expert ~vd  ~vd  ~5,1f%  ~a~%" (digits (- e 1)) id (digits top) c
               (if (zero? slots) 0.0 (exact->inexact (* 100 (/ c slots))))
               (cond ((zero? total) "-")  ; an empty window: no expert is dead
                     ((zero? c) "dead")
                     (else (make-string (max 1 (round (/ (* width c) top))) #\#)))))
     (iota e) counts)
    (if (zero? total)
        (format port "MaxVio n/a  CV n/a  min 0  max 0")
        (let* ((mean (/ total e))
               (var (/ (apply + (map (lambda (c) (expt (- c mean) 2)) counts)) e)))
          (format port "MaxVio ~,2f  CV ~,2f  min ~a  max ~a"
                  (exact->inexact (- (/ top mean) 1)) (sqrt (exact->inexact (/ var (* mean mean))))
                  (apply min counts) top)))
    (unless (null? aux)
      (format port "  aux~{ ~a~}"
              (map (lambda (p) (format #f "~a=~a" (car p) (fmt-value (aux-number (cdr p))))) aux)))
    (newline port)
    counts))
