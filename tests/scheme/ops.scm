;;; ops.scm — every op under its Scheme name, against hand-computed values
;;; (transcendental values from numpy/torch where marked). Gradients are in
;;; autograd.scm, error paths in errors.scm.

(include "common.scm")

(test-begin "ops")

(define a (tensor '((1 2 3) (4 5 6))))
(define row (tensor '(10 20 30)))

;;; ---- arithmetic ----------------------------------------------------------------

(test-group "arithmetic"
  (test-values "t+ tensors" '((11 22 33) (14 25 36)) (t+ a row))
  (test-values "t+ number right" '((2 3 4) (5 6 7)) (t+ a 1))
  (test-values "t+ number left" '((2 3 4) (5 6 7)) (t+ 1 a))
  (test-values "t+ variadic" '((12 23 34) (15 26 37)) (t+ a row 1))
  (test-equal "t+ numbers" 3 (t+ 1 2))
  (test-values "t- tensors" '((-9 -18 -27) (-6 -15 -24)) (t- a row))
  (test-values "t- number right" '((0 1 2) (3 4 5)) (t- a 1))
  (test-values "t- number left" '((9 8 7) (6 5 4)) (t- 10 a))
  (test-values "t- negates" '(-1 2) (t- (tensor '(1 -2))))
  (test-values "t* tensors" '((10 40 90) (40 100 180)) (t* a row))
  (test-values "t* number" '((2 4 6) (8 10 12)) (t* 2 a))
  (test-values "t* variadic" '(8 27) (t* (tensor '(2 3)) (tensor '(2 3)) (tensor '(2 3))))
  (test-values "t/ tensors" '(0.5 0.25) (t/ (tensor '(1 1)) (tensor '(2 4))))
  (test-values "t/ number right" '((0.5 1 1.5) (2 2.5 3)) (t/ a 2))
  (test-values "t/ number left" '(3 1.5) (t/ 6 (tensor '(2 4))))
  (test-values "t/ reciprocal" '(0.5 4) (t/ (tensor '(2 0.25))))
  (test-equal "t/ of an integer tensor is true division" '(f32 (0.5 1.0 1.5))
    (let ((q (t/ (tensor '(1 2 3) #:dtype 'i64) 2))) (list (tensor-dtype q) (tensor->list q))))
  (test-equal "t+ keeps i64" '(i64 (2 3)) (let ((s (t+ (tensor '(1 2) #:dtype 'i64) 1)))
                                            (list (tensor-dtype s) (tensor->list s))))
  (test-equal "promotion f32 + f64 → f64" 'f64 (tensor-dtype (t+ (zeros 2) (zeros 2 #:dtype 'f64))))
  (test-values "pow tensor number" '(1 4 9) (pow (tensor '(1 2 3)) 2))
  (test-values "pow tensor tensor" '(1 8 3) (pow (tensor '(1 2 3)) (tensor '(0 3 1))))
  (test-values "pow number tensor" '(2 4 8) (pow 2 (tensor '(1 2 3))))
  (test-values "neg" '(-1 0 2) (neg (tensor '(1 0 -2)))))

;;; ---- elementwise functions ------------------------------------------------------------

