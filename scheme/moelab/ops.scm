;;; (moelab ops) — every tensor op: arithmetic, elementwise functions,
;;; comparisons, reductions, linear algebra, neural-net ops, indexing, joins,
;;; sorting and the views (reshape, transpose, …).
;;;
;;; All ops are differentiable in their floating inputs unless said otherwise.
;;; Binary ops broadcast (numpy rules) and promote dtypes. Negative dims count
;;; from the end. Index arguments take an integer tensor or a list of
;;; integers.
;;;
;;; Names that would clash with Scheme: the reductions are tsum tmean tmax
;;; tmin; sort and select are tsort and tselect; the elementwise functions
;;; exp log sqrt abs tanh are generic (numbers keep their usual meaning,
;;; tensors work elementwise) and also exist as texp tlog tsqrt tabs ttanh.

(define-module (moelab ops)
  #:use-module (moelab primitives)
  #:use-module (moelab tensor)
  #:replace (exp log sqrt abs tanh)
  #:export (t+ t- t* t/ pow neg
            texp tlog tsqrt rsqrt tabs ttanh sigmoid silu relu gelu
            clamp where masked-fill dropout
            t= t!= t< t<= t> t>=
            tsum tmean var tmax tmin argmax argmin
            softmax log-softmax logsumexp cumsum sum-to-shape
            matmul matmul-cpu-kernel bmm linear rms-norm layer-norm cross-entropy embedding
            gather scatter-add index-select index-add
            cat stack split chunk one-hot topk tsort argsort bincount histogram
            reshape view transpose permute narrow tselect expand squeeze unsqueeze
            flatten contiguous clone to-dtype tensor-to))

(define core-exp (@ (guile) exp))
(define core-log (@ (guile) log))
(define core-sqrt (@ (guile) sqrt))
(define core-abs (@ (guile) abs))
(define core-tanh (@ (guile) tanh))

;;; ---- arguments ------------------------------------------------------------

(define (operand-error who x)
  (scm-error 'wrong-type-arg who "Wrong type argument (expecting tensor or real number): ~S"
             (list x) (list x)))

