;;; (moelab tensor) — tensors: making them, looking inside, converting them
;;; to and from Scheme data, printing, memory.
;;;
;;; A tensor is a view (shape, strides, offset) on reference-counted storage
;;; owned by libmoelab. The Scheme object holds one reference; Guile's
;;; collector drops it when the object becomes garbage, or (tensor-free! t)
;;; drops it at once. Views share storage with their parent and keep it alive.
;;;
;;; dtypes: 'f32 'f64 'bf16 'i32 'i64 'bool.   devices: 'cpu 'cuda.
;;; Shapes are lists of sizes: '(4 8); '() is a 0-d (scalar) tensor.

(define-module (moelab tensor)
  #:use-module (moelab primitives)
  #:use-module ((oop goops) #:select (define-method))
  #:use-module (srfi srfi-4)
  #:re-export (<tensor>)
  #:export (tensor? tensor tensor-free! tensor-freed?
            zeros ones full zeros-like ones-like full-like scalar-tensor
            eye arange rand randn randint randperm manual-seed!
            tensor-shape tensor-dtype tensor-device tensor-ndim tensor-numel
            tensor-strides tensor-contiguous? tensor-shares-storage?
            tensor-ref tensor-set! tensor-item tensor->list
            tensor->f32vector tensor->f64vector tensor->s32vector
            tensor->s64vector tensor->u8vector
            tensor-fill! tensor-copy! tensor-allclose? count-nonfinite
            tensor-print-limit tensor->string
            memory-stats memory-peak-reset! device-count built-with-cuda?
            moelab-error?))

;;; ---- errors ------------------------------------------------------------

