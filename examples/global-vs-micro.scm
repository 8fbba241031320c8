;;; global-vs-micro.scm — the micro-batch load-balancing loss against the
;;; global-batch one, on 4 data-parallel ranks:
;;;
;;;   moelab examples/global-vs-micro.scm                 4 ranks as threads
;;;   mpirun -np 4 moelab examples/global-vs-micro.scm    one process per rank
;;;
;;; Both print the same text. Each rank holds its own micro-batch of router
;;; logits, skewed toward two experts of its own: every micro-batch is badly
;;; balanced, the global batch (all four together) is nearly balanced. The
;;; micro-batch loss (Switch) counts each rank's tokens alone and punishes the
;;; local skew; the global-batch loss ("Demons in the Detail", Qwen) sums the
;;; expert counts over the data-parallel group first — only that [E] vector
;;; travels — and so asks for balance where it matters for the experts: over
;;; the whole batch. At perfect balance both losses are 1 (coefficient 1).

(use-modules (moelab)
             (srfi srfi-1))

(define ranks 4)   ; dp = 4
(define tokens 64) ; T, per rank
(define experts 8) ; E
(define top-k 2)   ; K

;;; Rank r's logits [T E]: standard normal noise (seeded by the rank) plus 1.5
;;; on experts 2r and 2r+1, the rank's favourites.
(define (logits-of rank)
  (let ((favourite (lambda (e) (if (memv e (list (* 2 rank) (+ (* 2 rank) 1))) 1.5 0.0))))
    (t+ (randn (list tokens experts) #:seed (+ 100 rank) #:dtype 'f64)
        (tensor (map favourite (iota experts)) #:dtype 'f64))))

;;; Tokens per expert of the top-K choices in LOGITS (softmax keeps the order
;;; of the logits, so these are the counts the losses use).
(define (tokens-per-expert logits)
  (call-with-values (lambda () (topk logits top-k))
    (lambda (scores ids)
      (bincount (reshape ids (list (* tokens top-k))) #:minlength experts))))

(define (integers t) (map inexact->exact (tensor->list t)))

;;; What one rank does; rank 0 returns the report, the others #f.
(define (step rank)
  (let* ((z (logits-of rank))
         (local (tokens-per-expert z))
         ;; the tracker sums each micro-batch's counts over the dp group
         (tracker (make-balance-tracker #:experts experts #:group 'dp))
         (micro (tensor-item (load-balancing-loss 'micro-batch z #:top-k top-k)))
         (global (tensor-item (load-balancing-loss 'global-batch z #:top-k top-k #:tracker tracker)))
         (global-counts (balance-tracker-counts tracker))
         ;; one row per rank, gathered so that rank 0 can print them all
         (row (tensor (append (tensor->list local) (tensor->list global-counts) (list micro global))
                      #:dtype 'f64))
         (rows (tensor->list (all-gather (reshape row (list 1 (+ (* 2 experts) 2))) #:group 'dp)))
         ;; the same loss for one process holding the whole global batch
         (whole (tensor-item (load-balancing-loss 'micro-batch (all-gather z #:group 'dp) #:top-k top-k))))
    (and (= rank 0) (report rows whole))))

(define (report rows whole)
  (define (mean xs) (/ (apply + xs) (length xs)))
  (define (loss-cell x) (format #f "~,6f" x))
  (let ((micro (map (lambda (r) (list-ref r (* 2 experts))) rows))
        (global (map (lambda (r) (list-ref r (+ (* 2 experts) 1))) rows)))
    (string-append
     (format #f "~a ranks (dp = ~a), ~a tokens each, ~a experts, top-~a\n" ranks ranks tokens experts top-k)
     (string-concatenate
      (map (lambda (rank r)
             (format #f "rank ~a: local tokens per expert ~a  global tokens per expert ~a  micro-batch loss ~a  global-batch loss ~a\n"
                     rank (map inexact->exact (take r experts))
                     (map inexact->exact (take (drop r experts) experts))
                     (loss-cell (list-ref r (* 2 experts))) (loss-cell (list-ref r (+ (* 2 experts) 1)))))
           (iota ranks) rows))
     (format #f "mean over ranks: micro-batch loss ~a, global-batch loss ~a\n"
             (loss-cell (mean micro)) (loss-cell (mean global)))
     (format #f "micro-batch loss of the whole global batch in one process: ~a\n" (loss-cell whole)))))

;;; Under mpirun every process runs its rank; only rank 0's process has the
;;; report. One write, so that mpirun's merged output never splits it.
(for-each (lambda (text)
            (when text
              (display text)
              (force-output)))
          (with-ranks ranks #:mesh `((dp . ,ranks)) step))
