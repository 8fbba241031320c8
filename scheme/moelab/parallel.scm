;;; (moelab parallel) — one rank's part of a parallel training run.
;;;
;;; make-trainer with #:mesh builds a plan here: the mesh checked against
;;; the world and the model, the rank's model (its pipeline stage's layers,
;;; its slice of the experts) and optimizer, the rows of each global
;;; micro-batch it trains on, the gradient reductions and the step metrics
;;; reduced to their global values. The trainer sequences them.
;;;
;;; The data world of the dense parts is dp × ep (W ranks): expert-parallel
;;; ranks hold different data, pipeline stages share theirs. Each rank's
;;; micro-batch loss is weighted by its share of the step's target tokens
;;; (n·W/N), dense gradients are summed over dp × ep and expert gradients
;;; over dp, both divided by W: every rank then holds its part of the
;;; gradient of the global token-mean loss.
(define-module (moelab parallel)
  #:use-module (moelab primitives)
  #:use-module (moelab tensor)
  #:use-module (moelab ops)
  #:use-module (moelab autograd)
  #:use-module (moelab dist)
  #:use-module (moelab nn)
  #:use-module (moelab train)
  #:use-module (moelab router)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-9)
  #:use-module (ice-9 format)
  #:export (make-parallel-plan parallel-plan? plan-mesh plan-model plan-optimizer
            plan-data-size plan-data-rank plan-stage plan-stages plan-last-stage?
            plan-first-stage? plan-schedule plan-zero plan-pp-group plan-data-group
            plan-rows plan-data-sum plan-world-sum plan-arm! plan-reduce-grads!
            plan-grad-norm plan-after-update! plan-routing-metrics
            plan-gather-layers plan-comm-stats plan-moe-layers plan-local-rows plan-set-local-rows! plan-pipeline-stats plan-set-pipeline-stats!
            model-gather-parameters %default-mesh))

