;;; data.scm — (moelab data): tokenizers, token files and datasets through
;;; the Scheme API, on the tiny corpora of tests/data (bytes tokenizer, so
;;; every value is worked out by hand):
;;;   corpus/alpha/train "abcdefgh"     stream a b c d e f g h NUL   (9 tokens)
;;;   corpus/beta/train  "xyz" NUL "uv" stream x y z NUL u v NUL     (7 tokens)
;;;   corpus/alpha/val   "ABCDEFGHIJK"  stream A … K NUL             (12 tokens)

(include "common.scm")
(use-modules (ice-9 ftw) (ice-9 binary-ports) (rnrs bytevectors))

(test-begin "data")

(define data-dir (string-append (dirname (current-filename)) "/../data"))
(define (data . parts) (string-join (cons data-dir parts) "/"))

(define scratch
  (let ((dir (string-append (or (getenv "TMPDIR") "/tmp") "/moelab-data-XXXXXX")))
    (mkdtemp dir)))
(define (scratch-file name) (string-append scratch "/" name))

(define (codes str) (map char->integer (string->list str)))

(define (ab . options)
  (apply make-text-dataset
         #:domains `((alpha . ,(data "corpus/alpha")) (beta . ,(data "corpus/beta")))
         #:seq-len 2 options))

;;; ---- tokenizers ----------------------------------------------------------------

(test-group "bytes tokenizer"
  (define tok (make-tokenizer 'bytes))
  (test-assert "tokenizer?" (and (tokenizer? tok) (not (tokenizer? 'bytes))))
  (test-assert "is-a <tokenizer>" ((@ (oop goops) is-a?) tok <tokenizer>))
  (test-eq "kind" 'bytes (tokenizer-kind tok))
  (test-equal "vocab" 256 (tokenizer-vocab-size tok))
  (test-equal "end id" 0 (tokenizer-end-id tok))
  ;; "hé!" is 68 c3 a9 21 in UTF-8
  (test-equal "encode" '(#x68 #xc3 #xa9 #x21) (tokenizer-encode tok "hé!"))
  (test-equal "round trip" "(define (f x)\n\t(* x x)) ; 日本"
    (tokenizer-decode tok (tokenizer-encode tok "(define (f x)\n\t(* x x)) ; 日本")))
  (test-equal "decode a tensor" "hi" (tokenizer-decode tok (tensor '(104 105) #:dtype 'i64)))
  (test-equal "a cut character becomes U+FFFD" "h\ufffd" (tokenizer-decode tok '(#x68 #xc3)))
  (test-moelab-error "id 256" "token 256 at position 1 is not a byte" (tokenizer-decode tok '(65 256)))
  (test-assert "prints" (string-contains (object->string tok) "#<tokenizer bytes V=256")))

(test-group "ids tokenizer"
  (define tok (make-tokenizer '(ids 50257 50256)))
  (test-equal "vocab" 50257 (tokenizer-vocab-size tok))
  (test-equal "end id" 50256 (tokenizer-end-id tok))
  (test-eq "no end id" #f (tokenizer-end-id (make-tokenizer '(ids . 10))))
  (test-moelab-error "no text" "reads token files only" (tokenizer-encode tok "x"))
  (test-moelab-error "unknown spec" "unknown tokenizer" (make-tokenizer 'words)))

(test-group "sentencepiece"
  (define model (scratch-file "t.model"))
  (define tok (train-tokenizer #:sources (list (data "spm-train.txt")) #:model model #:vocab-size 400))
  (test-eq "kind" 'sentencepiece (tokenizer-kind tok))
  (test-equal "vocab" 400 (tokenizer-vocab-size tok))
  (test-equal "end id is </s>" 2 (tokenizer-end-id tok))
  (test-assert "the model file is written" (file-exists? model))
  (let ((text "  (define (square x) (* x x))\n\théllo 日本  QZ~"))
    (test-equal "round trip" text (tokenizer-decode tok (tokenizer-encode tok text))))
  (let ((ids (tokenizer-encode tok "the quick brown fox jumps over the lazy dog")))
    (test-assert "merges compress trained text" (< (length ids) 22))
    (test-equal "the file loads as the same tokenizer" ids
      (tokenizer-encode (make-tokenizer `(sentencepiece . ,model))
                        "the quick brown fox jumps over the lazy dog"))
    (test-equal "the file name alone" ids
      (tokenizer-encode (make-tokenizer model) "the quick brown fox jumps over the lazy dog")))
  (test-moelab-error "missing model" "cannot load the sentencepiece model"
    (make-tokenizer (data "no-such.model")))
  (test-moelab-error "missing source" "no such file or directory"
    (train-tokenizer #:sources (list (data "no-such-dir")) #:model (scratch-file "m.model")))
  (test-moelab-error "no sources" "#:sources must be a non-empty list"
    (train-tokenizer #:model (scratch-file "m.model")))
  (test-moelab-error "bad option" "sentencepiece training"
    (train-tokenizer #:sources (list (data "spm-train.txt")) #:model (scratch-file "m.model")
                     #:options '((model_type . quantum))))
  ;; a dataset over it: encode("abcdefgh") then </s>
  (let* ((ds (make-text-dataset #:domains `((alpha . ,(data "corpus/alpha")))
                                #:tokenizer `(sentencepiece . ,model) #:seq-len 1 #:shuffle? #f))
         (ids (tokenizer-encode tok "abcdefgh")))
    (test-equal "dataset vocab" 400 (dataset-vocab-size ds))
    (test-equal "stream" (+ (length ids) 1)
      (assq-ref (assq-ref (assq-ref (dataset-info ds) 'domains) 'alpha) 'tokens))
    (call-with-values (lambda () (dataset-next-batch ds (length ids)))
      (lambda (x y rows)
        (test-equal "inputs" ids (map car (tensor->list x)))
        (test-equal "targets" (append (cdr ids) '(2)) (map car (tensor->list y)))))))

;;; ---- token files -----------------------------------------------------------------

(test-group "token files"
  (define (file-bytes path) (call-with-input-file path get-bytevector-all #:binary #t))
  (write-token-file (scratch-file "a.bin") '(5 6 50263))
  (test-equal "bin layout: header magic, version, count"
    '(#x88 #xd8 #x34 #x01 1 0 0 0 3 0 0 0)
    (list-head (bytevector->u8-list (file-bytes (scratch-file "a.bin"))) 12))
  (test-equal "bin body: u16 little-endian" '(5 0 6 0 #x57 #xc4)
    (list-tail (bytevector->u8-list (file-bytes (scratch-file "a.bin"))) 1024))
  (test-equal "read bin" '(5 6 50263) (tensor->list (read-token-file (scratch-file "a.bin"))))
  (test-eq "as i64" 'i64 (tensor-dtype (read-token-file (scratch-file "a.bin"))))
  (write-token-file (scratch-file "b.bin") (tensor '(128000 1) #:dtype 'i64) #:format 'bin32)
  (test-equal "read bin32" '(128000 1) (tensor->list (read-token-file (scratch-file "b.bin"))))
  (write-token-file (scratch-file "c.u32") '(7 70000 4294967295))
  (test-equal "u32 bytes" '(7 0 0 0 #x70 #x11 1 0 255 255 255 255)
    (bytevector->u8-list (file-bytes (scratch-file "c.u32"))))
  (test-equal "read u32" '(7 70000 4294967295) (tensor->list (read-token-file (scratch-file "c.u32"))))
  (write-token-file (scratch-file "d.raw") '(1 258) #:format 'u16)
  (test-equal "u16 bytes" '(1 0 2 1) (bytevector->u8-list (file-bytes (scratch-file "d.raw"))))
  (test-equal "read with #:format" '(1 258)
    (tensor->list (read-token-file (scratch-file "d.raw") #:format 'u16)))
  (test-moelab-error "format by name" "cannot tell the format" (read-token-file (scratch-file "d.raw")))
  (test-moelab-error "too wide for u16" "token 70000 at position 0 does not fit"
    (write-token-file (scratch-file "e.u16") '(70000)))
  ;; corrupt files
  (let ((bad (make-bytevector 1028 0)))
    (bytevector-s32-set! bad 0 12345 (endianness little))
    (call-with-output-file (scratch-file "magic.bin") (lambda (p) (put-bytevector p bad)) #:binary #t)
    (test-moelab-error "bad magic" "magic.bin' is not a .bin token file: bad magic 12345"
      (read-token-file (scratch-file "magic.bin")))
    (bytevector-s32-set! bad 0 20240520 (endianness little))
    (bytevector-s32-set! bad 4 1 (endianness little))
    (bytevector-s32-set! bad 8 9 (endianness little))
    (call-with-output-file (scratch-file "count.bin") (lambda (p) (put-bytevector p bad)) #:binary #t)
    (test-moelab-error "count beyond the file"
      "count.bin' is truncated: its header counts 9 tokens (18 bytes) but 4 bytes follow"
      (read-token-file (scratch-file "count.bin")))
    (call-with-output-file (scratch-file "short.bin")
      (lambda (p) (put-bytevector p bad 0 100)) #:binary #t)
    (test-moelab-error "truncated header" "short.bin' is truncated: 100 bytes"
      (read-token-file (scratch-file "short.bin"))))
  (test-moelab-error "missing" "none.u16': no such file or directory"
    (read-token-file (scratch-file "none.u16"))))

;;; ---- datasets --------------------------------------------------------------------

(test-group "sequences and targets"
  (define ds (make-text-dataset #:domains `((alpha . ,(data "corpus/alpha"))) #:seq-len 4 #:shuffle? #f))
  (test-assert "dataset?" (and (dataset? ds) (not (dataset? 'alpha))))
  (test-assert "is-a <dataset>" ((@ (oop goops) is-a?) ds <dataset>))
  (test-equal "domains" '(alpha) (dataset-domains ds))
  (test-equal "vocab" 256 (dataset-vocab-size ds))
  (test-equal "seq-len" 4 (dataset-seq-len ds))
  (test-eq "tokenizer" 'bytes (tokenizer-kind (dataset-tokenizer ds)))
  (test-equal "info" '((files . 1) (documents . 1) (tokens . 9) (sequences . 2) (probability . 1.0))
    (assq-ref (assq-ref (dataset-info ds) 'domains) 'alpha))
  (call-with-values (lambda () (dataset-next-batch ds 3))
    (lambda (x y rows)
      (test-equal "shape" '(3 4) (tensor-shape x))
      (test-eq "i64" 'i64 (tensor-dtype y))
      (test-equal "tokens" (list (codes "abcd") (codes "efgh") (codes "abcd")) (tensor->list x))
      (test-equal "targets = tokens shifted by one"
        (list (codes "bcde") (append (codes "fgh") '(0)) (codes "bcde")) (tensor->list y))
      (test-equal "rows" '(alpha alpha alpha) rows)))
  (test-equal "state" '((seed . 0) (draws . 3) (seq-len . 4)
                        (domains (alpha (epoch . 1) (cursor . 1) (sequences . 2))))
    (dataset-state ds))
  (test-assert "prints" (string-contains (object->string ds) "#<dataset train shuffled S=4 V=256 alpha:1.00")))

(test-group "splits and per-domain batches"
  (define ds (make-text-dataset #:domains `((alpha . ,(data "corpus/alpha")) (beta ,(data "corpus/beta")))
                                #:seq-len 3 #:split 'val #:shuffle? #f))
  (call-with-values (lambda () (dataset-next-batch ds 2 #:domain 'beta))
    (lambda (x y rows)
      ;; beta/val is NUL NUL "XYZUVW" NUL: one document, X Y Z U V W NUL
      (test-equal "beta val" (list (codes "XYZ") (codes "UVW")) (tensor->list x))
      (test-equal "beta rows" '(beta beta) rows)))
  (call-with-values (lambda () (dataset-next-batch ds 1 #:domain "alpha"))
    (lambda (x y rows) (test-equal "alpha val" (list (codes "ABC")) (tensor->list x))))
  (test-equal "no mixture draws" 0 (assq-ref (dataset-state ds) 'draws))
  (test-moelab-error "unknown domain" "no domain 'gamma' in this dataset"
    (dataset-next-batch ds 1 #:domain 'gamma)))

(test-group "determinism and resumption"
  (define (batch ds n) (call-with-values (lambda () (dataset-next-batch ds n)) list))
  (define (rows-of b) (map tensor->list (list (car b) (cadr b))))
  (define a (ab #:seed 11))
  (define b (ab #:seed 11))
  (test-equal "same seed, same batches" (rows-of (batch a 16)) (rows-of (batch b 16)))
  (test-assert "another seed, other batches"
    (not (equal? (rows-of (batch (ab #:seed 11) 16)) (rows-of (batch (ab #:seed 12) 16)))))
  (let* ((s (dataset-state a))
         (next1 (batch a 5))
         (next2 (batch a 5)))
    (batch b 3)                          ; b wanders off
    (dataset-load-state! b s)
    (let* ((again1 (batch b 5)) (again2 (batch b 5)))
      (test-equal "restored: the same continuation" (list (rows-of next1) (rows-of next2))
        (list (rows-of again1) (rows-of again2)))
      (test-equal "and the same domains" (list (caddr next1) (caddr next2))
        (list (caddr again1) (caddr again2)))))
  ;; the state survives a trip through JSON-like data: string keys
  (let* ((s (dataset-state a))
         (stringly (let conv ((x s))
                     (cond ((pair? x) (cons (conv (car x)) (conv (cdr x))))
                           ((symbol? x) (symbol->string x))
                           (else x))))
         (next (batch a 4)))
    (dataset-load-state! b stringly)
    (test-equal "string keys" (rows-of next) (rows-of (batch b 4))))
  (dataset-reset! b)
  (test-equal "reset: the first batch again" (rows-of (batch (ab #:seed 11) 16)) (rows-of (batch b 16))))

(test-group "bad states leave the dataset alone"
  (define ds (ab))
  (define s (dataset-state ds))
  (define (with key value)
    (map (lambda (kv) (if (eq? (car kv) key) (cons key value) kv)) s))
  (test-moelab-error "seq-len" "the state is for seq-len 3; this dataset's is 2"
    (dataset-load-state! ds (with 'seq-len 3)))
  (test-moelab-error "sequences" "the state is for domain 'alpha' with 5 sequences; this dataset's has 4"
    (dataset-load-state! ds (with 'domains '((alpha (epoch . 0) (cursor . 0) (sequences . 5))
                                             (beta (epoch . 0) (cursor . 0) (sequences . 3))))))
  (test-moelab-error "missing domain" "the state has no domain 'beta'"
    (dataset-load-state! ds (with 'domains '((alpha (epoch . 0) (cursor . 0) (sequences . 4))
                                             (gamma (epoch . 0) (cursor . 0) (sequences . 3))))))
  (test-moelab-error "cursor" "domain 'beta': epoch 0 and cursor 9 are out of range"
    (dataset-load-state! ds (with 'domains '((alpha (epoch . 0) (cursor . 0) (sequences . 4))
                                             (beta (epoch . 0) (cursor . 9) (sequences . 3))))))
  (test-moelab-error "not a state" "the state has no integer 'seed'" (dataset-load-state! ds '()))
  (test-equal "unchanged" s (dataset-state ds))
  (test-moelab-error "batch size" "batch size must be in [1, 2^24], got 0" (dataset-next-batch ds 0))
  (test-equal "still unchanged" s (dataset-state ds)))

(test-group "batching"
  (define single (ab #:batching 'single-domain #:seed 5))
  (define counts
    (let loop ((i 0) (counts '((alpha . 0) (beta . 0))))
      (if (= i 40)
          counts
          (call-with-values (lambda () (dataset-next-batch single 6))
            (lambda (x y rows)
              (loop (+ i 1)
                    (if (every (lambda (r) (eq? r (car rows))) rows)
                        (assq-set! (map (lambda (p) (cons (car p) (cdr p))) counts) (car rows)
                                   (+ 1 (assq-ref counts (car rows))))
                        (cons '(mixed . 1) counts))))))))
  (test-assert "one domain per batch, both domains used"
    (and (not (assq 'mixed counts)) (> (assq-ref counts 'alpha) 0) (> (assq-ref counts 'beta) 0)))
  (test-equal "one draw per batch" 40 (assq-ref (dataset-state single) 'draws))
  ;; shuffled shares over 20000 rows: by size (9/16, 7/16), by weight (3/4, 1/4);
  ;; the binomial sd of a share is at most sqrt(0.25/20000) = 0.0035, 0.015 is over four
  (define (alpha-share ds)
    (call-with-values (lambda () (dataset-next-batch ds 20000))
      (lambda (x y rows) (/ (count (lambda (r) (eq? r 'alpha)) rows) 20000.))))
  (test-assert "by size" (< (abs (- (alpha-share (ab)) 9/16)) 0.015))
  (test-equal "probabilities by size" '(0.5625 0.4375)
    (map (lambda (d) (assq-ref (cdr d) 'probability)) (assq-ref (dataset-info (ab)) 'domains)))
  (test-assert "by weight" (< (abs (- (alpha-share (ab #:weights '(3 1))) 3/4)) 0.015))
  (test-assert "weights as an alist" (< (abs (- (alpha-share (ab #:weights '((beta . 1) (alpha . 3)))) 3/4)) 0.015))
  (test-moelab-error "weights name no domain" "#:weights gives no weight for domain beta"
    (ab #:weights '((alpha . 1))))
  (test-moelab-error "negative weight" "weight of domain 'beta' must be finite and >= 0, got -1"
    (ab #:weights '(1 -1))))

(test-group "bad sources"
  (test-moelab-error "missing path"
    (string-append "no such file or directory: '" (data "corpus/gamma") "' (domain 'gamma')")
    (make-text-dataset #:domains `((alpha . ,(data "corpus/alpha")) (gamma . ,(data "corpus/gamma")))
                       #:seq-len 2))
  (test-moelab-error "empty domain"
    (string-append "domain 'nothing' is empty: '" (data "empty/train") "' holds no documents")
    (make-text-dataset #:domains `((nothing . ,(data "empty"))) #:seq-len 2))
  (test-moelab-error "no glob match" "no file matches"
    (make-text-dataset #:domains `((md . ,(data "tree/*.rst"))) #:seq-len 2))
  (test-moelab-error "too short" "domain 'beta' has 7 tokens"
    (make-text-dataset #:domains `((beta . ,(data "corpus/beta"))) #:seq-len 7))
  (test-moelab-error "corrupt token file" "magic.bin' is not a .bin token file"
    (make-text-dataset #:domains `((tok . ,(scratch-file "magic.bin"))) #:seq-len 2))
  (test-moelab-error "unknown batching" "unknown batching 'random"
    (ab #:batching 'random))
  (test-moelab-error "unknown split" "unknown split 'test" (ab #:split 'test))
  (test-moelab-error "no domains" "#:domains must be a non-empty list" (make-text-dataset #:seq-len 2)))

(test-group "token file domains"
  (write-token-file (scratch-file "t.bin") '(10 20 30 40 50))
  (let ((ds (make-text-dataset #:domains `((tok . ,(scratch-file "t.bin"))) #:seq-len 2 #:shuffle? #f)))
    (call-with-values (lambda () (dataset-next-batch ds 2))
      (lambda (x y rows)
        (test-equal "as they are" '((10 20) (30 40)) (tensor->list x))
        (test-equal "targets" '((20 30) (40 50)) (tensor->list y)))))
  (write-token-file (scratch-file "big.u16") '(1 2 300 4))
  (test-moelab-error "ids beyond the vocabulary" "token 300 at position 2 is outside the tokenizer's vocabulary of 256"
    (make-text-dataset #:domains `((big . ,(scratch-file "big.u16"))) #:seq-len 2))
  (let ((ds (make-text-dataset #:domains `((big . ,(scratch-file "big.u16"))) #:seq-len 2
                               #:tokenizer '(ids . 301))))
    (test-equal "with an ids tokenizer" 301 (dataset-vocab-size ds))))

;; clean up the scratch directory
(for-each (lambda (f) (delete-file (scratch-file f)))
          (scandir scratch (lambda (f) (not (member f '("." ".."))))))
(rmdir scratch)

(test-end "data")
(exit-with-test-status)
