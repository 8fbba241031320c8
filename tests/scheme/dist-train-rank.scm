;;; dist-train-rank.scm — one case of dist-train-cases.scm, run by each process
;;; of an mpirun job (dist-train-mpi.sh):
;;;   moelab dist-train-rank.scm VARIANT MESH SCHEDULE
;;; e.g. global-batch pp=2,dp=2 1f1b. Each process prints "rank R ok" or
;;; what differs, and exits 0 or 1.
(add-to-load-path (dirname (current-filename)))
(use-modules (moelab) (dist-train-cases) (ice-9 match) (srfi srfi-1))

(match (command-line)
  ((_ variant spec schedule)
   (let* ((mesh (parse-mesh spec))
          (result (with-ranks (mesh-size mesh) #:mesh mesh
                    (lambda (rank)
                      (compare-run (string->symbol variant) mesh (string->symbol schedule)))))
                    ;; this process's entry; the others are #f
          (mine (or (find identity result) "no result")))
     ;; one write per line: mpirun forwards each process's output in the
     ;; pieces it was written in
     (display (format #f "~a ~a ~a: ~a~%" variant spec schedule (if (eq? mine #t) "rank ok" mine)))
     (force-output)
     (exit (if (eq? mine #t) 0 1))))
  (_ (format (current-error-port) "usage: dist-train-rank.scm VARIANT MESH SCHEDULE~%") (exit 2)))