(test-group "elementwise"
  (test-values "texp" '(1 2.718281828459045) (texp (tensor '(0 1))))
  (test-values "tlog" '(0 0.6931471805599453) (tlog (tensor '(1 2))))
  (test-values "tsqrt" '(2 3) (tsqrt (tensor '(4 9))))
  (test-values "rsqrt" '(0.5 0.25) (rsqrt (tensor '(4 16))))
  (test-values "tabs" '(1 0 2) (tabs (tensor '(-1 0 2))))
  ;; torch.tanh
  (test-values "ttanh" '(0 0.46211715726000974 -0.7615941559557649) (ttanh (tensor '(0 0.5 -1))))
  (test-values "exp on a tensor" '(1) (exp (tensor '(0))))
  (test-equal "exp on a number" 1.0 (exp 0))
  (test-values "log on a tensor" '(0) (log (tensor '(1))))
  (test-equal "log on a number" 0.0 (log 1.0))
  (test-values "sqrt on a tensor" '(3) (sqrt (tensor '(9))))
  (test-equal "sqrt on a number stays exact" 3 (sqrt 9))
  (test-values "abs on a tensor" '(2) (abs (tensor '(-2))))
  (test-equal "abs on a number" 2 (abs -2))
  (test-values "tanh on a tensor" '(0) (tanh (tensor '(0))))
  (test-equal "tanh on a number" 0 (tanh 0))
  ;; torch.sigmoid / silu / gelu
  (test-values "sigmoid" '(0.5 0.7310585786300049 0.11920292202211755) (sigmoid (tensor '(0 1 -2))))
  (test-values "silu" '(0 0.7310585786300049 -0.2689414213699951) (silu (tensor '(0 1 -1))))
  (test-values "relu" '(0 0 2) (relu (tensor '(-1 0 2))))
  (test-values "gelu (erf)" '(-0.15865525393145702 0 0.841344746068543 1.9544997361036416)
    (gelu (tensor '(-1 0 1 2))))
  (test-values "gelu #:approximate 'tanh" '(-0.15880800939172324 0 0.8411919906082768 1.954597694087775)
    (gelu (tensor '(-1 0 1 2)) #:approximate 'tanh))
  (test-values "clamp" '(0 0.5 1) (clamp (tensor '(-1 0.5 2)) 0 1))
  (test-values "clamp open below" '(-1 0.5 1) (clamp (tensor '(-1 0.5 2)) #f 1))
  (test-values "clamp open above" '(0 0.5 2) (clamp (tensor '(-1 0.5 2)) 0))
  (test-values "where" '(1 20 3) (where (tensor '(#t #f #t) #:dtype 'bool) (tensor '(1 2 3)) (tensor '(10 20 30))))
  (test-values "where with numbers" '(1 0 3) (where (t> (tensor '(1 -2 3)) 0) (tensor '(1 -2 3)) 0))
  (test-values "where broadcasting" '((1 0) (1 0)) (where (tensor '(#t #f) #:dtype 'bool) 1 (zeros '(2 2))))
  (test-values "masked-fill" '((1 -1) (-1 4))
    (masked-fill (tensor '((1 2) (3 4))) (tensor '((#f #t) (#t #f)) #:dtype 'bool) -1))
  (test-values "dropout p=0 is the identity" '(1 2 3) (dropout (tensor '(1 2 3)) #:p 0))
  (test-values "dropout not training is the identity" '(1 2 3) (dropout (tensor '(1 2 3)) #:p 0.9 #:training #f))
  (test-assert "dropout zeroes or scales by 1/(1-p)"
    (let ((vs (tensor->list (dropout (ones 1000) #:p 0.5 #:seed 3))))
      (and (every (lambda (v) (or (= v 0) (= v 2))) vs)
           (< 350 (count zero? vs) 650))))
  (test-equal "dropout #:seed repeats" (tensor->list (dropout (ones 20) #:seed 9))
    (tensor->list (dropout (ones 20) #:seed 9))))

;;; ---- comparisons ------------------------------------------------------------------------

(test-group "comparisons"
  (let ((x (tensor '(1 2 3))) (y (tensor '(3 2 1))))
    (test-equal "t=" '(#f #t #f) (tensor->list (t= x y)))
    (test-equal "t!=" '(#t #f #t) (tensor->list (t!= x y)))
    (test-equal "t<" '(#t #f #f) (tensor->list (t< x y)))
    (test-equal "t<=" '(#t #t #f) (tensor->list (t<= x y)))
    (test-equal "t>" '(#f #f #t) (tensor->list (t> x y)))
    (test-equal "t>=" '(#f #t #t) (tensor->list (t>= x y)))
    (test-equal "t> number" '(#f #f #t) (tensor->list (t> x 2)))
    (test-equal "number t< tensor flips" '(#f #f #t) (tensor->list (t< 2 x)))
    (test-equal "number t>= tensor flips" '(#t #t #f) (tensor->list (t>= 2 x)))
    (test-equal "bool dtype" 'bool (tensor-dtype (t= x 1)))
    (test-equal "broadcasting" '((#t #f) (#f #t)) (tensor->list (t= (tensor '((1) (2))) (tensor '(1 2)))))))

;;; ---- reductions --------------------------------------------------------------------------

(test-group "reductions"
  (test-values "tsum all" 21 (tsum a))
  (test-equal "tsum all is 0-d" '() (tensor-shape (tsum a)))
  (test-values "tsum #:dim 0" '(5 7 9) (tsum a #:dim 0))
  (test-values "tsum #:dim -1" '(6 15) (tsum a #:dim -1))
  (test-values "tsum #:dim list" 21 (tsum a #:dim '(0 1)))
  (test-values "tsum #:keepdim" '((6) (15)) (tsum a #:dim 1 #:keepdim #t))
  (test-equal "tsum of i32 is i64" '(i64 3) (let ((s (tsum (tensor '(1 2) #:dtype 'i32))))
                                              (list (tensor-dtype s) (tensor->list s))))
  (test-values "tmean" 3.5 (tmean a))
  (test-values "tmean #:dim" '(2 5) (tmean a #:dim 1))
  (test-values "var (Bessel)" 1.6666666666666667 (var (tensor '(1 2 3 4))))
  (test-values "var #:correction 0" 1.25 (var (tensor '(1 2 3 4)) #:correction 0))
  (test-values "var #:dim" '(1 1) (var (tensor '((1 2 3) (4 5 6))) #:dim 1))
  (test-values "tmax all" 6 (tmax a))
  (test-values "tmin all" 1 (tmin a))
  (test-equal "tmax #:dim: values and indices" '((3.0 6.0) (2 2))
    (call-with-values (lambda () (tmax a #:dim 1))
      (lambda (v i) (list (tensor->list v) (tensor->list i)))))
  (test-equal "tmin #:dim 0" '((1.0 2.0 3.0) (0 0 0))
    (call-with-values (lambda () (tmin a #:dim 0))
      (lambda (v i) (list (tensor->list v) (tensor->list i)))))
  (test-values "tmax #:dim in a single-value context" '(3 6) (tmax a #:dim 1))
  (test-equal "tmax ties: lowest index" '(1)
    (call-with-values (lambda () (tmax (tensor '((0 5 5))) #:dim 1)) (lambda (v i) (tensor->list i))))
  (test-equal "argmax #:dim" '(2 2) (tensor->list (argmax a #:dim 1)))
  (test-equal "argmax all (flat)" 5 (tensor->list (argmax a)))
  (test-equal "argmax #:keepdim" '((2) (2)) (tensor->list (argmax a #:dim 1 #:keepdim #t)))
  (test-equal "argmin #:dim" '(0 0) (tensor->list (argmin a #:dim 1)))
  (test-equal "argmin all" 0 (tensor->list (argmin a)))
  ;; torch.softmax / log_softmax / logsumexp of (1 2 3)
  (test-values "softmax" '(0.09003057317038045 0.2447284710547976 0.6652409557748218)
    (softmax (tensor '(1 2 3))))
  (test-values "softmax #:dim 0" '((0.5 0.5) (0.5 0.5)) (softmax (tensor '((1 2) (1 2))) #:dim 0))
  (test-values "log-softmax" '(-2.4076059644443806 -1.4076059644443804 -0.4076059644443804)
    (log-softmax (tensor '(1 2 3))))
  (test-values "logsumexp" 3.4076059644443806 (logsumexp (tensor '(1 2 3))))
  (test-values "logsumexp #:keepdim" '((3.4076059644443806)) (logsumexp (tensor '((1 2 3))) #:keepdim #t))
  (test-values "cumsum" '((1 3 6) (4 9 15)) (cumsum a))
  (test-values "cumsum #:dim 0" '((1 2 3) (5 7 9)) (cumsum a #:dim 0))
  (test-values "sum-to-shape" '(5 7 9) (sum-to-shape a '(3)))
  (test-values "sum-to-shape keeping dims" '((6) (15)) (sum-to-shape a '(2 1))))

;;; ---- linear algebra and nn ---------------------------------------------------------------

(test-group "linear algebra"
  (let ((m (tensor '((1 2) (3 4)))) (n (tensor '((5 6) (7 8)))))
    (test-values "matmul" '((19 22) (43 50)) (matmul m n))
    (test-values "matmul matrix·vector" '(5 11) (matmul m (tensor '(1 2))))
    (test-values "matmul vector·vector" 11 (matmul (tensor '(1 2)) (tensor '(3 4))))
    (test-values "matmul [2 3]·[3 1]" '((14) (32)) (matmul a (tensor '((1) (2) (3)))))
    (test-values "matmul transposed input" '((26 30) (38 44)) (matmul (transpose m) n))
    (test-values "bmm" '(((19 22) (43 50)) ((1 2) (3 4)))
      (bmm (stack (list m (eye 2))) (stack (list n m))))
    (test-values "linear" '((5 11) (11 25)) (linear (tensor '((1 2) (3 4))) (tensor '((1 2) (3 4)))))
    (test-values "linear with bias" '((6 13)) (linear (tensor '((1 2))) m (tensor '(1 2))))))

(test-group "the CPU's product kernel"
  ;; the widest of moelab's kernels that /proc/cpuinfo's flags allow, unless
  ;; MOELAB_SGEMM asks for BLAS or for AVX2
  (let* ((flags (if (file-exists? "/proc/cpuinfo")
                    (call-with-input-file "/proc/cpuinfo"
                      (lambda (port)
                        (let loop ()
                          (let ((line (read-line port)))
                            (cond ((eof-object? line) '())
                                  ((string-prefix? "flags" line)
                                   (string-tokenize (substring line (1+ (string-index line #\:)))))
                                  (else (loop)))))))
                    '()))
         (has (lambda (f) (member f flags)))
         (asked (getenv "MOELAB_SGEMM"))
         (expected (cond ((equal? asked "blas") 'blas)
                         ((not (string=? (utsname:machine (uname)) "x86_64")) 'blas)
                         ((and (has "avx512f") (not (equal? asked "avx2"))) 'avx512)
                         ((and (has "avx2") (has "fma")) 'avx2)
                         (else 'blas))))
    (test-eq "matmul-cpu-kernel names the kernel this CPU runs" expected (matmul-cpu-kernel))))

(test-group "neural-net ops"
  ;; torch: x / sqrt(mean(x²) + 1e-6) * w
  (test-values "rms-norm" '((0.3651483473268884 0.7302966946537768 2.1908900839613303 0.7302966946537768))
    (rms-norm (tensor '((1 2 3 4)) #:dtype 'f64) (tensor '(1 1 2 0.5) #:dtype 'f64)))
  (test-values "rms-norm without weight" '((1 -1 1 -1)) (rms-norm (tensor '((2 -2 2 -2)))))
  ;; torch.nn.functional.layer_norm
  (test-values "layer-norm" '((-1.341635419968927 0.5527881933436909 0.8944236133126178 0.6708177099844634))
    (layer-norm (tensor '((1 2 3 4)) #:dtype 'f64) (tensor '(1 1 2 0.5) #:dtype 'f64)
                (tensor '(0 1 0 0) #:dtype 'f64)))
  (test-values "layer-norm without affine" '((-1 1)) (layer-norm (tensor '((1 3))) #:eps 0))
  ;; torch.nn.functional.cross_entropy
  (test-values "cross-entropy" 0.7531091265562451
    (cross-entropy (tensor '((1 2 3) (1 1 1)) #:dtype 'f64) (tensor '(2 0) #:dtype 'i64)))
  (test-values "cross-entropy targets as a list" 0.7531091265562451
    (cross-entropy (tensor '((1 2 3) (1 1 1)) #:dtype 'f64) '(2 0)))
  (test-values "cross-entropy #:ignore-index" 0.4076059644443804
    (cross-entropy (tensor '((1 2 3) (1 1 1)) #:dtype 'f64) '(2 -1) #:ignore-index -1))
  (test-values "embedding" '(((5 6) (1 2)) ((5 6) (3 4)))
    (embedding (tensor '((1 2) (3 4) (5 6))) (tensor '((2 0) (2 1)) #:dtype 'i64)))
  (test-values "embedding ids as a list" '((3 4)) (embedding (tensor '((1 2) (3 4))) '(1))))

;;; ---- indexing, joining, sorting ---------------------------------------------------------------

(test-group "indexing"
  (test-values "gather dim 1" '((3 1) (5 5)) (gather a 1 '((2 0) (1 1))))
  (test-values "gather dim 0" '((4 2 6)) (gather a 0 (tensor '((1 0 1)) #:dtype 'i64)))
  (test-values "scatter-add" '((1 0) (2 3))
    (scatter-add (zeros '(2 2)) 0 '((1 1) (0 1)) (tensor '((2 1) (1 2)))))
  (test-values "index-select" '((4 5 6) (1 2 3) (4 5 6)) (index-select a 0 '(1 0 1)))
  (test-values "index-select dim 1" '((3 1) (6 4)) (index-select a 1 (tensor '(2 0) #:dtype 'i32)))
  (test-values "index-add" '((2 2) (0 0) (1 1))
    (index-add (zeros '(3 2)) 0 '(2 0 0) (tensor '((1 1) (1 1) (1 1)))))
  (test-equal "one-hot" '((0 1 0) (1 0 0)) (tensor->list (one-hot '(1 0) 3)))
  (test-equal "one-hot infers classes" '((0 0 1) (1 0 0)) (tensor->list (one-hot '(2 0))))
  (test-equal "bincount" '(1 0 2 1) (tensor->list (bincount '(0 2 2 3))))
  (test-equal "bincount #:minlength" '(0 1 0 0 0) (tensor->list (bincount '(1) #:minlength 5)))
  (test-values "bincount #:weights" '(0.5 0 3)
    (bincount '(0 2 2) #:weights (tensor '(0.5 1 2))))
  (test-equal "histogram" '(2.0 1.0 1.0)
    (tensor->list (histogram (tensor '(0 0.1 0.5 1)) #:bins 3 #:min 0 #:max 1))))

(test-group "joining and splitting"
  (test-values "cat" '(1 2 3 4 5) (cat (list (tensor '(1 2)) (tensor '(3 4 5)))))
  (test-values "cat #:dim 1" '((1 2 10) (4 5 20)) (cat (list (narrow a 1 0 2) (tensor '((10) (20)))) #:dim 1))
  (test-values "stack" '((1 2) (3 4)) (stack (list (tensor '(1 2)) (tensor '(3 4)))))
  (test-values "stack #:dim 1" '((1 3) (2 4)) (stack (list (tensor '(1 2)) (tensor '(3 4))) #:dim 1))
  (test-equal "split sizes" '((1.0) (2.0 3.0)) (map tensor->list (split (tensor '(1 2 3)) '(1 2))))
  (test-equal "split size" '((1.0 2.0) (3.0 4.0) (5.0)) (map tensor->list (split (tensor '(1 2 3 4 5)) 2)))
  (test-equal "split #:dim 1" '(((1.0) (4.0)) ((2.0 3.0) (5.0 6.0))) (map tensor->list (split a '(1 2) #:dim 1)))
  (test-assert "split gives views" (every (lambda (p) (tensor-shares-storage? p a)) (split a '(1 1))))
  (test-equal "chunk" '((1.0 2.0) (3.0 4.0) (5.0)) (map tensor->list (chunk (tensor '(1 2 3 4 5)) 3))))

(test-group "sorting"
  (let ((x (tensor '(3 1 4 1 5))))
    (test-equal "topk: values and indices" '((5.0 4.0) (4 2))
      (call-with-values (lambda () (topk x 2)) (lambda (v i) (list (tensor->list v) (tensor->list i)))))
    (test-equal "topk smallest, ties to the lower index" '((1.0 1.0) (1 3))
      (call-with-values (lambda () (topk x 2 #:largest #f)) (lambda (v i) (list (tensor->list v) (tensor->list i)))))
    (test-equal "topk #:dim 0" '(((4.0 5.0 6.0)) ((1 1 1)))
      (call-with-values (lambda () (topk a 1 #:dim 0)) (lambda (v i) (list (tensor->list v) (tensor->list i)))))
    (test-equal "tsort" '((1.0 1.0 3.0 4.0 5.0) (1 3 0 2 4))
      (call-with-values (lambda () (tsort x)) (lambda (v i) (list (tensor->list v) (tensor->list i)))))
    (test-equal "tsort #:descending" '(5.0 4.0 3.0 1.0 1.0)
      (call-with-values (lambda () (tsort x #:descending #t)) (lambda (v i) (tensor->list v))))
    (test-equal "argsort" '(1 3 0 2 4) (tensor->list (argsort x)))
    (test-equal "argsort #:descending" '(4 2 0 1 3) (tensor->list (argsort x #:descending #t)))))

;;; ---- views and layout ------------------------------------------------------------------------

(test-group "views"
  (test-values "reshape" '((1 2) (3 4) (5 6)) (reshape a '(3 2)))
  (test-values "reshape -1" '((1 2 3 4 5 6)) (reshape a '(1 -1)))
  (test-assert "reshape of a contiguous tensor is a view" (tensor-shares-storage? (reshape a '(6)) a))
  (test-values "reshape copies when it must" '(1 4 2 5 3 6) (reshape (transpose a) '(6)))
  (test-values "view" '((1 2 3 4 5 6)) (view a '(1 6)))
  (test-values "transpose" '((1 4) (2 5) (3 6)) (transpose a))
  (test-values "transpose dims" '((1 4) (2 5) (3 6)) (transpose a 0 1))
  (test-values "permute" '(((1) (4)) ((2) (5)) ((3) (6))) (permute (unsqueeze a 2) '(1 0 2)))
  (test-equal "permute shape, negative dims" '(3 1 2) (tensor-shape (permute (unsqueeze a 0) '(-1 0 1))))
  (test-values "narrow" '((2 3) (5 6)) (narrow a 1 1 2))
  (test-values "tselect" '(4 5 6) (tselect a 0 1))
  (test-values "tselect dim 1" '(2 5) (tselect a 1 1))
  (test-values "expand" '((10 20 30) (10 20 30)) (expand row '(2 3)))
  (test-values "expand -1" '((1 1) (2 2)) (expand (tensor '((1) (2))) '(-1 2)))
  (test-equal "expand has zero strides" '(0 1) (tensor-strides (expand row '(2 3))))
  (test-equal "squeeze dim" '(2 3) (tensor-shape (squeeze (unsqueeze a 1) 1)))
  (test-equal "squeeze all" '(3) (tensor-shape (squeeze (zeros '(1 3 1)))))
  (test-equal "unsqueeze" '(2 1 3) (tensor-shape (unsqueeze a 1)))
  (test-equal "unsqueeze -1" '(2 3 1) (tensor-shape (unsqueeze a -1)))
  (test-values "flatten" '(1 2 3 4 5 6) (flatten a))
  (test-values "flatten non-contiguous" '(1 4 2 5 3 6) (flatten (transpose a)))
  (test-assert "contiguous of a contiguous tensor is itself" (tensor-shares-storage? (contiguous a) a))
  (test-assert "contiguous copies a transposed one"
    (let ((c (contiguous (transpose a))))
      (and (tensor-contiguous? c) (not (tensor-shares-storage? c a)))))
  (test-assert "clone copies" (not (tensor-shares-storage? (clone a) a)))
  (test-values "clone values" '((1 2 3) (4 5 6)) (clone a))
  (test-equal "to-dtype" '(i64 (1 2 -3)) (let ((t (to-dtype (tensor '(1.7 2.2 -3.9)) 'i64)))
                                          (list (tensor-dtype t) (tensor->list t))))
  (test-equal "to-dtype bool" '(#t #f) (tensor->list (to-dtype (tensor '(2 0)) 'bool)))
  (test-equal "tensor-to #:dtype" 'f64 (tensor-dtype (tensor-to a #:dtype 'f64)))
  (test-equal "tensor-to #:device cpu" 'cpu (tensor-device (tensor-to a #:device 'cpu)))
  (test-equal "tensor-to 'cpu" 'cpu (tensor-device (tensor-to a 'cpu)))
  (test-equal "tensor-to 'f64" 'f64 (tensor-dtype (tensor-to a 'f64)))
  (test-equal "tensor-to 'f64 keeps the values" (tensor->list a) (tensor->list (tensor-to a 'f64))))

;;; ---- non-contiguous and other dtypes go through the same ops ------------------------------

(test-group "layouts and dtypes"
  (test-values "t+ on transposed views" '((2 8) (4 10) (6 12)) (t+ (transpose a) (transpose a)))
  (test-values "tsum of an expanded view" 120 (tsum (expand row '(2 3))))
  (test-values "f64 softmax" '(0.5 0.5) (softmax (tensor '(3 3) #:dtype 'f64)))
  (test-values/tol "bf16 add" 1e-2 '(1.5 2.5) (t+ (tensor '(1 2) #:dtype 'bf16) 0.5))
  (test-equal "bf16 stays bf16" 'bf16 (tensor-dtype (t* (tensor '(1 2) #:dtype 'bf16) 2))))

(test-end "ops")
(exit-with-test-status)
