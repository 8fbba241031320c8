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
  #:use-module (srfi srfi-9)
  #:export (requires-grad! requires-grad? backward! tensor-grad set-tensor-grad!
            zero-grad! detach tensor-grad-fn tensor-leaf? tensor-version
            grad-enabled? set-grad-enabled! with-no-grad with-grad no-grad
            register-hook! unregister-hook!
            define-autograd-function make-autograd-function
            autograd-ctx? ctx-save! ctx-saved ctx-name))

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
