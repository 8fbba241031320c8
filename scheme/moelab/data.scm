;;; (moelab data) — tokenizers, token files and multi-domain text datasets
;;; for language-model training.
;;;
;;; A dataset reads named domains (files, directories, globs; text or token
;;; files), tokenizes them, packs each domain's documents into one stream
;;; with an end-of-document token, and hands out batches of sequences:
;;; tokens [B S] and next-token targets [B S] (i64), with the domain of each
;;; row. Batching is 'shuffled (each row's domain drawn from the mixture) or
;;; 'single-domain (one domain per batch). Everything is seeded, and the
;;; sampler state is a small alist that saves and restores exactly.
;;;
;;; @example
;;; (define ds (make-text-dataset #:domains '((bible . "data/corpus/bible")
;;;                                           (python . "data/corpus/python"))
;;;                               #:seq-len 128 #:seed 1))
;;; (define-values (x y rows) (dataset-next-batch ds 8))  ; i64 [8 128] twice, 8 domains
;;; (define s (dataset-state ds))
;;; (dataset-next-batch ds 8)
;;; (dataset-load-state! ds s)                            ; the same batch again
;;; @end example

(define-module (moelab data)
  #:use-module (moelab primitives)
  #:use-module (moelab tensor)
  #:use-module ((oop goops) #:select (define-method))
  #:use-module (ice-9 iconv)
  #:use-module (ice-9 format)
  #:use-module (srfi srfi-1)
  #:re-export (<tokenizer> <dataset>)
  #:export (make-tokenizer tokenizer? tokenizer-kind tokenizer-vocab-size tokenizer-end-id
            tokenizer-encode tokenizer-decode train-tokenizer
            read-token-file write-token-file
            make-text-dataset dataset? dataset-next-batch dataset-domains dataset-vocab-size
            dataset-seq-len dataset-tokenizer dataset-info
            dataset-state dataset-load-state! dataset-reset!))

