;;; plot.scm — (moelab plot): figures from lists, tensors and metrics files,
;;; rendered by gnuplot to SVG, PNG, PDF and text.

(include "common.scm")
(use-modules (ice-9 regex) (ice-9 textual-ports) (ice-9 rdelim))

(test-begin "plot")

(define (count-matches regexp text)
  (length (list-matches regexp text)))

(define (plot-group svg n)
  "The text of the SVG group gnuplot draws the N-th plot into."
  (let* ((start (string-contains svg (format #f "<g id=\"gnuplot_plot_~a\"" n)))
         (end (string-contains svg "</g>\n\t</g>" start)))
    (substring svg start end)))

(define tmp (string-append (or (getenv "TMPDIR") "/tmp") "/moelab-plot-test-"
                           (number->string (getpid))))
(mkdir tmp)

(test-group "heatmap"
  ;; 2 layers x 3 experts: one cell each, every label drawn once
  (let* ((fig (plot-heatmap (tensor '((10 0 2) (4 4 4)))
                            #:rows '(layer0 layer1) #:cols '("e0" "e1" "e2")
                            #:title "tokens per expert"))
         (svg (figure->svg fig)))
    (test-assert "a figure" (figure? fig))
    (test-eq "kind" 'heatmap (figure-kind fig))
    (test-equal "title" "tokens per expert" (figure-title fig))
    (test-equal "6 cells" 6 (count-matches "<polygon" (plot-group svg 1)))
    (for-each (lambda (label)
                (test-equal (string-append "label " label) 1
                            (count-matches (string-append ">" label "</text>") svg)))
              '("layer0" "layer1" "e0" "e1" "e2" "tokens per expert"))
    ;; the largest value (10, top left) gets the palette's top colour, the
    ;; smallest (0) the bottom one
    (let ((cells (map match:substring
                      (list-matches "fill = 'rgb\\([^)]*\\)'" (plot-group svg 1)))))
      (test-equal "cells in row order, row 0 at the top: max colour first"
                  "fill = 'rgb(  8,  48, 107)'" (list-ref cells 0))
      (test-equal "the zero cell is white" "fill = 'rgb(255, 255, 255)'" (list-ref cells 1))))
  (let ((svg (figure->svg (plot-heatmap '((1 2) (3 4)) #:values? #t))))
    (test-equal "a list of lists: 4 cells" 4 (count-matches "<polygon" (plot-group svg 1)))
    (test-equal "#:values? writes each value" 4
                (count-matches ">[1-4]</text>" svg)))
  (test-moelab-error "ragged rows" "row 1 has 1 values" (plot-heatmap '((1 2) (3))))
  (test-moelab-error "a 1-D tensor" "2-D" (plot-heatmap (tensor '(1 2))))
  (test-moelab-error "too few row labels" "#:rows has 1 labels for 2"
                     (plot-heatmap '((1 2) (3 4)) #:rows '(a))))

(test-group "lines"
  ;; y = 2x on 0..4: the dumb terminal's drawing is fixed text
  (let ((text (figure->text (plot-lines '(0 2 4 6 8) #:title "line")
                            #:width 40 #:height 12)))
    (test-equal "dumb terminal"
                (string-append
                 "                                        \n"
                 "                                        \n"
                 "                  line                  \n"
                 "  8 +-------------------------------+   \n"
                 "  7 |-+ +   +   +   +   + **G***+ +-|   \n"
                 "  5 |-+               ****        +-|   \n"
                 "  4 |-+         ****G*            +-|   \n"
                 "  3 |-+   **G***                  +-|   \n"
                 "  1 |-****  +   +   +   +   +   + +-|   \n"
                 "  0 +-------------------------------+   \n"
                 "    0  0.5  1  1.5  2  2.5  3  3.5  4   \n"
                 "                                        \n")
                text))
  (let* ((fig (plot-lines '(("run a" . (3.0 2.0 1.5)) ("run b" . ((0 . 4.0) (2 . 1.0))))
                          #:xlabel "step" #:ylabel "loss" #:log-y? #t))
         (svg (figure->svg fig))
         (script (figure-script fig)))
    (test-eq "kind" 'lines (figure-kind fig))
    (test-assert "two curves" (and (string-contains svg "gnuplot_plot_1")
                                   (string-contains svg "gnuplot_plot_2")))
    (test-assert "names in the key" (and (string-contains svg ">run a</text>")
                                         (string-contains svg ">run b</text>")))
    (test-assert "log scale" (string-contains script "set logscale y"))
    (test-assert "pairs keep their x" (string-contains script "2.0 1.0\n")))
  (let ((script (figure-script (plot-lines (tensor '(1 2)) #:x '(10 20)))))
    (test-assert "#:x" (string-contains script "20.0 2.0\n")))
  (test-assert "NaN is a gap, not an error"
    (string? (figure->svg (plot-lines (list 1.0 +nan.0 2.0)))))
  (test-moelab-error "not numbers" "expected a list of numbers" (plot-lines '("a" "b")))
  (test-moelab-error "#:x of another length" "has 2 values but #:x has 3"
                     (plot-lines '(1 2) #:x '(0 1 2))))

(test-group "bars"
  (let* ((svg (figure->svg (plot-bars '(5 0 3 8) #:labels '(e0 e1 e2 e3))))
         (group (plot-group svg 1)))
    (test-equal "one filled box per non-zero bar" 3 (count-matches "<polygon" group))
    (test-equal "labels" 4 (count-matches ">e[0-3]</text>" svg)))
  (test-moelab-error "labels of another length" "3 labels for 2 values"
                     (plot-bars '(1 2) #:labels '(a b c))))

(test-group "metrics files"
  (let ((path (string-append tmp "/metrics.jsonl")))
    (let ((log (make-metrics-log path #:header '((config . ((layers . 2)))))))
      (metrics-log-write! log '((step . 0) (loss . 4.0) (max-vio . 0.5)))
      (metrics-log-write! log '((step . 1) (loss . 3.0)))
      (metrics-log-write! log `((step . 2) (loss . 2.5) (max-vio . ,+nan.0)))
      (metrics-log-write! log '((step . 3) (loss . 2.0) (max-vio . 0.25)))
      (metrics-log-close! log))
    (let* ((fig (plot-jsonl path 'loss "max-vio" #:title "run"))
           (script (figure-script fig)))
      (test-equal "title" "run" (figure-title fig))
      (test-equal "loss: every step"
                  "$s0 << EOD\n0.0 4.0\n1.0 3.0\n2.0 2.5\n3.0 2.0\nEOD\n"
                  (substring script 0 (string-length "$s0 << EOD\n0.0 4.0\n1.0 3.0\n2.0 2.5\n3.0 2.0\nEOD\n")))
      (test-assert "max-vio: the steps that have it (null left out)"
        (string-contains script "$s1 << EOD\n0.0 0.5\n3.0 0.25\nEOD\n"))
      (test-assert "x label" (string-contains script "set xlabel \"step\"")))
    (test-moelab-error "a key no record has" "no record of"
                       (plot-jsonl path 'nothing))
    (test-moelab-error "unknown option" "unknown option" (plot-jsonl path 'loss #:colour 1))
    (test-moelab-error "a missing file" "moelab" (plot-jsonl (string-append tmp "/none") 'loss))))

(test-group "files and the terminal"
  (let ((fig (plot-bars '(1 2 3))))
    (define (magic path n)
      (call-with-input-file path (lambda (p) (get-string-n p n)) #:binary #t))
    (test-equal "save-figure: svg" (string-append tmp "/f.svg")
                (save-figure fig (string-append tmp "/f.svg")))
    (test-assert "an svg file" (string-contains (call-with-input-file (string-append tmp "/f.svg")
                                                  get-string-all)
                                                "<svg"))
    (save-figure fig (string-append tmp "/f.png"))
    (test-equal "png" "\x89PNG" (magic (string-append tmp "/f.png") 4))
    (save-figure fig (string-append tmp "/f.bin") #:format 'pdf)
    (test-equal "pdf by #:format" "%PDF" (magic (string-append tmp "/f.bin") 4))
    (test-moelab-error "unknown format" "cannot tell the format" (save-figure fig "x.gif"))
    (test-assert "show-figure prints text"
      (string-contains (with-output-to-string (lambda () (show-figure fig #:width 30 #:height 10)))
                       "+---"))
    (test-moelab-error "figure->text: a bad terminal" "expected dumb or block"
                       (figure->text fig #:terminal 'x11))
    (test-moelab-error "not a figure" "expected a figure" (figure->svg 42))
    (test-assert "gnuplot-program" (string-suffix? "gnuplot" (gnuplot-program)))
    (setenv "MOELAB_GNUPLOT" "/nonexistent/gnuplot")
    (test-moelab-error "no gnuplot: the error names the package" "gnuplot-nox"
                       (figure->svg fig))
    (unsetenv "MOELAB_GNUPLOT")
    (test-assert "the printer" (string-prefix? "#<figure bars" (format #f "~a" fig)))))

(system* "rm" "-rf" tmp)
(test-end "plot")
(exit-with-test-status)
