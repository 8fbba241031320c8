;;; autograd.scm — gradients through Scheme-composed functions against
;;; hand-computed values, grad mode, hooks, and differentiable functions
;;; defined in Scheme.

(include "common.scm")

(test-begin "autograd")

;;; ---- gradients of composed functions -------------------------------------------

(test-group "composed gradients"
  (let ((x (tensor '(1 -2 3) #:requires-grad #t)))
    (backward! (tsum (t* x x)))
    (test-values "d/dx sum(x·x) = 2x" '(2 -4 6) (tensor-grad x)))
  (let ((x (tensor '(0 1) #:dtype 'f64 #:requires-grad #t)))
    (backward! (tsum (t* (exp x) 2)))
    (test-values "d/dx sum(2e^x) = 2e^x" '(2 5.43656365691809) (tensor-grad x)))
  (let ((x (tensor '((1 2) (3 4)) #:requires-grad #t))
        (b (tensor '(10 20) #:requires-grad #t)))
    (backward! (tsum (t+ x b)))
    (test-values "broadcast: d/db sums over rows" '(2 2) (tensor-grad b))
    (test-values "d/dx of a sum is 1" '((1 1) (1 1)) (tensor-grad x)))
  (let ((p (tensor '((1 2) (3 4)) #:requires-grad #t))
        (q (tensor '((1 2) (3 4)) #:requires-grad #t)))
    (backward! (tsum (matmul p q)))
    ;; dP = 1·Qᵀ: row sums of Q in every row; dQ = Pᵀ·1: column sums of P
    (test-values "matmul dA" '((3 7) (3 7)) (tensor-grad p))
    (test-values "matmul dB" '((4 4) (6 6)) (tensor-grad q)))
  (let ((x (tensor '(1 2 3) #:requires-grad #t)))
    (backward! (tmean (t/ 6 x)))
    ;; d/dx mean(6/x) = -6/(3x²) = -2/x²
    (test-values "d/dx mean(6/x)" '(-2 -0.5 -0.2222222222222222) (tensor-grad x))))

(test-group "softmax cross-entropy"
  ;; gradient = (softmax(logits) - onehot(targets)) / N; values from torch
  (define expected
    '((0.04501528658519022 0.12236423552739882 -0.1673795221125891)
      (-0.33333333333333337 0.16666666666666666 0.16666666666666666)))
  (let ((logits (tensor '((1 2 3) (1 1 1)) #:dtype 'f64 #:requires-grad #t)))
    (backward! (cross-entropy logits '(2 0)))
    (test-values "cross-entropy op" expected (tensor-grad logits)))
  (let* ((logits (tensor '((1 2 3) (1 1 1)) #:dtype 'f64 #:requires-grad #t))
         (onehot (to-dtype (one-hot '(2 0) 3) 'f64))
         ;; -(1/N) Σ onehot · log_softmax, composed in Scheme
         (loss (t- (tmean (tsum (t* onehot (log-softmax logits)) #:dim 1)))))
    (test-values "loss value" 0.7531091265562451 loss)
    (backward! loss)
    (test-values "composed in Scheme" expected (tensor-grad logits)))
  (let* ((logits (tensor '((1 2 3) (1 1 1)) #:dtype 'f64 #:requires-grad #t))
         (p (softmax logits)))
    ;; the same gradient from the definition: (softmax - onehot) / N
    (test-values "matches (softmax - onehot)/N" expected
      (t/ (t- (detach p) (to-dtype (one-hot '(2 0) 3) 'f64)) 2))))

(test-group "backward! options"
  (let ((x (tensor '(1 2 3) #:requires-grad #t)))
    (backward! (t* x 3) (tensor '(1 2 3)))
    (test-values "backward! with an output gradient" '(3 6 9) (tensor-grad x)))
  (let* ((x (tensor '(1 2) #:requires-grad #t))
         (loss (tsum (t* x x))))
    (backward! loss #:retain-graph #t)
    (backward! loss)
    (test-values "retain-graph: gradients accumulate" '(4 8) (tensor-grad x))
    (test-moelab-error "a freed graph refuses a second backward" "retain" (backward! loss)))
  (let ((x (tensor '(1 2) #:requires-grad #t)))
    (backward! (tsum x))
    (backward! (tsum x))
    (test-values "accumulation across calls" '(2 2) (tensor-grad x))
    (zero-grad! x)
    (test-equal "zero-grad! drops the gradient" #f (tensor-grad x))
    (backward! (tsum x))
    (test-values "fresh after zero-grad!" '(1 1) (tensor-grad x))
    (set-tensor-grad! x (tensor '(5 5)))
    (test-values "set-tensor-grad!" '(5 5) (tensor-grad x))
    (set-tensor-grad! x #f)
    (test-equal "set-tensor-grad! #f" #f (tensor-grad x)))
  (test-equal "no gradient yet" #f (tensor-grad (tensor '(1) #:requires-grad #t))))

;;; ---- graph structure ---------------------------------------------------------------

(test-group "graph"
  (let* ((x (tensor '(1 2) #:requires-grad #t))
         (y (t* x 2)))
    (test-equal "requires-grad! returns the tensor" #t (tensor? (requires-grad! (zeros 2))))
    (test-assert "requires-grad?" (requires-grad? x))
    (test-assert "results of recorded ops require grad" (requires-grad? y))
    (test-assert "tensor-leaf? of a leaf" (tensor-leaf? x))
    (test-assert "tensor-leaf? of a result" (not (tensor-leaf? y)))
    (test-equal "tensor-grad-fn of a leaf" #f (tensor-grad-fn x))
    (test-assert "tensor-grad-fn names the op" (string? (tensor-grad-fn y)))
    (test-assert "detach cuts the graph" (not (requires-grad? (detach y))))
    (test-assert "detach shares storage" (tensor-shares-storage? (detach y) y))
    (test-assert "requires-grad! #f" (not (requires-grad? (requires-grad! (tensor '(1) #:requires-grad #t) #f))))
    (test-assert "ops on plain tensors are not recorded" (not (requires-grad? (t* (tensor '(1)) 2))))))

;;; ---- grad mode ------------------------------------------------------------------------

(test-group "grad mode"
  (let ((x (tensor '(1 2) #:requires-grad #t)))
    (test-assert "grad-enabled? by default" (grad-enabled?))
    (test-assert "with-no-grad: not recorded" (not (with-no-grad (lambda () (requires-grad? (t* x 2))))))
    (test-equal "with-no-grad: mode off inside" #f (with-no-grad grad-enabled?))
    (test-assert "restored after" (grad-enabled?))
    (test-equal "no-grad syntax returns the value" 6.0 (no-grad (tensor-item (tsum (t* x 2)))))
    (test-assert "no-grad: not recorded" (not (no-grad (requires-grad? (t+ x 1)))))
    (catch #t (lambda () (no-grad (error "inside no-grad"))) (const #f))
    (test-assert "restored after an error" (grad-enabled?))
    (test-equal "nested" '(#f #t #f)
      (no-grad (list (grad-enabled?) (with-grad grad-enabled?) (grad-enabled?))))
    (test-equal "set-grad-enabled! returns the previous mode" '(#t #f)
      (let* ((a (set-grad-enabled! #f)) (b (set-grad-enabled! #t))) (list a b)))
    (test-assert "in-place updates inside no-grad"
      (let ((w (tensor '(1 2) #:requires-grad #t)))
        (no-grad (tensor-copy! w (t- w (t* 0.5 (ones 2)))))
        (equal? (tensor->list w) '(0.5 1.5))))))

;;; ---- hooks -----------------------------------------------------------------------------

(test-group "hooks"
  (let ((w (tensor '(1 2) #:requires-grad #t)))
    (register-hook! w (lambda (g) (t* g 2)))
    (backward! (tsum (t* w w)))
    (test-values "a hook doubling the gradient" '(4 8) (tensor-grad w)))
  (let* ((w (tensor '(1 2) #:requires-grad #t))
         (seen #f)
         (id (register-hook! w (lambda (g) (set! seen (tensor->list g)) #f))))
    (backward! (tsum (t* w 3)))
    (test-equal "the hook sees the gradient" '(3.0 3.0) seen)
    (test-values "returning #f keeps it" '(3 3) (tensor-grad w))
    (test-assert "unregister-hook!" (unregister-hook! w id))
    (test-assert "unregister-hook! twice" (not (unregister-hook! w id)))
    (set! seen 'untouched)
    (backward! (tsum w))
    (test-equal "a removed hook is not called" 'untouched seen))
  (let* ((x (tensor '(1 2) #:requires-grad #t))
         (y (t* x 2)))
    (register-hook! y (lambda (g) (t* g 10)))
    (backward! (tsum y))
    (test-values "a hook on an intermediate result" '(20 20) (tensor-grad x)))
  (let ((w (tensor '(1 2) #:requires-grad #t)))
    (register-hook! w (lambda (g) (error "hook failed on purpose")))
    (test-moelab-error "an error in a hook becomes moelab-error" "hook failed on purpose"
      (backward! (tsum (t* w w))))
    (test-values "and life goes on" '(2) (t* (tensor '(1)) 2)))
  (let ((w (tensor '(1 2) #:requires-grad #t)))
    (register-hook! w (lambda (g) (zeros 3)))
    (test-moelab-error "a hook returning the wrong shape" "shape" (backward! (tsum w))))
  (let ((w (tensor '(1 2) #:requires-grad #t)))
    (register-hook! w (lambda (g) 'nonsense))
    (test-moelab-error "a hook returning a non-tensor" "tensor or #f" (backward! (tsum w))))
  (test-assert "hooks survive collections"
    (let ((w (tensor '(1 2) #:requires-grad #t)))
      (register-hook! w (let ((k 3)) (lambda (g) (t* g k))))
      (gc) (gc)
      (backward! (tsum w))
      (equal? (tensor->list (tensor-grad w)) '(3.0 3.0)))))

;;; ---- in-place changes and version counters -------------------------------------------------

(define (grad-or-error thunk)
  ;; the gradient list THUNK leaves in x, or 'error for a moelab-error
  (catch 'moelab-error thunk (lambda _ 'error)))

(test-group "in-place changes after saving"
  (test-equal "mul saved h; tensor-fill! h then backward!: refused, not (5.0 5.0)" 'error
    (grad-or-error
     (lambda ()
       (let ((x (tensor '(1.0 2.0) #:requires-grad #t)) (h (no-grad (ones '(2)))))
         (let ((y (tsum (t* x h))))
           (tensor-fill! h 5)
           (backward! y)
           (tensor->list (tensor-grad x)))))))
  (test-moelab-error "the error names the op and both versions"
    "saved by 'mul') was modified by an in-place operation: it is at version 1, expected version 0"
    (let ((x (tensor '(1.0 2.0) #:requires-grad #t)) (h (ones '(2))))
      (let ((y (tsum (t* x h))))
        (tensor-fill! h 5)
        (backward! y))))
  (test-equal "through a detached alias" 'error
    (grad-or-error
     (lambda ()
       (let* ((x (tensor '(1.0 2.0) #:requires-grad #t)) (h (ones '(2))) (alias (detach h)))
         (let ((y (tsum (t* x h))))
           (tensor-copy! alias (tensor '(7 7)))
           (backward! y)
           (tensor->list (tensor-grad x)))))))
  (test-equal "through a view of the saved tensor" 'error
    (grad-or-error
     (lambda ()
       (let* ((x (tensor '(1.0 2.0) #:requires-grad #t)) (h (ones '(2))))
         (let ((y (tsum (t* x h))))
           (tensor-set! (reshape h '(1 2)) 3 0 1)
           (backward! y)
           (tensor->list (tensor-grad x)))))))
  (test-equal "a write before the op is fine" '(5.0 5.0)
    (let ((x (tensor '(1.0 2.0) #:requires-grad #t)) (h (ones '(2))))
      (tensor-fill! h 5)
      (backward! (tsum (t* x h)))
      (tensor->list (tensor-grad x))))
  (test-equal "tensor-version counts writes, shared by aliases" '(0 1 2 3 3)
    (let* ((h (zeros '(2))) (v0 (tensor-version h)))
      (tensor-fill! h 1)
      (let ((v1 (tensor-version h)))
        (tensor-copy! (detach h) (tensor '(1 2)))
        (let ((v2 (tensor-version h)))
          (tensor-set! h 4 0)
          (list v0 v1 v2 (tensor-version h) (tensor-version (detach h))))))))

(test-group "backward! inside a hook"
  (let ((w (tensor '(1 2) #:requires-grad #t)) (v (tensor '(3) #:requires-grad #t)))
    (register-hook! w (lambda (g) (backward! (tsum (t* v 2))) #f))
    (test-moelab-error "says that gradient recording is off inside hooks"
      "inside a gradient hook, where gradient recording is off"
      (backward! (tsum w)))
    (test-equal "nothing reached the other leaf" #f (tensor-grad v))))

;;; ---- differentiable functions in Scheme ----------------------------------------------------

(define-autograd-function cube
  "x³ with its own derivative."
  #:forward (lambda (ctx x) (ctx-save! ctx x) (t* x x x))
  #:backward (lambda (ctx g)
               (let ((x (car (ctx-saved ctx))))
                 (list (t* g 3 x x)))))

(define-autograd-function scaled-product
  #:forward (lambda (ctx x y k)
              (ctx-save! ctx x y k)
              (t* x y k))
  #:backward (lambda (ctx g)
               (apply (lambda (x y k) (list (t* g y k) (t* g x k) #f))
                      (ctx-saved ctx))))

(define-autograd-function broken-backward
  #:forward (lambda (ctx x) (t* x 2))
  #:backward (lambda (ctx g) (car 'not-a-pair)))

(define-autograd-function broken-forward
  #:forward (lambda (ctx x) (vector-ref x 0))
  #:backward (lambda (ctx g) (list g)))

(define-autograd-function wrong-count
  #:forward (lambda (ctx x) (t* x 1))
  #:backward (lambda (ctx g) (list g g)))

(define-autograd-function wrong-shape
  #:forward (lambda (ctx x) (t* x 1))
  #:backward (lambda (ctx g) (list (zeros 7))))

(define (numeric-gradient f x h)
  "Central differences of the scalar function F at the f64 vector X (a list)."
  (map (lambda (i)
         (let ((plus (list-copy x)) (minus (list-copy x)))
           (list-set! plus i (+ (list-ref x i) h))
           (list-set! minus i (- (list-ref x i) h))
           (/ (- (f plus) (f minus)) (* 2 h))))
       (iota (length x))))

(test-group "define-autograd-function"
  (let* ((x (tensor '(1 -2 0.5) #:dtype 'f64 #:requires-grad #t))
         (y (cube x)))
    (test-values "forward" '(1 -8 0.125) y)
    (test-equal "named node" "cube" (tensor-grad-fn y))
    (backward! (tsum y))
    (test-values "backward 3x²·g" '(3 12 0.75) (tensor-grad x))
    (test-assert "matches central differences"
      (close? (tensor->list (tensor-grad x))
              (numeric-gradient (lambda (v) (tensor-item (no-grad (tsum (t* (tensor v #:dtype 'f64)
                                                                       (tensor v #:dtype 'f64)
                                                                       (tensor v #:dtype 'f64))))))
                                '(1 -2 0.5) 1e-5)
              1e-6)))
  (let* ((x (tensor '(1 2) #:requires-grad #t))
         (z (t+ (cube x) (t* x 2))))
    (backward! (tsum z))
    (test-values "inside a larger graph: 3x² + 2" '(5 14) (tensor-grad x)))
  (let ((x (tensor '(1 2) #:requires-grad #t))
        (y (tensor '(3 4) #:requires-grad #t)))
    (backward! (tsum (scaled-product x y 10)))
    (test-values "two tensor inputs and a number: d/dx" '(30 40) (tensor-grad x))
    (test-values "d/dy" '(10 20) (tensor-grad y)))
  (let ((x (tensor '(1 2) #:requires-grad #t)))
    (backward! (tsum (scaled-product x (tensor '(3 4)) 1)))
    (test-values "an input without grad is skipped" '(3 4) (tensor-grad x)))
  (test-assert "no input requires grad: plain result"
    (not (requires-grad? (cube (tensor '(1 2))))))
  (test-assert "under no-grad: plain result"
    (not (requires-grad? (no-grad (cube (tensor '(1 2) #:requires-grad #t))))))
  (test-assert "make-autograd-function"
    (let* ((double (make-autograd-function 'double (lambda (ctx x) (t* x 2))
                                           (lambda (ctx g) (t* g 2))))
           (x (tensor '(1) #:requires-grad #t)))
      (backward! (tsum (double x)))
      (equal? (tensor->list (tensor-grad x)) '(2.0))))
  (test-equal "ctx-save! / ctx-saved keep order; ctx-name; autograd-ctx?" '(#t cube (1 two 3))
    (let ((seen #f))
      ((make-autograd-function 'cube (lambda (ctx x)
                                       (ctx-save! ctx 1 'two)
                                       (ctx-save! ctx 3)
                                       (set! seen (list (autograd-ctx? ctx) (ctx-name ctx) (ctx-saved ctx)))
                                       (t* x 1))
                               (lambda (ctx g) (list g)))
       (tensor '(1) #:requires-grad #t))
      seen))
  (test-assert "saved tensors are detached"
    ((make-autograd-function 'f (lambda (ctx x)
                                  (let ((y (t* x 2)))
                                    (ctx-save! ctx x)
                                    (if (requires-grad? (car (ctx-saved ctx))) (zeros 1) y)))
                             (lambda (ctx g) (list g)))
     (tensor '(1) #:requires-grad #t)))
  (let ((x (tensor '(1 2) #:requires-grad #t)))
    (test-moelab-error "an error in backward becomes moelab-error" "broken-backward"
      (backward! (tsum (broken-backward x))))
    (test-assert "the error names backward"
      (catch 'moelab-error
        (lambda () (backward! (tsum (broken-backward x))) #f)
        (lambda (key subr msg args rest) (and (string-contains msg "backward")
                                               (string-contains msg "not-a-pair") #t))))
    (test-values "and the process carries on" '(2 4) (t* x 2)))
  (test-equal "an error in forward is raised as it was" #t
    (raises 'wrong-type-arg "vector-ref" (lambda () (broken-forward (tensor '(1) #:requires-grad #t)))))
  (test-moelab-error "ctx-saved refuses a tensor changed in place since ctx-save!"
    "saved by 'cube') was modified by an in-place operation: it is at version 1, expected version 0"
    (let* ((x (tensor '(1 2) #:requires-grad #t)) (y (cube x)))
      (no-grad (tensor-fill! x 9))
      (backward! (tsum y))))
  (test-moelab-error "backward inside a backward function" "gradient recording is off"
    (let ((x (tensor '(1 2) #:requires-grad #t)) (v (tensor '(3) #:requires-grad #t)))
      (backward! (tsum ((make-autograd-function 'nested (lambda (ctx x) (t* x 1))
                                                (lambda (ctx g) (backward! (tsum (t* v 2))) (list g)))
                        x)))))
  (test-moelab-error "backward returning too many gradients" "wrong-count"
    (backward! (tsum (wrong-count (tensor '(1 2) #:requires-grad #t)))))
  (test-moelab-error "backward returning the wrong shape" "shape"
    (backward! (tsum (wrong-shape (tensor '(1 2) #:requires-grad #t)))))
  (test-assert "functions and graphs survive collections"
    (let* ((x (tensor '(1 2) #:requires-grad #t))
           (ys (map (lambda (i) (cube x)) (iota 50))))
      (gc) (gc)
      (backward! (tsum (car (last-pair ys))))
      (equal? (tensor->list (tensor-grad x)) '(3.0 12.0)))))

;;; ---- nothing leaks ----------------------------------------------------------------------

;; (A leak would leave hundreds behind; the collector is conservative, so a
;; stray pointer on the stack may keep one or two alive for a while.)
(test-assert "graphs, hooks and Scheme functions leave no live tensors behind"
  (let ()
    (define (live) (assq-ref (assq-ref (memory-stats) 'cpu) 'live-tensors))
    (define (settle)    ; finalizers run on their own thread: wait until stable
      (let loop ((i 0) (prev -1))
        (gc) (usleep 10000)
        (let ((n (live))) (if (or (= n prev) (> i 50)) n (loop (+ i 1) n)))))
    (define (work)
      (let ((x (tensor '(1 2 3) #:requires-grad #t))
            (w (tensor '(1 2 3) #:requires-grad #t)))
        (register-hook! w (lambda (g) (t* g 2)))
        (backward! (tsum (t+ (cube x) (t* w x))))
        (backward! (tsum (scaled-product x w 2)) #:retain-graph #t)
        (catch 'moelab-error (lambda () (backward! (tsum (broken-backward x)))) (const #f))
        (tensor (f32vector 1 2 3))
        (tensor-grad x)))
    (let ((before (settle)))
      (let loop ((i 0)) (when (< i 300) (work) (loop (+ i 1))))
      (let ((left (- (settle) before)))
        (if (< left 10) #t (list 'live-tensors-left left))))))

;;; ---- a two-layer network, trained a few steps ------------------------------------------------

(test-group "two-layer network"
  (let* ((x (tensor '((1 0) (0 1) (1 1) (0 0))))
         (targets '(1 1 0 0))
         (w1 (randn '(8 2) #:seed 1 #:requires-grad #t))
         (b1 (zeros '(8) #:requires-grad #t))
         (w2 (randn '(2 8) #:seed 2 #:requires-grad #t))
         (b2 (zeros '(2) #:requires-grad #t))
         (params (list w1 b1 w2 b2)))
    (define (loss)
      (cross-entropy (linear (relu (linear x w1 b1)) w2 b2) targets))
    (define (step! lr)
      (for-each zero-grad! params)
      (let ((l (loss)))
        (backward! l)
        (no-grad
         (for-each (lambda (p) (tensor-copy! p (t- p (t* lr (tensor-grad p))))) params))
        (tensor-item l)))
    (let* ((first (step! 0.5))
           (rest (map (lambda (i) (step! 0.5)) (iota 50))))
      (test-assert "every parameter has a gradient of its shape"
        (every (lambda (p) (equal? (tensor-shape (tensor-grad p)) (tensor-shape p))) params))
      (test-assert "the loss goes down" (< (last rest) (* 0.5 first))))))

;;; ---- grad-check: backward! against finite differences ---------------------------------

(test-group "grad-check"
  (define (report thunk)
    (call-with-output-string (lambda (port) (thunk port))))
  ;; x³ has the gradient 3x² (recorded by the ops): the check passes
  (let* ((ok #f)
         (text (report (lambda (port)
                         (set! ok (grad-check (lambda (x) (t* x (t* x x))) (tensor '(0.5 -1.0 2.0))
                                              #:port port))))))
    (test-eq "x³ passes" #t ok)
    (test-assert "the report says PASS" (string-contains text "PASS"))
    (test-assert "the report counts 3 elements of f64[3]" (string-contains text "3 of 3 elements of f64[3]")))
  ;; detach hides x² from backward!: the analytic gradient is 1, the true one 2x + 1
  (let* ((ok #t)
         (text (report (lambda (port)
                         (set! ok (grad-check (lambda (x) (t+ (detach (t* x x)) x)) (tensor '(1.0 2.0))
                                              #:port port))))))
    (test-eq "a wrong gradient fails" #f ok)
    (test-assert "the report says FAIL" (string-contains text "FAIL"))
    ;; through the weights W = 0.5 + frac(k·0.618…) of the objective sum(f(x)·W): the
    ;; error is W·2x, largest at x = 2 (W = 0.7360679…): 2.9442719…
    (test-assert "max abs error 2.944272" (string-contains text "max abs error 2.944272,")))
  (test-assert "max-elements limits the checked elements"
    (string-contains (report (lambda (port)
                               (grad-check (lambda (x) (t* x 2)) (tensor '(1.0 2.0 3.0)) #:max-elements 2
                                           #:port port)))
                     "2 of 3 elements"))
  (test-error "an integer input is refused" #t
    (grad-check (lambda (x) x) (tensor '(1 2) #:dtype 'i32) #:port (%make-void-port "w"))))

(test-end "autograd")
(exit-with-test-status)
