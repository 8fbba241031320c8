;;; printing.scm — how tensors print: #<tensor f32[4 8] cpu requires-grad
;;; (0.12 -0.5 … )>, values elided past (tensor-print-limit).

(include "common.scm")

(test-begin "printing")

(define (shown x) (format #f "~a" x))
(define (written x) (format #f "~s" x))

(test-group "format"
  (test-equal "1-d" "#<tensor f32[3] cpu (1.0 2.0 3.0)>" (shown (tensor '(1 2 3))))
  (test-equal "write is the same" "#<tensor f32[3] cpu (1.0 2.0 3.0)>" (written (tensor '(1 2 3))))
  (test-equal "2-d, row-major" "#<tensor f32[2 2] cpu (1.0 2.0 3.0 4.0)>" (shown (tensor '((1 2) (3 4)))))
  (test-equal "0-d" "#<tensor f32[] cpu (3.5)>" (shown (tensor 3.5)))
  (test-equal "empty" "#<tensor f32[0] cpu ()>" (shown (tensor '())))
  (test-equal "requires-grad" "#<tensor f32[2] cpu requires-grad (0.12 -0.5)>"
    (shown (tensor '(0.12 -0.5) #:requires-grad #t)))
  (test-equal "results of recorded ops too" "#<tensor f32[1] cpu requires-grad (2.0)>"
    (shown (t* (tensor '(1) #:requires-grad #t) 2)))
  (test-equal "f64" "#<tensor f64[2] cpu (0.25 -1.5)>" (shown (tensor '(0.25 -1.5) #:dtype 'f64)))
  (test-equal "i64" "#<tensor i64[3] cpu (-1 0 7)>" (shown (tensor '(-1 0 7) #:dtype 'i64)))
  (test-equal "i32" "#<tensor i32[1] cpu (42)>" (shown (tensor '(42) #:dtype 'i32)))
  (test-equal "bool" "#<tensor bool[2] cpu (#t #f)>" (shown (t> (tensor '(1 -1)) 0)))
  (test-equal "bf16 (rounded)" "#<tensor bf16[1] cpu (0.1001)>" (shown (tensor '(0.1) #:dtype 'bf16)))
  (test-equal "4 significant digits" "#<tensor f64[3] cpu (0.3333 1.235e+04 1e-07)>"
    (shown (tensor (list 1/3 12345.678 1e-7) #:dtype 'f64)))
  (test-equal "NaN and infinities" "#<tensor f32[3] cpu (+nan.0 +inf.0 -inf.0)>"
    (shown (t/ (tensor '(0 1 -1)) (tensor '(0 0 0)))))
  (test-equal "a transposed view prints in logical order" "#<tensor f32[2 2] cpu (1.0 3.0 2.0 4.0)>"
    (shown (transpose (tensor '((1 2) (3 4))))))
  (test-equal "an expanded view" "#<tensor f32[2 2] cpu (1.0 2.0 1.0 2.0)>"
    (shown (expand (tensor '(1 2)) '(2 2))))
  (test-equal "inside a list" "(#<tensor f32[1] cpu (1.0)> 2)" (shown (list (tensor '(1)) 2)))
  (test-equal "a freed tensor" "#<tensor freed>"
    (let ((t (tensor '(1)))) (tensor-free! t) (shown t))))

(test-group "elision"
  (test-equal "default limit 8" 8 (tensor-print-limit))
  (test-equal "elided past 8 values" "#<tensor i64[20] cpu (0 1 2 3 4 5 6 7 … )>" (shown (arange 20)))
  (test-equal "exactly 8 values: nothing elided" "#<tensor i64[8] cpu (0 1 2 3 4 5 6 7)>" (shown (arange 8)))
  (test-equal "elision across rows" "#<tensor f32[3 4] cpu (0.0 1.0 2.0 3.0 4.0 5.0 6.0 7.0 … )>"
    (shown (reshape (arange 12 #:dtype 'f32) '(3 4))))
  (test-equal "parameterized limit" "#<tensor i64[5] cpu (0 1 … )>"
    (parameterize ((tensor-print-limit 2)) (shown (arange 5))))
  (test-equal "limit #f shows all" "#<tensor i64[10] cpu (0 1 2 3 4 5 6 7 8 9)>"
    (parameterize ((tensor-print-limit #f)) (shown (arange 10))))
  (test-equal "limit 0" "#<tensor i64[3] cpu (… )>"
    (parameterize ((tensor-print-limit 0)) (shown (arange 3))))
  (test-equal "restored after parameterize" "#<tensor i64[9] cpu (0 1 2 3 4 5 6 7 … )>" (shown (arange 9)))
  (test-equal "tensor->string with a limit" "#<tensor i64[4] cpu (0 … )>" (tensor->string (arange 4) 1))
  (test-equal "tensor->string default" "#<tensor i64[2] cpu (0 1)>" (tensor->string (arange 2)))
  (test-assert "a bad limit is refused"
    (catch #t
      (lambda () (parameterize ((tensor-print-limit -1)) #f))
      (lambda args #t)))
  (test-assert "a big tensor prints quickly and briefly"
    (< (string-length (shown (zeros '(1000 1000)))) 120)))

(test-end "printing")
(exit-with-test-status)