(define (plan-error who fmt . args)
  (throw 'moelab-error who
         (string-join (string-split (apply format #f fmt args) #\~) "~~")
         '() '(arg)))

;;; ---- the plan ------------------------------------------------------------------------

(define-record-type <plan>
  (%make-plan mesh pp dp ep data-group dp-group pp-group world stage stage-range schedule
              zero model optimizer syncs owners pipeline-stats moe-layers local-rows)
  parallel-plan?
  (mesh plan-mesh)                 ; ((pp . P) (dp . D) (ep . E))
  (pp plan-stages)
  (dp plan-dp)
  (ep plan-ep)
  (data-group plan-data-group)     ; dp × ep: the ranks of this stage with other data
  (dp-group plan-dp-group)         ; dp: the replicas of this rank's experts
  (pp-group plan-pp-group)
  (world plan-world)
  (stage plan-stage)               ; this rank's pipeline stage, from 0
  (stage-range plan-stage-range)   ; (first . last) layers held
  (schedule plan-schedule)         ; gpipe or 1f1b
  (zero plan-zero)                 ; #f or 1
  (model plan-model set-plan-model!)
  (optimizer plan-optimizer set-plan-optimizer!)
  (syncs plan-syncs set-plan-syncs!)     ; gradient reducers
  (owners plan-owners set-plan-owners!) ; ZeRO-1: ((param group owner) …)
  (pipeline-stats plan-pipeline-stats plan-set-pipeline-stats!) ; the last step's, or #f
  (moe-layers plan-moe-layers set-plan-moe-layers!) ; every stage's MoE layer numbers
  (local-rows plan-local-rows plan-set-local-rows!)) ; the last step's routing rows of this rank alone

(define (plan-data-size p) (* (plan-dp p) (plan-ep p)))
(define (plan-data-rank p) (group-rank (plan-data-group p)))
(define (plan-first-stage? p) (zero? (plan-stage p)))
(define (plan-last-stage? p) (= (plan-stage p) (- (plan-stages p) 1)))

;; The mesh make-trainer takes when its #:mesh is not given: `moelab train
;; --mesh` (or --ranks) sets it around the configuration.
(define %default-mesh (make-parameter #f))

;; Models trained under a plan, for model-gather-parameters.
(define plans-of-models (make-weak-key-hash-table))

;;; ---- checking the mesh ---------------------------------------------------------------

(define (positive-int? x) (and (exact-integer? x) (positive? x)))

(define (normalise-mesh who mesh)
  (unless (and (list? mesh) (every pair? mesh))
    (plan-error who "#:mesh must be an alist such as '((dp . 2) (ep . 2)), got ~s" mesh))
  (for-each (lambda (e)
              (unless (memq (car e) '(pp dp ep))
                (plan-error who "unknown mesh dimension ~s in ~s: a trainer's mesh has pp, dp and ep"
                            (car e) mesh))
              (unless (positive-int? (cdr e))
                (plan-error who "mesh dimension ~a must be a positive integer, got ~s" (car e) (cdr e))))
            mesh)
  (let ((names (map car mesh)))
    (unless (= (length names) (length (delete-duplicates names)))
      (plan-error who "mesh ~s names a dimension twice" mesh)))
  (map (lambda (d) (cons d (or (assq-ref mesh d) 1))) '(pp dp ep)))

(define (mesh->string mesh)
  (string-join (map (lambda (e) (format #f "~a=~a" (car e) (cdr e))) mesh) ","))

;; Layers per stage: contiguous runs whose parameter counts (embed on the
;; first stage, norm and head on the last) are as even as the layers allow.
(define (balanced-stages sizes head tail stages)
  (let* ((n (length sizes))
         (total (+ head tail (apply + sizes))))
    (let loop ((s 0) (rest sizes) (done head) (acc '()))
      (if (= s (- stages 1))
          (reverse (cons (length rest) acc))
          (let take ((k 0) (r rest) (sum done))
            (let ((left (- (length r) 1)) (target (* (+ s 1) (/ total stages))))
              (if (and (pair? r) (> left (- stages s 2))
                       (or (zero? k)
                           (< (abs (- (+ sum (car r)) target)) (abs (- sum target)))))
                  (take (+ k 1) (cdr r) (+ sum (car r)))
                  (loop (+ s 1) r sum (cons k acc)))))))))

(define (layer-of name)
  ;; "layers.12.attn.wq" -> 12, else #f
  (and (string-prefix? "layers." name)
       (string->number (car (string-split (substring name 7) #\.)))))

(define (stage-layer-counts who model stages stage-layers)
  (let ((layers (assq-ref (model-config model) 'layers)))
    (cond
     (stage-layers
      (unless (and (list? stage-layers) (= (length stage-layers) stages)
                   (every positive-int? stage-layers))
        (plan-error who "#:stage-layers must be a list of ~a positive layer counts (one per pipeline stage), got ~s"
                    stages stage-layers))
      (unless (= (apply + stage-layers) layers)
        (plan-error who "#:stage-layers ~s adds up to ~a layers but the model has ~a"
                    stage-layers (apply + stage-layers) layers))
      stage-layers)
     ((> stages layers)
      (plan-error who "pp=~a stages for a model of ~a layers: every stage needs a layer" stages layers))
     (else
      (let* ((params (model-parameters model))
             (size-of (lambda (pred)
                        (apply + (map (lambda (p) (apply * (tensor-shape (cdr p))))
                                      (filter (lambda (p) (pred (car p))) params)))))
             (sizes (map (lambda (l) (size-of (lambda (n) (eqv? (layer-of n) l)))) (iota layers))))
        (balanced-stages sizes (size-of (lambda (n) (string=? n "embed")))
                         (size-of (lambda (n) (member n '("norm" "lm-head")))) stages))))))

(define (check-router-options who cfg mesh)
  (let ((router (assq-ref cfg 'router)))
    (when (and (> (assq-ref mesh 'pp) 1) (eq? (assq-ref router 'grad-mode) 'add))
      (plan-error who "router grad mode 'add puts the aux losses into the model loss, which only the last pipeline stage computes; under pp the aux gradients must reach each stage's routers by injection: use the default grad mode 'inject"))
    (when (and (> (assq-ref mesh 'pp) 1) (assq-ref cfg 'tie-embeddings?))
      (plan-error who "tied embeddings need \"embed\" on the first and on the last pipeline stage; with pp=~a they would be two tensors: untie them (#:tie-embeddings? #f)"
                  (assq-ref mesh 'pp)))))

;;; ---- the rank's model and optimizer --------------------------------------------------

(define (keyword-list alist)
  (append-map (lambda (p) (list (symbol->keyword (car p)) (cdr p))) alist))

(define (rank-model model range ep-group data-group)
  ;; A model of MODEL's configuration holding layers RANGE and this rank's
  ;; experts, with MODEL's values.
  (let* ((cfg (model-config model))
         (m (apply make-moe-transformer
                   #:router-options (keyword-list (assq-ref cfg 'router))
                   #:ep-group ep-group #:dp-group data-group #:stage range
                   (keyword-list (alist-delete 'router cfg)))))
    (for-each (lambda (p) (set-model-parameter! m (car p) (model-parameter model (car p))))
              (append (model-parameters m) (model-buffers m)))
    m))

(define (expert-param? name) (string-contains name ".experts."))

(define (owner-table params data-group dp-group ep)
  ;; ZeRO-1: each parameter's optimizer state lives on one rank of the group
  ;; that holds the parameter (dp for expert shards under ep, dp × ep
  ;; otherwise); whole tensors, the largest first onto the lightest rank.
  (let ((loads (make-hash-table)))
    (map (lambda (p)
           (let* ((g (if (and (> ep 1) (expert-param? (car p))) dp-group data-group))
                  (n (group-size g))
                  (key (group-name g))
                  (load (or (hash-ref loads key) (make-vector n 0)))
                  (owner (fold (lambda (r best) (if (< (vector-ref load r) (vector-ref load best)) r best))
                               0 (iota n))))
             (vector-set! load owner (+ (vector-ref load owner) (apply * (tensor-shape (cdr p)))))
             (hash-set! loads key load)
             (list p g owner)))
         (sort params (lambda (a b) (> (apply * (tensor-shape (cdr a))) (apply * (tensor-shape (cdr b)))))))))

(define (rank-optimizer optimizer params)
  (let* ((cfg (optimizer-config optimizer))
         ;; optimizer-config's names are make-adamw's and make-sgd's keywords
         ;; (nesterov is #:nesterov?)
         (settings (keyword-list (map (lambda (p) (if (eq? (car p) 'nesterov) (cons 'nesterov? (cdr p)) p))
                                      (alist-delete 'kind cfg)))))
    (case (assq-ref cfg 'kind)
      ((adamw) (apply make-adamw params settings))
      ((sgd) (apply make-sgd params settings))
      (else (plan-error "make-trainer" "cannot shard an optimizer of kind ~s" (assq-ref cfg 'kind))))))

;;; ---- making a plan -------------------------------------------------------------------

(define* (make-parallel-plan who mesh model optimizer batch-size
                             #:key (stage-layers #f) (schedule '1f1b) (zero #f)
                             (bucket-bytes (* 25 1024 1024)))
  "Internal (make-trainer #:mesh): check MESH against the world, the model
and BATCH-SIZE, and build this rank's model, optimizer and reducers."
  (let* ((mesh (normalise-mesh who mesh))
         (size (apply * (map cdr mesh)))
         (pp (assq-ref mesh 'pp)) (dp (assq-ref mesh 'dp)) (ep (assq-ref mesh 'ep))
         (cfg (model-config model)))
    (unless (= size (world-size))
      (plan-error who "mesh ~a has ~a ranks but the world has ~a (with-ranks ~a …, mpirun -np ~a or moelab train --ranks ~a)"
                  (mesh->string mesh) size (world-size) size size size))
    (unless (zero? (remainder batch-size (* dp ep)))
      (plan-error who "#:batch-size ~a does not split over the ~a data ranks (dp=~a × ep=~a): it must be a multiple of ~a"
                  batch-size (* dp ep) dp ep (* dp ep)))
    (unless (zero? (remainder (assq-ref cfg 'experts) ep))
      (plan-error who "~a experts do not split over ep=~a" (assq-ref cfg 'experts) ep))
    (unless (memq schedule '(gpipe 1f1b))
      (plan-error who "#:pp-schedule must be 'gpipe or '1f1b, got ~s" schedule))
    (unless (memv zero '(#f 0 1))
      (plan-error who "#:zero must be #f or 1 (optimizer state sharded over data parallelism), got ~s" zero))
    (check-router-options who cfg mesh)
    (let* ((counts (stage-layer-counts who model pp stage-layers))
           (stage (mesh-coord 'pp))
           (first (apply + (list-head counts stage)))
           (range (cons first (+ first (list-ref counts stage))))
           (data-group (mesh-group '(dp ep)))
           (dp-group (mesh-group 'dp))
           (ep-group (mesh-group 'ep))
           (m (rank-model model range (and (> ep 1) ep-group) data-group))
           (params (model-parameters m))
           (plan (%make-plan mesh pp dp ep data-group dp-group (mesh-group 'pp) (world-group)
                             stage range schedule (and (eqv? zero 1) 1) m #f '() '() #f '() #f)))
      (set-model-grad-accum! m (model-grad-accum model))
      (if (eqv? zero 1)
          (let ((owners (owner-table params data-group dp-group ep)))
            (set-plan-owners! plan owners)
            (set-plan-optimizer! plan
                                 (rank-optimizer optimizer
                                                 (filter-map (lambda (o)
                                                               (and (= (caddr o) (group-rank (cadr o))) (car o)))
                                                             ;; keep the model's order
                                                             (sort-by-model params owners)))))
          (set-plan-optimizer! plan (rank-optimizer optimizer params)))
      (set-plan-syncs! plan (make-syncs params data-group dp-group ep (* dp ep) bucket-bytes))
      (set-plan-moe-layers! plan (plan-gather-layers plan (model-moe-layers m)))
      (hashq-set! plans-of-models m plan)
      plan)))

(define (sort-by-model params owners)
  ;; OWNERS in the order of PARAMS (matched by name)
  (map (lambda (p) (find (lambda (o) (string=? (car (car o)) (car p))) owners)) params))

(define (model-grad-accum model)
  (or (assq-ref (assq-ref (model-config model) 'router) 'grad-accum) 1))

(define (make-syncs params data-group dp-group ep w bucket-bytes)
  (let* ((experts (if (> ep 1) (filter (lambda (p) (expert-param? (car p))) params) '()))
         (dense (lset-difference eq? params experts)))
    (filter-map (lambda (ps g)
                  ;; a group of one still divides by W (expert slices under ep alone)
                  (and (pair? ps) (or (> (group-size g) 1) (> w 1))
                       (make-grad-sync (map cdr ps) #:group g #:divisor w #:bucket-bytes bucket-bytes)))
                (list dense experts) (list data-group dp-group))))

;;; ---- data ----------------------------------------------------------------------------

(define (plan-rows p t)
  "This rank's rows of the global micro-batch T [B …]."
  (let* ((w (plan-data-size p)) (b (car (tensor-shape t))) (n (quotient b w)))
    (if (= w 1) t (narrow t 0 (* (plan-data-rank p) n) n))))

(define (sum-over group values)
  ;; VALUES (numbers) summed element-wise over GROUP, in f64
  (if (<= (group-size group) 1)
      values
      (let ((t (tensor (map exact->inexact values) #:dtype 'f64)))
        (all-reduce! t #:group group)
        (let ((r (tensor->list t))) (tensor-free! t) r))))

(define (plan-data-sum p . values)
  "VALUES summed over the data ranks of this stage (a list)."
  (sum-over (plan-data-group p) values))

(define (plan-world-sum p . values)
  "VALUES summed over every rank (a list)."
  (sum-over (plan-world p) values))

;;; ---- gradients -----------------------------------------------------------------------

(define (plan-arm! p)
  "The next backward is the step's last: the reducers launch their buckets
as it produces the gradients."
  (for-each grad-sync-arm! (plan-syncs p)))

(define (plan-reduce-grads! p)
  "Finish the gradient reductions of the step."
  (for-each grad-sync-wait! (plan-syncs p)))

(define (squared-norm params)
  ;; the sum of squares of PARAMS' gradients (grad-norm counts none as zero)
  (let ((n (grad-norm params))) (* n n)))

(define (plan-grad-norm p)
  "The L2 norm of the whole model's gradient: dense parts counted once per
stage, expert slices once per expert-parallel rank."
  (let* ((params (model-parameters (plan-model p)))
         (experts (if (> (plan-ep p) 1) (filter (lambda (q) (expert-param? (car q))) params) '()))
         (dense (lset-difference eq? params experts))
         ;; every rank of the world adds its part weighted so that each
         ;; distinct tensor counts once: dense parts are replicated over
         ;; dp × ep, expert slices over dp.
         (total (car (plan-world-sum p (+ (/ (squared-norm dense) (plan-data-size p))
                                          (/ (squared-norm experts) (plan-dp p)))))))
    (sqrt total)))

(define (plan-after-update! p)
  "After the optimizer step: under ZeRO-1 every parameter from the rank
that updated it."
  (when (plan-zero p)
    (with-no-grad
     (lambda ()
       (for-each (lambda (o) (broadcast! (cdr (car o)) #:root (caddr o) #:group (cadr o)))
                 (sort-by-model (model-parameters (plan-model p)) (plan-owners p)))))))

(define (plan-comm-stats p)
  "The reducers' statistics (grad-sync-stats), one alist per reducer."
  (map grad-sync-stats (plan-syncs p)))

;;; ---- metrics -------------------------------------------------------------------------

(define (number-or-zero x) (if (and (real? x) (not (nan? x))) x 0.0))

(define (plan-gather-layers p rows)
  "ROWS, one entry per MoE layer this rank holds, gathered from every
pipeline stage in layer order (the same list on every rank)."
  (if (= (plan-stages p) 1)
      rows
      (concatenate (all-gather-values rows #:group (plan-pp-group p)))))

(define (plan-routing-metrics p before after kinds)
  "The step's routing metrics of every MoE layer, global over the data
ranks: BEFORE and AFTER are this rank's router metrics before and after the
routers' step, KINDS the aux loss kinds. Returns per-layer alists."
  (let* ((e (assq-ref (model-config (plan-model p)) 'experts))
         (local
          (map (lambda (m)
                 (let ((tokens (or (assq-ref m 'tokens) 0)))
                   (append (tensor->list (assq-ref m 'tokens-per-expert-step))
                           (list tokens
                                 (* tokens (number-or-zero (assq-ref m 'entropy)))
                                 (* tokens (number-or-zero (assq-ref m 'dropped-fraction))))
                           (map (lambda (k) (number-or-zero (assq-ref (assq-ref m 'aux-losses) k))) kinds))))
               before))
         (w (plan-data-size p))
         (summed (let ((flat (sum-over (plan-data-group p) (concatenate local))))
                   (let split ((xs flat) (acc '()))
                     (if (null? xs) (reverse acc)
                         (split (list-tail xs (+ e 3 (length kinds)))
                                (cons (list-head xs (+ e 3 (length kinds))) acc))))))
         (rows
          (map (lambda (row a)
                 (let* ((counts (list-head row e))
                        (tokens (list-ref row e))
                        (stats (balance-stats (tensor counts #:dtype 'f64)))
                        (per-token (lambda (x) (if (positive? tokens) (/ x tokens) +nan.0))))
                   `((tokens_per_expert . ,counts)
                     (max_vio . ,(if (positive? tokens) (assq-ref stats 'max-violation) +nan.0))
                     (cv . ,(if (positive? tokens) (assq-ref stats 'cv) +nan.0))
                     (dead_fraction . ,(if (positive? tokens) (assq-ref stats 'dead-fraction) +nan.0))
                     (entropy . ,(per-token (list-ref row (+ e 1))))
                     (dropped_fraction . ,(per-token (list-ref row (+ e 2))))
                     (aux . ,(map (lambda (k x) (cons k (/ x w))) kinds (list-tail row (+ e 3))))
                     (max_vio_global . ,(or (assq-ref a 'max-violation-global) +nan.0))
                     (expert_bias . ,(let ((b (assq-ref a 'bias))) (and b (tensor->list b))))
                     ,@(if (> (plan-ep p) 1)
                           `((ep_overload . ,(overload counts (plan-ep p))))
                           '()))))
               summed after)))
    (plan-gather-layers p rows)))

(define (overload counts ep)
  ;; max over expert-parallel ranks of the tokens their experts got / the mean
  (let* ((per (quotient (length counts) ep))
         (loads (map (lambda (r) (apply + (list-head (list-tail counts (* r per)) per))) (iota ep)))
         (mean (/ (apply + loads) ep)))
    (if (positive? mean) (/ (apply max loads) mean) +nan.0)))

;;; ---- the whole model -----------------------------------------------------------------

(define (model-gather-parameters m)
  "The full parameter set of the model M as an alist name -> tensor (fresh
copies), the same on every rank: under a trainer's #:mesh each rank holds
only its pipeline stage's layers and its slice of the experts, and this
collective (every rank of the world calls it) gathers the slices along the
expert dimension and every stage's tensors. For a model outside any mesh,
copies of model-parameters."
  (let ((p (hashq-ref plans-of-models m)))
    (if (not p)
        (map (lambda (q) (cons (car q) (clone (cdr q)))) (model-parameters m))
        (with-no-grad
         (lambda ()
           (let* ((mine (map (lambda (q)
                               (cons (car q)
                                     (if (and (> (plan-ep p) 1) (expert-param? (car q)))
                                         (all-gather (cdr q) #:group (mesh-group 'ep))
                                         (clone (cdr q)))))
                             (model-parameters m))))
             (if (= (plan-stages p) 1)
                 mine
                 (append-map
                  (lambda (s)
                    (let ((shapes (broadcast-value (map (lambda (q) (list (car q) (tensor-shape (cdr q))
                                                                          (tensor-dtype (cdr q))))
                                                        mine)
                                                   #:root s #:group (plan-pp-group p))))
                      (map (lambda (spec)
                             (let ((t (if (= s (plan-stage p))
                                          (assoc-ref mine (car spec))
                                          (zeros (cadr spec) #:dtype (caddr spec)))))
                               (broadcast! t #:root s #:group (plan-pp-group p))
                               (cons (car spec) t)))
                           shapes)))
                  (iota (plan-stages p))))))))))
