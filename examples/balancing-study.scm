;;; balancing-study.scm — where the load-balancing signal is computed, at toy
;;; scale: micro-batch against global-batch balancing loss ("Demons in the
;;; Detail", Qwen 2025) and the auxiliary-loss-free expert bias (DeepSeek
;;; 2024), on the six-domain corpus (data/corpus, scripts/make-corpus).
;;;
;;;   moelab examples/balancing-study.scm --quick          every arm, 1 seed, 2-3 min
;;;   moelab examples/balancing-study.scm                  the full study, 3 seeds
;;;   moelab examples/balancing-study.scm --seeds 1 --steps 300 --out runs/study
;;;   moelab examples/balancing-study.scm --arms micro-batch,global-batch
;;;
;;; Every arm trains the same model from the same seed on the same data in
;;; the same order for the same number of tokens; only the balancing
;;; differs. Each micro-batch holds one domain ('single-domain batching, the
;;; setting of the Qwen paper); two control arms draw every row's domain at
;;; random ('shuffled). Each run writes OUT/ARM/seedN/metrics.jsonl (the
;;; trainer's lines, then the final evaluation) and study.jsonl (the data
;;; hash of every step and the measures); OUT/summary.txt holds the tables
;;; printed at the end and OUT/summary.scm the same numbers as Scheme data.
;;;
;;; Loading this file defines the study's procedures without running it
;;; (the notebook notebooks/demons-in-the-detail.ipynb does that); it runs
;;; when it is the program moelab was given.
;;; tested with arguments by tests/scheme/balancing-study.sh

(use-modules (moelab)
             (srfi srfi-1)
             (ice-9 format)
             (ice-9 match)
             (ice-9 popen)
             (ice-9 rdelim)
             (ice-9 textual-ports))

;;; ---- sizes ---------------------------------------------------------------------

;;; The quick size is a smoke test of the whole study (every arm, every
;;; measure) that fits CI; the full size is what the results come from.
(define study-sizes
  '((quick (layers . 2) (hidden . 32) (heads . 2) (ffn . 32) (experts . 8) (top-k . 2)
           (seq-len . 32) (batch-size . 2) (grad-accum . 6) (steps . 400)
           (eval-batches . 2) (lr . 3e-3) (bias-rate . 5e-3) (seeds . 1))
    (full (layers . 2) (hidden . 64) (heads . 4) (ffn . 64) (experts . 8) (top-k . 2)
          (seq-len . 64) (batch-size . 4) (grad-accum . 6) (steps . 1500)
          (eval-batches . 8) (lr . 3e-3) (bias-rate . 1e-3) (seeds . 3))))

(define (size-ref size key) (assq-ref size key))

;;; ---- arms ----------------------------------------------------------------------

