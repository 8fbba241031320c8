;;; (moelab dist) — ranks, process groups, the device mesh and collectives.
;;;
;;; (with-ranks N PROC) runs (PROC RANK) on N ranks and returns the list of
;;; their results, in rank order. In one process the ranks are threads (the
;;; threads backend: real data movement through shared memory, the same
;;; semantics and errors as MPI), so a researcher can run one step on N
;;; simulated ranks in the REPL and look at every rank's tensors. Under
;;; @code{mpirun -np N moelab script.scm} the same script runs unchanged: each
;;; process runs PROC once, on its own rank of the MPI world.
;;;
;;; Inside PROC, (current-rank), (world-size), (world-group) and
;;; (mesh-group 'dp) describe the rank; collectives take #:group (default: the
;;; world). Outside with-ranks there is one rank: rank 0 of a world of 1, and
;;; every collective is an identity.
;;;
;;; @example
;;; (with-ranks 4
;;;   (lambda (rank)
;;;     (tensor->list (all-reduce! (tensor (list (+ rank 1)))))))
;;; ⇒ ((10.0) (10.0) (10.0) (10.0))
;;;
;;; (with-ranks 8 #:mesh '((dp . 2) (cp . 2) (tp . 2))
;;;   (lambda (rank)
;;;     (tensor-item (all-reduce! (tensor rank) #:group 'tp))))
;;; ⇒ (1.0 1.0 5.0 5.0 9.0 9.0 13.0 13.0)
;;; @end example

(define-module (moelab dist)
  #:use-module (moelab primitives)
  #:use-module (moelab tensor)
  #:use-module ((oop goops) #:select (define-method))
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-4)
  #:use-module (srfi srfi-9)
  #:use-module (srfi srfi-9 gnu)
  #:use-module (rnrs bytevectors)
  #:re-export (<group>)
  ;; recv! is also Guile's socket receive; this one takes a tensor
  #:replace (recv!)
  #:export (with-ranks current-rank world-size world-group
            mesh-group mesh-coord parse-mesh mpi-launched?
            group? group-size group-rank group-name group-ranks
            all-reduce! all-reduce all-gather reduce-scatter all-to-all
            broadcast! barrier
            send! recv-like broadcast-value all-gather-values
            make-grad-sync grad-sync? grad-sync-arm! grad-sync-wait! grad-sync-stats
            grad-sync-buckets grad-sync-free!
            set-comm-timeout! comm-timeout))

;;; ---- errors ---------------------------------------------------------------------

(define (escape-tildes text)
  ;; a moelab-error message is a format string: show TEXT as it is
  (string-join (string-split text #\~) "~~"))

(define (dist-error who status fmt . args)
  (throw 'moelab-error who (escape-tildes (apply format #f fmt args)) '() (list status)))

(define (wrong-type who what obj)
  (scm-error 'wrong-type-arg who (string-append "expected " what ", got ~s") (list obj) (list obj)))

;;; ---- rank contexts ------------------------------------------------------------------

;; A rank's view of its with-ranks: the C context (scope of its handles), its
;; rank, the world size and the world group.
(define-record-type <rank-context>
  (make-rank-context c rank size world)
  rank-context?
  (c context-c)
  (rank context-rank)
  (size context-size)
  (world context-world))

(define (context-from c)
  (make-rank-context c (%context-rank c) (%context-size c) (%context-world c)))

;; The context of the rank this code runs on, or #f outside with-ranks.
(define %current-context (make-parameter #f))

(define the-self-group (%self-group))

(define (current-rank)
  "This rank's number in the world of the enclosing with-ranks: 0 to
(world-size) - 1. 0 outside with-ranks."
  (let ((c (%current-context)))
    (if c (context-rank c) 0)))

(define (world-size)
  "The number of ranks of the enclosing with-ranks (1 outside with-ranks)."
  (let ((c (%current-context)))
    (if c (context-size c) 1)))

(define (world-group)
  "The group of all the ranks of the enclosing with-ranks: the default
#:group of every collective. Outside with-ranks, the trivial group of this
rank alone (collectives on it are identities)."
  (let ((c (%current-context)))
    (if c (context-world c) the-self-group)))

(define (dims->string who dims)
  (cond ((symbol? dims) (symbol->string dims))
        ((and (list? dims) (every symbol? dims))
         (string-join (map symbol->string dims) " "))
        (else (wrong-type who "a mesh dimension (tp cp ep dp pp) or a list of them" dims))))

(define (mesh-group dims)
  "The process group of the mesh dimensions DIMS, a symbol or a list of
them among @code{tp cp ep dp pp}: the ranks that share this rank's
coordinates in every other dimension, ordered by world rank. For example
with @code{#:mesh '((dp . 2) (cp . 2) (tp . 2))}, (mesh-group 'tp) is the
pair of ranks that differ only in tp, and (mesh-group '(dp cp)) the 4 ranks
with this rank's tp coordinate. Dimensions the mesh lacks count as size 1;
'() is this rank alone; all of them, the world. Outside with-ranks (or in a
with-ranks of one rank) every dimension has size 1: the trivial group. In a
with-ranks of several ranks without #:mesh it raises moelab-error. The group
can be used only inside the rank's procedure that made it."
  (let ((c (%current-context)))
    (%context-mesh-group (and c (context-c c)) (dims->string "mesh-group" dims))))

(define (mesh-coord dim)
  "This rank's coordinate along the mesh dimension DIM (one of
@code{tp cp ep dp pp}). World ranks are laid out with tp varying fastest,
then cp, ep, dp and pp: rank = tp + TP*(cp + CP*(ep + EP*(dp + DP*pp))). 0 for
a dimension the mesh lacks, and outside with-ranks."
  (unless (symbol? dim) (wrong-type "mesh-coord" "a mesh dimension (tp cp ep dp pp)" dim))
  (let ((c (%current-context)))
    (%context-mesh-coord (and c (context-c c)) (symbol->string dim))))

(define* (parse-mesh spec #:key (who "parse-mesh"))
  "The mesh written in the string SPEC, as the alist that with-ranks takes
as its @code{#:mesh}, in SPEC's order: @code{\"pp=2,dp=2\"} gives
@code{((pp . 2) (dp . 2))}.  Items are NAME=SIZE (or NAME:SIZE) between
spaces or commas; the names are tp, cp, ep, dp and pp, each at most once, and
the sizes positive; @code{\"\"} gives the empty mesh.  Anything else raises
moelab-error naming WHO and the text at fault.  @code{moelab train --mesh}
reads its argument with it."
  (%parse-mesh who spec))

(define (mpi-launched?)
  "True when this process was started by mpirun (or srun), or already has an
MPI world: with-ranks then runs its procedure once, on this process's rank of
the MPI world, instead of starting threads."
  (%mpi-mode?))

;;; ---- groups ------------------------------------------------------------------------

(define (group? obj)
  "True when OBJ is a process group (from world-group or mesh-group)."
  (%group? obj))

(define (group-size g)
  "The number of ranks in the group G."
  (%group-size g))

(define (group-rank g)
  "This rank's position in the group G: 0 to (group-size G) - 1."
  (%group-rank g))

(define (group-name g)
  "The label of the group G: \"world\", \"self\", or its mesh dimensions
(\"tp\", \"cp dp\", …)."
  (%group-name g))

(define (group-ranks g)
  "The world ranks of the members of the group G, in group order (member i
of the group is world rank (list-ref (group-ranks G) i))."
  (%group-ranks g))

(define-method (write (g <group>) port)
  (display (%group-repr g) port))

(define-method (display (g <group>) port)
  (display (%group-repr g) port))

;; #:group of the collectives: a group, #f (the world) or mesh dimensions.
(define (resolve-group who g)
  (cond ((not g) (world-group))
        ((%group? g) g)
        ((or (symbol? g) (and (list? g) (every symbol? g))) (mesh-group g))
        (else (wrong-type who "a group, #f or mesh dimensions" g))))

;;; ---- with-ranks -----------------------------------------------------------------------

(define %mesh-dims '(tp cp ep dp pp))

(define (mesh->spec mesh n)
  ;; '((dp . 2) (tp . 2)) → "dp=2 tp=2", checked against N ranks
  (unless (and (list? mesh)
               (every (lambda (d) (and (pair? d) (symbol? (car d)))) mesh))
    (wrong-type "with-ranks" "a mesh such as '((dp . 2) (tp . 2))" mesh))
  (for-each
   (lambda (d)
     (unless (memq (car d) %mesh-dims)
       (dist-error "with-ranks" 'arg "unknown mesh dimension '~a': use tp, cp, ep, dp or pp"
                   (car d)))
     (unless (and (exact-integer? (cdr d)) (positive? (cdr d)))
       (dist-error "with-ranks" 'arg "mesh dimension ~a has size ~s; sizes are positive integers"
                   (car d) (cdr d))))
   mesh)
  (let loop ((ds mesh))
    (when (pair? ds)
      (when (assq (caar ds) (cdr ds))
        (dist-error "with-ranks" 'arg "mesh dimension ~a given twice" (caar ds)))
      (loop (cdr ds))))
  (let ((spec (string-join (map (lambda (d) (format #f "~a=~a" (car d) (cdr d))) mesh) " "))
        (product (fold * 1 (map cdr mesh))))
    (unless (= product n)
      (dist-error "with-ranks" 'shape "mesh ~a makes ~a ranks, but ~a ranks were asked for"
                  spec product n))
    spec))

(define (error-text key args)
  (let ((text (call-with-output-string
                (lambda (port) (print-exception port #f key args)))))
    (string-trim-right (string-map (lambda (ch) (if (char=? ch #\newline) #\space ch)) text))))

(define (error-status key args)
  (if (and (eq? key 'moelab-error) (= (length args) 4)
           (pair? (list-ref args 3)) (symbol? (car (list-ref args 3))))
      (car (list-ref args 3))
      'state))

;; Call (PROC RANK) as the rank of CTX: (#t . value), or (#f TEXT . STATUS)
;; when it raised (an error never leaves the rank).
(define (rank-outcome ctx proc)
  (catch #t
    (lambda ()
      (cons #t (parameterize ((%current-context ctx))
                 (proc (context-rank ctx)))))
    (lambda (key . args)
      (cons #f (cons (if (eq? key 'quit)
                         "the rank's procedure called exit"
                         (error-text key args))
                     (error-status key args))))))

(define (ranks->string ranks)
  (string-join (map number->string ranks) ", "))

(define (raise-rank-failure rank text status others)
  (dist-error "with-ranks" status "rank ~a failed: ~a~a" rank text
              (cond ((null? others) "")
                    ((null? (cdr others)) (format #f " (rank ~a failed too)" (car others)))
                    (else (format #f " (ranks ~a failed too)" (ranks->string others))))))

(define (run-on-threads n spec proc)
  (let* ((state (current-dynamic-state))
         (grad? (%grad-enabled?))
         ;; Each rank thread takes the caller's dynamic state (ports,
         ;; parameters), as call-with-new-thread does, and its grad mode,
         ;; and catches its errors inside them.
         (entry (lambda (c)
                  (with-dynamic-state state
                    (lambda ()
                      (%set-grad-enabled! grad?)
                      (rank-outcome (context-from c) proc)))))
         (run (%threads-run n spec entry))
         (first (car run))
         (outcomes (vector->list (cdr run)))
         (ok? (lambda (o) (and (pair? o) (car o))))
         (failed (filter-map (lambda (o r) (and (not (ok? o)) r)) outcomes (iota n))))
    (if (null? failed)
        (map cdr outcomes)
        (let* ((culprit (or first (car failed)))
               (o (list-ref outcomes culprit)))
          (raise-rank-failure culprit
                              (if (pair? o) (cadr o) "the rank did not run")
                              (if (pair? o) (cddr o) 'state)
                              (delete culprit failed))))))

(define (run-on-mpi n spec proc)
  (let* ((c (%mpi-open n spec))
         (ctx (context-from c))
         (rank (context-rank ctx))
         (o (dynamic-wind
              (lambda () #t)
              (lambda () (rank-outcome ctx proc))
              (lambda () (%context-close! c)))))
    ;; A collective timed out: MPI cannot take it back, so the job ends here,
    ;; with the error PROC raised (or the timeout, if PROC caught it).
    (let ((failure (%mpi-failed)))
      (when failure
        (%mpi-abort (format #f "moelab (rank ~a): ~a; aborting the MPI job"
                            rank (if (car o) failure (cadr o))))))
    (if (car o)
        (map (lambda (r) (and (= r rank) (cdr o))) (iota n))
        (raise-rank-failure rank (cadr o) (cddr o) '()))))

(define (with-ranks n . args)
  "(with-ranks N [#:mesh MESH] PROC): run (PROC RANK) on N ranks and return
the list of their results in rank order.

In one process the ranks are N threads (the threads backend: the OpenMP
threads are divided between them). Inside PROC, (current-rank),
(world-size), (world-group), (mesh-group …) and (mesh-coord …) describe the
rank, and collectives default to the world of the N ranks. Each rank runs
with the caller's dynamic state (current ports, parameters) and grad mode.

MESH factors the world into named dimensions, an alist such as
@code{'((dp . 2) (cp . 2) (tp . 2))} over @code{tp cp ep dp pp} whose sizes
multiply to N; (mesh-group 'dp) and friends then give the process groups.

If PROC raises on a rank, that rank stops; its peers' collectives fail at
once with an error naming it (instead of waiting), and with-ranks raises
moelab-error naming the failed rank(s) and the original message. A
collective that waits longer than (comm-timeout) seconds fails too.

Under @code{mpirun -np N moelab script.scm} (see mpi-launched?) the same
script runs unchanged: N must equal the number of processes; each process
runs PROC once, on its own rank of the MPI world (and the mesh, built
collectively), and with-ranks returns a list of N entries holding this
rank's result at its position and #f at the others. An error in PROC raises
moelab-error on that process only: MPI cannot interrupt the peers'
collectives, so end the program (an uncaught error does; mpirun then stops
the other processes). A collective that waits longer than (comm-timeout)
for a rank that never comes raises moelab-error naming the collective, the
group and the missing ranks; MPI cannot take the collective back, so when
PROC returns (or raises) with-ranks prints that message and aborts the whole
job (MPI_Abort): mpirun exits non-zero instead of hanging.
@example
(with-ranks 4 (lambda (rank) (* rank rank)))       ; ⇒ (0 1 4 9)
(with-ranks 8 #:mesh '((dp . 2) (cp . 2) (tp . 2))
  (lambda (rank) (group-ranks (mesh-group 'dp))))
@end example"
  (let loop ((args args) (mesh #f) (proc #f))
    (cond
     ((null? args)
      (unless (procedure? proc) (wrong-type "with-ranks" "a procedure of one argument (the rank)" proc))
      (unless (and (exact-integer? n) (positive? n))
        (dist-error "with-ranks" 'arg "the number of ranks must be a positive integer, not ~s" n))
      (let ((spec (and mesh (mesh->spec mesh n))))
        (if (and (not (%current-context)) (%mpi-mode?))
            (run-on-mpi n spec proc)
            (run-on-threads n spec proc))))
     ((eq? (car args) #:mesh)
      (when (null? (cdr args)) (dist-error "with-ranks" 'arg "#:mesh needs a value"))
      (loop (cddr args) (cadr args) proc))
     ((keyword? (car args))
      (dist-error "with-ranks" 'arg "unknown keyword ~s (expected #:mesh)" (car args)))
     ((not proc) (loop (cdr args) mesh (car args)))
     (else (dist-error "with-ranks" 'arg "unexpected argument ~s" (car args))))))

;;; ---- collectives ------------------------------------------------------------------------

(define* (all-reduce! t #:key (group #f) (op 'sum))
  "Reduce the tensor T over GROUP in place: afterwards every rank's T holds
OP over all the ranks' T (element by element, reduced in rank order, so the
result is the same on every rank and every run). OP is @code{'sum} (the
default), @code{'avg}, @code{'max} or @code{'min}; GROUP a group, mesh
dimensions (@code{'tp}, @code{'(dp cp)}) or #f for the world. Every rank must
pass the same dtype, element count and OP. Not recorded by autograd (T must
not require grad while grad mode is on): use all-reduce inside a model.
Returns T."
  (%all-reduce! t op (resolve-group "all-reduce!" group)))

(define* (all-reduce t #:key (group #f) (op 'sum))
  "A new tensor: OP (@code{'sum}, the default, @code{'avg}, @code{'max} or
@code{'min}) over GROUP of every rank's T, as all-reduce! computes it. Differentiable
for sum and avg: the backward all-reduces the output gradient with the same
OP (the loss being the sum of every rank's loss)."
  (%all-reduce t op (resolve-group "all-reduce" group)))

(define* (all-gather t #:key (group #f))
  "Every rank's T concatenated along dim 0 in rank order of GROUP: for T of
shape [d0 …] on N ranks, a tensor [N*d0 …] (a 0-d T gives [N]); the same on
every rank. Every rank passes the same shape. Differentiable: the gradient
of T is the sum reduce-scatter of the output gradients."
  (%all-gather t (resolve-group "all-gather" group)))

(define* (reduce-scatter t #:key (group #f) (op 'sum))
  "Reduce T [N*d0 …] with OP (default @code{'sum}) over the N ranks of GROUP
and keep block r, rows [r*d0, (r+1)*d0), on rank r: a tensor [d0 …]. Dim 0
of T must divide by N. Differentiable for sum (the gradient is the
all-gather of the output gradients) and avg."
  (%reduce-scatter t op (resolve-group "reduce-scatter" group)))

(define* (all-to-all t send-splits #:key (group #f))
  "Exchange rows of T between the ranks of GROUP. SEND-SPLITS is a list of
row counts, one per rank of the group, summing to T's dim 0 (any may be 0),
or #f to split dim 0 evenly: the first SEND-SPLITS[0] rows go to rank 0, the
next SEND-SPLITS[1] to rank 1, and so on. Returns two values: the received
rows, in the order of the ranks that sent them, and the list of how many
rows came from each rank. Differentiable: the backward sends the gradients
back the same way.
@example
(call-with-values (lambda () (all-to-all x '(1 0 2)))
  (lambda (received recv-splits) …))
@end example"
  (let ((r (%all-to-all t send-splits (resolve-group "all-to-all" group))))
    (values (car r) (cdr r))))

(define* (broadcast! t #:key (root 0) (group #f))
  "Overwrite T on every rank of GROUP with the T of rank ROOT (a rank of the
group, default 0). Every rank passes the same shape, dtype and ROOT. Not
recorded by autograd. Returns T."
  (%broadcast! t root (resolve-group "broadcast!" group)))

(define* (barrier #:key (group #f))
  "Wait until every rank of GROUP (default: the world) has reached the
barrier."
  (%barrier (resolve-group "barrier" group)))

;;; ---- point to point ---------------------------------------------------------------------

(define* (send! t dst #:key (tag 0) (group #f))
  "Send the tensor T to rank DST of GROUP (a group, mesh dimensions or #f
for the world), labelled with TAG (a non-negative integer, default 0). The
receiving rank calls recv! (or recv-like) with this rank as its source, the
same TAG, and a tensor of the same element count and dtype. On the threads
backend send! returns at once (the data is copied); under MPI a large
message may wait until it is received, so order sends and receives as you
would for MPI (a rank that sends before it receives pairs with one that
receives first). Not recorded by autograd. Returns T."
  (%send t dst tag (resolve-group "send!" group)))

(define* (recv! t src #:key (tag 0) (group #f))
  "Fill the tensor T with the tensor that rank SRC of GROUP sent with TAG
(default 0) and return T. T must have the element count and dtype of what
was sent (else moelab-error on this rank, naming both sizes); it must not
require grad while grad mode is on. A receive that waits longer than
(comm-timeout) fails naming the rank and tag it waited for."
  (%recv! t src tag (resolve-group "recv!" group)))

(define* (recv-like shape dtype src #:key (tag 0) (group #f) (device 'cpu))
  "A new tensor of SHAPE and DTYPE (on DEVICE, default cpu) holding what
rank SRC of GROUP sent with TAG (default 0); see recv!.
@example
(with-ranks 2
  (lambda (rank)
    (if (= rank 0)
        (begin (send! (tensor '(1 2 3)) 1 #:tag 7) #f)
        (tensor->list (recv-like '(3) 'f32 0 #:tag 7)))))
⇒ (#f (1.0 2.0 3.0))
@end example"
  (recv! (zeros shape #:dtype dtype #:device device) src #:tag tag #:group group))

;;; ---- Scheme values between ranks --------------------------------------------------------
;;; A value travels as the UTF-8 text that write gives, in an i32 tensor
;;; (4 bytes an element, padded) whose length goes first; a header
;;; (status length) lets every rank learn that a value could not be written
;;; instead of waiting for it.

(define (value->text who obj)
  ;; (ok . text), or (#f . message) when OBJ does not read back as itself
  (let* ((text (call-with-output-string (lambda (port) (write obj port))))
         (back (catch #t
                 (lambda ()
                   (call-with-input-string text
                     (lambda (port)
                       (let ((v (read port)))
                         (if (eof-object? (read port)) (list v) #f)))))
                 (lambda _ #f))))
    (if (and back (equal? (car back) obj))
        (cons #t text)
        (cons #f (format #f "~a does not read back as itself: send plain data (numbers, \
strings, symbols, keywords, booleans, characters, lists, vectors, bytevectors)"
                         (if (> (string-length text) 60)
                             (string-append (substring text 0 57) "...")
                             text))))))

(define (bytes->words bv nwords)
  ;; BV's bytes in an s32vector of NWORDS elements (zero padded)
  (let ((v (make-s32vector nwords 0)))
    (bytevector-copy! bv 0 v 0 (bytevector-length bv))
    v))

(define (words->string v offset len)
  ;; the LEN bytes at byte OFFSET of the s32vector V as UTF-8 text
  (let ((bv (make-bytevector len)))
    (bytevector-copy! v offset bv 0 len)
    (utf8->string bv)))

(define (text->value text)
  (call-with-input-string text read))

(define* (broadcast-value obj #:key (root 0) (group #f))
  "OBJ of rank ROOT of GROUP (default: the world), on every rank of the
group: rank ROOT sends the text that write gives for OBJ, the others read
it back. OBJ may be any datum that write and read turn back into an equal
value (numbers, strings, symbols, keywords, characters, booleans, and lists,
vectors and bytevectors of them); the other ranks' OBJ is ignored. When
ROOT's OBJ is not such a datum (a procedure, a tensor, a record), every
rank raises moelab-error saying so. Every rank of the group must call it
with the same ROOT.
@example
(with-ranks 3
  (lambda (rank)
    (broadcast-value (and (= rank 0) '((lr . 3e-4) (steps . 100))))))
⇒ (((lr . 3e-4) (steps . 100)) ((lr . 3e-4) (steps . 100)) ((lr . 3e-4) (steps . 100)))
@end example"
  (let* ((g (resolve-group "broadcast-value" group))
         (me (%group-rank g))
         (mine (and (= me root) (value->text "broadcast-value" obj)))
         (payload (and mine (string->utf8 (cdr mine))))
         (header (tensor (if mine
                             (list (if (car mine) 0 1) (bytevector-length payload))
                             '(0 0))
                         #:dtype 'i64)))
    (%broadcast! header root g)
    (let* ((h (tensor->list header))
           (len (cadr h))
           (nwords (quotient (+ len 3) 4))
           (words (if mine (bytes->words payload nwords) (make-s32vector nwords 0))))
      (%broadcast! (tensor words) root g)
      (let ((text (words->string words 0 len)))
        (if (zero? (car h))
            (if mine obj (text->value text))
            (dist-error "broadcast-value" 'value "the value of rank ~a: ~a" root text))))))

(define* (all-gather-values obj #:key (group #f))
  "The list of every rank's OBJ, in the rank order of GROUP (default: the
world), on every rank. OBJ may be any datum that write and read turn back
into an equal value, as for broadcast-value; when a rank's OBJ is not,
every rank raises moelab-error naming that rank.
@example
(with-ranks 3 (lambda (rank) (all-gather-values (* rank 10))))
⇒ ((0 10 20) (0 10 20) (0 10 20))
@end example"
  (let* ((g (resolve-group "all-gather-values" group))
         (n (%group-size g))
         (mine (value->text "all-gather-values" obj))
         (payload (string->utf8 (cdr mine)))
         (headers (tensor->list
                   (%all-gather (tensor (list (if (car mine) 0 1) (bytevector-length payload))
                                        #:dtype 'i64 #:shape '(1 2))
                                g)))
         (maxlen (fold max 0 (map cadr headers)))
         (nwords (quotient (+ maxlen 3) 4))
         (all (%all-gather (tensor (bytes->words payload nwords)) g))
         (words (tensor->s32vector all))
         (texts (map (lambda (h q) (words->string words (* 4 q nwords) (cadr h)))
                     headers (iota n)))
         (bad (filter-map (lambda (h q) (and (not (zero? (car h))) q)) headers (iota n))))
    (if (null? bad)
        (map (lambda (text q) (if (= q (%group-rank g)) obj (text->value text))) texts (iota n))
        (dist-error "all-gather-values" 'value "the value of rank ~a: ~a"
                    (car bad) (list-ref texts (car bad))))))

;;; ---- gradient reduction in buckets ------------------------------------------------------

;; A grad sync: the C object and the group it reduces over (checked at
;; every step, so that a step outside its with-ranks raises).
(define-record-type <grad-sync>
  (make-grad-sync-record c group count)
  grad-sync-record?
  (c grad-sync-c)
  (group grad-sync-group)
  (count grad-sync-count))

(set-record-type-printer! <grad-sync>
  (lambda (s port)
    (let ((g (grad-sync-group s)))
      (format port "#<grad-sync ~a parameter~a over ~a: rank ~a of ~a>"
              (grad-sync-count s) (if (= (grad-sync-count s) 1) "" "s")
              (%group-name g) (%group-rank g) (%group-size g)))))

(define (parameter-tensors who params)
  ;; a list of tensors, or an alist of (name . tensor) as model-parameters gives
  (unless (list? params)
    (wrong-type who "a list of tensors or of (name . tensor) pairs" params))
  (map (lambda (p) (if (pair? p) (cdr p) p)) params))

(define* (make-grad-sync params #:key (group #f) (divisor #f) (bucket-bytes #f))
  "A grad sync: data-parallel reduction of the gradients of PARAMS (a list of
tensors that require grad, or an alist of (name . tensor) as
model-parameters gives) over GROUP (a group, mesh dimensions such as
@code{'(dp ep)}, or #f for the world), started while backward is still
running. After grad-sync-wait! each parameter's gradient is the sum over
the group of every rank's gradient, divided by DIVISOR (default: the size of
the group, which makes it the mean).

The parameters are grouped, last first, into buckets of one dtype and
device that close at BUCKET-BYTES bytes (default 25 MB); each bucket is one
flat buffer and one all-reduce. Call grad-sync-arm! before the backward of
a step's last micro-batch: from the second armed step on, a bucket's
all-reduce starts as soon as every one of its parameters has received as
many gradient contributions as in the previous armed backward (gradient
hooks count them), so communication overlaps the rest of backward. Then
grad-sync-wait! reduces what is left and sets the gradients. The result is
the same whatever the timing: a gradient that arrives after its bucket has
left makes every rank reduce that bucket again, and a parameter without a
gradient on a rank counts as zeros there. Every rank of GROUP must make its
grad sync with the same number of parameters of the same shapes, in the
same order.

The grad sync holds gradient hooks on the parameters until grad-sync-free!
(or until the collector frees it); make it inside the rank's procedure of
with-ranks and use it only there.
@example
(define sync (make-grad-sync (model-parameters m) #:group '(dp ep)))
(grad-sync-arm! sync)          ; before the last micro-batch's backward
(backward! loss)
(grad-sync-wait! sync)         ; gradients summed over dp x ep, divided by its size
@end example"
  (let* ((who "make-grad-sync")
         (g (resolve-group who group))
         (ts (parameter-tensors who params))
         (d (or divisor (%group-size g)))
         (bytes (or bucket-bytes 0)))
    (unless (real? d) (wrong-type who "a positive number (#:divisor)" d))
    (unless (exact-integer? bytes) (wrong-type who "a byte count or #f (#:bucket-bytes)" bytes))
    (make-grad-sync-record (%make-grad-sync ts g d bytes) g (length ts))))

(define (grad-sync? obj)
  "True when OBJ is a grad sync made by make-grad-sync."
  (grad-sync-record? obj))

(define (check-sync who s)
  (unless (grad-sync-record? s) (wrong-type who "a grad-sync" s)))

(define (grad-sync-arm! s)
  "Announce that the next backward is the last micro-batch of the step of
the grad sync S: during it, buckets whose gradients are complete start
their all-reduce. Arming again before grad-sync-wait! is allowed until a
bucket has started (then it raises moelab-error)."
  (check-sync "grad-sync-arm!" s)
  (%grad-sync-arm! (grad-sync-c s) (grad-sync-group s)))

(define (grad-sync-wait! s)
  "Finish the step of the grad sync S: start the buckets that have not
started, wait for every all-reduce, reduce again any bucket that a late
gradient made stale, and set the gradient of every parameter to the sum over
the group divided by the divisor. Every rank of the group must call it.
Raises moelab-error when S is not armed, and when a collective failed (a
peer failed, a timeout), naming the bucket; the gradients are then left as
they were."
  (check-sync "grad-sync-wait!" s)
  (%grad-sync-wait! (grad-sync-c s) (grad-sync-group s)))

(define (grad-sync-stats s)
  "Totals of the grad sync S since it was made, as an alist: @code{steps}
(completed waits), @code{buckets} (all-reduces started, repeats included),
@code{buckets-early} (of those, started during backward),
@code{buckets-stale} (reduced again after a late gradient), @code{bytes}
(bytes all-reduced), @code{wait-seconds} (time in collectives inside
grad-sync-wait!) and @code{comm-seconds} (time in collectives anywhere,
starts during backward included: what communication took from computation,
since a start that overlaps costs only its launch while one that completes
at once, as on threads, costs its whole transfer)."
  (check-sync "grad-sync-stats" s)
  (%grad-sync-stats (grad-sync-c s)))

(define (grad-sync-buckets s)
  "The buckets of the grad sync S in the order their all-reduces start: a
list of (DTYPE BYTES INDICES), INDICES being the positions of the bucket's
parameters in the list given to make-grad-sync."
  (check-sync "grad-sync-buckets" s)
  (%grad-sync-buckets (grad-sync-c s)))

(define (grad-sync-free! s)
  "Remove the gradient hooks of the grad sync S from its parameters and free
its buffers now; afterwards S can no longer be used. Freeing twice does
nothing."
  (check-sync "grad-sync-free!" s)
  (%grad-sync-free! (grad-sync-c s)))

;;; ---- settings ---------------------------------------------------------------------------

(define (set-comm-timeout! seconds)
  "Let a collective (or a send or receive) wait at most SECONDS, a positive
number, for its peers before it fails naming the ranks it waited for; #f
waits forever. Zero, a negative number or NaN raises moelab-error and
leaves the setting as it was. Applies process-wide, to every backend
(threads and MPI), for collectives started afterwards; the default is
300 s, or MOELAB_COMM_TIMEOUT from the environment (a positive number of
seconds, or @code{inf} for forever). Returns the previous setting (a number,
or #f for forever). Under MPI a timeout ends the whole job: see with-ranks."
  (%set-comm-timeout! seconds))

(define (comm-timeout)
  "The seconds a collective may wait for its peers, or #f when it waits
forever; see set-comm-timeout!. Raises moelab-error when
MOELAB_COMM_TIMEOUT holds something that is not a timeout (and no
set-comm-timeout! has replaced it)."
  (%comm-timeout))