(define (as-index x)
  "X as an integer tensor: tensors pass through, lists and integers become i64."
  (if (tensor? x) x (tensor x #:dtype 'i64)))

(define (scalar-like value t)
  "A 0-d tensor holding VALUE with T's dtype (f32 when T is not floating)."
  (let ((dtype (tensor-dtype t)))
    (full '() value #:dtype (if (memq dtype '(f32 f64 bf16)) dtype 'f32)
          #:device (tensor-device t))))

;;; ---- arithmetic ---------------------------------------------------------------

(define (add2 a b who)
  (cond ((and (tensor? a) (tensor? b)) (%add a b who))
        ((and (tensor? a) (real? b)) (%add-scalar a b who))
        ((and (real? a) (tensor? b)) (%add-scalar b a who))
        ((and (number? a) (number? b)) (+ a b))
        (else (operand-error who (if (or (tensor? a) (number? a)) b a)))))

(define (sub2 a b who)
  (cond ((and (tensor? a) (tensor? b)) (%sub a b who))
        ((and (tensor? a) (real? b)) (%add-scalar a (- b) who))
        ((and (real? a) (tensor? b)) (%rsub-scalar b a who))
        ((and (number? a) (number? b)) (- a b))
        (else (operand-error who (if (or (tensor? a) (number? a)) b a)))))

(define (mul2 a b who)
  (cond ((and (tensor? a) (tensor? b)) (%mul a b who))
        ((and (tensor? a) (real? b)) (%mul-scalar a b who))
        ((and (real? a) (tensor? b)) (%mul-scalar b a who))
        ((and (number? a) (number? b)) (* a b))
        (else (operand-error who (if (or (tensor? a) (number? a)) b a)))))

(define (div2 a b who)
  (cond ((and (tensor? a) (tensor? b)) (%div a b who))
        ((and (tensor? a) (real? b))
         (cond ((memq (tensor-dtype a) '(f32 f64 bf16))
                (%div a (scalar-like b a) who))      ; exact division, a's dtype
               ((zero? b)
                (throw 'moelab-error who "integer division by zero: the ~a tensor ~a divided by ~a"
                       (list (tensor-dtype a)
                             (string-append "[" (string-join (map number->string (tensor-shape a)) " ") "]")
                             b)
                       '(value)))
               (else (%mul-scalar a (/ 1.0 b) who)))) ; integers: true division
        ((and (real? a) (tensor? b)) (%rdiv-scalar b a who))
        ((and (number? a) (number? b)) (/ a b))
        (else (operand-error who (if (or (tensor? a) (number? a)) b a)))))

(define (t+ a . rest)
  "Sum of A and the REST, left to right: tensors (broadcasting) or numbers on
either side. @code{(t+ x 1)}, @code{(t+ 1 x)}, @code{(t+ x y z)}."
  (let loop ((acc a) (rest rest))
    (if (null? rest)
        (if (or (tensor? acc) (number? acc)) acc (operand-error "t+" acc))
        (loop (add2 acc (car rest) "t+") (cdr rest)))))

(define (t- a . rest)
  "A minus each of the REST, left to right; with one argument, its negation.
Tensors (broadcasting) or numbers on either side."
  (if (null? rest)
      (cond ((tensor? a) (%neg a))
            ((number? a) (- a))
            (else (operand-error "t-" a)))
      (let loop ((acc a) (rest rest))
        (if (null? rest) acc (loop (sub2 acc (car rest) "t-") (cdr rest))))))

(define (t* a . rest)
  "Elementwise product of A and the REST, left to right: tensors
(broadcasting) or numbers on either side. For matrix products see matmul."
  (let loop ((acc a) (rest rest))
    (if (null? rest)
        (if (or (tensor? acc) (number? acc)) acc (operand-error "t*" acc))
        (loop (mul2 acc (car rest) "t*") (cdr rest)))))

(define (t/ a . rest)
  "A divided by each of the REST, left to right; with one argument, its
reciprocal. Tensors (broadcasting) or numbers on either side. Integer tensors
divided by a number give f32 (true division)."
  (if (null? rest)
      (div2 1 a "t/")
      (let loop ((acc a) (rest rest))
        (if (null? rest) acc (loop (div2 acc (car rest) "t/") (cdr rest))))))

(define (pow a b)
  "A raised to the power B elementwise; A and B tensors (broadcasting) or
numbers."
  (cond ((and (tensor? a) (tensor? b)) (%pow a b "pow"))
        ((and (tensor? a) (real? b)) (%pow-scalar a b "pow"))
        ((and (real? a) (tensor? b)) (%pow (scalar-like a b) b "pow"))
        ((and (number? a) (number? b)) (expt a b))
        (else (operand-error "pow" (if (or (tensor? a) (number? a)) b a)))))

(define (neg t)
  "Elementwise negation of tensor T."
  (%neg t))

;;; ---- elementwise functions -----------------------------------------------------------

(define (texp t) "Elementwise e^T." (%exp t))
(define (tlog t) "Elementwise natural logarithm of T." (%log t))
(define (tsqrt t) "Elementwise square root of T." (%sqrt t))
(define (rsqrt t) "Elementwise 1/sqrt(T)." (%rsqrt t))
(define (tabs t) "Elementwise absolute value of T." (%abs t))
(define (ttanh t) "Elementwise hyperbolic tangent of T." (%tanh t))
(define (sigmoid t) "Elementwise logistic sigmoid 1/(1+e^-T)." (%sigmoid t))
(define (silu t) "Elementwise SiLU (swish): T·sigmoid(T)." (%silu t))
(define (relu t) "Elementwise max(T, 0)." (%relu t))

(define (exp x)
  "e^X: elementwise for a tensor (as texp), Scheme's exp for a number."
  (if (tensor? x) (%exp x) (core-exp x)))

(define (log x)
  "Natural logarithm: elementwise for a tensor (as tlog), Scheme's log for a
number."
  (if (tensor? x) (%log x) (core-log x)))

(define (sqrt x)
  "Square root: elementwise for a tensor (as tsqrt), Scheme's sqrt for a number."
  (if (tensor? x) (%sqrt x) (core-sqrt x)))

(define (abs x)
  "Absolute value: elementwise for a tensor (as tabs), Scheme's abs for a number."
  (if (tensor? x) (%abs x) (core-abs x)))

(define (tanh x)
  "Hyperbolic tangent: elementwise for a tensor (as ttanh), Scheme's tanh for
a number."
  (if (tensor? x) (%tanh x) (core-tanh x)))

(define* (gelu t #:key (approximate 'none))
  "Elementwise GELU of T: exact (erf) with APPROXIMATE 'none, the tanh
approximation with 'tanh."
  (%gelu t approximate))

(define* (clamp t #:optional (lo #f) (hi #f))
  "T limited to [LO, HI] elementwise; #f leaves that side open. The gradient
passes where LO <= T <= HI."
  (%clamp t lo hi))

(define (where condition a b)
  "Elementwise CONDITION ? A : B, broadcasting all three. CONDITION is a bool
tensor (e.g. from t>); A and B are tensors or numbers."
  (let* ((like (if (tensor? a) a (if (tensor? b) b #f)))
         (a (cond ((tensor? a) a)
                  (like (scalar-like a like))
                  (else (scalar-tensor a))))
         (b (if (tensor? b) b (scalar-like b a))))
    (%where condition a b)))

(define (masked-fill t mask value)
  "T with VALUE where the bool tensor MASK (broadcast to T) is true."
  (%masked-fill t mask value))

(define* (dropout t #:key (p 0.5) (training #t) (seed #f))
  "Inverted dropout: zero each element with probability P and scale the
survivors by 1/(1-P). The identity when TRAINING is #f or P is 0. SEED (a
non-negative integer) gives a fixed mask; without, the default generator."
  (%dropout t p training seed))

;;; ---- comparisons (bool results, no gradient) --------------------------------------

(define (compare a b op flipped who)
  (cond ((tensor? a) (%compare a b op who))
        ((and (real? a) (tensor? b)) (%compare b a flipped who))
        (else (operand-error who (if (real? a) b a)))))

(define (t= a b) "Elementwise A = B (bool tensor); tensors or numbers, broadcasting."
  (compare a b '= '= "t="))
(define (t!= a b) "Elementwise A ≠ B (bool tensor); tensors or numbers, broadcasting."
  (compare a b '!= '!= "t!="))
(define (t< a b) "Elementwise A < B (bool tensor); tensors or numbers, broadcasting."
  (compare a b '< '> "t<"))
(define (t<= a b) "Elementwise A ≤ B (bool tensor); tensors or numbers, broadcasting."
  (compare a b '<= '>= "t<="))
(define (t> a b) "Elementwise A > B (bool tensor); tensors or numbers, broadcasting."
  (compare a b '> '< "t>"))
(define (t>= a b) "Elementwise A ≥ B (bool tensor); tensors or numbers, broadcasting."
  (compare a b '>= '<= "t>="))

;;; ---- reductions -----------------------------------------------------------------------

(define* (tsum t #:key (dim #f) (keepdim #f))
  "Sum of T over DIM: #f (all dims, a 0-d result), an integer, or a list of
dims. KEEPDIM keeps reduced dims as size 1. Integer tensors sum to i64."
  (%reduce 'sum t dim keepdim))

(define* (tmean t #:key (dim #f) (keepdim #f))
  "Mean of T over DIM (#f: all; an integer; or a list), keeping reduced dims
as size 1 with KEEPDIM. Floating tensors only."
  (%reduce 'mean t dim keepdim))

(define* (var t #:key (dim #f) (correction 1) (keepdim #f))
  "Variance of T over DIM (#f: all; an integer; or a list): the sum of squared
deviations divided by N - CORRECTION (1: unbiased, 0: population)."
  (%var t dim correction keepdim))

(define (single-dim dim who)
  (cond ((exact-integer? dim) dim)
        ((and (pair? dim) (null? (cdr dim))) (car dim))
        (else (scm-error 'wrong-type-arg who
                         "Wrong type argument (expecting one dim): ~S" (list dim) (list dim)))))

(define* (tmax t #:key (dim #f) (keepdim #f))
  "Maximum of T. Without DIM: a 0-d tensor, the maximum of all elements. With
DIM (an integer): two values, the maxima along DIM and their i64 indices (ties:
the lowest index); a single-value context sees just the maxima."
  (if dim
      (%extreme 'max t (single-dim dim "tmax") keepdim)
      (%max-all t)))

(define* (tmin t #:key (dim #f) (keepdim #f))
  "Minimum of T. Without DIM: a 0-d tensor, the minimum of all elements. With
DIM (an integer): two values, the minima along DIM and their i64 indices (ties:
the lowest index)."
  (if dim
      (%extreme 'min t (single-dim dim "tmin") keepdim)
      (%min-all t)))

(define* (argmax t #:key (dim #f) (keepdim #f))
  "Index (i64, no gradient) of the maximum of T along DIM; without DIM, the
flat index of the maximum of all elements. Ties: the lowest index."
  (if dim
      (%argmax t (single-dim dim "argmax") keepdim)
      (%argmax (%flatten t) 0 #f)))

(define* (argmin t #:key (dim #f) (keepdim #f))
  "Index (i64, no gradient) of the minimum of T along DIM; without DIM, the
flat index of the minimum of all elements. Ties: the lowest index."
  (call-with-values
      (lambda ()
        (if dim
            (%extreme 'min t (single-dim dim "argmin") keepdim)
            (%extreme 'min (%flatten t) 0 #f)))
    (lambda (vals indices) indices)))

(define* (softmax t #:key (dim -1))
  "Softmax of T along DIM (default: the last)."
  (%softmax t dim))

(define* (log-softmax t #:key (dim -1))
  "Log of the softmax of T along DIM (default: the last), computed stably."
  (%log-softmax t dim))

(define* (logsumexp t #:key (dim -1) (keepdim #f))
  "log(sum(exp(T))) along DIM (default: the last), computed stably."
  (%logsumexp t dim keepdim))

(define* (cumsum t #:key (dim -1))
  "Running sum of T along DIM (default: the last)."
  (%cumsum t dim))

(define (sum-to-shape t shape)
  "Sum T down to SHAPE, undoing a broadcast (the gradient of broadcasting)."
  (%sum-to-shape t shape))

;;; ---- linear algebra and neural-net ops ---------------------------------------------------

(define (matmul a b)
  "Matrix product with the usual rules: 1-D·1-D dot product, 2-D·2-D, and
batched products with broadcast batch dims. @code{(matmul [4 8] [8 3])} →
[4 3]."
  (%matmul a b "matmul"))

(define (matmul-cpu-kernel)
  "The kernel that runs f32 matrix products on the CPU, as a symbol:
@code{avx512} or @code{avx2} (moelab's own, chosen for the CPU at start-up;
@env{MOELAB_SGEMM}=avx2 picks @code{avx2} on a CPU with both) or
@code{blas} (OpenBLAS: a CPU with neither, or @env{MOELAB_SGEMM}=blas).
f64 products always run on BLAS."
  (%matmul-cpu-kernel))

(define (bmm a b)
  "Batched matrix product: [B M K] × [B K N] → [B M N]."
  (%bmm a b "bmm"))

(define* (linear x w #:optional (bias #f))
  "Affine map X Wᵀ + BIAS: X [… in], W [out in], BIAS [out] or #f → [… out]."
  (%linear x w bias))

(define* (rms-norm x #:optional (weight #f) #:key (eps 1e-6))
  "RMS normalisation over the last dim: X / sqrt(mean(X²) + EPS), times
WEIGHT [D] when given."
  (%rms-norm x weight eps))

(define* (layer-norm x #:optional (weight #f) (bias #f) #:key (eps 1e-5))
  "Layer normalisation over the last dim: (X - mean) / sqrt(var + EPS), times
WEIGHT and plus BIAS ([D] each, or #f)."
  (%layer-norm x weight bias eps))

(define* (cross-entropy logits targets #:key (ignore-index -100))
  "Mean cross-entropy of LOGITS [N C] against class indices TARGETS [N] (an
integer tensor or a list): the mean over targets other than IGNORE-INDEX of
-log_softmax(LOGITS)[target]. A 0-d tensor."
  (%cross-entropy logits (as-index targets) ignore-index))

(define (embedding weight ids)
  "Rows of WEIGHT [V D] picked by the integer IDS (a tensor of any shape, or a
list): [… D]."
  (%embedding weight (as-index ids) "embedding"))

;;; ---- indexing ---------------------------------------------------------------------------

(define (gather t dim index)
  "Pick elements of T along DIM: out[i][j] = T[INDEX[i][j]][j] for DIM 0 (and
likewise for other dims). INDEX is an integer tensor (or nested list) with T's
number of dims."
  (%gather t dim (as-index index)))

(define (scatter-add t dim index src)
  "A copy of T with SRC added at INDEX along DIM: out[INDEX[i][j]][j] +=
SRC[i][j] for DIM 0."
  (%scatter-add t dim (as-index index) src))

(define (index-select t dim index)
  "The slices of T along DIM at the positions of the 1-D INDEX (a tensor or a
list), in that order."
  (%index-select t dim (as-index index)))

(define (index-add t dim index src)
  "A copy of T with slice i of SRC along DIM added to slice INDEX[i] (INDEX
1-D, repeated positions accumulate)."
  (%index-add t dim (as-index index) src))

(define* (cat tensors #:key (dim 0))
  "Concatenate the list TENSORS along DIM (the other sizes must agree)."
  (%join 'cat tensors dim))

(define* (stack tensors #:key (dim 0))
  "Stack the list TENSORS (all the same shape) along a new dim DIM."
  (%join 'stack tensors dim))

(define (dim-size t dim)
  "The size of DIM of T, or #f when DIM is out of range."
  (let* ((shape (tensor-shape t))
         (n (length shape))
         (d (if (and (exact-integer? dim) (< dim 0)) (+ dim n) dim)))
    (and (exact-integer? d) (< -1 d n) (list-ref shape d))))

(define* (split t sizes #:key (dim 0))
  "Split T along DIM into a list of views: SIZES is a list of piece sizes
(summing to the size of DIM) or one integer, the size of every piece (the last
may be smaller)."
  (let ((n (dim-size t dim)))
    (if (and (exact-integer? sizes) (> sizes 0) n)
        (let ((whole (quotient n sizes)) (rest (remainder n sizes)))
          (%split t (append (make-list whole sizes) (if (> rest 0) (list rest) '())) dim))
        ;; a list of sizes, or something %split reports properly
        (%split t (if (exact-integer? sizes) (list sizes) sizes) dim))))

(define* (chunk t n #:key (dim 0))
  "Split T along DIM into N pieces of (nearly) equal size: a list of views."
  (unless (and (exact-integer? n) (> n 0))
    (scm-error 'wrong-type-arg "chunk" "Wrong type argument (expecting a positive count): ~S"
               (list n) (list n)))
  (let ((size (dim-size t dim)))
    (split t (if size (max 1 (quotient (+ size n -1) n)) 1) #:dim dim)))

(define* (one-hot index #:optional (num-classes #f))
  "One-hot encoding (i64, no gradient) of the integer INDEX (tensor or list):
shape [… NUM-CLASSES]; NUM-CLASSES defaults to the largest index + 1."
  (let ((index (as-index index)))
    (%one-hot index (or num-classes
                        (if (zero? (tensor-numel index)) 0
                            (+ 1 (tensor-item (%max-all index))))))))

(define* (topk t k #:key (dim -1) (largest #t))
  "The K largest elements of T along DIM (smallest with LARGEST #f), sorted.
Two values: the values (differentiable) and their i64 indices; ties go to the
lower index.
@example
(call-with-values (lambda () (topk x 2)) (lambda (vals idx) …))
@end example"
  (%topk t k dim largest))

(define* (tsort t #:key (dim -1) (descending #f))
  "T sorted along DIM (stable). Two values: the sorted values (differentiable)
and the i64 indices that sort T."
  (%sort t dim descending))

(define* (argsort t #:key (dim -1) (descending #f))
  "The i64 indices that sort T along DIM (stable)."
  (%argsort t dim descending))

(define* (bincount t #:key (weights #f) (minlength 0))
  "How often each value occurs in the 1-D non-negative integer T (no
gradient): length max(MINLENGTH, max+1). With WEIGHTS (same length), the sums
of the weights instead."
  (%bincount (as-index t) weights minlength))

(define* (histogram t #:key (bins 100) (min 0) (max 0))
  "Counts of T in BINS equal-width bins over [MIN, MAX] (values outside are
ignored; MIN = MAX uses the data's range). No gradient."
  (%histogram t bins min max))

;;; ---- views and layout -------------------------------------------------------------------

(define (reshape t shape)
  "T with a new SHAPE (a list; one size may be -1, inferred): a view sharing
T's storage when the layout allows, else a copy."
  (%reshape t shape #t))

(define (view t shape)
  "T with a new SHAPE (a list; one size may be -1) as a view sharing storage;
an error when T's layout does not allow it (see reshape, contiguous)."
  (%reshape t shape #f))

(define* (transpose t #:optional (dim0 -2) (dim1 -1))
  "T with dims DIM0 and DIM1 swapped (default: the last two), as a view."
  (%transpose t dim0 dim1))

(define (permute t dims)
  "T with its dims reordered: dim i of the result is dim (list-ref DIMS i) of
T. A view."
  (%permute t dims))

(define (narrow t dim start length)
  "Elements START … START+LENGTH-1 of T along DIM, as a view."
  (%narrow t dim start length))

(define (tselect t dim index)
  "Position INDEX of T along DIM with that dim dropped, as a view."
  (%select t dim index))

(define (expand t shape)
  "T broadcast to SHAPE without copying: size-1 dims (and new leading dims)
repeat; -1 keeps a size."
  (%expand t shape))

(define* (squeeze t #:optional (dim #f))
  "T without size-1 dim DIM; without DIM, without all size-1 dims."
  (if dim
      (%squeeze t dim)
      (%reshape t (filter (lambda (n) (not (= n 1))) (tensor-shape t)) #t)))

(define (unsqueeze t dim)
  "T with a new size-1 dim at position DIM."
  (%unsqueeze t dim))

(define (flatten t)
  "T as a 1-D tensor (a view when contiguous)."
  (%flatten t))

(define (contiguous t)
  "T itself when laid out row-major without gaps, else a contiguous copy."
  (%contiguous t))

(define (clone t)
  "A copy of T with its own storage (differentiable)."
  (%clone t))

(define (to-dtype t dtype)
  "T converted to DTYPE (a copy; differentiable between float dtypes)."
  (%to-dtype t dtype))

(define* (tensor-to t #:optional target #:key (device #f) (dtype #f))
  "T moved to DEVICE and/or converted to DTYPE (differentiable). TARGET, when
given, is a device ('cpu 'cuda) or a dtype symbol: @code{(tensor-to t 'cuda)}
is @code{(tensor-to t #:device 'cuda)}, @code{(tensor-to t 'f64)} is
@code{(tensor-to t #:dtype 'f64)}."
  (let* ((device (if (memq target '(cpu cuda)) target device))
         (dtype (if (and target (not (memq target '(cpu cuda)))) target dtype))
         (t (if dtype (%to-dtype t dtype) t)))
    (if device (%to-device t device) t)))