;;; (name batching mesh router-options): the same model with each balancing.
(define study-arms
  `((none single-domain #f (#:losses ()))
    (micro-batch single-domain #f (#:losses ((micro-batch . 1e-2))))
    (global-batch single-domain #f (#:losses ((global-batch . 1e-2))))
    (global-batch-dp2 single-domain ((dp . 2)) (#:losses ((global-batch . 1e-2))))
    (sequence single-domain #f (#:losses ((sequence . 1e-2))))
    (bias-centred single-domain #f (#:losses () #:expert-bias? #t #:bias-center? #t))
    (bias single-domain #f (#:losses () #:expert-bias? #t #:bias-center? #f))
    (micro-batch-shuffled shuffled #f (#:losses ((micro-batch . 1e-2))))
    (global-batch-shuffled shuffled #f (#:losses ((global-batch . 1e-2))))))

(define (arm-name arm) (car arm))
(define (arm-batching arm) (cadr arm))
(define (arm-mesh arm) (caddr arm))
(define (arm-router-options arm size)
  (let ((opts (cadddr arm)))
    (append `(#:score softmax ,@opts)
            (if (memq #:expert-bias? opts) `(#:bias-rate ,(size-ref size 'bias-rate)) '()))))

(define study-domains '(bible fortune c scheme python info))

(define (corpus-domains corpus)
  (map (lambda (d) (cons d (string-append corpus "/" (symbol->string d)))) study-domains))

;;; ---- small helpers -------------------------------------------------------------

(define (mean xs) (if (null? xs) +nan.0 (/ (apply + xs) (length xs))))

(define (std xs)
  (if (< (length xs) 2)
      0.0
      (let ((m (mean xs)))
        (sqrt (/ (apply + (map (lambda (x) (* (- x m) (- x m))) xs)) (- (length xs) 1))))))

(define (last-fifth xs)
  (let ((n (length xs)))
    (list-tail xs (- n (max 1 (quotient n 5))))))

;; The element-wise mean of equal-length lists.
(define (column-means rows) (map (lambda (i) (mean (map (lambda (r) (list-ref r i)) rows)))
                                 (iota (length (car rows)))))

;; FNV-1a over a list of non-negative integers, 32 bits.
(define (fnv-1a ints seed)
  (fold (lambda (x h) (modulo (* (logxor h (logand x #xffffffff)) 16777619) 4294967296))
        seed ints))

(define (tensor-ints t) (map inexact->exact (tensor->list (flatten t))))

;;; The hash of the tokens and targets the step about to run will draw:
;;; PROBE, a twin of the trainer's dataset, is set to the trainer's
;;; sampler state and draws the same micro-batches.
(define (step-data-hash probe ds n b)
  (dataset-load-state! probe (dataset-state ds))
  (let loop ((i 0) (h 2166136261))
    (if (= i n)
        h
        (call-with-values (lambda () (dataset-next-batch probe b))
          (lambda (x y domains)
            (let ((h (fnv-1a (tensor-ints y) (fnv-1a (tensor-ints x) h))))
              (for-each tensor-free! (list x y))
              (loop (+ i 1) h)))))))

;; MaxVio of a load vector: the busiest expert over the mean, minus 1.
(define (load-max-vio load)
  (let ((total (apply + load)))
    (if (zero? total) +nan.0 (exact->inexact (- (/ (apply max load) (/ total (length load))) 1)))))

;;; ---- specialisation --------------------------------------------------------------

;;; SHARES: ((domain layer-shares …) …) with each layer's E shares summing
;;; to 1, as trainer-evaluate returns them under expert-share.

;; Per layer: the mean over domains of the K largest shares (K/E when the
;; domain spreads evenly, 1 when it keeps to K experts).
(define (top-k-share shares k)
  (let ((layers (length (cdar shares))))
    (map (lambda (l)
           (mean (map (lambda (d)
                        (apply + (list-head (sort (list-ref (cdr d) l) >) k)))
                      shares)))
         (iota layers))))

;; Per layer: the mutual information (nats) between the domain, uniform over
;; the domains (each is evaluated on as many tokens), and the expert of a
;; routed slot: 0 when every domain uses the experts alike.
(define (domain-expert-mi shares)
  (let ((layers (length (cdar shares))) (d (length shares)))
    (map (lambda (l)
           (let* ((rows (map (lambda (s) (list-ref (cdr s) l)) shares))
                  (marginal (column-means rows)))
             (apply + (map (lambda (row)
                             (apply + (map (lambda (p q) (if (and (positive? p) (positive? q))
                                                             (* (/ 1.0 d) p (log (/ p q)))
                                                             0.0))
                                           row marginal)))
                           rows))))
         (iota layers))))

;; Per layer: MaxVio of the load over the whole validation set (every
;; domain's batches together): the paper's MaxVio_global.
(define (validation-max-vio shares)
  (let ((layers (length (cdar shares))))
    (map (lambda (l) (load-max-vio (column-means (map (lambda (s) (list-ref (cdr s) l)) shares))))
         (iota layers))))

;;; ---- one run ---------------------------------------------------------------------

(define (make-run-model size arm seed)
  (make-moe-transformer #:vocab 256 #:layers (size-ref size 'layers) #:hidden (size-ref size 'hidden)
                        #:heads (size-ref size 'heads) #:ffn (size-ref size 'ffn)
                        #:experts (size-ref size 'experts) #:top-k (size-ref size 'top-k)
                        #:max-seq (size-ref size 'seq-len)
                        #:router-options (arm-router-options arm size)
                        #:seed seed))

(define (make-run-dataset corpus size arm seed split)
  (make-text-dataset #:domains (corpus-domains corpus) #:seq-len (size-ref size 'seq-len)
                     #:batching (arm-batching arm) #:split split #:seed seed))

;;; Train ARM with SEED on every rank of its mesh (or in this process) and
;;; return rank 0's record: the per-step hashes, counts and balance
;;; numbers, the final evaluation and the measures.
(define (run-arm-here corpus size arm seed dir)
  (let* ((steps (size-ref size 'steps))
         (n (size-ref size 'grad-accum)) (b (size-ref size 'batch-size))
         (m (make-run-model size arm seed))
         (ds (make-run-dataset corpus size arm seed 'train))
         (probe (make-run-dataset corpus size arm seed 'train))
         (tr (make-trainer #:model m #:optimizer (make-adamw (model-parameters m) #:lr (size-ref size 'lr)
                                                             #:weight-decay 0.1)
                           #:dataset ds
                           #:val-dataset (make-run-dataset corpus size arm seed 'val)
                           #:batch-size b #:grad-accum n
                           #:schedule (make-lr-schedule 'cosine #:lr (size-ref size 'lr)
                                                        #:warmup (max 1 (quotient steps 10))
                                                        #:total steps #:min-lr (/ (size-ref size 'lr) 10))
                           #:clip 1.0 #:seed seed
                           #:log (string-append dir "/metrics.jsonl")
                           #:mesh (arm-mesh arm)
                           #:config `((study . ,(symbol->string (arm-name arm)))
                                      (size . ,size)))))
    (let loop ((i 0) (rows '()))
      (if (< i steps)
          (let* ((hash (step-data-hash probe (trainer-dataset tr) n b))
                 (metrics (trainer-step! tr))
                 ;; the last micro-batch alone (this rank's rows of it)
                 (micro (map (lambda (r) (load-max-vio (assq-ref r 'tokens-per-expert)))
                             (model-routing (trainer-model tr)))))
            (loop (+ i 1)
                  (cons `((step . ,(assq-ref metrics 'step)) (hash . ,hash)
                          (loss . ,(assq-ref metrics 'loss))
                          (tokens-per-expert . ,(assq-ref metrics 'tokens_per_expert))
                          (max-vio-micro . ,micro)
                          (max-vio . ,(assq-ref metrics 'max_vio))
                          (max-vio-global . ,(assq-ref metrics 'max_vio_global))
                          (entropy . ,(assq-ref metrics 'entropy))
                          (dead-fraction . ,(assq-ref metrics 'dead_fraction))
                          (expert-bias . ,(assq-ref metrics 'expert_bias)))
                        rows)))
          (let ((ev (trainer-evaluate tr)))
            (trainer-close! tr)
            (and (zero? (current-rank))
                 (run-record arm seed size (reverse rows) ev)))))))

;; The measures of one run from its step rows and final evaluation EV.
(define (run-record arm seed size rows ev)
  (let* ((tail (last-fifth rows))
         (per-layer (lambda (key) (column-means (map (lambda (r) (assq-ref r key)) tail))))
         (shares (assq-ref ev 'expert-share))
         (bias (assq-ref (last rows) 'expert-bias)))
    `((arm . ,(arm-name arm)) (seed . ,seed)
      (loss . ,(assq-ref ev 'loss))
      (max-vio-micro . ,(per-layer 'max-vio-micro))
      (max-vio-batch . ,(per-layer 'max-vio))
      (max-vio-global . ,(per-layer 'max-vio-global))
      (max-vio-val . ,(validation-max-vio shares))
      (dead . ,(per-layer 'dead-fraction))
      (entropy . ,(per-layer 'entropy))
      (top-k-share . ,(top-k-share shares (size-ref size 'top-k)))
      (mi . ,(domain-expert-mi shares))
      (expert-share . ,shares)
      (bias-mean . ,(and bias (map mean bias)))
      (hashes . ,(map (lambda (r) (assq-ref r 'hash)) rows))
      (counts . ,(map (lambda (r) (assq-ref r 'tokens-per-expert)) rows))
      (train-loss . ,(map (lambda (r) (assq-ref r 'loss)) rows))
      (max-vio-curve . ,(map (lambda (r) (mean (assq-ref r 'max-vio))) rows)))))

(define* (run-arm arm seed #:key (size (assq-ref study-sizes 'quick)) (corpus "data/corpus")
                  (out "runs/study") (port (current-output-port)))
  "Train ARM (an entry of study-arms) with SEED at SIZE and return its record."
  (let ((dir (format #f "~a/~a/seed~a" out (arm-name arm) seed))
        (t0 (get-internal-real-time)))
    (let ((record
           (match (arm-mesh arm)
             (#f (run-arm-here corpus size arm seed dir))
             (mesh (find identity
                         (with-ranks (apply * (map cdr mesh)) #:mesh mesh
                           (lambda (rank) (run-arm-here corpus size arm seed dir))))))))
      (let ((log (make-metrics-log (string-append dir "/study.jsonl")
                                   #:header `((config (arm . ,(arm-name arm)) (size . ,size)) (seed . ,seed)))))
        (for-each (lambda (step hash) (metrics-log-write! log `((step . ,step) (data_hash . ,hash))))
                  (iota (length (assq-ref record 'hashes)) 1) (assq-ref record 'hashes))
        (metrics-log-write! log (map (lambda (key) (cons key (assq-ref record key)))
                                     '(arm loss max-vio-micro max-vio-batch max-vio-global max-vio-val
                                       dead entropy top-k-share mi expert-share bias-mean)))
        (metrics-log-close! log))
      (format port "~a seed ~a: ~,1f s, validation loss ~,3f~%" (arm-name arm) seed
              (/ (- (get-internal-real-time) t0) internal-time-units-per-second 1.0)
              (assq-ref (assq-ref record 'loss) 'mean))
      (force-output port)
      record)))

;;; ---- the summary -----------------------------------------------------------------

;;; The measures of the table: (key label per-layer?).
(define summary-measures
  '((max-vio-micro "MaxVio micro" #f) (max-vio-batch "MaxVio batch" #f)
    (max-vio-global "MaxVio glob" #f) (max-vio-val "MaxVio val" #f)
    (dead "dead" #f) (entropy "entropy" #f)
    (top-k-share "topK share" #t) (mi "MI(dom;exp)" #t)))

;; Mean ± std over the seeds of one number per record.
(define (spread values) (cons (mean values) (std values)))

(define (summarise records)
  "The records of a study (run-arm's) grouped by arm, each number as (mean
. std) over the seeds: ((arm (seeds . N) (loss (domain mean . std) …)
(measure (mean . std) …) …) …), per-layer measures keep one pair per layer
and the others are averaged over the layers first."
  (let ((arms (delete-duplicates (map (lambda (r) (assq-ref r 'arm)) records))))
    (map (lambda (arm)
           (let ((rs (filter (lambda (r) (eq? (assq-ref r 'arm) arm)) records)))
             `(,arm
               (seeds . ,(length rs))
               (loss ,@(map (lambda (d) (cons d (spread (map (lambda (r) (assq-ref (assq-ref r 'loss) d)) rs))))
                            (map car (assq-ref (car rs) 'loss))))
               ,@(map (match-lambda
                        ((key label per-layer?)
                         (cons key
                               (if per-layer?
                                   (map (lambda (l) (spread (map (lambda (r) (list-ref (assq-ref r key) l)) rs)))
                                        (iota (length (assq-ref (car rs) key))))
                                   (list (spread (map (lambda (r) (mean (assq-ref r key))) rs)))))))
                      summary-measures))))
         arms)))

(define (cell pair)
  (if (zero? (cdr pair))
      (format #f "~,3f" (car pair))
      (format #f "~,3f±~,3f" (car pair) (cdr pair))))

(define (print-table port header rows)
  (let ((widths (apply map (lambda column (apply max (map string-length column))) header rows)))
    (define (line cells)
      (display (string-join (map (lambda (c w) (string-pad-right c w)) cells widths) "  ") port)
      (newline port))
    (line header)
    (line (map (lambda (w) (make-string w #\-)) widths))
    (for-each line rows)))

(define* (print-summary summary #:key (port (current-output-port)))
  "Print SUMMARY (summarise's) as two tables: validation loss per domain,
then the balance and specialisation measures (per-layer ones as L0/L1/…)."
  (let ((domains (map car (assq-ref (cdar summary) 'loss))))
    (format port "Validation loss (nats/byte; mean ± std over seeds):~%")
    (print-table port (cons "arm" (map symbol->string domains))
                 (map (lambda (a) (cons (symbol->string (car a))
                                        (map (lambda (d) (cell (assq-ref (assq-ref (cdr a) 'loss) d))) domains)))
                      summary))
    (newline port)
    (format port "Balance (last 20% of steps; val = whole validation set) and specialisation (per layer):~%")
    (print-table port (cons "arm" (map (lambda (m) (cadr m)) summary-measures))
                 (map (lambda (a)
                        (cons (symbol->string (car a))
                              (map (lambda (m) (string-join (map cell (assq-ref (cdr a) (car m))) " "))
                                   summary-measures)))
                      summary))))

;;; ---- invariants ------------------------------------------------------------------

(define (records-of records arm) (filter (lambda (r) (eq? (assq-ref r 'arm) arm)) records))

(define (study-checks records)
  "The invariants of a study's RECORDS, as a list of (description . ok?):
every arm drew the same tokens at every step, the buffer and dp=2 forms of
the global-batch loss counted the same tokens per expert, the centred bias
kept a zero mean, and no balanced arm ended less balanced than the arm
without balancing."
  (let* ((seeds (delete-duplicates (map (lambda (r) (assq-ref r 'seed)) records)))
         (by-seed (lambda (seed rs) (find (lambda (r) (= (assq-ref r 'seed) seed)) rs)))
         (vio (lambda (r) (mean (assq-ref r 'max-vio-val))))
         (checks '()))
    (define (check! text ok?) (set! checks (cons (cons text ok?) checks)))
    (for-each
     (lambda (seed)
       (let* ((rs (filter (lambda (r) (= (assq-ref r 'seed) seed)) records))
              (single (filter (lambda (r) (not (string-suffix? "-shuffled" (symbol->string (assq-ref r 'arm))))) rs))
              (shuffled (lset-difference eq? rs single)))
         (for-each (lambda (group what)
                     (when (pair? group)
                       (check! (format #f "seed ~a: the ~a arms drew identical tokens at each of the ~a steps"
                                       seed what (length (assq-ref (car group) 'hashes)))
                               (every (lambda (r) (equal? (assq-ref r 'hashes) (assq-ref (car group) 'hashes)))
                                      group))))
                   (list single shuffled) '("single-domain" "shuffled"))
         (let ((buffer (by-seed seed (records-of records 'global-batch)))
               (dp (by-seed seed (records-of records 'global-batch-dp2))))
           (when (and buffer dp)
             (let* ((a (assq-ref buffer 'counts)) (b (assq-ref dp 'counts))
                    (same (count equal? a b)))
               (check! (format #f "seed ~a: global-batch buffer and dp=2 forms counted the same tokens per expert at step 1 (and at ~a of ~a steps)"
                               seed same (length a))
                       (equal? (car a) (car b))))))
         (let ((centred (by-seed seed (records-of records 'bias-centred))))
           (when centred
             (let ((m (apply max (map abs (assq-ref centred 'bias-mean)))))
               (check! (format #f "seed ~a: the centred expert bias has mean ~,1e (zero)" seed m)
                       (< m 1e-6)))))
         (let ((none (by-seed seed (records-of records 'none))))
           (when none
             (for-each
              (lambda (r)
                (unless (memq (assq-ref r 'arm) '(none))
                  (check! (format #f "seed ~a: MaxVio (validation) without balancing ~,3f >= ~a's ~,3f"
                                  seed (vio none) (assq-ref r 'arm) (vio r))
                          (>= (vio none) (vio r)))))
              rs)))))
     seeds)
    (reverse checks)))

;;; ---- the study -------------------------------------------------------------------

;; One line about SIZE for the tables.
(define (size-line size seeds)
  (format #f "~a steps × ~a micro-batches × ~a sequences × ~a tokens (~a layers, hidden ~a, ~a experts, top-~a), ~a seed~:p"
          (size-ref size 'steps) (size-ref size 'grad-accum) (size-ref size 'batch-size)
          (size-ref size 'seq-len) (size-ref size 'layers) (size-ref size 'hidden)
          (size-ref size 'experts) (size-ref size 'top-k) seeds))

(define* (report-study records size #:key (out "runs/study") (port (current-output-port)))
  "Summarise RECORDS (run-arm's or load-study's) run at SIZE: write
OUT/summary.txt (the tables and the checks) and OUT/summary.scm (the size,
the summary, the checks and the runs without their per-step counts and
hashes, as one Scheme datum), print the text and return (records summary
checks)."
  (let* ((seeds (length (delete-duplicates (map (lambda (r) (assq-ref r 'seed)) records))))
         (summary (summarise records))
         (checks (study-checks records))
         (text (call-with-output-string
                 (lambda (p)
                   (format p "study: ~a~%~%" (size-line size seeds))
                   (print-summary summary #:port p)
                   (newline p)
                   (for-each (lambda (c) (format p "~a ~a~%" (if (cdr c) "ok  " "FAIL") (car c))) checks)))))
    (mkdir-p out)
    (call-with-output-file (string-append out "/summary.txt") (lambda (p) (display text p)))
    (call-with-output-file (string-append out "/summary.scm")
      (lambda (p)
        (write `((size . ,size) (seeds . ,seeds) (summary . ,summary) (checks . ,checks)
                 (runs . ,(map (lambda (r) (filter (lambda (e) (not (memq (car e) '(counts hashes)))) r))
                               records)))
               p)
        (newline p)))
    (newline port)
    (display text port)
    (list records summary checks)))

(define* (run-study #:key (size-name 'quick) (seeds #f) (first-seed 0) (steps #f) (arms #f)
                    (corpus "data/corpus") (out "runs/study") (port (current-output-port)))
  "Run the arms (names; default every arm of study-arms) over SEEDS seeds
(default the size's) from FIRST-SEED on, at the size SIZE-NAME ('quick or
'full; STEPS replaces its steps), then report-study into OUT."
  (let* ((size (let ((s (assq-ref study-sizes size-name)))
                 (if steps (cons (cons 'steps steps) (alist-delete 'steps s)) s)))
         (arm-list (map (lambda (a)
                          (or (assq a study-arms)
                              (error "balancing-study: no such arm" a (map arm-name study-arms))))
                        (or arms (map arm-name study-arms))))
         (records (append-map (lambda (seed)
                                (map (lambda (arm) (run-arm arm seed #:size size #:corpus corpus #:out out
                                                            #:port port))
                                     arm-list))
                              (iota (or seeds (size-ref size 'seeds)) first-seed))))
    (report-study records size #:out out #:port port)))

;;; ---- reading runs back -----------------------------------------------------------

;;; The record of the finished run in DIR (OUT/ARM/seedN), rebuilt from its
;;; study.jsonl and metrics.jsonl, or #f when the run did not finish.
(define (load-run dir)
  (let ((study (string-append dir "/study.jsonl")) (metrics (string-append dir "/metrics.jsonl")))
    (and (file-exists? study) (file-exists? metrics)
         (let* ((lines (read-jsonl study))
                (final (last lines)))
           (and (assq 'mi final)
                (let ((steps (filter (lambda (l) (assq 'tokens_per_expert l)) (read-jsonl metrics)))
                      (header (car lines)))
                  (append
                   `((arm . ,(string->symbol (assq-ref final 'arm)))
                     (seed . ,(assq-ref header 'seed))
                     ;; the steps the run took (the header's size may predate --steps)
                     (size . ,(cons (cons 'steps (length steps))
                                    (alist-delete 'steps (assq-ref (assq-ref header 'config) 'size)))))
                   (filter (lambda (e) (not (eq? (car e) 'arm))) final)
                   `((hashes . ,(filter-map (lambda (l) (assq-ref l 'data_hash)) lines))
                     (counts . ,(map (lambda (l) (assq-ref l 'tokens_per_expert)) steps))
                     (train-loss . ,(map (lambda (l) (assq-ref l 'loss)) steps))
                     (max-vio-curve . ,(map (lambda (l) (mean (assq-ref l 'max_vio))) steps))))))))))

(define (load-study out)
  "The records of every finished run under OUT (OUT/ARM/seedN, arms in the
order of study-arms, then by seed), read back from their JSON Lines files."
  (append-map
   (lambda (arm)
     (let ((dir (format #f "~a/~a" out (arm-name arm))))
       (if (file-exists? dir)
           (filter-map (lambda (seed) (load-run (format #f "~a/seed~a" dir seed)))
                       (sort (filter-map (lambda (name)
                                           (and (string-prefix? "seed" name)
                                                (string->number (substring name 4))))
                                         (directory-entries dir))
                             <))
           '())))
   study-arms))

(define (directory-entries dir)
  (let ((d (opendir dir)))
    (let loop ((acc '()))
      (let ((e (readdir d)))
        (if (eof-object? e)
            (begin (closedir d) acc)
            (loop (if (member e '("." "..")) acc (cons e acc))))))))

(define (mkdir-p dir)
  (unless (or (string-null? dir) (file-exists? dir))
    (mkdir-p (dirname dir))
    (mkdir dir)))

;;; ---- figures ---------------------------------------------------------------------

;; The moving average of XS over WINDOW points, as (step . value) pairs from 1.
(define (smoothed xs window)
  (let loop ((i 0) (rest xs) (acc '()))
    (if (null? rest)
        (reverse acc)
        (let ((w (list-head rest (min window (length rest)))))
          (loop (+ i 1) (cdr rest) (cons (cons (+ i (length w)) (mean w)) acc))))))

;; The arms that the heatmaps put side by side.
(define heatmap-arms '(none micro-batch global-batch bias-centred))

;; The first letter of a record's arm: the heatmaps' column prefix.
(define (initial r) (substring (symbol->string (assq-ref r 'arm)) 0 1))

(define* (study-figures records #:key (seed (assq-ref (car records) 'seed)))
  "The study's figures from RECORDS (those of SEED, default the first
record's), as an alist name -> figure: loss (training loss per arm),
max-vio (the step's MaxVio, mean over layers), mi (domain-expert mutual
information per arm and layer, mean over seeds, as a table) and heatmap-L for each MoE
layer L (each domain's expert shares under no balancing, micro-batch,
global-batch and the centred bias, side by side)."
  (let* ((rs (filter (lambda (r) (= (assq-ref r 'seed) seed)) records))
         (steps (length (assq-ref (car rs) 'train-loss)))
         (window (max 1 (quotient steps 25)))
         (curves (lambda (key)
                   (map (lambda (r) (cons (symbol->string (assq-ref r 'arm)) (smoothed (assq-ref r key) window)))
                        rs)))
         (summary (summarise records))
         (layers (length (assq-ref (car rs) 'mi)))
         (sides (filter-map (lambda (a) (find (lambda (r) (eq? (assq-ref r 'arm) a)) rs)) heatmap-arms))
         (domains (map car (assq-ref (car sides) 'expert-share))))
    `((loss . ,(plot-lines (curves 'train-loss) #:title (format #f "training loss (seed ~a, moving mean of ~a steps)" seed window)
                           #:xlabel "step" #:ylabel "nats/byte"))
      (max-vio . ,(plot-lines (curves 'max-vio-curve)
                              #:title (format #f "MaxVio of the step's batch, mean over layers (seed ~a)" seed)
                              #:xlabel "step" #:ylabel "MaxVio" #:log-y? #t))
      (mi . ,(plot-heatmap (map (lambda (a) (map car (assq-ref (cdr a) 'mi))) summary)
                           #:rows (map car summary)
                           #:cols (map (lambda (l) (format #f "layer ~a" l)) (iota layers))
                           #:values? #t
                           #:title "mutual information between domain and expert (nats, mean over seeds)"))
      ,@(map (lambda (l)
               (cons (string->symbol (format #f "heatmap-~a" l))
                     (plot-heatmap (map (lambda (d)
                                          (append-map (lambda (r) (list-ref (assq-ref (assq-ref r 'expert-share) d) l))
                                                      sides))
                                        domains)
                                   #:rows domains
                                   #:cols (append-map (lambda (r)
                                                        (map (lambda (e) (format #f "~a~a" (initial r) e))
                                                             (iota (length (list-ref (cdar (assq-ref r 'expert-share)) l)))))
                                                      sides)
                                   #:title (format #f "layer ~a: expert share per domain, seed ~a (~a)" l seed
                                                   (string-join (map (lambda (r) (format #f "~a = ~a" (initial r) (assq-ref r 'arm)))
                                                                     sides)
                                                                ", ")))))
             (iota layers)))))

(define* (save-study-figures records dir #:key (format 'svg))
  "Save study-figures of RECORDS into DIR as study-NAME.svg (or FORMAT)
and return the file names."
  (mkdir-p dir)
  (map (lambda (f)
         (save-figure (cdr f) (string-append dir "/study-" (symbol->string (car f)) "." (symbol->string format))
                      #:width (if (string-prefix? "heatmap" (symbol->string (car f))) 1000 800) #:height 420))
       (study-figures records)))

;;; ---- the manual's results ------------------------------------------------------

(define (texinfo-escape text)
  (string-concatenate (map (lambda (c) (case c ((#\@) "@@") ((#\{) "@{") ((#\}) "@}") (else (string c))))
                           (string->list text))))

(define (source-commit)
  (let* ((dir (dirname (or (current-filename) "examples/balancing-study.scm")))
         (port (open-pipe* OPEN_READ "git" "-C" dir "rev-parse" "--short" "HEAD"))
         (line (read-line port)))
    (close-pipe port)
    (if (string? line) line "unknown")))

(define* (write-study-doc records dir #:key (out "runs/study"))
  "Write the manual's results of the study whose runs are RECORDS (read from
OUT): DIR/study-results.texi (the size, the seeds, the commit, the tables
and the checks of OUT/summary.txt) and the figures DIR/study-NAME.png."
  (let ((size (assq-ref (car records) 'size))
        (seeds (length (delete-duplicates (map (lambda (r) (assq-ref r 'seed)) records))))
        (text (call-with-input-file (string-append out "/summary.txt") get-string-all)))
    (save-study-figures records dir #:format 'png)
    (call-with-output-file (string-append dir "/study-results.texi")
      (lambda (p)
        (format p "@c Written by make study (examples/balancing-study.scm --from-runs --doc); do not edit.~%")
        (format p "@set STUDYSIZE ~a~%@set STUDYCOMMIT ~a~%"
                (texinfo-escape (size-line size seeds)) (source-commit))
        (format p "@smallexample~%~a@end smallexample~%" (texinfo-escape text))))))

;;; ---- the command line ------------------------------------------------------------

(define (study-main args)
  ;; One kernel thread unless told otherwise: at these widths the threads
  ;; cost more than they give, and far more on a busy machine.
  (unless (getenv "MOELAB_NUM_THREADS") (set-num-threads! 1))
  (let loop ((args (let strip ((args (delete "--from-runs" args)))
                     ;; --doc DIR goes with --from-runs
                     (match args
                       (("--doc" dir . rest) (strip rest))
                       ((a . rest) (cons a (strip rest)))
                       (() '())))) (size 'full) (seeds #f) (first 0) (steps #f) (arms #f)
             (out "runs/study") (corpus "data/corpus"))
    (match args
      (() (let ((result
                 (if (member "--from-runs" (command-line))
                     ;; summarise the finished runs under OUT instead of running
                     (let ((records (load-study out)))
                       (when (null? records)
                         (format (current-error-port) "balancing-study.scm: no finished run under ~a~%" out)
                         (exit 1))
                       (let ((result (report-study records (assq-ref (car records) 'size) #:out out))
                             (doc (member "--doc" (command-line))))
                         (when (and doc (pair? (cdr doc)))
                           (write-study-doc records (cadr doc) #:out out))
                         result))
                     (run-study #:size-name size #:seeds seeds #:first-seed first #:steps steps
                                #:arms arms #:out out #:corpus corpus))))
            (exit (if (every cdr (caddr result)) 0 1))))
      (("--quick" . rest) (loop rest 'quick seeds first steps arms out corpus))
      (("--seeds" n . rest) (loop rest size (string->number n) first steps arms out corpus))
      (("--first-seed" n . rest) (loop rest size seeds (string->number n) steps arms out corpus))
      (("--steps" n . rest) (loop rest size seeds first (string->number n) arms out corpus))
      (("--arms" names . rest)
       (loop rest size seeds first steps (map string->symbol (string-split names #\,)) out corpus))
      (("--out" dir . rest) (loop rest size seeds first steps arms dir corpus))
      (("--corpus" dir . rest) (loop rest size seeds first steps arms out dir))
      ((other . _)
       (format (current-error-port)
               "balancing-study.scm: unknown argument ~s~%usage: moelab examples/balancing-study.scm [--quick] [--seeds N] [--first-seed N] [--steps N] [--arms A,B] [--out DIR] [--corpus DIR] [--from-runs [--doc DIR]]~%arms: ~a~%"
               other (string-join (map (lambda (a) (symbol->string (arm-name a))) study-arms) ","))
       (exit 2)))))

(when (and (pair? (command-line))
           (string-suffix? "balancing-study.scm" (car (command-line))))
  (study-main (cdr (command-line))))
