;;; tensor.scm — making tensors, inspecting them, converting to and from
;;; Scheme data, memory. (SRFI-64; run by `make check`.)

(include "common.scm")

(test-begin "tensor")

;;; ---- from Scheme data ----------------------------------------------------------

(test-group "tensor from lists and vectors"
  (let ((t (tensor '((1 2 3) (4 5 6)))))
    (test-assert "tensor?" (tensor? t))
    (test-assert "not a tensor" (not (tensor? '(1 2))))
    (test-equal "shape" '(2 3) (tensor-shape t))
    (test-equal "default dtype f32" 'f32 (tensor-dtype t))
    (test-equal "device" 'cpu (tensor-device t))
    (test-equal "ndim" 2 (tensor-ndim t))
    (test-equal "numel" 6 (tensor-numel t))
    (test-equal "strides" '(3 1) (tensor-strides t))
    (test-assert "contiguous" (tensor-contiguous? t))
    (test-equal "values" '((1.0 2.0 3.0) (4.0 5.0 6.0)) (tensor->list t))
    (test-assert "class <tensor>" (eq? ((@ (oop goops) class-of) t) <tensor>)))
  (test-equal "vectors nest too" '((1.0 2.0) (3.0 4.0)) (tensor->list (tensor #(#(1 2) (3 4)))))
  (test-equal "0-d from a number" '() (tensor-shape (tensor 3.5)))
  (test-equal "0-d tensor->list is a number" 3.5 (tensor->list (tensor 3.5)))
  (test-equal "empty list" '(0) (tensor-shape (tensor '())))
  (test-equal "i64 keeps exact integers" '(1 -2 9007199254740993)
    (tensor->list (tensor '(1 -2 9007199254740993) #:dtype 'i64)))
  (test-equal "i32" '(7 -8) (tensor->list (tensor '(7 -8) #:dtype 'i32)))
  (test-equal "f64" 'f64 (tensor-dtype (tensor '(1) #:dtype 'f64)))
  (test-equal "f64 precision" '(0.1) (tensor->list (tensor '(0.1) #:dtype 'f64)))
  (test-equal "bool from booleans" '(#t #f #t) (tensor->list (tensor '(#t #f #t) #:dtype 'bool)))
  (test-equal "bool from numbers" '(#t #f) (tensor->list (tensor '(2 0) #:dtype 'bool)))
  (test-equal "bf16 rounds" '(1.0 0.5 3.140625) (tensor->list (tensor '(1 0.5 3.14159) #:dtype 'bf16)))
  (test-equal "exact rationals" '(0.5 0.25) (tensor->list (tensor '(1/2 1/4))))
  (test-equal "#:shape reshapes flat data" '((1.0 2.0) (3.0 4.0))
    (tensor->list (tensor '(1 2 3 4) #:shape '(2 2))))
  (test-equal "Guile arrays" '((1.0 2.0) (3.0 4.0)) (tensor->list (tensor #2((1 2) (3 4)))))
  (test-equal "copy of a tensor, converted" '(f64 (1.0 2.0))
    (let ((c (tensor (tensor '(1 2)) #:dtype 'f64)))
      (list (tensor-dtype c) (tensor->list c))))
  (test-assert "#:requires-grad" (requires-grad? (tensor '(1 2) #:requires-grad #t)))
  (test-assert "no grad by default" (not (requires-grad? (tensor '(1 2))))))

(test-group "tensor from SRFI-4 vectors"
  (let* ((v (f32vector 1 2 3 4 5 6))
         (t (tensor v #:shape '(2 3))))
    (test-equal "shape" '(2 3) (tensor-shape t))
    (test-equal "dtype from the vector" 'f32 (tensor-dtype t))
    (test-equal "values" '((1.0 2.0 3.0) (4.0 5.0 6.0)) (tensor->list t))
    ;; shared, not copied: a write through the vector shows in the tensor
    (f32vector-set! v 0 42.0)
    (test-equal "shares memory with the vector" 42.0 (tensor-ref t 0 0))
    (tensor-set! t 9.0 1 2)
    (test-equal "and back" 9.0 (f32vector-ref v 5)))
  (test-equal "f64vector" '(f64 (1.5 2.5)) (let ((t (tensor (f64vector 1.5 2.5))))
                                             (list (tensor-dtype t) (tensor->list t))))
  (test-equal "s32vector" '(i32 (1 -2)) (let ((t (tensor (s32vector 1 -2))))
                                          (list (tensor-dtype t) (tensor->list t))))
  (test-equal "s64vector" '(i64 (5 6)) (let ((t (tensor (s64vector 5 6))))
                                         (list (tensor-dtype t) (tensor->list t))))
  (test-equal "u8vector is bool" '(bool (#t #f)) (let ((t (tensor (u8vector 1 0))))
                                                   (list (tensor-dtype t) (tensor->list t))))
  (test-equal "converted copy when the dtype differs" '(f64 (1.0 2.0))
    (let* ((v (f32vector 1 2)) (t (tensor v #:dtype 'f64)))
      (f32vector-set! v 0 7.0)
      (list (tensor-dtype t) (tensor->list t))))
  (test-equal "a literal (read-only) vector is copied" '(1.0 2.0)
    (tensor->list (tensor #f32(1 2))))
  (test-equal "the vector outlives a collection while the tensor lives" '(3.0 4.0)
    (let ((t (tensor (f32vector 3 4))))
      (gc) (gc)
      (tensor->list t))))

;;; ---- creation ---------------------------------------------------------------------------

(test-group "creation"
  (test-equal "zeros" '((0.0 0.0 0.0) (0.0 0.0 0.0)) (tensor->list (zeros '(2 3))))
  (test-equal "zeros with an integer shape" '(0.0 0.0) (tensor->list (zeros 2)))
  (test-equal "zeros 0-d" 0.0 (tensor->list (zeros '())))
  (test-equal "ones i64" '(1 1) (tensor->list (ones '(2) #:dtype 'i64)))
  (test-assert "ones #:requires-grad" (requires-grad? (ones '(2) #:requires-grad #t)))
  (test-equal "full" '((2.5 2.5)) (tensor->list (full '(1 2) 2.5)))
  (test-equal "full f64" 'f64 (tensor-dtype (full '(1) 1 #:dtype 'f64)))
  (test-equal "zeros-like" '(f64 (0.0 0.0)) (let ((z (zeros-like (ones '(2) #:dtype 'f64))))
                                              (list (tensor-dtype z) (tensor->list z))))
  (test-equal "ones-like" '(1.0 1.0 1.0) (tensor->list (ones-like (zeros 3))))
  (test-equal "full-like #:dtype" '(i32 (7 7)) (let ((t (full-like (zeros 2) 7 #:dtype 'i32)))
                                                 (list (tensor-dtype t) (tensor->list t))))
  (test-equal "scalar-tensor" '(() 4.0) (let ((s (scalar-tensor 4)))
                                          (list (tensor-shape s) (tensor->list s))))
  (test-equal "eye" '((1.0 0.0) (0.0 1.0)) (tensor->list (eye 2)))
  (test-equal "eye n m" '((1.0 0.0 0.0) (0.0 1.0 0.0)) (tensor->list (eye 2 3)))
  (test-equal "arange n" '(i64 (0 1 2 3)) (let ((a (arange 4))) (list (tensor-dtype a) (tensor->list a))))
  (test-equal "arange start end" '(2 3 4) (tensor->list (arange 2 5)))
  (test-equal "arange with a float step" '(f32 (0.0 0.25 0.5 0.75))
    (let ((a (arange 0 1 0.25))) (list (tensor-dtype a) (tensor->list a))))
  (test-equal "arange negative step" '(3 2 1) (tensor->list (arange 3 0 -1)))
  (test-equal "arange #:dtype" 'f64 (tensor-dtype (arange 3 #:dtype 'f64))))

(test-group "random"
  (test-equal "randn #:seed repeats" (tensor->list (randn '(2 3) #:seed 7))
    (tensor->list (randn '(2 3) #:seed 7)))
  (test-assert "different seeds differ"
    (not (equal? (tensor->list (randn '(4) #:seed 1)) (tensor->list (randn '(4) #:seed 2)))))
  (test-equal "randn shape" '(3 2) (tensor-shape (randn '(3 2))))
  (test-assert "randn looks normal"
    (let* ((x (randn '(10000) #:seed 3 #:dtype 'f64))
           (m (tensor-item (tmean x)))
           (v (tensor-item (var x))))
      (and (< (abs m) 0.05) (< (abs (- v 1)) 0.05))))
  (test-assert "rand in [0, 1)"
    (let ((vs (tensor->list (rand '(1000) #:seed 4))))
      (every (lambda (v) (and (>= v 0) (< v 1))) vs)))
  (test-assert "randint in [low, high)"
    (let ((vs (tensor->list (randint 3 6 '(200) #:seed 5))))
      (and (every (lambda (v) (and (exact-integer? v) (<= 3 v 5))) vs)
           (lset= = '(3 4 5) (delete-duplicates vs)))))
  (test-equal "randperm is a permutation" '(0 1 2 3 4 5 6 7)
    (sort (tensor->list (randperm 8 #:seed 1)) <))
  (test-equal "manual-seed! repeats the default generator"
    (begin (manual-seed! 11) (tensor->list (rand '(3))))
    (begin (manual-seed! 11) (tensor->list (rand '(3))))))

;;; ---- element access and conversion ---------------------------------------------------

(test-group "access"
  (let ((t (tensor '((1 2 3) (4 5 6)))))
    (test-equal "tensor-ref" 6.0 (tensor-ref t 1 2))
    (test-equal "tensor-ref negative index" 4.0 (tensor-ref t -1 0))
    (test-equal "tensor-ref i64 exact" 5 (tensor-ref (tensor '(4 5) #:dtype 'i64) 1))
    (test-equal "tensor-ref bool" #t (tensor-ref (tensor '(#f #t) #:dtype 'bool) 1))
    (test-equal "tensor-ref 0-d" 2.5 (tensor-ref (tensor 2.5)))
    (test-equal "tensor-item" 7.0 (tensor-item (tensor '((7)))))
    (test-equal "tensor-item i64" 3 (tensor-item (tensor 3 #:dtype 'i64)))
    (let ((u (clone t)))
      (tensor-set! u -1 0 0)
      (test-equal "tensor-set!" '((-1.0 2.0 3.0) (4.0 5.0 6.0)) (tensor->list u))
      (tensor-fill! u 3)
      (test-equal "tensor-fill!" '((3.0 3.0 3.0) (3.0 3.0 3.0)) (tensor->list u))
      (tensor-copy! u (tensor '(1 2 3)))
      (test-equal "tensor-copy! broadcasts" '((1.0 2.0 3.0) (1.0 2.0 3.0)) (tensor->list u))
      (tensor-copy! u (tensor '((1 1 1) (2 2 2)) #:dtype 'i64))
      (test-equal "tensor-copy! converts" '((1.0 1.0 1.0) (2.0 2.0 2.0)) (tensor->list u)))))

(test-group "to SRFI-4"
  (let ((t (tensor '((1 2) (3 4)))))
    (test-equal "f32vector" #f32(1 2 3 4) (tensor->f32vector t))
    (test-equal "f64vector" #f64(1 2 3 4) (tensor->f64vector t))
    (test-equal "s32vector" #s32(1 2 3 4) (tensor->s32vector t))
    (test-equal "s64vector" #s64(1 2 3 4) (tensor->s64vector t))
    (test-equal "u8vector" #u8(1 0 1) (tensor->u8vector (tensor '(5 0 -1))))
    (test-equal "non-contiguous in logical order" #f32(1 3 2 4) (tensor->f32vector (transpose t)))
    (test-equal "a fresh copy" 1.0 (let ((v (tensor->f32vector t)))
                                     (f32vector-set! v 0 9.0)
                                     (tensor-ref t 0 0)))))

(test-group "comparing and counting"
  (test-assert "allclose" (tensor-allclose? (tensor '(1 2)) (tensor '(1 2.000001))))
  (test-assert "not allclose" (not (tensor-allclose? (tensor '(1 2)) (tensor '(1 2.1)))))
  (test-assert "allclose #:atol" (tensor-allclose? (tensor '(1 2)) (tensor '(1 2.1)) #:atol 0.2))
  (test-assert "allclose needs equal shapes" (not (tensor-allclose? (tensor '(1 2)) (tensor '((1 2))))))
  (test-equal "count-nonfinite" '(1 2)
    (call-with-values (lambda () (count-nonfinite (t/ (tensor '(0 1 -1 2)) (tensor '(0 0 0 1)))))
      list)))

;;; ---- views share storage and keep it alive --------------------------------------------

(test-group "views"
  (let* ((t (tensor '((1 2) (3 4))))
         (v (transpose t)))
    (test-assert "shares storage" (tensor-shares-storage? t v))
    (test-assert "not contiguous" (not (tensor-contiguous? v)))
    (test-equal "strides" '(1 2) (tensor-strides v))
    (test-assert "a clone does not share" (not (tensor-shares-storage? t (clone t)))))
  (test-equal "a view outlives its parent" '((1.0 3.0) (2.0 4.0))
    (let ((v (transpose (tensor '((1 2) (3 4))))))
      (gc) (gc)
      (tensor->list v)))
  (test-equal "a view outlives a freed parent" '(3.0 4.0)
    (let* ((t (tensor '((1 2) (3 4))))
           (row (tselect t 0 1)))
      (tensor-free! t)
      (tensor->list row))))

;;; ---- a GPU, when there is one ----------------------------------------------------------

(when (> (device-count 'cuda) 0)
  (test-group "cuda"
    (let* ((h (tensor '((1 2) (3 4))))
           (d (tensor-to h #:device 'cuda)))
      (test-equal "tensor-to cuda" 'cuda (tensor-device d))
      (test-equal "made on the device" 'cuda (tensor-device (zeros '(2) #:device 'cuda)))
      (test-equal "values come back" '((1.0 2.0) (3.0 4.0)) (tensor->list d))
      (test-equal "tensor-ref" 4.0 (tensor-ref d 1 1))
      (test-equal "printing" "#<tensor f32[2 2] cuda (1.0 2.0 3.0 4.0)>" (format #f "~a" d))
      (test-equal "back to the host" '((1.0 2.0) (3.0 4.0)) (tensor->list (tensor-to d #:device 'cpu)))
      (test-equal "from data" '(5.0 6.0) (tensor->list (tensor '(5 6) #:device 'cuda)))
      (test-equal "from an SRFI-4 vector" '(7.0) (tensor->list (tensor (f32vector 7) #:device 'cuda))))
    (test-assert "device memory is released after collection"
      (let ((live (lambda () (assq-ref (assq-ref (memory-stats) 'cuda) 'live-bytes))))
        (gc) (gc)
        (let ((before (live)))
          (let loop ((i 0))
            (when (< i 50) (zeros '(1000 100) #:device 'cuda) (loop (+ i 1))))
          (let wait ((tries 0))
            (gc)
            (usleep 20000)
            (let ((now (live)))   ; memory-stats drains the release queue
              (cond ((<= now before) #t)
                    ((> tries 50) (list 'still-live (- now before)))
                    (else (wait (+ tries 1)))))))))))

;;; ---- freeing and memory ----------------------------------------------------------------

(test-group "freeing"
  (let ((t (zeros '(3))))
    (test-assert "not freed" (not (tensor-freed? t)))
    (tensor-free! t)
    (test-assert "freed" (tensor-freed? t))
    (tensor-free! t)
    (test-assert "freeing twice is harmless" (tensor-freed? t))
    (test-assert "still a tensor" (tensor? t))))

(test-group "memory"
  (let ((cpu (assq-ref (memory-stats) 'cpu)))
    (test-assert "cpu stats" (and (assq 'live-tensors cpu) (assq 'live-bytes cpu)
                                  (assq 'live-storages cpu) (assq 'peak-bytes cpu))))
  ;; (other garbage may be finalized meanwhile on the finalizer thread:
  ;; a few tries)
  (test-equal "tensor-free! releases at once" 4000000
    (let try ((n 0))
      (define (live) (assq-ref (assq-ref (memory-stats) 'cpu) 'live-bytes))
      (let* ((before (live))
             (t (zeros '(1000 1000)))
             (during (live)))
        (tensor-free! t)
        (let ((after (live)))
          (if (or (and (= after before) (= (- during before) 4000000)) (= n 5))
              (if (= after before) (- during before) (list 'after after 'before before))
              (try (+ n 1)))))))
  (test-assert "garbage tensors are collected"
    (begin
      (gc)
      (let ((before (assq-ref (assq-ref (memory-stats) 'cpu) 'live-bytes)))
        (let loop ((i 0))
          (when (< i 200) (zeros '(1000 100)) (loop (+ i 1))))
        (gc) (gc)
        ;; finalizers run on their own thread: give them a moment
        (let wait ((tries 0))
          (let ((now (assq-ref (assq-ref (memory-stats) 'cpu) 'live-bytes)))
            (cond ((< (- now before) 8000000) #t)
                  ((> tries 50) (list 'still-live (- now before)))
                  (else (usleep 20000) (gc) (wait (+ tries 1)))))))))
  (test-assert "memory-peak-reset!"
    (begin
      (memory-peak-reset!)
      (let ((cpu (assq-ref (memory-stats) 'cpu)))
        (>= (assq-ref cpu 'peak-bytes) (assq-ref cpu 'live-bytes)))))
  (test-equal "device-count cpu" 1 (device-count 'cpu))
  (test-assert "device-count cuda" (>= (device-count 'cuda) 0))
  (test-assert "built-with-cuda?" (boolean? (built-with-cuda?)))
  (test-assert "%moelab-version" (string? %moelab-version)))

(test-end "tensor")
(exit-with-test-status)