(define (moelab-error? key)
  "True when KEY, the key of a caught exception, is @code{moelab-error}: the
key libmoelab failures are raised with, as
@code{(throw 'moelab-error PROC MESSAGE ARGS (STATUS))} where PROC names the
procedure, MESSAGE says what went wrong (with shapes and values) and STATUS
is a symbol such as @code{shape}, @code{index}, @code{dtype}, @code{state}."
  (eq? key 'moelab-error))

;; One clear line for moelab errors when nothing better is installed (the
;; moelab REPL installs its own printer).
(set-exception-printer!
 'moelab-error
 (lambda (port key args default-printer)
   (if (and (pair? args) (pair? (cdr args)) (string? (cadr args)))
       (let ((who (car args)) (message (cadr args))
             (fargs (if (pair? (cddr args)) (caddr args) '())))
         (let ((text (apply simple-format #f message (or fargs '()))))
           (if who
               (simple-format port "In procedure ~a: ~a" who text)
               (display text port))))
       (default-printer))))

;;; ---- making tensors ------------------------------------------------------

(define (finish t requires-grad)
  (when requires-grad (%requires-grad! t #t))
  t)

(define (tensor? obj)
  "True when OBJ is a tensor (also after tensor-free!)."
  (%tensor? obj))

(define* (tensor data #:key (dtype #f) (device 'cpu) (requires-grad #f) (shape #f))
  "Make a tensor from DATA: a number (0-d), nested lists or vectors of numbers
(or booleans, stored as 1 and 0), a Guile array, another tensor (copied), or
an SRFI-4 vector (f32vector f64vector s32vector s64vector, u8vector for bool).
DTYPE defaults to @code{'f32}; for an SRFI-4 vector to its own type, and then
the tensor shares the vector's memory without copying (when the vector is
mutable and the device is cpu): writes through either are seen by both.
SHAPE (a list) reshapes the data, which must have as many elements.
@example
(tensor '((1 2) (3 4)))                      ; f32[2 2]
(tensor (f64vector 1 2 3 4 5 6) #:shape '(2 3))
(tensor '(1 2 3) #:dtype 'i64)
(tensor '(0.5 -1) #:requires-grad #t)
@end example"
  (finish (%tensor-from-data data dtype device shape) requires-grad))

(define* (full shape value #:key (dtype 'f32) (device 'cpu) (requires-grad #f))
  "A tensor of SHAPE (a list, or one integer for 1-D) with every element VALUE."
  (finish (%full shape value dtype device "full") requires-grad))

(define* (zeros shape #:key (dtype 'f32) (device 'cpu) (requires-grad #f))
  "A tensor of SHAPE (a list, or one integer for 1-D) filled with 0."
  (finish (%full shape 0 dtype device "zeros") requires-grad))

(define* (ones shape #:key (dtype 'f32) (device 'cpu) (requires-grad #f))
  "A tensor of SHAPE (a list, or one integer for 1-D) filled with 1."
  (finish (%full shape 1 dtype device "ones") requires-grad))

(define* (full-like t value #:key (dtype #f) (device #f) (requires-grad #f))
  "A tensor with the shape (and by default dtype and device) of T, filled
with VALUE."
  (finish (%full (%tensor-shape t) value (or dtype (%tensor-dtype t))
                 (or device (%tensor-device t)) "full-like")
          requires-grad))

(define* (zeros-like t #:key (dtype #f) (device #f) (requires-grad #f))
  "Zeros with the shape (and by default dtype and device) of T."
  (full-like t 0 #:dtype dtype #:device device #:requires-grad requires-grad))

(define* (ones-like t #:key (dtype #f) (device #f) (requires-grad #f))
  "Ones with the shape (and by default dtype and device) of T."
  (full-like t 1 #:dtype dtype #:device device #:requires-grad requires-grad))

(define* (scalar-tensor value #:key (dtype 'f32) (device 'cpu) (requires-grad #f))
  "A 0-d tensor holding VALUE."
  (finish (%full '() value dtype device "scalar-tensor") requires-grad))

(define* (eye n #:optional (m n) #:key (dtype 'f32) (device 'cpu) (requires-grad #f))
  "The N×M identity matrix (M defaults to N)."
  (finish (%eye n m dtype device) requires-grad))

(define* (arange a #:optional b (step 1) #:key (dtype #f) (device 'cpu) (requires-grad #f))
  "Evenly spaced values in [START, END) by STEP, like Python's range:
@code{(arange END)}, @code{(arange START END)}, @code{(arange START END STEP)}.
The dtype defaults to @code{'i64} when all the arguments are exact integers,
else @code{'f32}.
@example
(arange 4)          ; i64 (0 1 2 3)
(arange 0 1 0.25)   ; f32 (0.0 0.25 0.5 0.75)
@end example"
  (let* ((start (if b a 0))
         (end (if b b a))
         (dtype (or dtype
                    (if (and (exact-integer? start) (exact-integer? end)
                             (exact-integer? step))
                        'i64
                        'f32))))
    (finish (%arange start end step dtype device) requires-grad)))

(define* (rand shape #:key (seed #f) (dtype 'f32) (device 'cpu) (requires-grad #f))
  "Uniform random values in [0, 1). With SEED (a non-negative integer) the
values come from a generator of their own and are the same on every call;
without, from the default generator (see manual-seed!)."
  (finish (%random 'uniform shape dtype device seed 0 0) requires-grad))

(define* (randn shape #:key (seed #f) (dtype 'f32) (device 'cpu) (requires-grad #f))
  "Standard normal random values. With SEED (a non-negative integer) the
values come from a generator of their own and are the same on every call;
without, from the default generator (see manual-seed!)."
  (finish (%random 'normal shape dtype device seed 0 0) requires-grad))

(define* (randint low high shape #:key (seed #f) (dtype 'i64) (device 'cpu))
  "Random integers in [LOW, HIGH) of SHAPE (default dtype i64). SEED as for
rand."
  (%random 'int shape dtype device seed low high))

(define* (randperm n #:key (seed #f) (device 'cpu))
  "A random permutation of 0 … N-1 (i64). SEED as for rand."
  (%randperm n device seed))

(define (manual-seed! seed)
  "Reseed the default random generator with SEED (a non-negative integer):
the draws that follow are the same after every reseed with the same value."
  (%manual-seed! seed))

(define (tensor-free! t)
  "Release the memory of T now rather than when it is collected. Using T
afterwards raises a moelab-error saying the tensor has been freed. Freeing
twice does nothing. Views and gradients that share T's storage stay valid."
  (%tensor-free! t))

(define (tensor-freed? t)
  "True when T has been released with tensor-free!."
  (%tensor-freed? t))

;;; ---- looking inside ----------------------------------------------------------

(define (tensor-shape t)
  "The shape of T as a list of sizes ('() for a 0-d tensor)."
  (%tensor-shape t))

(define (tensor-dtype t)
  "The element type of T: one of the symbols f32 f64 bf16 i32 i64 bool."
  (%tensor-dtype t))

(define (tensor-device t)
  "The device of T: the symbol cpu or cuda."
  (%tensor-device t))

(define (tensor-ndim t)
  "The number of dimensions of T."
  (length (%tensor-shape t)))

(define (tensor-numel t)
  "The number of elements of T."
  (%tensor-numel t))

(define (tensor-strides t)
  "The strides of T, in elements, as a list."
  (%tensor-strides t))

(define (tensor-contiguous? t)
  "True when T is laid out in row-major order without gaps."
  (%tensor-contiguous? t))

(define (tensor-shares-storage? a b)
  "True when tensors A and B are views of the same storage."
  (%tensor-shares-storage? a b))

(define (tensor-ref t . indices)
  "The element of T at INDICES (one per dimension; negative ones count from
the end): an inexact real for float dtypes, an exact integer for i32/i64, a
boolean for bool."
  (%tensor-ref t indices))

(define (tensor-set! t value . indices)
  "Set the element of T at INDICES to VALUE (a number or boolean). Refused on
a tensor that requires grad while grad mode is on (use no-grad)."
  (%tensor-set! t indices value))

(define (tensor-item t)
  "The single value of the one-element tensor T (as for tensor-ref)."
  (%tensor-item t))

(define (tensor->list t)
  "The elements of T as nested lists, one level per dimension (a 0-d tensor
gives its value): inexact reals for float dtypes, exact integers for i32 and
i64, booleans for bool."
  (%tensor->list t))

(define (tensor->f32vector t)
  "A fresh f32vector of the elements of T, in row-major order (converted)."
  (%tensor->uvector t 'f32))

(define (tensor->f64vector t)
  "A fresh f64vector of the elements of T, in row-major order (converted)."
  (%tensor->uvector t 'f64))

(define (tensor->s32vector t)
  "A fresh s32vector of the elements of T, in row-major order (converted)."
  (%tensor->uvector t 's32))

(define (tensor->s64vector t)
  "A fresh s64vector of the elements of T, in row-major order (converted)."
  (%tensor->uvector t 's64))

(define (tensor->u8vector t)
  "A fresh u8vector of the elements of T as 0 and 1 (non-zero is 1)."
  (%tensor->uvector t 'u8))

(define (tensor-fill! t value)
  "Set every element of T to VALUE, in place (refused on a tensor that
requires grad while grad mode is on)."
  (%tensor-fill! t value))

(define (tensor-copy! dst src)
  "Copy SRC into DST in place, broadcasting SRC to DST's shape and converting
its dtype (refused on a DST that requires grad while grad mode is on: update
parameters inside no-grad)."
  (%tensor-copy! dst src))

(define* (tensor-allclose? a b #:key (rtol 1e-5) (atol 1e-8))
  "True when tensors A and B have the same shape and every element satisfies
|a - b| <= ATOL + RTOL·|b| (a NaN is close to nothing)."
  (%tensor-allclose? a b rtol atol))

(define (count-nonfinite t)
  "Two values: the number of NaN elements and of infinite elements of T."
  (let ((p (%count-nonfinite t)))
    (values (car p) (cdr p))))

;;; ---- printing -------------------------------------------------------------------

(define tensor-print-limit
  (make-parameter 8
                  (lambda (n)
                    (unless (or (not n) (and (exact-integer? n) (>= n 0)))
                      (error "tensor-print-limit: expected a non-negative integer or #f" n))
                    n)))
(set-object-property! tensor-print-limit 'documentation
  "Parameter: how many values a printed tensor shows before eliding the rest
with …; #f shows all. Default 8.
@example
(parameterize ((tensor-print-limit 3)) (display (arange 10)))
@end example")

(define* (tensor->string t #:optional (limit (tensor-print-limit)))
  "The printed form of T: @samp{#<tensor f32[4 8] cpu requires-grad (0.12
-0.5 … )>}: dtype and shape, device, requires-grad when set, and the first
LIMIT values in row-major order (default: (tensor-print-limit))."
  (%tensor-repr t limit))

(define-method (write (t <tensor>) port)
  (display (%tensor-repr t (tensor-print-limit)) port))

(define-method (display (t <tensor>) port)
  (display (%tensor-repr t (tensor-print-limit)) port))

;;; ---- memory and devices ----------------------------------------------------------

(define (memory-stats)
  "Live memory per device, as an alist:
@code{((cpu (live-tensors . N) (live-storages . N) (live-bytes . N)
(peak-bytes . N)) (cuda …))} (cuda only in CUDA builds). Tensors not yet
collected count as live: call @code{(gc)} first for an exact picture."
  (%memory-stats))

(define* (memory-peak-reset! #:optional (device 'cpu))
  "Reset the peak-bytes counter of DEVICE to its live bytes."
  (%memory-peak-reset! device))

(define (device-count device)
  "How many devices of kind DEVICE ('cpu or 'cuda) this process can use."
  (%device-count device))

(define (built-with-cuda?)
  "True when this moelab was built with the CUDA backend."
  (%built-with-cuda?))
