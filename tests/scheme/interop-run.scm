;;; interop-run.scm — the moelab side of safetensors-interop.sh:
;;; `write DIR` writes tensors.safetensors, model.safetensors and the
;;; Mixtral export hf/; `check DIR` reads the files the Python writer made.
(use-modules (moelab) (srfi srfi-1) (ice-9 match))

(define (expect what ok)
  (unless ok (format (current-error-port) "FAIL ~a~%" what) (exit 1))
  (format #t "ok   ~a~%" what))

(match (cdr (command-line))
  (("write" dir)
   (let* ((a (t/ (tensor '((1 2 3) (4 5 6)) #:dtype 'f64) 8))
          (b (transpose (tensor '((1 2 3) (4 5 6)) #:dtype 'f32)))
          (m (make-moe-transformer #:vocab 16 #:layers 2 #:hidden 8 #:heads 2 #:kv-heads 1
                                   #:ffn 6 #:experts 3 #:top-k 2 #:max-seq 8 #:rope-theta 500.0
                                   #:seed 3)))
     (save-tensors (string-append dir "/tensors.safetensors")
                   `(("a" . ,a) ("b" . ,b) ("c" . ,(tensor '(-5 1099511627776) #:dtype 'i64))
                     ("d" . ,(tensor -7 #:dtype 'i32)) ("e" . ,(tensor '(#t #f) #:dtype 'bool))
                     ("f" . ,(tensor '(1.0 -3.0) #:dtype 'bf16)))
                   #:metadata '(("note" . "from moelab")))
     (save-model m (string-append dir "/model.safetensors"))
     (export-hf-mixtral m (string-append dir "/hf"))
     (expect "moelab wrote its files" #t)))
  (("check" dir)
   (for-each
    (lambda (file)
      (let ((t (load-tensors (string-append dir "/" file))))
        (expect (string-append file ": names in file order") (equal? (map car t) '("x" "y" "z" "bf")))
        (expect (string-append file ": f32") (and (eq? (tensor-dtype (assoc-ref t "x")) 'f32)
                                                (equal? (tensor->list (assoc-ref t "x"))
                                                        '((-2.5 -1.5 -0.5) (0.5 1.5 2.5)))))
        (expect (string-append file ": f64") (equal? (tensor->list (assoc-ref t "y")) '(1e-310 -0.0 7.25)))
        (expect (string-append file ": i64") (equal? (tensor->list (assoc-ref t "z")) '((3) (-4))))
        (expect (string-append file ": bf16") (and (eq? (tensor-dtype (assoc-ref t "bf")) 'bf16)
                                                 (equal? (tensor->list (assoc-ref t "bf")) '(2.0 -0.25))))
        (expect (string-append file ": metadata")
                (equal? (assoc-ref (tensor-file-metadata (string-append dir "/" file)) "writer") "python"))))
    '("from-python.safetensors" "from-python-summed.safetensors"))))
