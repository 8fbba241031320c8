;;; (moelab autograd) — reverse-mode differentiation from Scheme: gradients,
;;; backward, grad mode, gradient hooks, and differentiable functions defined
;;; in Scheme.
;;;
;;; @example
;;; (define x (tensor '(1 2 3) #:requires-grad #t))
;;; (backward! (tsum (t* x x)))
;;; (tensor-grad x)                  ; ⇒ #<tensor f32[3] cpu (2.0 4.0 6.0)>
;;; @end example

(define-module (moelab autograd)
  #:use-module (moelab primitives)
  #:use-module (moelab tensor)
  #:use-module ((moelab ops) #:select (t* tsum to-dtype))
  #:use-module (ice-9 format)
  #:use-module ((srfi srfi-1) #:select (drop))
  #:use-module (srfi srfi-9)
  #:export (requires-grad! requires-grad? backward! tensor-grad set-tensor-grad!
            zero-grad! detach tensor-grad-fn tensor-leaf? tensor-version
            grad-enabled? set-grad-enabled! with-no-grad with-grad no-grad
            register-hook! unregister-hook!
            define-autograd-function make-autograd-function
            autograd-ctx? ctx-save! ctx-saved ctx-name
            grad-check))

;;; ---- per tensor ----------------------------------------------------------------

(define* (requires-grad! t #:optional (flag #t))
  "Mark the leaf tensor T as requiring grad (FLAG #t, the default) or not, and
return T. Ops on it are then recorded, and backward! fills its gradient. Only
floating tensors can require grad."
  (%requires-grad! t flag))

(define (requires-grad? t)
  "True when T requires grad: a leaf marked with requires-grad!, or the result
of a recorded op."
  (%requires-grad? t))

(define (tensor-grad t)
  "The gradient accumulated in leaf T by backward!, a tensor of T's shape, or
#f when there is none (yet)."
  (%tensor-grad t))

(define (set-tensor-grad! t grad)
  "Replace the gradient of T by GRAD (a tensor of T's shape, dtype and device)
or drop it (#f)."
  (%set-tensor-grad! t grad))

(define (zero-grad! t)
  "Drop the gradient accumulated in T (the next backward! starts from zero)."
  (%zero-grad! t))

(define (detach t)
  "A tensor sharing T's storage but cut from the graph: it does not require
grad and backward! does not flow through it."
  (%detach t))

(define (tensor-version t)
  "The version counter of T's storage: a count of the in-place writes to it
(tensor-fill!, tensor-copy!, tensor-set!, in-place collectives, the router's
expert-bias update), shared by T's views and detached aliases. An op that
saves T for its backward notes the version; backward! refuses to use T once
it has changed."
  (%tensor-version t))

(define (tensor-grad-fn t)
  "The name (a string) of the op that made T, when T was recorded by
autograd; #f for a leaf."
  (%tensor-grad-fn t))

(define (tensor-leaf? t)
  "True when T was not made by a recorded op (its gradient, if it requires
grad, accumulates in tensor-grad)."
  (not (%tensor-grad-fn t)))

(define* (backward! t #:optional (grad #f) #:key (retain-graph #f))
  "Backpropagate from T, accumulating gradients into the leaves that require
grad (read them with tensor-grad). T must have one element unless GRAD, a
tensor of T's shape (the gradient of some outer loss with respect to T), is
given. Unless RETAIN-GRAPH, the graph's saved tensors are freed: a second
backward! through it raises moelab-error."
  (%backward! t grad retain-graph))

;;; ---- grad mode -------------------------------------------------------------------

(define (grad-enabled?)
  "True when ops are recorded for autograd on this thread (the default)."
  (%grad-enabled?))

(define (set-grad-enabled! flag)
  "Turn recording on (#t) or off (#f) for this thread; returns the previous
setting. Prefer with-no-grad / no-grad, which restore it."
  (%set-grad-enabled! flag))

(define (call-with-grad-mode flag thunk)
  (let ((saved #f))
    (dynamic-wind
      (lambda () (set! saved (%set-grad-enabled! flag)))
      thunk
      (lambda () (%set-grad-enabled! saved)))))

(define (with-no-grad thunk)
  "Call THUNK with autograd recording off and return its values; the previous
mode is restored however THUNK exits (return, error, continuation). Use it
for parameter updates and evaluation."
  (call-with-grad-mode #f thunk))

(define (with-grad thunk)
  "Call THUNK with autograd recording on (inside a with-no-grad, say); the
previous mode is restored however THUNK exits."
  (call-with-grad-mode #t thunk))

(define-syntax-rule (no-grad body ...)
  "(no-grad BODY …): evaluate BODY with autograd recording off and return
its values, as with-no-grad (the mode is restored however BODY exits)."
  (with-no-grad (lambda () body ...)))

;;; ---- hooks -----------------------------------------------------------------------

(define (register-hook! t proc)
  "Call (PROC GRAD) with the gradient of T each time backward! computes it,
before it is used (accumulated into a leaf, or passed on). PROC returns a
replacement gradient (a tensor of the same shape) or #f / unspecified to keep
GRAD. An error inside PROC makes backward! raise moelab-error. T must require
grad. Returns an id for unregister-hook!.
@example
(register-hook! w (lambda (g) (t* g 2)))   ; double w's gradient
@end example
PROC is kept alive as long as T (or its graph) is: a PROC that refers to T
itself keeps T alive until the hook is removed."
  (%register-hook! t proc))

(define (unregister-hook! t id)
  "Remove the hook ID (from register-hook!) from T; true when it was there."
  (%remove-hook! t id))

;;; ---- differentiable functions defined in Scheme -------------------------------------

(define-record-type <autograd-ctx>
  (make-autograd-ctx name saved)
  %autograd-ctx?
  (name %ctx-name)
  (saved ctx-saved-reversed set-ctx-saved-reversed!))

(define (autograd-ctx? obj)
  "True when OBJ is the context a define-autograd-function forward and
backward receive."
  (%autograd-ctx? obj))

(define (ctx-name ctx)
  "The name (a symbol) of the function CTX belongs to."
  (%ctx-name ctx))

;; A tensor kept by ctx-save! and the version of its storage at that time.
(define-record-type <saved-tensor>
  (make-saved-tensor tensor version)
  saved-tensor?
  (tensor saved-tensor-tensor)
  (version saved-tensor-version))

(define (ctx-save! ctx . values)
  "In a forward of define-autograd-function: keep VALUES (tensors or any
Scheme values) for the backward, which reads them with ctx-saved. Tensors are
kept detached (their data, not their graph), with their version: ctx-saved
refuses a tensor changed in place since."
  (set-ctx-saved-reversed!
   ctx
   (append (reverse (map (lambda (v) (if (tensor? v) (make-saved-tensor (%detach v) (%tensor-version v)) v))
                         values))
           (ctx-saved-reversed ctx))))

(define (unpack-saved ctx v)
  (if (saved-tensor? v)
      (let ((t (saved-tensor-tensor v)) (then (saved-tensor-version v)))
        (unless (= (%tensor-version t) then)
          (throw 'moelab-error "backward!"
                 "a tensor needed for the gradient (~a ~a, saved by '~a') was modified by an in-place operation: it is at version ~a, expected version ~a; change a clone instead, or change it after backward"
                 (list (tensor-dtype t) (tensor-shape t) (%ctx-name ctx) (%tensor-version t) then)
                 '(state)))
        t)
      v))

(define (ctx-saved ctx)
  "The values saved with ctx-save!, in the order they were saved. A tensor
changed in place since it was saved raises moelab-error."
  (map (lambda (v) (unpack-saved ctx v)) (reverse (ctx-saved-reversed ctx))))

(define (make-autograd-function name forward backward)
  "A differentiable procedure named NAME (a symbol). Calling it with
arguments ARG … calls (FORWARD CTX ARG …) with autograd recording off; FORWARD
returns the output tensor and may keep values for the backward with
(ctx-save! CTX v …). When backward! reaches the output, (BACKWARD CTX GRAD)
gets the gradient of the output and returns the gradients of the arguments: a
list with one entry per argument (a tensor of that argument's shape, or #f
for none / for non-tensor arguments); with a single argument, a tensor alone
will do. An error in FORWARD is raised as it was; an error in BACKWARD makes
backward! raise moelab-error."
  (unless (procedure? forward)
    (scm-error 'wrong-type-arg "define-autograd-function"
               "forward is not a procedure: ~S" (list forward) (list forward)))
  (unless (procedure? backward)
    (scm-error 'wrong-type-arg "define-autograd-function"
               "backward is not a procedure: ~S" (list backward) (list backward)))
  (let* ((label (if (symbol? name) (symbol->string name) name))
         (proc (lambda args
                 (%function-apply label forward backward
                                  (make-autograd-ctx name '()) args))))
    (set-procedure-property! proc 'name name)
    proc))

(define-syntax define-autograd-function
  (syntax-rules ()
    "(define-autograd-function NAME [DOCSTRING] #:forward FORWARD #:backward
BACKWARD) defines NAME as a differentiable procedure written in Scheme; see
make-autograd-function. For example, a cube with its own derivative:
@example
(define-autograd-function cube
  #:forward (lambda (ctx x) (ctx-save! ctx x) (t* x x x))
  #:backward (lambda (ctx g)
               (let ((x (car (ctx-saved ctx))))
                 (list (t* g 3 x x)))))
@end example"
    ((_ name doc #:forward forward #:backward backward)
     (define name
       (let ((f (make-autograd-function 'name forward backward)))
         (set-procedure-property! f 'documentation doc)
         f)))
    ((_ name #:forward forward #:backward backward)
     (define name (make-autograd-function 'name forward backward)))
    ((_ name #:backward backward #:forward forward)
     (define name (make-autograd-function 'name forward backward)))))

;;; ---- checking a gradient against finite differences ---------------------------------

(define (leaves x)
  "The leaves of the nested list X, in order (a number gives a one-element list)."
  (let loop ((x x) (acc '()))
    (cond ((null? x) acc)
          ((pair? x) (loop (car x) (loop (cdr x) acc)))
          (else (cons x acc)))))

(define (unflatten vals shape)
  "Nested lists of SHAPE filled from the flat list VALS (row-major)."
  (if (null? shape)
      (car vals)
      (let ((n (car shape))
            (step (apply * (cdr shape))))
        (let loop ((i 0) (vs vals) (acc '()))
          (if (= i n)
              (reverse! acc)
              (loop (1+ i) (drop vs step)
                    (cons (unflatten vs (cdr shape)) acc)))))))

(define (fmt-real x)
  (cond ((not (real? x)) (format #f "~a" x))
        ((nan? x) "nan")
        ((inf? x) (if (> x 0) "+inf" "-inf"))
        ((exact? x) (number->string x))
        ((zero? x) "0.0")
        ((and (>= (abs x) 1e-3) (< (abs x) 1e6))
         (let* ((s (format #f "~,6f" x))
                (end (string-length (string-trim-right s #\0))))
           (substring s 0 (if (char=? (string-ref s (1- end)) #\.) (1+ end) end))))
        (else (string-downcase (format #f "~,3e" x)))))

(define (float-dtype? d)
  (memq d '(f32 f64 bf16 f16)))

(define (weights-for shape)
  "Fixed pseudo-random weights in [0.5, 1.5) of SHAPE, as nested lists."
  (let ((ws (map (lambda (k)
                   (let ((x (* (1+ k) 0.6180339887498949)))
                     (+ 0.5 (- x (floor x)))))
                 (iota (apply * shape)))))
    (unflatten ws shape)))

(define* (grad-check f x #:key (eps 1e-6) (atol 1e-5) (rtol 1e-4)
                     (max-elements 2048) (port (current-output-port)))
  "Check the gradient of F, a procedure of one tensor returning a tensor, at
the tensor X: backward! against central finite differences (step EPS) of the
scalar sum(F(x) * W) for fixed weights W, all in f64.  An element passes when
|analytic - numeric| <= ATOL + RTOL * |numeric|; at most MAX-ELEMENTS
elements are checked.  Prints the max abs/rel error and PASS or FAIL, and
returns #t on PASS."
  (unless (procedure? f)
    (error "grad-check: expected a procedure of one tensor, got" f))
  (unless (and (tensor? x) (not (tensor-freed? x)))
    (error "grad-check: expected a tensor input, got" x))
  (unless (float-dtype? (tensor-dtype x))
    (error "grad-check: the input must be a floating-point tensor, got dtype"
           (tensor-dtype x)))
  (let* ((shape (tensor-shape x))
         (flat (map exact->inexact (leaves (tensor->list (detach x)))))
         (n (length flat))
         (make-input (lambda (vals grad?)
                       (tensor (unflatten vals shape) #:dtype 'f64
                               #:requires-grad grad?)))
         (x64 (make-input flat #t))
         (y (f x64))
         (_ (unless (tensor? y)
              (error "grad-check: F must return a tensor, got" y)))
         (yshape (tensor-shape y))
         (w (tensor (weights-for yshape) #:dtype 'f64))
         (objective (lambda (out) (tsum (t* (to-dtype out 'f64) w))))
         (_ (backward! (objective y)))
         (g (tensor-grad x64))
         (analytic (if g
                       (map exact->inexact (leaves (tensor->list g)))
                       (make-list n 0.0)))
         (checked (min n max-elements))
         (xs (list->vector flat))
         (numeric
          (with-no-grad
           (lambda ()
             (map (lambda (i)
                    (let ((at (lambda (delta)
                                (let ((v (vector-copy xs)))
                                  (vector-set! v i (+ (vector-ref v i) delta))
                                  (tensor-item (objective
                                                (f (make-input (vector->list v) #f))))))))
                      (/ (- (at eps) (at (- eps))) (* 2 eps))))
                  (iota checked))))))
    (let loop ((as analytic) (ns numeric) (max-abs 0.0) (max-rel 0.0) (ok? #t))
      (if (null? ns)
          (begin
            (format port "grad-check: ~a of ~a element~:p of f64[~{~a~^ ~}], output [~{~a~^ ~}]~%"
                    checked n shape yshape)
            (unless g
              (format port "  warning: no gradient reached the input (taken as zero)~%"))
            (format port "  max abs error ~a, max rel error ~a (tolerance ~a + ~a*|numeric|)~%"
                    (fmt-real max-abs) (fmt-real max-rel) atol rtol)
            (format port "  ~a~%" (if ok? "PASS" "FAIL"))
            ok?)
          (let* ((a (car as))
                 (num (car ns))
                 (abs-err (abs (- a num)))
                 (scale (max (abs a) (abs num)))
                 (rel-err (if (> scale 1e-12) (/ abs-err scale) 0.0)))
            (loop (cdr as) (cdr ns)
                  (max max-abs abs-err) (max max-rel rel-err)
                  (and ok? (<= abs-err (+ atol (* rtol (abs num)))))))))))
