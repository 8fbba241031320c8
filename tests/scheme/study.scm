;;; study.scm — the balancing study (examples/balancing-study.scm): its
;;; measures on hand-worked shares, and the invariants its arms must keep
;;; whatever the outcome: the global-batch counts are the sum of the step's
;;; micro-batch counts (a buffer in one process, and over dp = 2 ranks), the
;;; two forms count the same tokens per expert at every step of a run, the
;;; centred expert bias keeps a zero mean, and every arm draws the same
;;; tokens in the same order. The runs use a tiny model on a corpus of
;;; files of this source tree.

(include "common.scm")

(test-begin "study")

(define top (string-append (dirname (current-filename)) "/../.."))
;; defines the study's procedures; runs nothing (this file is the program)
(load (string-append top "/examples/balancing-study.scm"))

(define (close? a b) (< (abs (- a b)) 1e-9))

;;; ---- the measures, by hand ------------------------------------------------------------

(test-equal "MaxVio of a load: the busiest expert over the mean, minus 1"
  '(0.5 0.0 3.0)
  (map load-max-vio '((1 3 2 2) (2 2 2 2) (4 0 0 0))))

(test-assert "top-K share: the mean over domains of the K largest shares (0.8 and 0.5 → 0.65)"
  (let ((v (top-k-share '((a (0.5 0.3 0.1 0.1)) (b (0.25 0.25 0.25 0.25))) 2)))
    (and (= (length v) 1) (close? (car v) 0.65))))

(test-assert "mutual information: ln 2 when each of two domains keeps to its own experts, 0 when they share"
  (let ((apart (domain-expert-mi '((a (0.5 0.5 0.0 0.0)) (b (0.0 0.0 0.5 0.5)))))
        (alike (domain-expert-mi '((a (0.1 0.2 0.3 0.4)) (b (0.1 0.2 0.3 0.4))))))
    (and (close? (car apart) (log 2)) (close? (car alike) 0.0))))

(test-assert "mutual information of a partial split: (1/2)(0.75 ln 1.5 + 0.25 ln 0.5) × 2"
  ;; a (0.75 0.25), b (0.25 0.75): marginal (0.5 0.5)
  (close? (car (domain-expert-mi '((a (0.75 0.25)) (b (0.25 0.75)))))
          (+ (* 0.75 (log 1.5)) (* 0.25 (log 0.5)))))

(test-assert "validation MaxVio: the load of all domains together (shares (0.5 0.5 0 0) and (0.5 0 0.5 0) → 1)"
  (close? (car (validation-max-vio '((a (0.5 0.5 0.0 0.0)) (b (0.5 0.0 0.5 0.0))))) 1.0))

(test-equal "the step hash is FNV-1a: one token 97 hashes as the byte \"a\""
  #xe40c292c
  (fnv-1a '(97) 2166136261))

(test-equal "last 20% of a run: the last 2 of 10 steps, the last of 3"
  '((9 10) (3))
  (list (last-fifth (iota 10 1)) (last-fifth '(1 2 3))))

;;; ---- the global-batch counts: a buffer, and over dp = 2 --------------------------------

(define experts 8)
(define top-k 2)

(define (logits seed) (randn (list 16 experts) #:seed seed #:dtype 'f64))

(define (topk-counts z)
  (call-with-values (lambda () (topk z top-k))
    (lambda (scores ids)
      (map inexact->exact (tensor->list (bincount (reshape ids (list (* 16 top-k))) #:minlength experts))))))

(test-assert "buffer form: after each of 3 micro-batches the tracker holds the sum of their top-K counts"
  (let ((tracker (make-balance-tracker #:experts experts)))
    (let loop ((seeds '(1 2 3)) (sum (make-list experts 0)) (ok? #t))
      (if (null? seeds)
          ok?
          (let ((z (logits (car seeds))))
            (load-balancing-loss 'global-batch z #:top-k top-k #:tracker tracker)
            (let ((sum (map + sum (topk-counts z))))
              (loop (cdr seeds) sum
                    (and ok? (equal? sum (map inexact->exact (tensor->list (balance-tracker-counts tracker))))))))))))

(test-assert "dp form: 2 ranks of 2 micro-batches each count what one process's buffer counts over all 4"
  (let* ((one (make-balance-tracker #:experts experts))
         (whole (begin (for-each (lambda (s) (load-balancing-loss 'global-batch (logits s) #:top-k top-k
                                                                  #:tracker one))
                                 '(11 12 13 14))
                       (map inexact->exact (tensor->list (balance-tracker-counts one)))))
         (ranks (with-ranks 2 #:mesh '((dp . 2))
                  (lambda (rank)
                    (let ((tracker (make-balance-tracker #:experts experts #:group 'dp)))
                      (for-each (lambda (s) (load-balancing-loss 'global-batch (logits s) #:top-k top-k
                                                                 #:tracker tracker))
                                (if (= rank 0) '(11 12) '(13 14)))
                      (map inexact->exact (tensor->list (balance-tracker-counts tracker))))))))
    (and (equal? (car ranks) whole) (equal? (cadr ranks) whole)
         (= (apply + whole) (* 4 16 top-k)))))

;;; ---- tiny runs of the arms -------------------------------------------------------------

(define tmp (string-append (or (getenv "TMPDIR") "/tmp") "/moelab-study-test-" (number->string (getpid))))

;; A six-domain corpus of this tree's files, named as the study's domains.
(define corpus
  (let ((dir (string-append tmp "/corpus")))
    (mkdir-p dir)
    (for-each (lambda (domain file)
                (mkdir (string-append dir "/" (symbol->string domain)))
                (symlink (string-append top "/" file)
                         (string-append dir "/" (symbol->string domain) "/" (basename file))))
              study-domains
              '("doc/routers.texi" "examples/global-vs-micro.scm" "core/moe/aux_loss.c"
                "scheme/moelab/trainer.scm" "tests/python/interop.py" "doc/training.texi"))
    dir))

(define tiny
  '((layers . 2) (hidden . 16) (heads . 2) (ffn . 16) (experts . 8) (top-k . 2)
    (seq-len . 16) (batch-size . 2) (grad-accum . 3) (steps . 4)
    (eval-batches . 1) (lr . 1e-2) (bias-rate . 1e-2) (seeds . 1)))

(define records
  (map (lambda (name)
         (run-arm (assq name study-arms) 0 #:size tiny #:corpus corpus #:out (string-append tmp "/runs")
                  #:port (%make-void-port "w")))
       '(none micro-batch global-batch global-batch-dp2 bias-centred bias micro-batch-shuffled)))

(define (record name) (find (lambda (r) (eq? (assq-ref r 'arm) name)) records))

(test-assert "the global-batch buffer and dp = 2 arms count the same tokens per expert at each of the 4 steps"
  (let ((a (assq-ref (record 'global-batch) 'counts)) (b (assq-ref (record 'global-batch-dp2) 'counts)))
    (and (= (length a) 4) (equal? a b)
         ;; each step: K tokens per slot over 3 micro-batches of 2 × 16 tokens, per layer
         (every (lambda (step) (every (lambda (layer) (= (apply + layer) (* 2 3 2 16))) step)) a))))

(test-assert "the centred expert bias keeps a zero mean, though it has moved"
  (let* ((centred (record 'bias-centred))
         (lines (read-jsonl (string-append tmp "/runs/bias-centred/seed0/metrics.jsonl")))
         (bias (assq-ref (last (filter (lambda (l) (assq-ref l 'expert_bias)) lines)) 'expert_bias)))
    (and (every (lambda (m) (< (abs m) 1e-6)) (assq-ref centred 'bias-mean))
         (= (length bias) 2)
         (every (lambda (row) (positive? (apply max (map abs row)))) bias))))

(test-assert "centring shifts every bias alike, so both bias arms route and learn alike"
  (equal? (assq-ref (record 'bias-centred) 'train-loss) (assq-ref (record 'bias) 'train-loss)))

(test-assert "every single-domain arm drew the same tokens at every step; the shuffled arm other ones"
  (let ((hashes (map (lambda (r) (assq-ref r 'hashes)) records)))
    (and (= (length (car hashes)) 4)
         (every (lambda (h) (equal? h (car hashes))) (list-head hashes 6))
         (not (equal? (car hashes) (assq-ref (record 'micro-batch-shuffled) 'hashes))))))

(test-assert "the study's checks pass on these runs, and fail on a doctored record"
  (let* ((ok (study-checks records))
         (doctored (map (lambda (r)
                          (if (eq? (assq-ref r 'arm) 'bias-centred)
                              (cons '(bias-mean 0.5 0.5) r)
                              r))
                        records))
         (bad (study-checks doctored)))
    (and (every (lambda (c) (or (cdr c) (string-contains (car c) "MaxVio"))) ok)
         (any (lambda (c) (and (not (cdr c)) (string-contains (car c) "centred"))) bad))))

(test-assert "study-checks: a balanced arm less balanced than no balancing fails"
  (let ((r (lambda (arm vio) `((arm . ,arm) (seed . 0) (hashes 1 2) (max-vio-val ,vio)))))
    (equal? (map cdr (study-checks (list (r 'none 1.0) (r 'micro-batch 0.5) (r 'global-batch 1.5))))
            '(#t #t #f))))

(test-assert "every run wrote its metrics and its study lines"
  (every (lambda (r)
           (let ((dir (format #f "~a/runs/~a/seed0" tmp (assq-ref r 'arm))))
             (and (= (length (read-jsonl (string-append dir "/study.jsonl"))) 6)   ; header, 4 steps, measures
                  (file-exists? (string-append dir "/metrics.jsonl")))))
         records))

(system* "rm" "-rf" tmp)
(test-end "study")
