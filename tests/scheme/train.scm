;;; train.scm — optimizers, clipping, schedules and metrics files from Scheme:
;;; make-adamw, make-sgd and clip-grad-norm! against PyTorch and the
;;; schedules against their formulas (tests/reference/optim_refs.txt, from
;;; gen_optim_refs.py), parameters updated in place, state save and load,
;;; metrics files written and read back, and every bad input a moelab-error
;;; that changes nothing.

(include "common.scm")
(use-modules (srfi srfi-11))

(test-begin "train")

(define ref-cases
  (read-ref-cases (string-append (dirname (current-filename)) "/../reference/optim_refs.txt")))

(define (ref-case name) (or (assoc name ref-cases) (error "no reference case" name)))
(define (ref-set c key) (assoc-ref (cadr c) key))
(define (ref-num c key) (string->number (ref-set c key)))
(define (ref-tensor c name) (assoc-ref (caddr c) name))
(define (ref-params c) (string-split (ref-set c "params") #\,))

(define (max-abs t) (tensor-item (tmax (tabs (to-dtype t 'f64)))))

(define (tensors-close? a b tol)
  "#t when A and B agree within TOL relative to B's largest magnitude; else
the difference, shown by the failure report."
  (let ((d (max-abs (t- (to-dtype a 'f64) (to-dtype b 'f64)))))
    (or (<= d (* tol (max 1e-300 (max-abs b)))) (list 'max-abs-diff d))))

;;; ---- against PyTorch -----------------------------------------------------------------

(define (run-optimizer-case name)
  (let* ((c (ref-case name))
         (tol (if (equal? (ref-set c "dtype") "f32") 1e-6 1e-12))
         (names (ref-params c))
         (params (map (lambda (n) (cons n (requires-grad! (clone (ref-tensor c (string-append "param:" n "#0")))))) names))
         (o (if (equal? (ref-set c "optimizer") "adamw")
                (make-adamw params #:lr (ref-num c "lr")
                            #:betas (cons (ref-num c "beta1") (ref-num c "beta2"))
                            #:eps (ref-num c "eps") #:weight-decay (ref-num c "weight_decay")
                            #:no-decay (string-split (ref-set c "no_decay") #\,))
                (make-sgd params #:lr (ref-num c "lr") #:momentum (ref-num c "momentum")
                          #:dampening (ref-num c "dampening") #:weight-decay (ref-num c "weight_decay")
                          #:nesterov? (equal? (ref-set c "nesterov") "1")))))
    (let loop ((s 0) (worst #t))
      (if (= s (ref-num c "steps"))
          (and (eq? worst #t)
               ;; the moments, by their state names
               (every (lambda (n)
                        (every (lambda (slot)
                                 (let ((want (ref-tensor c (string-append slot ":" n))))
                                   (or (not want)
                                       (eq? #t (tensors-close? (assoc-ref (optimizer-state o) (string-append n "." slot))
                                                               want tol)))))
                               '("exp_avg" "exp_avg_sq" "momentum_buffer")))
                      names)
               (equal? (map (lambda (n) (assoc-ref (optimizer-state o) (string-append n ".step"))) names)
                       (map (lambda (n) (tensor-item (ref-tensor c (string-append "step:" n)))) names)))
          (begin
            (optimizer-zero-grad! o)
            (for-each (lambda (n)
                        (let ((g (ref-tensor c (format #f "grad:~a#~a" n s))))
                          (when g (set-tensor-grad! (assoc-ref params n) (clone g)))))
                      names)
            (optimizer-step! o)
            (loop (+ s 1)
                  (if (eq? worst #t)
                      (let ((bad (find (lambda (n)
                                         (not (eq? #t (tensors-close? (assoc-ref params n)
                                                                      (ref-tensor c (format #f "param:~a#~a" n (+ s 1)))
                                                                      tol))))
                                       names)))
                        (if bad (list name 'step s bad) #t))
                      worst)))))))

(test-group "optimizers against PyTorch"
  (for-each (lambda (name) (test-equal name #t (run-optimizer-case name)))
            '("adamw-decay-f64" "adamw-decay-f32" "adamw-nodecay-f64" "adamw-nodecay-f32"
              "sgd-momentum-f64" "sgd-momentum-f32" "sgd-nesterov-f64" "sgd-nesterov-f32"
              "sgd-plain-f64" "sgd-plain-f32")))

(test-group "clip-grad-norm! against PyTorch"
  (for-each
   (lambda (name)
     (let* ((c (ref-case name))
            (tol (if (equal? (ref-set c "dtype") "f32") 1e-6 1e-12))
            (params (map (lambda (n)
                           (let* ((g (ref-tensor c (string-append "grad:" n)))
                                  (p (zeros (tensor-shape g) #:dtype (tensor-dtype g) #:requires-grad #t)))
                             (set-tensor-grad! p (clone g))
                             (cons n p)))
                         (ref-params c)))
            ;; a plain list of tensors works as well as an alist
            (norm (clip-grad-norm! (if (string-suffix? "f32" name) (map cdr params) params)
                                   (ref-num c "max"))))
       (test-assert (string-append name ": norm")
         (close? norm (tensor-item (ref-tensor c "norm")) tol))
       (test-assert (string-append name ": gradients")
         (every (lambda (n) (eq? #t (tensors-close? (tensor-grad (assoc-ref params n))
                                                    (ref-tensor c (string-append "clipped:" n)) tol)))
                (ref-params c)))))
   '("clip-above-f64" "clip-below-f64" "clip-above-f32" "clip-below-f32")))

(test-group "clipping folded into the update"
  ;; grads (3, 4) and (0, 12): norm 13; max 6.5 → factor 6.5/(13 + 1e-6)
  (test-equal "clip-scale above the max" (/ 6.5 (+ 13 1e-6)) (clip-scale 13.0 6.5))
  (test-equal "clip-scale below the max" 1.0 (clip-scale 6.0 6.5))
  (test-equal "clip-scale of a non-finite norm" 1.0 (clip-scale +inf.0 6.5))
  (test-moelab-error "clip-scale max 0" "max must be finite and > 0, got 0" (clip-scale 13.0 0))
  (let ((run (lambda (fold? make)
               ;; two steps of f32 parameters; returns the parameters' values
               (let* ((a (tensor '(1.0 -2.0) #:dtype 'f32 #:requires-grad #t))
                      (b (tensor '(0.5 0.25) #:dtype 'f32 #:requires-grad #t))
                      (o (make `(("a" . ,a) ("b" . ,b)))))
                 (for-each
                  (lambda (k)
                    (set-tensor-grad! a (tensor (list (* 3.0 k) 4.0) #:dtype 'f32))
                    (set-tensor-grad! b (tensor (list 0.0 (* 12.0 k)) #:dtype 'f32))
                    (if fold?
                        (let ((g (tensor->list (tensor-grad a))))
                          (optimizer-step! o #:grad-scale (clip-scale (grad-norm (list a b)) 6.5))
                          (test-equal "the gradients keep their values" g (tensor->list (tensor-grad a))))
                        (begin (clip-grad-norm! (list a b) 6.5) (optimizer-step! o))))
                  '(1.0 1.5))
                 (append (tensor->list a) (tensor->list b))))))
    (for-each
     (lambda (make)
       (test-equal "the same bits as clip-grad-norm! then optimizer-step!"
         (run #f make) (run #t make)))
     (list (lambda (ps) (make-adamw ps #:lr 0.1))
           (lambda (ps) (make-sgd ps #:lr 0.1 #:momentum 0.9)))))
  (let* ((w (tensor '(1.0 2.0) #:requires-grad #t))
         (o (make-sgd `(("w" . ,w)) #:lr 1)))
    (set-tensor-grad! w (tensor '(1.0 1.0)))
    (optimizer-step! o #:grad-scale 0.5)
    (test-values "grad-scale multiplies the gradient" '(0.5 1.5) w)
    (test-moelab-error "grad-scale 0" "grad-scale must be finite and > 0, got 0"
                       (optimizer-step! o #:grad-scale 0))
    (test-values "a refused scale changes nothing" '(0.5 1.5) w)))

(test-group "schedules against their formulas"
  (for-each
   (lambda (name)
     (let* ((c (ref-case (string-append "schedule-" name)))
            (total (ref-num c "total"))
            (lr-at (make-lr-schedule (string->symbol (ref-set c "kind")) #:lr (ref-num c "lr")
                                     #:warmup (ref-num c "warmup") #:total (if (zero? total) #f total)
                                     #:min-lr (ref-num c "min_lr")
                                     #:decay-fraction (ref-num c "decay_fraction")
                                     #:decay-type (string->symbol (ref-set c "decay_type")))))
       (test-assert (string-append name ": 50 steps")
         (close? (map lr-at (iota 50)) (tensor->list (ref-tensor c "lr")) 1e-15))))
   '("cosine-warmup" "cosine-plain" "wsd-linear" "wsd-1-sqrt" "constant-warmup")))

;;; ---- by hand ----------------------------------------------------------------------------

(test-group "schedule values by hand"
  (let ((cos (make-lr-schedule 'cosine #:lr 1.0 #:warmup 2 #:total 6 #:min-lr 0.2)))
    ;; warmup 0.5, 1; then p = 0, .25, .5, .75; min from 6 on
    (test-assert "cosine" (close? (map cos (iota 8))
                                  (list 0.5 1.0 1.0 (+ 0.2 (* 0.8 0.5 (+ 1 (sqrt 0.5)))) 0.6
                                        (+ 0.2 (* 0.8 0.5 (- 1 (sqrt 0.5)))) 0.2 0.2)
                                  1e-15))
    (test-equal "lr-schedule-config" 'cosine (assq-ref (lr-schedule-config cos) 'kind))
    (test-equal "lr-schedule-config of another procedure" #f (lr-schedule-config car)))
  (let ((wsd (make-lr-schedule 'wsd #:lr 1.0 #:total 10 #:decay-fraction 0.4 #:decay-type 'linear)))
    ;; D = 4: stable for s < 6, then 1 − p with p = 0, .25, .5, .75
    (test-assert "wsd linear" (close? (map wsd (iota 11)) '(1.0 1.0 1.0 1.0 1.0 1.0 1.0 0.75 0.5 0.25 0.0) 1e-15)))
  (let ((c (make-lr-schedule 'constant #:lr 0.5 #:warmup 4)))
    (test-assert "constant" (close? (map c '(0 3 4 1000)) '(0.125 0.5 0.5 0.5) 1e-15)))
  (test-moelab-error "a negative step" "the step must be >= 0, got -1"
                     ((make-lr-schedule 'constant) -1)))

(define (fresh-param values) (requires-grad! (tensor values #:dtype 'f64)))

(test-group "an optimizer step is an in-place write"
  (let* ((w (fresh-param '(1.0 2.0)))
         (o (make-sgd `(("w" . ,w)) #:lr 0.5))
         (y (tsum (t* w w))))               ; saves w for its backward
    (backward! (tsum (t* 3 w)))
    (let ((v (tensor-version w)))
      (optimizer-step! o)
      (test-equal "the step bumps the version" (+ v 1) (tensor-version w)))
    (test-error "a graph that saved w before the step refuses backward" 'moelab-error (backward! y))))

(test-group "parameters change in place"
  (let* ((w (fresh-param '((1.0 -2.0) (0.5 3.0))))
         (b (fresh-param '(1.0 1.0)))
         (o (make-adamw `(("layer.w" . ,w) ("layer.bias" . ,b)) #:lr 0.1 #:eps 0)))
    (test-assert "optimizer?" (and (optimizer? o) (not (optimizer? w))))
    (test-assert "is-a <optimizer>" ((@ (oop goops) is-a?) o <optimizer>))
    (test-equal "printed" "#<optimizer adamw lr=0.1 step=0 params=2>" (format #f "~a" o))
    (test-equal "optimizer-config" '(0.9 . 0.95) (assq-ref (optimizer-config o) 'betas))
    (test-equal "no-decay by name" '("norm" "bias") (assq-ref (optimizer-config o) 'no-decay))
    (test-equal "optimizer-parameters: names in order" '("layer.w" "layer.bias")
      (map car (optimizer-parameters o)))
    (backward! (tsum (t* (tensor '((1 1) (1 -1)) #:dtype 'f64) (t+ w (t* 0 b)))))
    (backward! (tsum (t* (tensor '(2 -3) #:dtype 'f64) b)))
    (test-assert "grad-norm" (close? (grad-norm (optimizer-parameters o)) (sqrt (+ 4 4 9)) 1e-15))
    (optimizer-step! o)
    ;; step 1 with eps 0: p(1 − lr·wd) − lr·sign(g); the bias does not decay
    (test-values "w moved" '((0.89 -2.08) (0.395 3.07)) w)
    (test-values "bias moved" '(0.9 1.1) b)
    (test-equal "optimizer-parameters are the live tensors" (tensor->list w)
      (tensor->list (assoc-ref (optimizer-parameters o) "layer.w")))
    (test-equal "optimizer-steps" 1 (optimizer-steps o))
    (optimizer-zero-grad! o)
    (test-equal "optimizer-zero-grad!" #f (tensor-grad w))
    (test-equal "optimizer-lr" 0.1 (optimizer-lr o))
    (set-optimizer-lr! o 0.05)
    (test-equal "set-optimizer-lr!" 0.05 (optimizer-lr o))
    (test-moelab-error "negative lr" "the learning rate must be finite and >= 0, got -1"
                       (set-optimizer-lr! o -1))
    (test-equal "still 0.05" 0.05 (optimizer-lr o))))

(test-group "sgd by hand"
  (let* ((p (fresh-param '(1.0 2.0)))
         (o (make-sgd (list p) #:lr 0.5 #:momentum 0.9)))
    (set-tensor-grad! p (tensor '(1.0 -1.0) #:dtype 'f64))
    (optimizer-step! o)
    (set-tensor-grad! p (tensor '(2.0 0.0) #:dtype 'f64))
    (optimizer-step! o)
    ;; b = g1, then 0.9·g1 + g2
    (test-values "two steps" (list (- 0.5 (* 0.5 2.9)) (+ 2.5 (* 0.5 0.9))) p)
    (test-equal "unnamed parameters are numbered" '("step" "0.step" "0.momentum_buffer")
      (map car (optimizer-state o)))))

;;; ---- state ------------------------------------------------------------------------------

(define (adamw-pair seed)
  (let ((params `(("w" . ,(randn '(3 2) #:seed seed #:requires-grad #t))
                  ("ln.weight" . ,(randn '(2) #:seed (+ seed 1) #:requires-grad #t)))))
    (values params (make-adamw params #:lr 1e-2))))

(define (take-step! params o seed)
  (for-each (lambda (e i) (set-tensor-grad! (cdr e) (randn (tensor-shape (cdr e)) #:seed (+ seed i))))
            params (iota (length params)))
  (optimizer-step! o))

(define (snapshot state)
  (map (lambda (e) (cons (car e) (if (tensor? (cdr e)) (clone (cdr e)) (cdr e)))) state))

(test-group "optimizer-state and optimizer-load-state!"
  (let-values (((pa oa) (adamw-pair 1)) ((pb ob) (adamw-pair 1)))
    (take-step! pa oa 10)
    (take-step! pa oa 20)
    (let ((saved (snapshot (optimizer-state oa))))
      (test-equal "names" '("step" "w.step" "w.exp_avg" "w.exp_avg_sq"
                            "ln.weight.step" "ln.weight.exp_avg" "ln.weight.exp_avg_sq")
        (map car saved))
      (test-equal "step count" 2 (assoc-ref saved "step"))
      ;; B takes A's parameters and state, then both take the same step
      (no-grad (for-each (lambda (a b) (tensor-copy! (cdr b) (cdr a))) pa pb))
      (optimizer-load-state! ob (reverse saved))        ; any order
      (take-step! pa oa 30)
      (take-step! pb ob 30)
      (test-assert "resumed = uninterrupted"
        (every (lambda (a b) (equal? (tensor->list (cdr a)) (tensor->list (cdr b)))) pa pb))
      (let ((before (snapshot (optimizer-state ob))))
        (test-moelab-error "a missing entry" "state entry \"ln.weight.exp_avg_sq\" is missing"
                           (optimizer-load-state! ob (list-head saved 6)))
        (test-moelab-error "an unknown entry" "unknown state entry \"w.exp_avgg\""
                           (optimizer-load-state! ob (cons '("w.exp_avgg" . 1) saved)))
        (test-moelab-error "a wrong shape" "is [6], its parameter [3 2]"
                           (optimizer-load-state! ob (map (lambda (e) (if (equal? (car e) "w.exp_avg")
                                                                          (cons (car e) (zeros '(6)))
                                                                          e))
                                                          saved)))
        (test-moelab-error "a negative count" "must be a count >= 0, got -3"
                           (optimizer-load-state! ob (acons "step" -3 (cdr saved))))
        (test-moelab-error "not an alist" "state entry 0 is not a (name . value) pair"
                           (optimizer-load-state! ob '(1 2)))
        (test-assert "unchanged after the errors"
          (every (lambda (x y) (if (tensor? (cdr x))
                                   (equal? (tensor->list (cdr x)) (tensor->list (cdr y)))
                                   (equal? x y)))
                 before (optimizer-state ob)))))))

;;; ---- bad input ------------------------------------------------------------------------

(test-group "bad input"
  (define w (randn '(2 2) #:seed 3 #:requires-grad #t))
  (test-moelab-error "unknown schedule kind" "unknown schedule kind linear-warmup (constant, cosine or wsd)"
                     (make-lr-schedule 'linear-warmup #:lr 1e-3))
  (test-moelab-error "unknown decay type" "unknown decay type sqrt"
                     (make-lr-schedule 'wsd #:total 10 #:decay-type 'sqrt))
  (test-moelab-error "negative lr in a schedule" "cosine: lr must be finite and >= 0, got -0.001"
                     (make-lr-schedule 'cosine #:lr -1e-3 #:total 10))
  (test-moelab-error "warmup > total" "cosine: warmup 20 exceeds total 10"
                     (make-lr-schedule 'cosine #:lr 1e-3 #:warmup 20 #:total 10))
  (test-moelab-error "cosine without total" "total must be >= 1, got 0"
                     (make-lr-schedule 'cosine #:lr 1e-3))
  (test-moelab-error "negative lr" "lr must be finite and >= 0, got -0.1"
                     (make-adamw `(("w" . ,w)) #:lr -0.1))
  (test-moelab-error "beta2 = 1" "betas must lie in [0, 1), got (0.9 . 1)"
                     (make-adamw `(("w" . ,w)) #:betas '(0.9 . 1.0)))
  (test-moelab-error "betas not a pair" "betas must be a pair of numbers"
                     (make-adamw `(("w" . ,w)) #:betas 0.9))
  (test-moelab-error "a non-tensor parameter" "parameter 1 is not a (name . tensor) pair or a tensor: (\"b\" . 2)"
                     (make-adamw `(("w" . ,w) ("b" . 2))))
  (test-moelab-error "not a list" "parameters must be a list of (name . tensor) pairs"
                     (make-sgd w))
  (test-moelab-error "no parameters" "no parameters to optimize" (make-sgd '()))
  (test-moelab-error "a parameter twice" "parameters \"a\" and \"b\" share storage"
                     (make-sgd `(("a" . ,w) ("b" . ,w))))
  (test-moelab-error "an integer parameter" "parameter \"i\" is i64; parameters must be f32 or f64"
                     (make-sgd `(("i" . ,(arange 0 4)))))
  (test-moelab-error "negative momentum" "momentum must be finite and >= 0, got -1"
                     (make-sgd `(("w" . ,w)) #:momentum -1))
  (test-moelab-error "clip max 0" "max must be finite and > 0, got 0" (clip-grad-norm! (list w) 0))
  (let* ((p (randn '(2) #:seed 4 #:requires-grad #t))
         (o (make-sgd `(("p" . ,p) ("w" . ,w)) #:lr 1))
         (w-before (tensor->list w)))
    (set-tensor-grad! p (tensor '(1.0 2.0)))
    (set-tensor-grad! w (tensor '((1.0 2.0) (3.0 4.0))))
    (set-tensor-grad! p #f)
    (optimizer-step! o)
    (test-values "w moved by its gradient" (map (lambda (r g) (map - r g)) w-before '((1.0 2.0) (3.0 4.0))) w)
    (test-equal "a parameter without a gradient is skipped" '("step" 1 "p.step" 0 "w.step" 1)
      (append-map (lambda (k) (list k (assoc-ref (optimizer-state o) k))) '("step" "p.step" "w.step")))))

;;; ---- metrics files ----------------------------------------------------------------------

(define tmp-dir (string-append (or (getenv "TMPDIR") "/tmp") "/moelab-train-test-" (number->string (getpid))))
(define metrics-file (string-append tmp-dir "/runs/a/metrics.jsonl"))

(test-group "metrics files"
  (let ((log (make-metrics-log metrics-file
                               #:header '((config (layers . 4) (lr . 3e-4) (score . softmax) (tied . #f))
                                          (seed . 7) (threads . 2) (started . "2026-01-02T03:04:05Z")))))
    (test-assert "metrics-log?" (and (metrics-log? log) (not (metrics-log? 1))))
    (test-assert "is-a <metrics-log>" ((@ (oop goops) is-a?) log <metrics-log>))
    (test-equal "metrics-log-path" metrics-file (metrics-log-path log))
    (metrics-log-write! log `((step . 1) (loss . 2.5) (grad_norm . +nan.0) (lr . +inf.0)
                              (aux (z . (0.25 0.001)))
                              (tokens_per_expert . ,(tensor '((1 2) (3 4)) #:dtype 'i64))
                              (domains . #("bible" "c"))))
    (metrics-log-close! log)
    (metrics-log-close! log)
    (test-moelab-error "writing after close" "the metrics log is closed"
                       (metrics-log-write! log '((step . 2))))
    (test-equal "the exact text"
      (string-append
       "{\"config\": {\"layers\": 4, \"lr\": 0.0003, \"score\": \"softmax\", \"tied\": false}, "
       "\"moelab\": \"" %moelab-version "\", \"seed\": 7, \"threads\": 2, \"started\": \"2026-01-02T03:04:05Z\"}\n"
       "{\"step\": 1, \"loss\": 2.5, \"grad_norm\": null, \"lr\": null, \"aux\": {\"z\": [0.25, 0.001]}, "
       "\"tokens_per_expert\": [[1, 2], [3, 4]], \"domains\": [\"bible\", \"c\"]}\n")
      (call-with-input-file metrics-file read-string))
    (let ((lines (read-jsonl metrics-file)))
      (test-equal "read-jsonl: two lines" 2 (length lines))
      (test-equal "read-jsonl: the config" '((layers . 4) (lr . 3e-4) (score . "softmax") (tied . #f))
        (assq-ref (car lines) 'config))
      (test-equal "read-jsonl: lists of lists" '((1 2) (3 4)) (assq-ref (cadr lines) 'tokens_per_expert))
      (test-assert "read-jsonl: null reads as NaN" (nan? (assq-ref (cadr lines) 'grad_norm)))))
  (let ((log (make-metrics-log metrics-file #:append? #t)))
    (metrics-log-write! log '((step . 2)))
    (metrics-log-close! log)
    (test-equal "append? adds no header" '(((step . 2))) (list-tail (read-jsonl metrics-file) 2)))
  (let ((log (make-metrics-log metrics-file)))
    (metrics-log-close! log)
    (test-equal "default header" '(config moelab seed threads started)
      (map car (car (read-jsonl metrics-file)))))
  (let ((log (make-metrics-log metrics-file #:header '((config) (seed . 3)))))
    (metrics-log-close! log)
    (test-equal "an empty config is an object" "{\"config\": {}, \"moelab\""
      (substring (call-with-input-file metrics-file read-string) 0 23)))
  (test-equal "json-line" "{\"a\": [1, 2.5, null], \"b\": {\"c\": true}, \"d\": []}"
    (json-line '((a 1 2.5 +nan.0) (b (c . #t)) (d . ()))))
  (test-moelab-error "a value that is not JSON" "cannot write #<procedure car"
                     (json-line `((f . ,car))))
  (test-moelab-error "a record that is not an alist" "a record must be a non-empty alist"
                     (let ((log (make-metrics-log metrics-file)))
                       (dynamic-wind (const #t)
                                     (lambda () (metrics-log-write! log '(1 2)))
                                     (lambda () (metrics-log-close! log)))))
  (call-with-output-file metrics-file (lambda (port) (display "{\"a\": 1}\n{\"a\": \n{}\n" port)))
  (test-moelab-error "a bad line" "metrics.jsonl:2: not JSON" (read-jsonl metrics-file))
  (test-moelab-error "a missing file" "cannot open /nonexistent/m.jsonl" (read-jsonl "/nonexistent/m.jsonl")))

(system* "rm" "-rf" tmp-dir)

(test-end "train")
(exit-with-test-status)
