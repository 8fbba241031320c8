;;; (moelab checkpoint) — tensors on disk: safetensors files of any tensors,
;;; a model's parameters and buffers under its own names, and the export of
;;; a model as a Hugging Face Mixtral directory.
;;;
;;; Every file is written atomically (a temporary file beside it, fsynced,
;;; renamed, the directory fsynced) and carries a SHA-256 of its contents in
;;; its metadata; a load checks the whole file before it returns or changes
;;; anything, and its errors name the file and the tensor.
;;;
;;; A parallel trainer's checkpoint is the one-process files: its ranks send
;;; their parts (stages, expert slices, ZeRO-1 moments) to world rank 0,
;;; which writes them; a load on any mesh takes each rank's part.
;;;
;;; @example
;;; (save-tensors "w.safetensors" `(("w" . ,(randn '(2 3) #:seed 1)))
;;;               #:metadata '(("note" . "first try")))
;;; (load-tensors "w.safetensors")          ; ⇒ (("w" . #<tensor f32[2 3] …>))
;;; (save-model m "model.safetensors")
;;; (load-model! m "model.safetensors")
;;; (export-hf-mixtral m "hf/")             ; config.json + model.safetensors
;;; @end example

(define-module (moelab checkpoint)
  #:use-module (moelab primitives)
  #:use-module (moelab tensor)
  #:use-module (moelab ops)
  #:use-module (moelab autograd)
  #:use-module (moelab nn)
  #:use-module (moelab train)
  #:use-module (moelab data)
  #:use-module (moelab trainer)
  #:use-module (moelab dist)
  #:use-module (moelab config)
  #:use-module (srfi srfi-1)
  #:use-module (ice-9 ftw)
  #:use-module (ice-9 format)
  #:use-module (ice-9 regex)
  #:export (save-tensors load-tensors tensor-file-metadata save-model load-model!
            save-checkpoint load-checkpoint! checkpoint-steps latest-checkpoint
            export-hf-mixtral hf-mixtral-tensors))

(define (checkpoint-error who fmt . args)
  ;; the message is the error's format string: its tildes are escaped
  (throw 'moelab-error who (string-join (string-split (apply format #f fmt args) #\~) "~~")
         '() '(arg)))

(define (metadata-alist who metadata)
  (unless (and (list? metadata)
               (every (lambda (e) (and (pair? e) (string? (car e)) (string? (cdr e)))) metadata))
    (checkpoint-error who "#:metadata must be an alist of strings, got ~s" metadata))
  metadata)

(define* (save-tensors path tensors #:key (metadata '()))
  "Write TENSORS, an alist (name . tensor) with distinct string names, to
the safetensors file PATH, with METADATA (an alist of strings) in its
@code{__metadata__}. Each tensor is written in its own dtype (f64 f32 bf16
i64 i32 bool) as its elements in row-major order, whatever its strides. The
write is atomic and the file carries a SHA-256 checksum
(@code{moelab.sha256}); bad arguments raise a moelab-error and write
nothing."
  (%save-tensors path tensors (metadata-alist "save-tensors" metadata)))

(define (load-tensors path)
  "The tensors of the safetensors file PATH as an alist (name . tensor), in
the order of their data in the file. The whole file is checked first: header
length, JSON, dtypes, shapes, offsets (in range, no overlap, no gap), the
checksum when there is one. On any error a moelab-error names the file and
the tensor and nothing is returned."
  (car (%load-tensors path)))

(define (tensor-file-metadata path)
  "The @code{__metadata__} of the safetensors file PATH as an alist of
strings (the checksum included), after the same checks as load-tensors."
  (cdr (%load-tensors path)))

(define* (save-model m path #:key (metadata '()))
  "Write every parameter and buffer of the model M to the safetensors file
PATH under the names of model-parameters and model-buffers, each in its own
dtype (the router expert biases stay f32 whatever the model dtype), with
METADATA (an alist of strings). Atomic, with a checksum."
  (%save-model m path (metadata-alist "save-model" metadata)))

(define (load-model! m path)
  "Load the safetensors file PATH into the model M. The file must hold
exactly M's parameters and buffers, each with M's shape and a float dtype
(converted to M's). Everything is checked before anything changes: on an
error M is exactly as it was and the moelab-error names the file and the
tensor. Non-finite values load (the trainer checks them when it resumes)."
  (%load-model! m path))

;;; ---- trainer checkpoints ------------------------------------------------------------

(define checkpoint-format "moelab-checkpoint")
(define checkpoint-format-version 1)

(define (step-name step) (format #f "step-~7,'0d" step))
(define step-rx (make-regexp "^step-([0-9]{7})$"))

(define (checkpoint-steps dir)
  "The complete checkpoints in the run directory DIR, as a sorted list of
(step . step-directory). Only directories named step-NNNNNNN count: a save
in progress (or cut short) lives in a hidden temporary directory until its
final rename."
  (let ((names (or (scandir dir (lambda (n) (regexp-exec step-rx n))) '())))
    (sort (filter-map (lambda (n)
                        (let ((path (string-append dir "/" n)))
                          (and (file-is-directory? path)
                               (cons (string->number (match:substring (regexp-exec step-rx n) 1)) path))))
                      names)
          (lambda (a b) (< (car a) (car b))))))

(define (latest-checkpoint dir)
  "The step directory of the latest complete checkpoint in the run
directory DIR, or #f when there is none."
  (let ((all (checkpoint-steps dir)))
    (and (pair? all) (cdr (last all)))))

(define (delete-tree path)
  (if (and (file-is-directory? path) (not (eq? 'symlink (stat:type (lstat path)))))
      (begin
        (for-each (lambda (n) (delete-tree (string-append path "/" n)))
                  (or (scandir path (lambda (n) (not (member n '("." ".."))))) '()))
        (rmdir path))
      (delete-file path)))

(define (mkdir-p dir)
  (unless (or (string-null? dir) (file-exists? dir))
    (mkdir-p (dirname dir))
    (mkdir dir)))

(define (optimizer-file-tensors o)
  ;; the optimizer state with its step counts as i64 scalars
  (map (lambda (e)
         (cons (car e) (if (tensor? (cdr e)) (cdr e) (tensor (cdr e) #:dtype 'i64))))
       (optimizer-state o)))

(define (router-states-json m)
  (map (lambda (layer s)
         ;; the seed as a string: it may not fit JSON's 64-bit signed integers
         `((layer . ,layer) (counters . ,(tensor->list (car s))) (rng-seed . ,(number->string (cadr s)))
           (rng-position . ,(caddr s))))
       (model-moe-layers m) (%model-router-states m)))

