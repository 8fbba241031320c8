;;; errors.scm — every error path: wrong Scheme types raise wrong-type-arg;
;;; bad shapes, dims, indices, dtypes and freed tensors raise moelab-error
;;; naming the procedure; nothing crashes, and work goes on afterwards.

(include "common.scm")

(test-begin "errors")

(define t (tensor '((1 2 3) (4 5 6))))

;;; ---- the shape of a moelab-error ---------------------------------------------------

(test-group "moelab-error"
  (test-equal "key, procedure, message, status" '(moelab-error "matmul" #t shape)
    (catch #t
      (lambda () (matmul (zeros '(2 3)) (zeros '(4 5))))
      (lambda (key subr message args rest)
        (list key subr (and (string-contains message "[2 3]") (string-contains message "[4 5]") #t)
              (car rest)))))
  (test-assert "moelab-error?" (and (moelab-error? 'moelab-error) (not (moelab-error? 'misc-error))))
  (test-equal "status index" 'index (moelab-error-status (lambda () (tensor-ref t 5 0))))
  (test-equal "status dtype" 'dtype (moelab-error-status (lambda () (requires-grad! (tensor '(1) #:dtype 'i64)))))
  (test-equal "status state" 'state (moelab-error-status (lambda () (backward! (tensor '(1))))))
  (test-equal "printed as one line" "In procedure matmul: inner dimensions differ: [2 3] @ [4 5]\n"
    (catch 'moelab-error
      (lambda () (matmul (zeros '(2 3)) (zeros '(4 5))))
      (lambda (key . args)
        (call-with-output-string
          (lambda (port) (print-exception port #f key args))))))
  (test-assert "a ~ in a message is shown as it is"
    (catch 'moelab-error
      (lambda () (zeros '(2) #:dtype (string->symbol "f~a")))
      (lambda (key . args)
        (string-contains (call-with-output-string (lambda (port) (print-exception port #f key args)))
                         "f~a")))))

;;; ---- wrong Scheme types ----------------------------------------------------------------

(test-group "wrong types"
  (test-wrong-type "zeros: shape not a list" (zeros "a"))
  (test-wrong-type "zeros: non-integer size" (zeros '(2 x)))
  (test-wrong-type "zeros: negative size" (zeros '(2 -1)))
  (test-wrong-type "zeros: fractional size" (zeros '(2.5)))
  (test-wrong-type "zeros: size beyond int64" (zeros (list (expt 2 70))))
  (test-wrong-type "zeros: improper list" (zeros '(2 . 3)))
  (test-wrong-type "zeros: dtype not a symbol" (zeros '(2) #:dtype "f32"))
  (test-wrong-type "zeros: device not a symbol" (zeros '(2) #:device "cpu"))
  (test-wrong-type "full: value not a number" (full '(2) 'x))
  (test-wrong-type "tensor: a string" (tensor "abc"))
  (test-wrong-type "tensor: a symbol inside" (tensor '(1 a)))
  (test-wrong-type "tensor: a complex number" (tensor '(1+2i)))
  (test-wrong-type "tensor: shape not a list" (tensor (f32vector 1 2) #:shape "2"))
  (test-wrong-type "tensor-shape of a number" (tensor-shape 5))
  (test-wrong-type "tensor-shape of a list" (tensor-shape '(1 2)))
  (test-wrong-type "t+ with a symbol" (t+ t 'a))
  (test-wrong-type "t+ with a string first" (t+ "a" t))
  (test-wrong-type "t* with a list" (t* '(1 2) t))
  (test-wrong-type "t- one bad argument" (t- 'x))
  (test-wrong-type "t/ with a string" (t/ t "2"))
  (test-wrong-type "t< with a symbol" (t< 'a t))
  (test-wrong-type "pow with a symbol" (pow t 'two))
  (test-wrong-type "matmul of numbers" (matmul 1 2))
  (test-wrong-type "matmul tensor and list" (matmul t '((1))))
  (test-wrong-type "linear bias not a tensor" (linear t t 'bias))
  (test-wrong-type "tsum #:dim a symbol" (tsum t #:dim 'x))
  (test-wrong-type "tsum #:dim huge" (tsum t #:dim (expt 2 40)))
  (test-wrong-type "tmax #:dim two dims" (tmax t #:dim '(0 1)))
  (test-wrong-type "softmax #:dim a float" (softmax t #:dim 1.0))
  (test-wrong-type "reshape to a non-list" (reshape t 'six))
  (test-wrong-type "permute a non-list" (permute t 0))
  (test-wrong-type "tensor-ref with a symbol index" (tensor-ref t 'a 0))
  (test-wrong-type "tensor-set! with a symbol value" (tensor-set! (zeros 2) 'a 0))
  (test-wrong-type "cat: not a list" (cat t))
  (test-wrong-type "cat: numbers in the list" (cat (list 1 2)))
  (test-wrong-type "split: bad sizes" (split t '(1 x)))
  (test-moelab-error "split: zero piece size" "split" (split t 0))
  (test-wrong-type "chunk: zero pieces" (chunk t 0))
  (test-wrong-type "gelu: bad approximation" (gelu t #:approximate 'fast))
  (test-wrong-type "randn: negative seed" (randn '(2) #:seed -1))
  (test-wrong-type "manual-seed!: a string" (manual-seed! "1"))
  (test-wrong-type "register-hook!: not a procedure" (register-hook! (tensor '(1) #:requires-grad #t) 5))
  (test-wrong-type "make-autograd-function: forward not a procedure"
    (make-autograd-function 'f 5 (lambda (ctx g) g)))
  (test-wrong-type "backward!: grad not a tensor" (backward! (tsum (tensor '(1) #:requires-grad #t)) '(1)))
  (test-wrong-type "tensor->list of a vector" (tensor->list #(1 2)))
  (test-wrong-type "tensor-free! of a number" (tensor-free! 3)))

;;; ---- bad values: moelab-error naming the procedure ----------------------------------------

(test-group "bad dtypes and devices"
  (test-moelab-error "unknown dtype" "unknown dtype" (zeros '(2) #:dtype 'f16))
  (test-moelab-error "unknown device" "unknown device" (zeros '(2) #:device 'tpu))
  (when (zero? (device-count 'cuda))
    (test-moelab-error "cuda without a GPU" "cuda" (zeros '(2) #:device 'cuda))
    (test-moelab-error "tensor-to cuda without a GPU" "CUDA" (tensor-to t #:device 'cuda))
    (test-moelab-error "tensor-to 'cuda without a GPU" "CUDA" (tensor-to t 'cuda))
    (test-equal "work goes on after it" '(1.0 2.0 3.0) (tensor->list (tensor '(1 2 3)))))
  (test-moelab-error "requires-grad! on integers" "requires-grad!" (requires-grad! (tensor '(1) #:dtype 'i64)))
  (test-moelab-error "softmax of integers" "softmax" (softmax (tensor '(1 2) #:dtype 'i64)))
  (test-moelab-error "tmean of integers" "tmean" (tmean (tensor '(1 2) #:dtype 'i32)))
  (test-moelab-error "gather with a float index" "gather" (gather t 1 (tensor '((0) (1)))))
  (test-moelab-error "i32 overflow" "i32" (tensor (list (expt 2 40)) #:dtype 'i32))
  (test-moelab-error "u8vector beyond bool" "u8vector" (tensor (u8vector 0 7))))

(test-group "bad shapes"
  (test-moelab-error "matmul inner dims" "matmul" (matmul (zeros '(2 3)) (zeros '(4 5))))
  (test-moelab-error "t+ broadcast" "t+" (t+ (zeros 2) (zeros 3)))
  (test-moelab-error "t* broadcast names t*" "t*" (t* (zeros 2) (zeros 3)))
  (test-moelab-error "t= broadcast" "t=" (t= (zeros 2) (zeros 3)))
  (test-moelab-error "ragged data" "ragged" (tensor '((1 2) (3))))
  (test-moelab-error "ragged: number for a list" "ragged" (tensor '((1 2) 3)))
  (test-moelab-error "too deep" "deeper" (tensor '(((((((((1)))))))))))
  (test-moelab-error "shape vs data" "elements" (tensor '(1 2 3) #:shape '(2 2)))
  (test-moelab-error "shape vs SRFI-4 vector" "elements" (tensor (f32vector 1 2 3) #:shape '(2 2)))
  (test-moelab-error "too many dims" "dims" (zeros '(1 1 1 1 1 1 1 1 1)))
  (test-moelab-error "out of memory is an error, not a crash" "zeros" (zeros '(1000000 1000000 1000)))
  (test-moelab-error "arange with step 0" "arange" (arange 0 1 0))
  (test-moelab-error "reshape numel" "reshape" (reshape t '(4 2)))
  (test-moelab-error "reshape two -1" "reshape" (reshape t '(-1 -1)))
  (test-moelab-error "view of a transposed tensor" "view" (view (transpose t) '(6)))
  (test-moelab-error "expand incompatible" "expand" (expand t '(2 4)))
  (test-moelab-error "squeeze of a size-2 dim" "squeeze" (squeeze t 0))
  (test-moelab-error "cat of different sizes" "cat" (cat (list (zeros '(2 2)) (zeros '(2 3)))))
  (test-moelab-error "stack of different shapes" "stack" (stack (list (zeros 2) (zeros 3))))
  (test-moelab-error "cat of nothing" "cat" (cat '()))
  (test-moelab-error "split sizes do not add up" "split" (split t '(1 2)))
  (test-moelab-error "split dim out of range" "split" (split t 2 #:dim 5))
  (test-moelab-error "chunk dim out of range" "split" (chunk t 2 #:dim -3))
  (test-moelab-error "cross-entropy: targets length" "cross-entropy" (cross-entropy t '(0)))
  (test-moelab-error "linear: weight width" "linear" (linear t (zeros '(2 2))))
  (test-moelab-error "rms-norm: weight size" "rms-norm" (rms-norm t (ones 2)))
  (test-moelab-error "layer-norm: bias size" "layer-norm" (layer-norm t (ones 3) (ones 2)))
  (test-moelab-error "where: shapes" "where" (where (t> (zeros 2) 0) (zeros 3) (zeros 3)))
  (test-moelab-error "masked-fill: mask shape" "masked-fill" (masked-fill t (t> (zeros 4) 0) 1))
  (test-moelab-error "bmm: needs 3-d" "bmm" (bmm t t))
  (test-moelab-error "backward! of a non-scalar without a gradient" "one-element"
    (backward! (t* (tensor '(1 2) #:requires-grad #t) 2)))
  (test-moelab-error "backward! with a gradient of the wrong shape" "backward"
    (backward! (t* (tensor '(1 2) #:requires-grad #t) 2) (zeros 3)))
  (test-moelab-error "backward! of a tensor without grad" "backward!" (backward! (tsum t)))
  (test-moelab-error "set-tensor-grad! shape" "set-tensor-grad!" (set-tensor-grad! t (zeros 2)))
  (test-moelab-error "tensor-item of many elements" "tensor-item" (tensor-item t)))

(test-group "out-of-range dims and indices"
  (test-moelab-error "tsum dim" "tsum" (tsum t #:dim 2))
  (test-moelab-error "tsum negative dim" "tsum" (tsum t #:dim -3))
  (test-moelab-error "tmean dim" "tmean" (tmean (tensor '(1.0)) #:dim 1))
  (test-moelab-error "tmax dim" "tmax" (tmax t #:dim 5))
  (test-moelab-error "argmax dim" "argmax" (argmax t #:dim 2))
  (test-moelab-error "softmax dim" "softmax" (softmax t #:dim 2))
  (test-moelab-error "log-softmax dim" "log-softmax" (log-softmax t #:dim -3))
  (test-moelab-error "cumsum dim" "cumsum" (cumsum t #:dim 9))
  (test-moelab-error "transpose dim" "transpose" (transpose t 0 5))
  (test-moelab-error "permute repeats a dim" "permute" (permute t '(0 0)))
  (test-moelab-error "permute: wrong count" "permute" (permute t '(0)))
  (test-moelab-error "narrow past the end" "narrow" (narrow t 1 2 5))
  (test-moelab-error "tselect index" "tselect" (tselect t 0 2))
  (test-moelab-error "unsqueeze dim" "unsqueeze" (unsqueeze t 4))
  (test-moelab-error "tensor-ref index" "tensor-ref" (tensor-ref t 2 0))
  (test-moelab-error "tensor-ref negative index" "tensor-ref" (tensor-ref t 0 -4))
  (test-moelab-error "tensor-ref index count" "tensor-ref" (tensor-ref t 0))
  (test-moelab-error "tensor-set! index" "tensor-set!" (tensor-set! (zeros 2) 1 2))
  (test-moelab-error "gather index" "gather" (gather t 1 '((3) (0))))
  (test-moelab-error "index-select index" "index-select" (index-select t 0 '(2)))
  (test-moelab-error "index-select negative index" "index-select" (index-select t 0 '(-1)))
  (test-moelab-error "index-add index" "index-add" (index-add t 0 '(5) (ones '(1 3))))
  (test-moelab-error "scatter-add index" "scatter-add" (scatter-add t 0 '((2 0 0)) (ones '(1 3))))
  (test-moelab-error "embedding id" "embedding" (embedding t '(2)))
  (test-moelab-error "one-hot class" "one-hot" (one-hot '(5) 3))
  (test-moelab-error "cross-entropy target" "cross-entropy" (cross-entropy t '(0 7)))
  (test-moelab-error "topk k too large" "topk" (topk t 4))
  (test-moelab-error "tsort dim" "tsort" (tsort t #:dim 3))
  (test-moelab-error "bincount of negatives" "bincount" (bincount '(1 -1))))

;;; ---- freed tensors ---------------------------------------------------------------------

(test-group "freed tensors"
  (let ((f (tensor '(1 2))))
    (tensor-free! f)
    (test-moelab-error "tensor-shape" "freed" (tensor-shape f))
    (test-moelab-error "names the procedure" "tensor-shape" (tensor-shape f))
    (test-moelab-error "t+" "freed" (t+ f 1))
    (test-moelab-error "t+ names t+" "t+" (t+ f 1))
    (test-moelab-error "matmul" "matmul" (matmul f f))
    (test-moelab-error "tensor->list" "freed" (tensor->list f))
    (test-moelab-error "tensor-ref" "freed" (tensor-ref f 0))
    (test-moelab-error "requires-grad!" "freed" (requires-grad! f))
    (test-moelab-error "backward!" "freed" (backward! f))
    (test-moelab-error "as a gradient" "freed" (backward! (tsum (tensor '(1) #:requires-grad #t)) f))
    (test-moelab-error "in a list" "freed" (cat (list (zeros 2) f)))
    (test-moelab-error "as an index" "freed" (index-select (zeros 3) 0 f))
    (test-equal "tensor-free! again is fine" #t (begin (tensor-free! f) (tensor-freed? f)))
    (test-equal "printing a freed tensor" "#<tensor freed>" (format #f "~a" f))))

;;; ---- in-place writes under autograd ---------------------------------------------------------

(test-group "in-place on tensors that require grad"
  (let ((w (tensor '(1 2) #:requires-grad #t)))
    (test-moelab-error "tensor-fill!" "tensor-fill!" (tensor-fill! w 0))
    (test-moelab-error "tensor-copy!" "tensor-copy!" (tensor-copy! w (zeros 2)))
    (test-moelab-error "tensor-set!" "tensor-set!" (tensor-set! w 0 0))
    (test-equal "fine under no-grad" '(0.0 0.0) (no-grad (tensor-fill! w 0) (tensor->list w)))))

;;; ---- values an integer dtype cannot hold, overlapping writes, division by zero -------------------

(test-group "conversions to integer dtypes"
  (test-moelab-error "to-dtype: NaN, Inf, 1e20 to i32 names the first offender and its index"
    "element [0] of the f32 tensor [3] is nan, which i32 cannot hold"
    (to-dtype (tensor (list +nan.0 +inf.0 1e20)) 'i32))
  (test-moelab-error "to-dtype: Inf at index [1] to i64" "element [1] of the f64 tensor [3] is inf"
    (to-dtype (tensor (list 1 +inf.0 2) #:dtype 'f64) 'i64))
  (test-moelab-error "to-dtype: out of range at [1 0]" "element [1 0] of the f64 tensor [2 2] is 1e+20"
    (to-dtype (tensor '((1 2) (1e20 3)) #:dtype 'f64) 'i64))
  (test-moelab-error "to-dtype: an i64 beyond i32" "element [0] of the i64 tensor [1] is 3e+09"
    (to-dtype (tensor '(3000000000) #:dtype 'i64) 'i32))
  (test-equal "in range: truncated toward zero" '(-2147483648 2147483647 -1)
    (tensor->list (to-dtype (tensor '(-2147483648.5 2147483647.5 -1.9) #:dtype 'f64) 'i32)))
  (test-moelab-error "full 1e30 as i64" "value 1e+30 cannot be converted to i64" (full '(2) 1e30 #:dtype 'i64))
  (test-moelab-error "full NaN as i32" "value nan cannot be converted to i32" (full '(2) +nan.0 #:dtype 'i32))
  (test-moelab-error "full 3e9 as i32" "i32" (full '(2) 3e9 #:dtype 'i32))
  (let ((i (zeros '(2) #:dtype 'i32)))
    (test-moelab-error "tensor-fill! 1e10 into i32" "value 1e+10 cannot be converted to i32" (tensor-fill! i 1e10))
    (test-moelab-error "tensor-fill! -inf into i64" "value -inf" (tensor-fill! (zeros '(1) #:dtype 'i64) -inf.0))
    (test-moelab-error "tensor-copy! NaN into i32" "tensor-copy!" (tensor-copy! i (tensor (list 1 +nan.0))))
    (test-equal "the integer tensor is untouched" '(0 0) (tensor->list i))))

(test-group "writes into overlapping views"
  (let* ((base (zeros '(1 2))) (wide (expand base '(2 2))))
    (test-moelab-error "tensor-copy! into an expanded view" "sharing memory"
      (tensor-copy! wide (tensor '((1 2) (3 4)))))
    (test-equal "nothing was written" '((0.0 0.0)) (tensor->list base))
    (test-equal "a transposed destination is fine" '((1.0 3.0) (2.0 4.0))
      (let ((m (zeros '(2 2))))
        (tensor-copy! (transpose m 0 1) (tensor '((1 2) (3 4))))
        (tensor->list m)))))

(test-group "integer division by zero"
  (test-moelab-error "t/ of an i64 tensor by 0" "t/" (t/ (tensor '(1 2) #:dtype 'i64) 0))
  (test-equal "is a moelab-error (not numerical-overflow)" 'value
    (moelab-error-status (lambda () (t/ (tensor '(1 2) #:dtype 'i64) 0))))
  (test-moelab-error "t/ of an i32 tensor by 0.0" "integer division by zero" (t/ (tensor '(1 2) #:dtype 'i32) 0.0))
  (test-moelab-error "t/ of a number by an i64 tensor holding 0"
    "integer division by zero: element [1] of the i64 divisor [2] is 0"
    (t/ 6 (tensor '(3 0) #:dtype 'i64)))
  (test-moelab-error "reciprocal of an i32 tensor holding 0" "integer division by zero" (t/ (tensor '(0 1) #:dtype 'i32)))
  (test-equal "without zeros: true division" '(2.0 -3.0) (tensor->list (t/ 6 (tensor '(3 -2) #:dtype 'i64))))
  (test-equal "floating division by zero stays IEEE" '(+inf.0) (tensor->list (t/ (tensor '(1.0)) 0))))

;;; ---- the process survives all of the above ----------------------------------------------------

(test-equal "still computing" '(2.0 4.0) (tensor->list (t* (tensor '(1 2)) 2)))
(test-assert "grad mode left on" (grad-enabled?))

(test-end "errors")
(exit-with-test-status)