;;; A moelab-error from WHO with a message formatted here (the thrown message
;;; is itself a format string: its tildes are doubled).
(define (data-error who fmt . args)
  (let ((text (apply format #f fmt args)))
    (throw 'moelab-error who
           (string-join (string-split text #\~) "~~")
           '() '(arg))))

;;; ---- tokenizers ---------------------------------------------------------------

(define (make-tokenizer spec)
  "A tokenizer from SPEC:
@table @code
@item 'bytes
the UTF-8 bytes of the text: vocabulary 256, end of document 0 (NUL)
@item '(sentencepiece . \"FILE.model\")
a SentencePiece model file (also: the file name alone, as a string)
@item '(ids . V) or '(ids V END)
no text form: token ids below V, END ending documents (for token files)
@end table
A tokenizer given as SPEC is returned as it is."
  (cond ((tokenizer? spec) spec)
        ((eq? spec 'bytes) (%make-tokenizer 'bytes #f #f))
        ((string? spec) (%make-tokenizer 'sentencepiece spec #f))
        ((and (pair? spec) (eq? (car spec) 'sentencepiece) (string? (cdr spec)))
         (%make-tokenizer 'sentencepiece (cdr spec) #f))
        ((and (pair? spec) (eq? (car spec) 'ids) (integer? (cdr spec)))
         (%make-tokenizer 'ids (cdr spec) #f))
        ((and (pair? spec) (eq? (car spec) 'ids) (= (length spec) 3))
         (%make-tokenizer 'ids (cadr spec) (caddr spec)))
        (else (data-error "make-tokenizer"
                          "unknown tokenizer ~s (expected bytes, (sentencepiece . FILE) or (ids . V))" spec))))

(define (tokenizer? obj)
  "True when OBJ is a tokenizer (from make-tokenizer or train-tokenizer)."
  (%tokenizer? obj))

(define (tokenizer-kind tok)
  "The kind of the tokenizer TOK: 'bytes, 'sentencepiece or 'ids."
  (assq-ref (%tokenizer-info tok) 'kind))

(define (tokenizer-vocab-size tok)
  "The number of distinct token ids of TOK (256 for 'bytes)."
  (assq-ref (%tokenizer-info tok) 'vocab-size))

(define (tokenizer-end-id tok)
  "The token that ends each document in a packed stream: 0 for 'bytes, the
id of </s> for a SentencePiece model; #f when there is none."
  (assq-ref (%tokenizer-info tok) 'end-id))

(define (tokenizer-encode tok text)
  "The token ids of TEXT (a string, or a bytevector of UTF-8) under TOK, as a
list of exact integers."
  (%tokenizer-encode tok text))

(define (ids->list ids)
  (cond ((list? ids) ids)
        ((vector? ids) (vector->list ids))
        ((tensor? ids) (tensor-ids ids))
        (else (scm-error 'wrong-type-arg "tokenizer-decode"
                         "expected a list, vector or tensor of token ids, got ~s" (list ids) (list ids)))))

(define (tensor-ids t)
  ;; a tensor's values as one flat list of exact integers, whatever its shape
  (let flat ((x (tensor->list t)))
    (cond ((null? x) '())
          ((pair? x) (append-map flat x))
          (else (list (inexact->exact x))))))

(define (tokenizer-decode tok ids)
  "The text of IDS (a list, vector or tensor of token ids) under TOK, as a
string. Bytes that are not valid UTF-8 (a sequence cut inside a character)
become U+FFFD. An id outside the vocabulary is a moelab-error."
  (bytevector->string (%tokenizer-decode tok (ids->list ids)) "UTF-8" 'substitute))

(define* (train-tokenizer #:key sources model (vocab-size 4096) (model-type 'bpe)
                          (max-sentences 0) (options '()))
  "Train a SentencePiece model on text and return it as a tokenizer.

SOURCES is a list of path specs (files, directories, globs such as
@code{\"data/corpus/*/train\"}); every line of every document is a training
sentence (long lines are cut in pieces). MODEL is the file the model is
written to. VOCAB-SIZE is the number of pieces, MODEL-TYPE 'bpe (default),
'unigram, 'char or 'word, MAX-SENTENCES a cap on the lines used (0: all).
The defaults make a lossless tokenizer for prose and code: no normalisation,
whitespace kept, byte pieces for unseen characters, digits split. OPTIONS,
an alist of further SentencePiece trainer options (e.g.
@code{'((character_coverage . 0.9995))}), overrides them."
  (unless (and (list? sources) (pair? sources))
    (data-error "train-tokenizer" "#:sources must be a non-empty list of paths, got ~s" sources))
  (unless (string? model)
    (data-error "train-tokenizer" "#:model must be the model file to write, got ~s" model))
  (%train-tokenizer model sources vocab-size model-type max-sentences options))

(define (tokenizer->string tok)
  (let ((info (%tokenizer-info tok)))
    (format #f "#<tokenizer ~a V=~a~a>" (assq-ref info 'kind) (assq-ref info 'vocab-size)
            (if (assq-ref info 'model) (string-append " " (assq-ref info 'model)) ""))))

(define-method (write (tok <tokenizer>) port) (display (tokenizer->string tok) port))
(define-method (display (tok <tokenizer>) port) (display (tokenizer->string tok) port))

;;; ---- token files -------------------------------------------------------------------

(define* (read-token-file path #:key (format #f))
  "The tokens of the token file PATH as an i64 tensor [N]. FORMAT is 'bin
(llm.c's shard: a 256-int32 header with magic 20240520 and u16 tokens, or
magic 20240801 and u32 tokens), 'u16 or 'u32 (raw little-endian); #f (the
default) goes by the file name: .bin, .u16, .u32. A corrupt file (bad magic
or version, truncated, a header count the file does not hold) is a
moelab-error naming the file."
  (%read-token-file path format))

(define* (write-token-file path tokens #:key (format #f))
  "Write TOKENS (a list or an integer tensor of ids) to PATH as a token file:
FORMAT 'bin (llm.c, u16 tokens), 'bin32 (llm.c, u32 tokens), 'u16 or 'u32; #f
goes by the file name (.bin, .u16, .u32). A token too wide for the format
is refused before anything is written."
  (%write-token-file path
                     (if (tensor? tokens) (tensor-ids tokens) tokens)
                     format))

;;; ---- datasets ---------------------------------------------------------------------------

(define (domain-name d) (if (symbol? (car d)) (car d) (string->symbol (car d))))

(define (weights-list who domains weights)
  ;; #f, a list of numbers in domain order, or an alist (name . weight)
  (cond ((not weights) #f)
        ((and (list? weights) (every number? weights)) weights)
        ((and (list? weights) (every pair? weights))
         (map (lambda (d)
                (let ((w (or (assq-ref weights (domain-name d))
                             (assoc-ref weights (symbol->string (domain-name d))))))
                  (unless w
                    (data-error who "#:weights gives no weight for domain ~a" (domain-name d)))
                  w))
              domains))
        (else (data-error who "#:weights must be #f, a list of numbers or an alist (domain . weight), got ~s"
                          weights))))

(define* (make-text-dataset #:key domains (tokenizer 'bytes) (seq-len 256) (split 'train)
                            (batching 'shuffled) (weights #f) (seed 0) (shuffle? #t))
  "A dataset of sequences for next-token prediction from named text domains.

DOMAINS is a list of (NAME . PATH) or (NAME PATH …): NAME a symbol, each
PATH a file, a directory (read recursively, in byte order, hidden entries
skipped) or a glob. A PATH that is a directory holding an entry named after
SPLIT ('train or 'val) reads that entry: data/corpus/bible serves both
splits. Text files hold documents separated by NUL bytes; files named .bin,
.u16, .u32 are token files, read as they are.

TOKENIZER is 'bytes (default), '(sentencepiece . FILE) or any spec
make-tokenizer takes, or a tokenizer. Each document is tokenized and
followed by the tokenizer's end-of-document token; domain d's stream of N_d
tokens gives (N_d − 1) / SEQ-LEN sequences of SEQ-LEN + 1 tokens (inputs and
next-token targets).

BATCHING 'shuffled draws each row's domain from the mixture; 'single-domain
draws one domain per batch and fills it from there. The mixture is WEIGHTS
(a list in domain order or an alist (NAME . weight), normalised), or
proportional to each domain's token count when #f. Within a domain the
sequences come in a fresh seeded order every epoch (in file order when
SHUFFLE? is #f). SEED fixes everything.

An empty domain, a missing path, a glob without matches, a corrupt token
file or a domain shorter than one sequence is a moelab-error naming the
domain and the file."
  (unless (and (list? domains) (pair? domains) (every pair? domains))
    (data-error "make-text-dataset" "#:domains must be a non-empty list of (name . path), got ~s"
                domains))
  (%make-text-dataset domains (make-tokenizer tokenizer) seq-len split batching
                      (weights-list "make-text-dataset" domains weights) seed shuffle?))

(define (dataset? obj)
  "True when OBJ is a dataset (from make-text-dataset)."
  (%dataset? obj))

(define* (dataset-next-batch ds batch-size #:key (domain #f))
  "The next batch of DS as three values: tokens and targets, i64 tensors
[BATCH-SIZE S] with targets[b][s] the token that follows tokens[b][s], and
the list of the domain (a symbol) of each row. DOMAIN (a domain name) takes
every row from that domain instead, without a mixture draw: per-domain
evaluation."
  (apply values (%dataset-next-batch ds batch-size domain)))

(define (dataset-info ds)
  "DS's settings and sizes as an alist: vocab-size, seq-len, split, batching
and domains, an alist from each domain to its files, documents, tokens,
sequences and mixture probability."
  (%dataset-info ds))

(define (dataset-domains ds)
  "The domain names of DS (symbols), in the order they were given."
  (map car (assq-ref (%dataset-info ds) 'domains)))

(define (dataset-vocab-size ds)
  "The vocabulary size of DS's tokenizer: token ids are below it."
  (assq-ref (%dataset-info ds) 'vocab-size))

(define (dataset-seq-len ds)
  "The sequence length S of DS's batches."
  (assq-ref (%dataset-info ds) 'seq-len))

(define (dataset-tokenizer ds)
  "The tokenizer DS was made with."
  (%dataset-tokenizer ds))

(define (dataset-state ds)
  "The sampler state of DS as a plain alist (symbols, integers and nested
alists, ready for JSON):
@example
((seed . 0) (draws . 17) (seq-len . 256)
 (domains (bible (epoch . 0) (cursor . 9) (sequences . 11055)) …))
@end example
dataset-load-state! with it resumes exactly where DS is now."
  (%dataset-state ds))

(define (dataset-load-state! ds state)
  "Restore STATE (from dataset-state of a dataset made with the same domains,
files and sequence length) into DS, so the batches continue exactly as they
did after the state was taken. Keys may be symbols or strings (after a trip
through JSON). A state of another dataset (different sequence length,
domains or domain sizes) is a moelab-error and leaves DS unchanged."
  (%dataset-load-state! ds state))

(define (dataset-reset! ds)
  "Put DS back to its first batch (the state of a fresh dataset)."
  (%dataset-reset! ds))

(define (dataset->string ds)
  (let ((info (%dataset-info ds)))
    (format #f "#<dataset ~a ~a S=~a V=~a~{ ~a~}>"
            (assq-ref info 'split) (assq-ref info 'batching) (assq-ref info 'seq-len)
            (assq-ref info 'vocab-size)
            (map (lambda (d) (format #f "~a:~,2f" (car d) (assq-ref (cdr d) 'probability)))
                 (assq-ref info 'domains)))))

(define-method (write (ds <dataset>) port) (display (dataset->string ds) port))
(define-method (display (ds <dataset>) port) (display (dataset->string ds) port))