(define (write-checkpoint who tr dir keep-last model-tensors opt-tensors routers)
  ;; the files of step (trainer-steps TR) into DIR, atomically; returns the
  ;; step directory
  (mkdir-p dir)
  (let* ((step (trainer-steps tr))
         (final (string-append dir "/" (step-name step)))
         (tmp (format #f "~a/.tmp-~a-~a" dir (step-name step) (getpid))))
    ;; leftovers of saves that were cut short
    (for-each (lambda (n) (delete-tree (string-append dir "/" n)))
              (or (scandir dir (lambda (n) (string-prefix? ".tmp-step-" n))) '()))
    (mkdir tmp)
    (let ((meta `(("format" . ,checkpoint-format) ("step" . ,(number->string step))
                  ("moelab-version" . ,%moelab-version))))
      (if model-tensors
          (%save-tensors (string-append tmp "/model.safetensors") model-tensors meta)
          (%save-model (trainer-model tr) (string-append tmp "/model.safetensors") meta))
      (%save-tensors (string-append tmp "/optimizer.safetensors") opt-tensors meta))
    (%write-json-file who (string-append tmp "/trainer.json")
                      `((format . ,checkpoint-format) (format-version . ,checkpoint-format-version)
                        (moelab-version . ,%moelab-version)
                        (step . ,step)
                        (trainer . ,(trainer-state tr))
                        (dataset . ,(dataset-state (trainer-dataset tr)))
                        (routers . ,routers)
                        (config . ,(trainer-config tr))))
    (%sync-directory who tmp)
    (if (file-exists? final)
        ;; a run resumed from an older step comes here again: the old
        ;; directory steps aside (under a name the next save cleans up)
        ;; just before the new one takes its place
        (let ((old (format #f "~a/.tmp-~a-replaced-~a" dir (step-name step) (getpid))))
          (rename-file final old)
          (rename-file tmp final)
          (%sync-directory who dir)
          (delete-tree old))
        (rename-file tmp final))
    (%sync-directory who dir)
    (when keep-last
      (let ((all (checkpoint-steps dir)))
        (for-each (lambda (e) (delete-tree (cdr e)))
                  (list-head all (max 0 (- (length all) keep-last))))))
    final))

(define* (save-checkpoint tr dir #:key (keep-last #f))
  "Save everything TR's next step depends on into DIR/step-NNNNNNN (the
step count, 7 digits) and return that directory: model.safetensors (every
parameter and buffer, save-model), optimizer.safetensors (optimizer-state:
NAME.exp_avg, NAME.exp_avg_sq or NAME.momentum_buffer, the step counts as
i64 scalars) and trainer.json (the format and moelab version, the step, the
trainer's loop state and settings, the dataset cursor, and per MoE layer
the router's counters — expert-bias accumulators, global-batch buffer, step
counts — and the seed and position of its random stream). The files are written into
a hidden temporary directory beside the others, each fsynced, and the
directory is renamed into place only when complete: a crash leaves the
previous checkpoints intact and nothing load-checkpoint! would pick. Older
step directories beyond the last KEEP-LAST (#f: keep all) are then removed.
A step directory that already exists (a run resumed from an older step) is
replaced by the new one.

For a parallel trainer (make-trainer #:mesh) every rank of the world calls
it: the ranks send their parts to world rank 0 — each pipeline stage's
tensors, each expert-parallel rank's slice of the experts.* tensors and of
their moments, and under ZeRO-1 each parameter's moments from the rank
that owns them — and rank 0 alone writes the same files a one-process run
writes, the full tensors under their global names. Every rank returns the
step directory, or raises the writer's error."
  (define who "save-checkpoint")
  (unless (trainer? tr) (checkpoint-error who "expected a trainer, got ~s" tr))
  (unless (string? dir) (checkpoint-error who "the directory must be a string, got ~s" dir))
  (unless (or (not keep-last) (and (exact-integer? keep-last) (positive? keep-last)))
    (checkpoint-error who "#:keep-last must be #f or a positive integer, got ~s" keep-last))
  (if (not (trainer-mesh tr))
      (write-checkpoint who tr dir keep-last #f (optimizer-file-tensors (trainer-optimizer tr))
                        (router-states-json (trainer-model tr)))
      (let* ((parts (gather-checkpoint tr))
             ;; rank 0 writes; every rank learns how it went (whatever the
             ;; error: the others wait for this answer)
             (mine (and (zero? (current-rank))
                        (catch #t
                          (lambda ()
                            (list 'ok (write-checkpoint who tr dir keep-last
                                                        (car parts) (cadr parts) (caddr parts))))
                          (lambda (key . args) (list 'error key args)))))
             (outcome (broadcast-value (and mine (if (eq? (car mine) 'ok)
                                                     mine
                                                     (list 'error (error-text (cadr mine) (caddr mine))))))))
        (cond ((eq? (car outcome) 'ok) (cadr outcome))
              (mine (apply throw (cadr mine) (caddr mine)))
              (else (checkpoint-error who "world rank 0 could not write the checkpoint: ~a" (cadr outcome)))))))

;;; ---- the parts of a parallel run ---------------------------------------------------

(define (expert-shard? m name)
  ;; NAME is one of M's experts.* tensors and M holds a slice of it
  (and (> (model-ep-size m) 1) (string-contains name ".experts.")))

(define (gather-pieces pieces)
  ;; PIECES: this rank's (kind name index value) — a tensor, or a number —
  ;; where INDEX orders the slices of one tensor along dimension 0 (the
  ;; first expert they hold). Returns, on world rank 0, an alist
  ;; ((kind . name) . value) with the slices joined, in the order the
  ;; names first appear over the ranks; '() on the others. Of the ranks
  ;; that hold a copy of a piece, the lowest sends it.
  (let* ((manifest (map (lambda (p)
                          (let ((v (cadddr p)))
                            (list (car p) (cadr p) (caddr p)
                                  (if (tensor? v) (list (tensor-shape v) (tensor-dtype v)) v))))
                        pieces))
         (all (all-gather-values manifest))
         (me (current-rank))
         (holder (make-hash-table))
         (key (lambda (x) (list-head x 3)))
         (held-by? (lambda (r x) (= r (hash-ref holder (key x))))))
    (for-each (lambda (r m)
                (for-each (lambda (x) (unless (hash-ref holder (key x)) (hash-set! holder (key x) r))) m))
              (iota (length all)) all)
    (if (not (zero? me))
        (begin
          (for-each (lambda (p)
                      (when (and (held-by? me p) (tensor? (cadddr p)))
                        (send! (contiguous (cadddr p)) 0)))
                    pieces)
          '())
        (let ((local (make-hash-table))
              (slices (make-hash-table))   ; (kind . name) -> ((index . value) …)
              (order '()))
          (for-each (lambda (p) (hash-set! local (key p) (cadddr p))) pieces)
          (for-each
           (lambda (r m)
             (for-each
              (lambda (x)
                (when (held-by? r x)
                  (let* ((spec (cadddr x))
                         (value (cond ((not (pair? spec)) spec)
                                      ((zero? r) (hash-ref local (key x)))
                                      (else (recv-like (car spec) (cadr spec) r))))
                         (name (cons (car x) (cadr x)))
                         (known (hash-ref slices name)))
                    (unless known (set! order (cons name order)))
                    (hash-set! slices name (cons (cons (caddr x) value) (or known '()))))))
              m))
           (iota (length all)) all)
          (map (lambda (name)
                 (let ((parts (sort (hash-ref slices name) (lambda (a b) (< (car a) (car b))))))
                   (cons name (if (null? (cdr parts))
                                  (cdar parts)
                                  (with-no-grad (lambda () (cat (map cdr parts))))))))
               (reverse order))))))

(define (suffix-of entry)
  ;; "layers.0.attn.wq.exp_avg" -> ("layers.0.attn.wq" . "exp_avg")
  (let ((dot (string-rindex entry #\.)))
    (if dot (cons (substring entry 0 dot) (substring entry (+ dot 1))) (cons entry ""))))

(define optimizer-suffixes '("step" "exp_avg" "exp_avg_sq" "momentum_buffer"))

(define (gather-checkpoint tr)
  ;; Collective: on world rank 0 (model-tensors optimizer-tensors routers),
  ;; the whole run's, as a one-process trainer's would be; #f elsewhere.
  (let* ((m (trainer-model tr))
         (index (lambda (name) (if (expert-shard? m name) (model-expert-offset m) 0)))
         (params (model-parameters m))
         (pieces
          (append
           (map (lambda (p) (list 'param (car p) (index (car p)) (cdr p))) params)
           (map (lambda (b) (list 'buffer (car b) 0 (cdr b))) (model-buffers m))
           (map (lambda (e)
                  (list 'opt (car e) (if (tensor? (cdr e)) (index (car (suffix-of (car e)))) 0)
                        (cdr e)))
                (optimizer-state (trainer-optimizer tr)))))
         (got (gather-pieces pieces))
         ;; every stage's routers, the state of its data rank 0
         (routers (concatenate (all-gather-values (router-states-json m) #:group (mesh-group 'pp)))))
    (and (zero? (current-rank))
         (let* ((of (lambda (kind) (filter-map (lambda (g) (and (eq? (caar g) kind) (cons (cdar g) (cdr g)))) got)))
                (position (let ((h (make-hash-table)))
                            (for-each (lambda (p i) (hash-set! h (car p) i)) (of 'param) (iota (length (of 'param))))
                            h))
                (rank (lambda (entry)
                        ;; the one-process order: "step", then per parameter its entries
                        (if (equal? entry "step")
                            -1
                            (let ((s (suffix-of entry)))
                              (+ (* 10 (or (hash-ref position (car s)) (hash-count (const #t) position)))
                                 (or (list-index (lambda (x) (string=? x (cdr s))) optimizer-suffixes) 9))))))
                (opt (sort (map (lambda (e) (cons (rank (car e)) e)) (of 'opt))
                           (lambda (a b) (< (car a) (car b))))))
           (list (append (of 'param) (of 'buffer))
                 (map (lambda (r) (let ((e (cdr r)))
                                    (cons (car e) (if (tensor? (cdr e)) (cdr e) (tensor (cdr e) #:dtype 'i64)))))
                      opt)
                 routers)))))

((@@ (moelab trainer) %set-trainer-checkpoint-hook!)
 (lambda (tr dir keep-last) (save-checkpoint tr dir #:keep-last keep-last)))

(define (json-ref who file alist key)
  (let ((e (assq key alist)))
    (unless e (checkpoint-error who "~a: no \"~a\" entry" file key))
    (cdr e)))

(define (check-finite who file tensors)
  (for-each (lambda (e)
              (let ((t (cdr e)))
                (when (memq (tensor-dtype t) '(f32 f64 bf16))
                  (unless (finite? (tensor-item (tsum (to-dtype t 'f64))))
                    (checkpoint-error who "~a: tensor ~s has non-finite values (NaN or Inf); #:allow-non-finite? #t loads it anyway"
                                      file (car e))))))
            tensors))

(define (error-text key args)
  ;; the message of an error thrown as (KEY WHO FORMAT ARGS …), as Guile's
  ;; and moelab's are
  (or (false-if-exception
       (and (>= (length args) 3) (string? (cadr args)) (list? (caddr args))
            (apply format #f (cadr args) (caddr args))))
      (format #f "~a ~s" key args)))

(define (agree who parallel? thunk undo)
  ;; (THUNK) on every rank; when PARALLEL?, each rank learns whether every
  ;; other one succeeded, and a failure anywhere runs UNDO (when THUNK
  ;; succeeded here) and raises on every rank, naming the first rank that
  ;; failed. Returns THUNK's value.
  (if (not parallel?)
      (thunk)
      (let* ((outcome (catch #t
                        (lambda () (cons 'ok (thunk)))
                        (lambda (key . args) (list 'error key args))))
             (failures (all-gather-values (and (eq? (car outcome) 'error)
                                               (error-text (cadr outcome) (caddr outcome)))))
             (first (list-index identity failures)))
        (cond
         ((not first) (cdr outcome))
         ((eq? (car outcome) 'error) (apply throw (cadr outcome) (caddr outcome)))
         (else
          (undo)
          (checkpoint-error who "rank ~a: ~a" first (list-ref failures first)))))))

(define (parse-routers who file entries)
  ;; (layer counters-tensor seed position) per saved MoE layer
  (map (lambda (r)
         (let ((layer (json-ref who file r 'layer))
               (c (json-ref who file r 'counters))
               (seed (json-ref who file r 'rng-seed))
               (pos (json-ref who file r 'rng-position)))
           (unless (and (exact-integer? layer) (list? c) (every list? c) (string? seed)
                        (string->number seed) (exact-integer? pos) (>= pos 0))
             (checkpoint-error who "~a: a router state is malformed" file))
           (list layer (tensor c #:dtype 'f64) (string->number seed) pos)))
       (if (list? entries) entries (checkpoint-error who "~a: \"routers\" is not a list" file))))

(define (rank-routers who file m saved)
  ;; the saved states of M's MoE layers, found by layer number
  (map (lambda (l)
         (let ((s (assv l saved)))
           (unless s (checkpoint-error who "~a: no router state for MoE layer ~a" file l))
           (cdr s)))
       (model-moe-layers m)))

(define (rank-optimizer-state who file m o tensors model-names)
  ;; O's state taken from the whole run's optimizer TENSORS: the moments of
  ;; M's expert slices cut out of the full [E ...] ones
  (for-each (lambda (e)
              (unless (or (string=? (car e) "step") (member (car (suffix-of (car e))) model-names))
                (checkpoint-error who "~a: tensor ~s is not the state of a parameter of the model"
                                  file (car e))))
            tensors)
  (map (lambda (e)
         (let* ((name (car e))
                (v (or (assoc-ref tensors name)
                       (checkpoint-error who "~a: tensor ~s of the optimizer state is missing from the file"
                                         file name))))
           (cons name
                 (if (and (tensor? (cdr e)) (expert-shard? m (car (suffix-of name))))
                     (let* ((mine (tensor-shape (cdr e)))
                            (full (cons (* (car mine) (model-ep-size m)) (cdr mine))))
                       (unless (equal? (tensor-shape v) full)
                         (checkpoint-error who "~a: tensor ~s is ~a in the file, the model's is ~a"
                                           file name (tensor-shape v) full))
                       (narrow v 0 (model-expert-offset m) (car mine)))
                     v))))
       (optimizer-state o)))

(define* (load-checkpoint! tr dir #:key (allow-non-finite? #f))
  "Restore into TR the checkpoint DIR: a step directory written by
save-checkpoint, or a run directory, meaning its latest complete step
directory. Every file is read and checked first — the checksums, the model's
names, shapes and dtypes, the optimizer's names and shapes, the router and
dataset states, the batch settings, and (unless ALLOW-NON-FINITE?) that no
weight or moment is NaN or infinite — and on any error TR, its model,
optimizer and dataset are exactly as they were and the moelab-error names
the file and the tensor. Returns the step directory loaded. The next
trainer-step! then continues exactly as the saved run did.

The checkpoint may come from a run on any mesh, and TR may be a parallel
trainer (make-trainer #:mesh) on any other: every rank of the world calls
it, reads the files and takes its part — its pipeline stage's layers and
their routers, its slice of the experts and of their moments, under ZeRO-1
the moments it owns. When any rank finds an error, every rank raises and
none changes anything."
  (define who "load-checkpoint!")
  (unless (trainer? tr) (checkpoint-error who "expected a trainer, got ~s" tr))
  (let* ((parallel? (and (trainer-mesh tr) #t))
         (m (trainer-model tr))
         (o (trainer-optimizer tr))
         (ds (trainer-dataset tr))
         (read-all
          (lambda ()
            (unless (and (string? dir) (file-is-directory? dir))
              (checkpoint-error who "~s is not a directory" dir))
            (let* ((step-dir (if (file-exists? (string-append dir "/trainer.json"))
                                 dir
                                 (or (latest-checkpoint dir)
                                     (checkpoint-error who "no checkpoint in ~a (no trainer.json, no step-NNNNNNN directory)" dir))))
                   (file (lambda (n) (string-append step-dir "/" n)))
                   (state (%read-json-file who (file "trainer.json"))))
              (unless (and (list? state) (equal? (assq-ref state 'format) checkpoint-format))
                (checkpoint-error who "~a is not a moelab checkpoint (format ~s)" (file "trainer.json")
                                  (and (list? state) (assq-ref state 'format))))
              (let* ((model-tensors (%read-model-file who m (file "model.safetensors")))
                     (file-opt (load-tensors (file "optimizer.safetensors")))
                     (opt-tensors (if parallel?
                                      (rank-optimizer-state who (file "optimizer.safetensors") m o file-opt
                                                            (map car model-tensors))
                                      file-opt))
                     (saved (parse-routers who (file "trainer.json") (json-ref who (file "trainer.json") state 'routers)))
                     (tstate (json-ref who (file "trainer.json") state 'trainer))
                     (dstate (json-ref who (file "trainer.json") state 'dataset)))
                (unless allow-non-finite?
                  (check-finite who (file "model.safetensors") model-tensors)
                  (check-finite who (file "optimizer.safetensors") file-opt))
                (unless (or parallel? (= (length saved) (length (model-moe-layers m))))
                  (checkpoint-error who "~a: router states for ~a MoE layers, the model has ~a"
                                    (file "trainer.json") (length saved) (length (model-moe-layers m))))
                (list step-dir model-tensors opt-tensors
                      (if parallel? (rank-routers who (file "trainer.json") m saved) (map cdr saved))
                      tstate dstate)))))
         (parts (agree who parallel? read-all (lambda () #f))))
    (apply
     (lambda (step-dir model-tensors opt-tensors routers tstate dstate)
       ;; Apply, each part checking itself before it changes anything; a later
       ;; failure (here or on another rank) puts the earlier parts back.
       (let ((old-trainer (trainer-state tr))
             (old-opt (map (lambda (e) (cons (car e) (if (tensor? (cdr e)) (clone (cdr e)) (cdr e))))
                           (optimizer-state o)))
             (old-data (dataset-state ds))
             (old-routers (%model-router-states m))
             (done '()))
         (define (undo-all) (for-each (lambda (undo) (undo)) done) (set! done '()))
         (agree who parallel?
                (lambda ()
                  (catch #t
                    (lambda ()
                      (trainer-load-state! tr tstate)
                      (set! done (cons (lambda () (trainer-load-state! tr old-trainer)) done))
                      (optimizer-load-state! o opt-tensors)
                      (set! done (cons (lambda () (optimizer-load-state! o old-opt)) done))
                      (dataset-load-state! ds dstate)
                      (set! done (cons (lambda () (dataset-load-state! ds old-data)) done))
                      (%model-load-router-states! who m routers)
                      (set! done (cons (lambda () (%model-load-router-states! who m old-routers)) done)))
                    (lambda (key . args)
                      (undo-all)
                      (apply throw key args))))
                undo-all)
         ;; checked against the model above: these cannot fail (the full
         ;; [E ...] experts.* tensors go into a rank's slice)
         (let ((held (map car (append (model-parameters m) (model-buffers m)))))
           (for-each (lambda (e)
                       (when (member (car e) held) (set-model-parameter! m (car e) (cdr e))))
                     model-tensors))
         step-dir))
     parts)))

;;; ---- Hugging Face Mixtral ------------------------------------------------------------

(define (hf-check who ok? fmt . args)
  (unless ok?
    (throw 'moelab-error who
           (string-append "this model has no Mixtral equivalent: " (apply format #f fmt args))
           '() '(arg))))

(define (check-mixtral-compatible who cfg)
  (let ((r (assq-ref cfg 'router)))
    (hf-check who (and (= (assq-ref cfg 'moe-every) 1) (= (assq-ref cfg 'first-dense) 0))
              "every layer must be an MoE layer (moe-every ~a, first-dense ~a)"
              (assq-ref cfg 'moe-every) (assq-ref cfg 'first-dense))
    (hf-check who (= (assq-ref cfg 'shared-experts) 0) "shared experts (~a)" (assq-ref cfg 'shared-experts))
    (hf-check who (eq? (assq-ref r 'score) 'softmax) "the router score is ~a, Mixtral's is softmax"
              (assq-ref r 'score))
    ;; post-softmax top-k = softmax, top-k, renormalise (Mixtral)
    (hf-check who (or (not (assq-ref r 'pre-softmax?)) (eq? (assq-ref r 'normalize?) #t))
              "pre-softmax routing without renormalisation")
    (hf-check who (or (not (assq-ref r 'pre-softmax?)) (= (assq-ref r 'norm-p) 1.0))
              "renormalisation by the ~a-norm" (assq-ref r 'norm-p))
    (hf-check who (not (assq-ref r 'groups)) "group-limited routing")
    (hf-check who (not (assq-ref r 'expert-bias?)) "aux-loss-free expert bias")
    (hf-check who (not (assq-ref r 'sinkhorn?)) "Sinkhorn routing")
    (hf-check who (not (assq-ref r 'capacity-factor)) "an expert capacity (tokens are dropped)")
    (hf-check who (= (assq-ref r 'scaling-factor) 1.0) "routing weights scaled by ~a"
              (assq-ref r 'scaling-factor))
    (hf-check who (= (assq-ref r 'score-offset) 0.0) "a score offset")))

(define (expert-matrix t e)
  ;; expert E of a stacked [E A B] tensor, as the [B A] matrix of a torch
  ;; Linear (y = x Wᵀ)
  (contiguous (transpose (squeeze (narrow t 0 e 1) 0) 0 1)))

(define (hf-mixtral-tensors m)
  "The tensors of the model M under Hugging Face Mixtral's names and
layouts, as an alist (hf-name . tensor): model.embed_tokens.weight,
model.layers.N.@{input_layernorm, self_attn.@{q,k,v,o@}_proj,
post_attention_layernorm, block_sparse_moe.gate,
block_sparse_moe.experts.J.@{w1,w2,w3@}@}.weight, model.norm.weight and
lm_head.weight (absent when the embeddings are tied). Expert J's w1, w3 and
w2 are the transposes of slice J of w-gate, w-up and w-down. The tensors are
detached copies or the live parameters; see export-hf-mixtral."
  (let* ((cfg (model-config m))
         (params (model-parameters m))
         (p (lambda (name) (detach (assoc-ref params name))))
         (experts (assq-ref cfg 'experts)))
    (append
     `(("model.embed_tokens.weight" . ,(p "embed")))
     (append-map
      (lambda (l)
        (let* ((pre (format #f "layers.~a." l))
               (hf (format #f "model.layers.~a." l))
               (at (lambda (s) (string-append pre s))))
          (append
           `((,(string-append hf "input_layernorm.weight") . ,(p (at "attn-norm")))
             (,(string-append hf "self_attn.q_proj.weight") . ,(p (at "attn.wq")))
             (,(string-append hf "self_attn.k_proj.weight") . ,(p (at "attn.wk")))
             (,(string-append hf "self_attn.v_proj.weight") . ,(p (at "attn.wv")))
             (,(string-append hf "self_attn.o_proj.weight") . ,(p (at "attn.wo")))
             (,(string-append hf "post_attention_layernorm.weight") . ,(p (at "ffn-norm")))
             (,(string-append hf "block_sparse_moe.gate.weight") . ,(p (at "moe.router.weight"))))
           (append-map
            (lambda (e)
              (let ((x (format #f "~ablock_sparse_moe.experts.~a." hf e)))
                `((,(string-append x "w1.weight") . ,(expert-matrix (p (at "moe.experts.w-gate")) e))
                  (,(string-append x "w2.weight") . ,(expert-matrix (p (at "moe.experts.w-down")) e))
                  (,(string-append x "w3.weight") . ,(expert-matrix (p (at "moe.experts.w-up")) e)))))
            (iota experts)))))
      (iota (assq-ref cfg 'layers)))
     `(("model.norm.weight" . ,(p "norm")))
     (if (assq-ref cfg 'tie-embeddings?) '() `(("lm_head.weight" . ,(p "lm-head")))))))

(define (hf-mixtral-config cfg)
  (let ((r (assq-ref cfg 'router))
        (dtype (if (eq? (assq-ref cfg 'dtype) 'f64) "float64" "float32")))
    `((architectures . ("MixtralForCausalLM"))
      (model_type . "mixtral")
      (vocab_size . ,(assq-ref cfg 'vocab))
      (hidden_size . ,(assq-ref cfg 'hidden))
      (intermediate_size . ,(assq-ref cfg 'ffn))
      (num_hidden_layers . ,(assq-ref cfg 'layers))
      (num_attention_heads . ,(assq-ref cfg 'heads))
      (num_key_value_heads . ,(assq-ref cfg 'kv-heads))
      (head_dim . ,(quotient (assq-ref cfg 'hidden) (assq-ref cfg 'heads)))
      (num_local_experts . ,(assq-ref cfg 'experts))
      (num_experts_per_tok . ,(assq-ref cfg 'top-k))
      (max_position_embeddings . ,(assq-ref cfg 'max-seq))
      (rms_norm_eps . ,(assq-ref cfg 'norm-eps))
      (rope_theta . ,(assq-ref cfg 'rope-theta))
      (tie_word_embeddings . ,(assq-ref cfg 'tie-embeddings?))
      (hidden_act . "silu")
      (initializer_range . ,(assq-ref cfg 'init-std))
      (router_aux_loss_coef . ,(or (assq-ref (or (assq-ref r 'losses) '()) 'micro-batch) 0.0))
      (output_router_logits . #f)
      (attention_dropout . 0.0)
      (sliding_window . +nan.0)         ; written as null: no sliding window
      (use_cache . #t)
      (torch_dtype . ,dtype)
      (transformers_version . "4.40.0")
      (moelab_version . ,%moelab-version))))

(define (export-hf-mixtral m dir)
  "Write the model M as a Hugging Face Mixtral checkpoint in the directory
DIR (made when missing): config.json (MixtralForCausalLM: sizes, heads,
experts, top-k, RoPE θ, RMSNorm ε, tied embeddings, dtype) and
model.safetensors with the names and layouts of hf-mixtral-tensors. Both
use rotate-half RoPE on the same head-major q/k rows, so no permutation is
needed. M must be Mixtral-shaped: every layer MoE, no shared experts, a
softmax router with top-k renormalisation and no expert bias, groups,
Sinkhorn, capacity or scaling; otherwise a moelab-error says what differs
and nothing is written."
  (let ((cfg (model-config m)))
    (check-mixtral-compatible "export-hf-mixtral" cfg)
    (unless (file-exists? dir) (mkdir dir))
    (unless (file-is-directory? dir)
      (checkpoint-error "export-hf-mixtral" "~a is not a directory" dir))
    (%save-tensors (string-append dir "/model.safetensors") (hf-mixtral-tensors m)
                   '(("format" . "pt")))
    (%write-json-file "export-hf-mixtral" (string-append dir "/config.json") (hf-mixtral-config cfg))))
