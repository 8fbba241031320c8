;;; pipeline.scm — (moelab pipeline): the schedules as data (hand-written
;;; step lists, and a simulation of synchronous sends that finds the
;;; deadlock of a naive 1f1b and none in ours), pipeline-step! on thread
;;; ranks against the same computation in one process (a toy model cut into
;;; 2 and 4 stages, 1, 2 and 4 micro-batches, both schedules, f64, to
;;; 1e-12), the order of the forwards and backwards, the release of each
;;; micro-batch's tensors, and failures (a stage that raises, one that
;;; hangs, bad arguments).

(include "common.scm")
(use-modules (ice-9 match))

(test-begin "pipeline")

;; A stuck receive fails after this long instead of hanging the suite.
(define default-timeout (set-comm-timeout! 30))

;;; ---- the toy model: stage p maps x to tanh(x W_p); the last stage's loss
;;; is the sum of squares of its output, divided by the number of
;;; micro-batches M (the scaling a mean over micro-batches wants) ----------

(define (stage-weight p)
  (requires-grad! (t* (randn '(4 4) #:dtype 'f64 #:seed (+ 10 p)) 0.7)))

(define (micro-batch-data i)
  (randn '(3 4) #:dtype 'f64 #:seed (+ 100 i)))

(define (stage-forward p stages m x w)
  (let ((y (ttanh (matmul x w))))
    (if (= p (- stages 1))
        (t/ (tsum (t* y y)) m)
        y)))

;; One process: every micro-batch through every stage, backward! of each
;; loss in turn. → (losses grads): the loss values, the gradient of each W_p.
(define (reference stages m)
  (let* ((ws (map stage-weight (iota stages)))
         (losses
          (map (lambda (i)
                 (let ((loss (fold (lambda (p w x) (stage-forward p stages m x w))
                                   (micro-batch-data i) (iota stages) ws)))
                   (backward! loss)
                   (tensor-item loss)))
               (iota m))))
    (list losses (map (lambda (w) (tensor->list (tensor-grad w))) ws))))

;; The same on STAGES thread ranks with pipeline-step!. → per rank
;; (losses grad order result), ORDER the forwards and backwards as they ran.
(define* (pipelined stages m schedule #:key (fail #f))
  (with-ranks stages #:mesh `((pp . ,stages))
    (lambda (rank)
      (let* ((p (mesh-coord 'pp))
             (w (stage-weight p))
             (order '())
             (result
              (pipeline-step!
               #:schedule schedule #:micro-batches m
               #:forward (lambda (i input)
                           (set! order (cons `(forward ,i) order))
                           (when fail (fail p i))
                           (stage-forward p stages m (or input (micro-batch-data i)) w))
               #:backward (lambda (i output grad)
                            (set! order (cons `(backward ,i) order))
                            (if grad (backward! output grad) (backward! output)))
               #:activation (lambda (i) (values '(3 4) 'f64)))))
        (list (assq-ref result 'losses)
              (and (tensor-grad w) (tensor->list (tensor-grad w)))
              (reverse order)
              result)))))

;;; ---- the schedules --------------------------------------------------------------

(define (computes plan)
  ;; the forwards and backwards of a plan, in order
  (filter (lambda (step) (memq (car step) '(forward backward))) plan))

(define (f i) `(forward ,i))
(define (b i) `(backward ,i))

(test-group "pipeline-bubble-fraction"
  (test-equal "P=4 M=4" 3/7 (pipeline-bubble-fraction 4 4))
  (test-equal "P=2 M=1" 1/2 (pipeline-bubble-fraction 2 1))
  (test-equal "P=8 M=32" 7/39 (pipeline-bubble-fraction 8 32))
  (test-equal "one stage has no bubble" 0 (pipeline-bubble-fraction 1 5))
  (test-moelab-error "zero micro-batches" "micro-batches must be an integer of at least 1"
    (pipeline-bubble-fraction 4 0)))

(test-group "pipeline-schedule"
  (test-equal "gpipe, first of 2 stages"
    '((forward 0) (send-activation 0) (forward 1) (send-activation 1)
      (recv-gradient 0) (backward 0) (recv-gradient 1) (backward 1))
    (pipeline-schedule 'gpipe 2 0 2))
  (test-equal "gpipe, last of 2 stages"
    '((recv-activation 0) (forward 0) (recv-activation 1) (forward 1)
      (backward 0) (send-gradient 0) (backward 1) (send-gradient 1))
    (pipeline-schedule 'gpipe 2 1 2))
  (test-equal "1f1b, a middle stage of 3, M=3: the next activation comes in before a gradient goes out"
    '((recv-activation 0) (forward 0) (send-activation 0)
      (recv-activation 1) (forward 1) (send-activation 1)
      (recv-gradient 0) (backward 0) (recv-activation 2) (send-gradient 0)
      (forward 2) (send-activation 2)
      (recv-gradient 1) (backward 1) (send-gradient 1)
      (recv-gradient 2) (backward 2) (send-gradient 2))
    (pipeline-schedule '1f1b 3 1 3))
  (test-equal "forward-only, a middle stage"
    '((recv-activation 0) (forward 0) (send-activation 0) (recv-activation 1) (forward 1) (send-activation 1))
    (pipeline-schedule 'forward-only 3 1 2))
  (test-equal "one stage: forward and backward in turn under 1f1b"
    (list (f 0) (b 0) (f 1) (b 1)) (pipeline-schedule '1f1b 1 0 2))
  ;; 1f1b, P=4 M=4: min(P-p-1, M) warm-up forwards, then forward/backward in turn
  (test-equal "1f1b P=4 M=4 stage 0" (list (f 0) (f 1) (f 2) (f 3) (b 0) (b 1) (b 2) (b 3))
    (computes (pipeline-schedule '1f1b 4 0 4)))
  (test-equal "1f1b P=4 M=4 stage 1" (list (f 0) (f 1) (f 2) (b 0) (f 3) (b 1) (b 2) (b 3))
    (computes (pipeline-schedule '1f1b 4 1 4)))
  (test-equal "1f1b P=4 M=4 stage 2" (list (f 0) (f 1) (b 0) (f 2) (b 1) (f 3) (b 2) (b 3))
    (computes (pipeline-schedule '1f1b 4 2 4)))
  (test-equal "1f1b P=4 M=4 stage 3" (list (f 0) (b 0) (f 1) (b 1) (f 2) (b 2) (f 3) (b 3))
    (computes (pipeline-schedule '1f1b 4 3 4)))
  (test-equal "1f1b with fewer micro-batches than stages: P=4 M=2 stage 0"
    (list (f 0) (f 1) (b 0) (b 1)) (computes (pipeline-schedule '1f1b 4 0 2)))
  (test-moelab-error "unknown schedule" "unknown schedule interleaved"
    (pipeline-schedule 'interleaved 2 0 2))
  (test-moelab-error "a stage outside the pipeline" "stage 2 is not a stage of a pipeline of 2"
    (pipeline-schedule 'gpipe 2 2 2))
  (test-moelab-error "no stages" "the number of stages must be an integer of at least 1"
    (pipeline-schedule 'gpipe 0 0 2)))

;; Run the plans of every stage with synchronous messages (a send completes
;; only together with the matching receive, as a large MPI message does).
;; #t when every stage gets to its end; else the steps each one is stuck on.
(define (run-synchronously plans)
  (let* ((n (vector-length plans))
         (peer (lambda (p step)
                 (match step
                   (((or 'send-activation 'recv-gradient) i) (+ p 1))
                   (((or 'recv-activation 'send-gradient) i) (- p 1)))))
         (partner (lambda (step)
                    (match step
                      (('send-activation i) `(recv-activation ,i))
                      (('send-gradient i) `(recv-gradient ,i))
                      (_ #f)))))
    (let loop ()
      (let ((progress #f))
        (do ((p 0 (+ p 1))) ((= p n))
          ;; computing never waits
          (let skip ()
            (let ((plan (vector-ref plans p)))
              (when (and (pair? plan) (memq (caar plan) '(forward backward)))
                (vector-set! plans p (cdr plan))
                (set! progress #t)
                (skip))))
          (let ((plan (vector-ref plans p)))
            (when (and (pair? plan) (partner (car plan)))
              (let* ((q (peer p (car plan)))
                     (other (vector-ref plans q)))
                (when (and (pair? other) (equal? (car other) (partner (car plan))))
                  (vector-set! plans p (cdr plan))
                  (vector-set! plans q (cdr other))
                  (set! progress #t))))))
        (cond ((every null? (vector->list plans)) #t)
              (progress (loop))
              (else (map (lambda (plan) (and (pair? plan) (car plan))) (vector->list plans))))))))

(define (plans schedule stages m)
  (list->vector (map (lambda (p) (pipeline-schedule schedule stages p m)) (iota stages))))

(test-group "no deadlock with synchronous sends"
  (test-equal "a naive 1f1b (the gradient sent before the next activation is received) deadlocks"
    '((send-activation 1) (send-gradient 0))  ; both stages send, neither receives
    (run-synchronously
     (vector '((forward 0) (send-activation 0) (forward 1) (send-activation 1)
               (recv-gradient 0) (backward 0) (recv-gradient 1) (backward 1))
             '((recv-activation 0) (forward 0) (backward 0) (send-gradient 0)
               (recv-activation 1) (forward 1) (backward 1) (send-gradient 1)))))
  (for-each
   (lambda (schedule)
     (test-equal (format #f "~a: every P ≤ 6, M ≤ 8 runs to the end" (symbol->string schedule))
       '()
       (filter-map (lambda (pm)
                     (let ((r (run-synchronously (plans schedule (car pm) (cdr pm)))))
                       (and (not (eq? r #t)) (list (car pm) (cdr pm) r))))
                   (append-map (lambda (stages) (map (lambda (m) (cons stages m)) (iota 8 1)))
                               (iota 6 1)))))
   '(gpipe 1f1b forward-only)))

(test-group "every plan: each micro-batch once, backwards in order, at most P - p in flight under 1f1b"
  (for-each
   (lambda (schedule)
     (test-equal (format #f "~a, P ≤ 5, M ≤ 6" (symbol->string schedule)) '()
       (filter-map
        (lambda (spm)
          (match spm
            ((stages p m)
             (let* ((steps (computes (pipeline-schedule schedule stages p m)))
                    (fs (filter-map (lambda (s) (and (eq? (car s) 'forward) (cadr s))) steps))
                    (bs (filter-map (lambda (s) (and (eq? (car s) 'backward) (cadr s))) steps))
                    (in-flight
                     (let loop ((steps steps) (n 0) (most 0))
                       (if (null? steps) most
                           (let ((n (+ n (if (eq? (caar steps) 'forward) 1 -1))))
                             (loop (cdr steps) n (max n most))))))
                    (ok (and (equal? fs (iota m))
                             (equal? bs (iota m))
                             (every (lambda (i) (< (list-index (lambda (s) (equal? s (f i))) steps)
                                                   (list-index (lambda (s) (equal? s (b i))) steps)))
                                    (iota m))
                             (or (eq? schedule 'gpipe) (<= in-flight (- stages p))))))
               (and (not ok) spm)))))
        (append-map (lambda (stages)
                      (append-map (lambda (p) (map (lambda (m) (list stages p m)) (iota 6 1)))
                                  (iota stages)))
                    (iota 5 1)))))
   '(gpipe 1f1b)))

;;; ---- pipeline-step! on threads against one process -------------------------------------

(define (check-against-reference stages m schedule)
  (let* ((ref (reference stages m))
         (runs (pipelined stages m schedule))
         (name (format #f "~a, ~a stages, ~a micro-batch~a" (symbol->string schedule) stages m (if (= m 1) "" "es"))))
    (test-assert (string-append name ": the last stage's losses")
      (close? (car (last runs)) (car ref) 1e-12))
    (test-equal (string-append name ": no losses on the other stages")
      (make-list (- stages 1) #f) (map car (drop-right runs 1)))
    (test-assert (string-append name ": every stage's parameter gradient")
      (close? (map cadr runs) (cadr ref) 1e-12))
    runs))

(test-group "the one-process computation, to 1e-12"
  (for-each (lambda (stages)
              (for-each (lambda (m)
                          (for-each (lambda (schedule) (check-against-reference stages m schedule))
                                    '(gpipe 1f1b)))
                        '(1 2 4)))
            '(2 4))
  (test-assert "the reference's losses are not trivial"
    (let ((losses (car (reference 4 4))))
      (and (every (lambda (l) (> l 0.01)) losses)
           (not (apply = losses)))))
  (test-assert "one rank, outside with-ranks"
    (let* ((ref (reference 1 3))
           (w (stage-weight 0))
           (result (pipeline-step! #:micro-batches 3
                                   #:forward (lambda (i input) (stage-forward 0 1 3 (micro-batch-data i) w)))))
      (and (close? (assq-ref result 'losses) (car ref) 1e-12)
           (close? (tensor->list (tensor-grad w)) (car (cadr ref)) 1e-12)))))

(test-group "the order of the forwards and backwards as they ran"
  (let ((runs (pipelined 4 4 '1f1b)))
    (test-equal "1f1b, P=4 M=4"
      (list (list (f 0) (f 1) (f 2) (f 3) (b 0) (b 1) (b 2) (b 3))
            (list (f 0) (f 1) (f 2) (b 0) (f 3) (b 1) (b 2) (b 3))
            (list (f 0) (f 1) (b 0) (f 2) (b 1) (f 3) (b 2) (b 3))
            (list (f 0) (b 0) (f 1) (b 1) (f 2) (b 2) (f 3) (b 3)))
      (map caddr runs)))
  (test-equal "gpipe, P=2 M=3: all forwards, then the backwards"
    (make-list 2 (list (f 0) (f 1) (f 2) (b 0) (b 1) (b 2)))
    (map caddr (pipelined 2 3 'gpipe))))

(test-group "the result"
  (let* ((runs (pipelined 2 2 'gpipe))
         (r0 (cadddr (car runs)))
         (r1 (cadddr (cadr runs))))
    (test-equal "stage, stages, schedule, micro-batches"
      '((0 2 gpipe 2) (1 2 gpipe 2))
      (map (lambda (r) (map (lambda (k) (assq-ref r k)) '(stage stages schedule micro-batches)))
           (list r0 r1)))
    (test-assert "times: non-negative, their parts within the total"
      (every (lambda (r)
               (let ((c (assq-ref r 'compute-ms)) (rv (assq-ref r 'recv-ms))
                     (s (assq-ref r 'send-ms)) (t (assq-ref r 'total-ms)))
                 (and (every (lambda (x) (and (real? x) (>= x 0))) (list c rv s t))
                      (<= (+ c rv s) (* 1.001 t)))))
             (list r0 r1)))
    (test-assert "the forwards and backwards took some time" (> (assq-ref r1 'compute-ms) 0))))

(test-group "#:share-losses?: every stage gets the last stage's losses"
  (let ((ref (car (reference 3 2)))
        (runs (with-ranks 3 #:mesh '((pp . 3))
                (lambda (rank)
                  (let ((w (stage-weight rank)))
                    (assq-ref (pipeline-step! #:micro-batches 2 #:share-losses? #t
                                #:forward (lambda (i input)
                                            (stage-forward rank 3 2 (or input (micro-batch-data i)) w))
                                #:activation (lambda (i) (values '(3 4) 'f64)))
                              'losses))))))
    (test-assert "the same values on the 3 stages"
      (every (lambda (losses) (close? losses ref 1e-12)) runs))))

(test-group "several pipelines side by side: pp=2 × dp=2"
  (let ((runs (with-ranks 4 #:mesh '((pp . 2) (dp . 2))
                (lambda (rank)
                  (let* ((p (mesh-coord 'pp)) (d (mesh-coord 'dp))
                         (w (stage-weight p)))
                    (pipeline-step! #:micro-batches 2
                      #:forward (lambda (i input)
                                  ;; replica d takes micro-batches 2d and 2d + 1
                                  (stage-forward p 2 2 (or input (micro-batch-data (+ i (* 2 d)))) w))
                      #:activation (lambda (i) (values '(3 4) 'f64)))
                    (list p d (tensor->list (tensor-grad w))))))))
    ;; one process: replica 0 sees data 0 1, replica 1 data 2 3
    (define (replica d)
      (let ((ws (map stage-weight '(0 1))))
        (for-each (lambda (i)
                    (backward! (fold (lambda (p w x) (stage-forward p 2 2 x w))
                                     (micro-batch-data (+ i (* 2 d))) '(0 1) ws)))
                  '(0 1))
        (map (lambda (w) (tensor->list (tensor-grad w))) ws)))
    (test-equal "ranks 0 1 are stage 0, ranks 2 3 stage 1" '((0 0) (0 1) (1 0) (1 1))
      (map (lambda (r) (list (car r) (cadr r))) runs))
    (test-assert "each replica's gradients"
      (let ((r0 (replica 0)) (r1 (replica 1)))
        (and (close? (caddr (list-ref runs 0)) (car r0) 1e-12)
             (close? (caddr (list-ref runs 1)) (car r1) 1e-12)
             (close? (caddr (list-ref runs 2)) (cadr r0) 1e-12)
             (close? (caddr (list-ref runs 3)) (cadr r1) 1e-12)
             (not (close? (car r0) (car r1) 1e-6)))))))

(test-group "forward-only"
  (let* ((ref (reference 3 4))
         (runs (pipelined 3 4 'forward-only)))
    (test-assert "the losses" (close? (car (last runs)) (car ref) 1e-12))
    (test-equal "no gradients" '(#f #f #f) (map cadr runs))
    (test-equal "no backwards" (make-list 3 (map f (iota 4))) (map caddr runs))))

(test-group "each micro-batch's tensors are released"
  (let ((kept (with-ranks 3 #:mesh '((pp . 3))
                (lambda (rank)
                  (let* ((p (mesh-coord 'pp)) (w (stage-weight p)) (seen '()))
                    (pipeline-step! #:micro-batches 3
                      #:forward (lambda (i input)
                                  (let ((out (stage-forward p 3 3 (or input (micro-batch-data i)) w)))
                                    (set! seen (cons* out input seen))
                                    out))
                      #:activation (lambda (i) (values '(3 4) 'f64)))
                    (map (lambda (t) (and (tensor? t) (tensor-freed? t))) seen))))))
    (test-equal "inputs and outputs freed on every stage"
      '((#t #f #t #f #t #f) (#t #t #t #t #t #t) (#t #t #t #t #t #t))
      kept)))

;; The most memory a 2-stage step of 8 micro-batches holds at once (above
;; what was live before), with activations [256 256] f64 (512 KiB) and every
;; intermediate tensor freed by the closures: what remains is what the
;; schedule keeps in flight (the graphs and the tensors pipeline-step!
;; holds), so 1f1b (at most 2 micro-batches on stage 0, 1 on stage 1) must
;; need far less than gpipe (8 on each).
(define (peak-bytes schedule)
  (let ((ws (map (lambda (p) (requires-grad! (randn '(256 256) #:dtype 'f64 #:seed p))) '(0 1))))
    (gc)
    (memory-peak-reset!)
    (let ((before (assq-ref (assq-ref (memory-stats) 'cpu) 'live-bytes)))
      (with-ranks 2 #:mesh '((pp . 2))
        (lambda (rank)
          (let ((w (list-ref ws rank)))
            (pipeline-step! #:schedule schedule #:micro-batches 8
              #:forward (lambda (i input)
                          (let* ((x (or input (randn '(256 256) #:dtype 'f64 #:seed (+ 100 i))))
                                 (h (matmul x w))
                                 (y (ttanh h)))
                            (tensor-free! h)
                            (unless input (tensor-free! x))
                            (if (= rank 0)
                                y
                                (let* ((yy (t* y y)) (loss (tsum yy)))
                                  (tensor-free! yy)
                                  (tensor-free! y)
                                  loss))))
              #:activation (lambda (i) (values '(256 256) 'f64))))))
      (for-each tensor-free! ws)
      (- (assq-ref (assq-ref (memory-stats) 'cpu) 'peak-bytes) before))))

(test-group "memory: 1f1b holds fewer micro-batches than gpipe"
  (let ((gpipe (peak-bytes 'gpipe))
        (one-f-one-b (peak-bytes '1f1b))
        (activation (* 256 256 8)))
    (test-assert "gpipe holds 8 micro-batches' activations on a stage"
      (> gpipe (* 16 activation)))
    (test-assert "1f1b less than 40% of that" (< one-f-one-b (* 0.4 gpipe)))))

;;; ---- failures ------------------------------------------------------------------------------

(define (with-ranks-error thunk)
  "The message of the moelab-error THUNK raises, or what happened instead."
  (catch 'moelab-error
    (lambda () (list 'returned (thunk)))
    (lambda (key subr message args rest)
      (list subr (apply format #f message args) (and (pair? rest) (car rest))))))

(define (elapsed thunk)
  (let ((start (get-internal-real-time)))
    (thunk)
    (/ (- (get-internal-real-time) start) internal-time-units-per-second)))

(test-group "a stage that raises ends with-ranks"
  (let ((previous (set-comm-timeout! 5)))
    (for-each
     (lambda (schedule)
       (let* ((result #f)
              (seconds (elapsed
                        (lambda ()
                          (set! result
                            (with-ranks-error
                             (lambda ()
                               (pipelined 4 4 schedule
                                          #:fail (lambda (p i)
                                                   (when (and (= p 2) (= i 1))
                                                     (error "stage broke at micro-batch" i)))))))))))
         (test-equal (format #f "~a: moelab-error from with-ranks" (symbol->string schedule)) "with-ranks" (car result))
         (test-assert (format #f "~a: naming rank 2" (symbol->string schedule)) (string-contains (cadr result) "rank 2 failed"))
         (test-assert (format #f "~a: with its message" (symbol->string schedule))
           (string-contains (cadr result) "stage broke at micro-batch 1"))
         (test-assert (format #f "~a: at once, not after the timeout" (symbol->string schedule)) (< seconds 4))))
     '(gpipe 1f1b))
    (test-assert "an error in the last stage's backward"
      (string-contains
       (cadr (with-ranks-error
              (lambda ()
                (with-ranks 2 #:mesh '((pp . 2))
                  (lambda (rank)
                    (let ((w (stage-weight rank)))
                      (pipeline-step! #:micro-batches 2
                        #:forward (lambda (i input) (stage-forward rank 2 2 (or input (micro-batch-data i)) w))
                        #:backward (lambda (i output grad)
                                     (when (= rank 1) (error "no backward here"))
                                     (backward! output grad))
                        #:activation (lambda (i) (values '(3 4) 'f64)))))))))
       "rank 1 failed: no backward here"))
    ;; Stage 1's receive finds the mismatch and fails; stage 0, waiting for
    ;; the gradient, fails too, naming rank 1, and may return first: whichever
    ;; with-ranks names, the message tells the sizes. Stage 1's own error
    ;; (kept before it goes on) says where.
    (let* ((seen (make-vector 2 #f))
           (message
            (cadr (with-ranks-error
                   (lambda ()
                     (with-ranks 2 #:mesh '((pp . 2))
                       (lambda (rank)
                         (let ((w (stage-weight rank)))
                           (catch 'moelab-error
                             (lambda ()
                               (pipeline-step! #:micro-batches 1
                                 #:forward (lambda (i input)
                                             (stage-forward rank 2 1 (or input (micro-batch-data i)) w))
                                 #:activation (lambda (i) (values '(2 4) 'f64))))
                             (lambda (key subr message args rest)
                               (vector-set! seen rank (apply format #f message args))
                               (apply throw key subr message args rest)))))))))))
      (test-assert "a stage that sends a shape the next one does not expect: with-ranks says so"
        (and (string-contains message "rank 1 failed")
             (string-contains message "size mismatch: rank 0 sent 12 elements (f64), rank 1 expects 8 elements (f64)")))
      (test-equal "stage 1's error names the stage, the micro-batch and the message"
        "stage 1 of 2, micro-batch 0: receiving the activation from stage 0: size mismatch: rank 0 sent 12 elements (f64), rank 1 expects 8 elements (f64)"
        (vector-ref seen 1)))
    (set-comm-timeout! previous)))

(test-group "a stage that hangs: its neighbour times out naming it"
  (let* ((previous (set-comm-timeout! 0.3))
         (result #f)
         (seconds (elapsed
                   (lambda ()
                     (set! result
                       (with-ranks-error
                        (lambda ()
                          (pipelined 3 2 '1f1b #:fail (lambda (p i) (when (= p 1) (usleep 1000000)))))))))))
    (set-comm-timeout! previous)
    (test-equal "moelab-error from with-ranks" "with-ranks" (car result))
    (test-assert "a receive timed out waiting for rank 1"
      (and (string-contains (cadr result) "timed out after 0.3 s")
           (string-contains (cadr result) "waiting for rank 1")))
    (test-assert "within the timeout and the hang, not more" (< seconds 5))))

(test-group "bad arguments"
  (define* (step-error #:rest args)
    (with-ranks-error
     (lambda ()
       (with-ranks 2 #:mesh '((pp . 2))
         (lambda (rank)
           (apply pipeline-step! args))))))
  (define forward (lambda (i input) (scalar-tensor 1.0 #:dtype 'f64)))
  (test-assert "no #:activation on a stage that receives"
    (string-contains (cadr (step-error #:forward forward))
                     "stage 1 of 2 receives activations: pass #:activation"))
  (test-assert "an unknown schedule"
    (string-contains (cadr (step-error #:forward forward #:schedule 'zigzag))
                     "unknown schedule zigzag"))
  (test-assert "zero micro-batches"
    (string-contains (cadr (step-error #:forward forward #:micro-batches 0))
                     "#:micro-batches must be an integer of at least 1, not 0"))
  (test-assert "#:activation that returns one value"
    (string-contains (cadr (step-error #:forward forward #:activation (lambda (i) '(3 4))))
                     "stage 1, micro-batch 0: #:activation returned ((3 4))"))
  (test-assert "a forward that returns no tensor"
    (string-contains (cadr (step-error #:forward (lambda (i input) 'oops)
                                       #:activation (lambda (i) (values '() 'f64))))
                     "stage 0 of 2, micro-batch 0: #:forward returned oops, not a tensor"))
  (test-assert "a last stage that returns no loss"
    (string-contains (cadr (step-error #:forward (lambda (i input) (zeros '(2) #:dtype 'f64))
                                       #:activation (lambda (i) (values '(2) 'f64))))
                     "stage 1 (the last), micro-batch 0: #:forward must return the loss, one element, not a tensor of shape (2)"))
  (test-wrong-type "#:forward missing" (pipeline-step!))
  (test-wrong-type "#:group neither a group nor dimensions"
    (pipeline-step! #:group 3 #:forward forward)))

(set-comm-timeout! default-timeout)
(test-end "pipeline")
(exit-with-test-status)
