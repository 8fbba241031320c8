;;; ranks.scm — the REPL across ranks. (moelab ranks): a world of thread
;;; ranks that stays open, evaluation on one rank (its definitions persist)
;;; and on all ranks at once (collectives meet), errors naming the rank, the
;;; world surviving them. (moelab control): the step-boundary control point
;;; of a job of two thread ranks, each training its own tiny trainer: rank
;;; 0's pause holds both ranks at the same step, control-eval runs commands
;;; on both (values, collectives, errors), resume and stop reach both.

(include "common.scm")
(use-modules (moelab ranks) (moelab control) (ice-9 threads))

(test-begin "ranks")

;; nothing here may wait for long
(set-comm-timeout! 30)

(define shared 7)                       ; seen by the ranks' modules

(test-group "a world that stays open"
  (test-equal "open-ranks! gives N" 4 (open-ranks! 4 #:mesh '((dp . 2) (pp . 2))))
  (test-equal "ranks-open" '(4 . ((dp . 2) (pp . 2))) (ranks-open))
  (test-equal "every rank's current-rank" '(0 1 2 3) (all-ranks-eval '(current-rank)))
  (test-equal "a collective on every rank" '(10.0 10.0 10.0 10.0)
    (all-ranks-eval '(tensor-item (all-reduce! (tensor (+ 1.0 (current-rank)))))))
  (test-equal "the mesh: dp groups" '((0 1) (0 1) (2 3) (2 3))
    (all-ranks-eval '(group-ranks (mesh-group 'dp))))
  (test-equal "the mesh: pp coordinates" '(0 0 1 1) (all-ranks-eval '(mesh-coord 'pp)))
  (test-equal "a collective over a mesh group" '(1.0 1.0 5.0 5.0)
    (all-ranks-eval '(tensor-item (all-reduce! (tensor (current-rank)) #:group 'dp))))
  (test-equal "the caller's definitions are seen" '(7 8 9 10)
    (all-ranks-eval '(+ shared (current-rank))))
  (rank-eval 2 '(define x (* 10 (current-rank))))
  (test-equal "a rank keeps its definitions" 20 (rank-eval 2 'x))
  (test-equal "rank-eval's rank context" '(3 4) (rank-eval 3 '(list (current-rank) (world-size))))
  (test-moelab-error "another rank has not got them" "rank 1 failed: Unbound variable: x"
    (rank-eval 1 'x))
  (test-assert "the caller's module is left alone" (not (defined? 'x)))
  (test-assert "a rank's value comes as it is (a tensor)"
    (tensor? (rank-eval 0 '(tensor 1.0))))
  (test-moelab-error "an error on one rank names it" "rank 1 failed: boom"
    (all-ranks-eval '(if (= (current-rank) 1) (error "boom") 0)))
  (test-moelab-error "errors on two ranks: the first, and the other" "rank 1 failed: boom (rank 3 failed too)"
    (all-ranks-eval '(if (odd? (current-rank)) (error "boom") 0)))
  (test-equal "the world survives the errors" '(0 1 2 3) (all-ranks-eval '(current-rank)))
  (test-moelab-error "no such rank" "no rank 9 in the world of 4 ranks" (rank-eval 9 '1))
  (test-moelab-error "a bad mesh" "mesh" (open-ranks! 4 #:mesh '((dp . 3))))
  (test-equal "a bad mesh leaves the world open" '(4 . ((dp . 2) (pp . 2))) (ranks-open))
  (test-equal "opening again replaces the world" 2 (open-ranks! 2))
  (test-equal "the new world" '(2 2) (all-ranks-eval '(world-size)))
  (test-moelab-error "a bad rank count" "positive integer" (open-ranks! 0))
  (close-ranks!)
  (test-equal "close-ranks!" #f (ranks-open))
  (test-moelab-error "rank-eval with no world" "no ranks are open" (rank-eval 0 '1))
  (test-equal "all-ranks-eval with no world nor job: here alone" '(0) (all-ranks-eval '(current-rank))))

;;; ---- the control point: two thread ranks, each with its own trainer ---------------------

(define top (string-append (dirname (current-filename)) "/../.."))
(define corpus (string-append top "/tests/data/corpus"))

(define (tiny-trainer)
  (let ((m (make-moe-transformer #:vocab 256 #:layers 1 #:hidden 16 #:heads 2 #:ffn 16
                                 #:experts 2 #:top-k 2 #:max-seq 4 #:seed 1)))
    (make-trainer #:model m #:optimizer (make-sgd (model-parameters m) #:lr 0.1)
                  #:dataset (make-text-dataset #:domains `((alpha . ,(string-append corpus "/alpha"))
                                                           (beta . ,(string-append corpus "/beta")))
                                               #:seq-len 4 #:seed 0)
                  #:batch-size 2)))

(define quiet (%make-void-port "w"))
(define tr0 #f)                         ; rank 0's trainer
(define tr1 #f)                         ; rank 1's
(define tr0-ready (make-mutex))

;; Start a job of 2 ranks training STEPS steps on a thread; rank 0's
;; trainer is paused at once when PAUSED?. Returns the thread; its value is
;; the list of the ranks' step counts at the end.
(define (start-job steps paused?)
  (set! tr0 #f)
  (set! tr1 #f)
  (call-with-new-thread
   (lambda ()
     (with-ranks 2
       (lambda (rank)
         (let ((tr (tiny-trainer)))
           (when (zero? rank)
             (when paused? (trainer-pause! tr))
             (with-mutex tr0-ready (set! tr0 tr)))
           (when (= rank 1)
             (with-mutex tr0-ready (set! tr1 tr)))
           (trainer-run! tr #:steps steps #:port quiet)
           (trainer-steps tr)))))))

(define (wait-until ok?)
  ;; #t once (OK?) holds, #f after 30 s
  (let loop ((i 0))
    (cond ((ok?) #t)
          ((> i 600) #f)
          (else (usleep 50000) (loop (+ i 1))))))

(define (join job)
  (join-thread job (+ (current-time) 60) 'still-running))

(test-group "a paused job serves commands on every rank"
  (test-moelab-error "control-eval with no job" "no training job is paused" (control-eval '1))
  (let ((job (start-job 3 #t)))
    (test-assert "rank 0's pause holds the job at step 0" (wait-until control-waiting?))
    (test-equal "control-job-size" 2 (control-job-size))
    (test-equal "both ranks at step 0, each with its own trainer (tr)" '((0 0) (1 0))
      (control-eval '(list (current-rank) (trainer-steps tr))))
    (test-equal "all-ranks-eval goes to the paused job" '((0 0) (1 0))
      (all-ranks-eval '(list (current-rank) (trainer-steps tr))))
    (test-equal "one rank" 1 (control-eval '(current-rank) #:rank 1))
    (test-equal "rank-eval goes to the paused job" 1 (rank-eval 1 '(current-rank)))
    (test-equal "a collective in the command" '(3.0 3.0)
      (control-eval '(tensor-item (all-reduce! (tensor (+ 1.0 (current-rank)))))))
    (test-assert "a definition gives nothing to show"
      (every unspecified? (control-eval '(define k (* 3 (current-rank))))))
    (test-equal "definitions stay for later commands" '(0 3) (control-eval 'k))
    (test-equal "data travel as they are" '(("é~a" 1.5 #t sym (1 . 2)) ("é~a" 1.5 #t sym (1 . 2)))
      (control-eval '(list "é~a" 1.5 #t 'sym '(1 . 2))))
    (test-equal "other values as their printed form" '("#<tensor f32[] cpu (0.0)>" "#<tensor f32[] cpu (1.0)>")
      (map (lambda (v) (format #f "~a" v)) (control-eval '(tensor (current-rank)))))
    (test-moelab-error "an error on a rank names it" "rank 1 failed: boom"
      (control-eval '(if (= (current-rank) 1) (error "boom") 0)))
    (test-equal "the job is still paused after it" '(0 0) (control-eval '(trainer-steps tr)))
    (test-moelab-error "no such rank" "no rank 2 in the job's world of 2 ranks"
      (control-eval '1 #:rank 2))
    (trainer-resume! tr0)
    (test-equal "resume: both ranks run their 3 steps" '(3 3) (join job))
    (test-assert "no longer waiting" (not (control-waiting?)))
    (test-moelab-error "control-eval after the run" "no training job is paused" (control-eval '1))))

(test-group "pausing a running job, then stopping it"
  (let ((job (start-job 100000 #f)))
    (test-assert "rank 0's trainer starts" (wait-until (lambda () (with-mutex tr0-ready tr0))))
    (test-assert "it has taken steps" (wait-until (lambda () (> (trainer-steps tr0) 2))))
    (trainer-pause! tr0)
    (test-assert "the pause reaches the job" (wait-until control-waiting?))
    (let ((steps (control-eval '(trainer-steps tr))))
      (test-assert "both ranks stopped at the same step boundary"
        (and (= (car steps) (cadr steps)) (> (car steps) 2)))
      (trainer-stop! tr0)
      (test-equal "trainer-stop! on rank 0 stops every rank there" steps (join job)))))

(test-group "a stop asked for on another rank stops the job"
  (let ((job (start-job 100000 #f)))
    (test-assert "rank 1's trainer has taken steps"
      (wait-until (lambda () (let ((t (with-mutex tr0-ready tr1))) (and t (> (trainer-steps t) 2))))))
    (trainer-stop! tr1)
    (let ((steps (join job)))
      (test-assert "both ranks stop at the same step boundary"
        (and (pair? steps) (= (car steps) (cadr steps)) (> (car steps) 2))))))

(test-group "bad commands"
  (let ((job (start-job 3 #t)))
    (test-assert "paused" (wait-until control-waiting?))
    (test-moelab-error "a form that does not read back" "reads back"
      (control-eval (list 'quote (tensor 1.0))))
    (test-equal "the job is still paused" '(0 0) (control-eval '(trainer-steps tr)))
    (trainer-stop! tr0)
    (test-equal "stopped while paused" '(0 0) (join job))))

(test-end "ranks")
(exit-with-test-status)
