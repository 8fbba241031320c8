;;; notebook.scm — (moelab notebook): tensors as HTML tables, routings as
;;; HTML reports, MIME bundles, and the display procedures outside a kernel.

(include "common.scm")
(use-modules (ice-9 regex))

(test-begin "notebook")

(define (count-matches regexp text)
  (length (list-matches regexp text)))

(test-group "tensor->html"
  (let ((html (tensor->html (tensor '((1 2 3) (4 5 6))))))
    (test-equal "2 rows" 2 (count-matches "<tr>" html))
    (test-equal "6 cells" 6 (count-matches "<td" html))
    (test-assert "caption: dtype, shape, device" (string-contains html "<caption>f32[2 3] cpu</caption>"))
    (test-assert "values" (string-contains html ">6.0000</td>")))
  (let ((html (tensor->html (arange 100) 4)))
    (test-equal "elided: 4 values and …" 5 (count-matches "<td" html))
    (test-assert "…" (string-contains html ">…</td>")))
  (let ((html (tensor->html (zeros '(10 10)) 3)))
    (test-equal "rows elided with ⋮" 4 (count-matches "<tr>" html))
    (test-equal "3 × (3 + …) + ⋮ cells" 13 (count-matches "<td" html)))
  (test-assert "3-D: the printed form" (string-prefix? "<pre>#&lt;tensor" (tensor->html (zeros '(2 2 2)))))
  (test-moelab-error "not a tensor" "expected a tensor" (tensor->html 1)))

(test-group "routing->html"
  ;; the hand-set router of the REPL test: experts 0 and 1 take 3 and 1 tokens
  (let* ((r (make-router #:hidden 2 #:experts 4 #:top-k 1 #:pre-softmax? #t))
         (_ (set-router-weight! r (tensor '((1 0) (0 1) (-1 0) (0 -1)))))
         (routing (router-forward r (tensor '((1 0) (2 0) (3 0) (0 1)))))
         (html (routing->html routing)))
    (test-equal "one row per expert" 4 (count-matches "<tr>" html))
    (test-assert "the largest count: a full bar" (string-contains html "width:200px"))
    (test-assert "3:1 → a third of it" (string-contains html "width:67px"))
    (test-equal "two dead experts" 2 (count-matches ">dead<" html))
    (test-assert "MaxVio line" (string-contains html "MaxVio 2.00"))
    (let ((bundle (mime-bundle routing)))
      (test-assert "bundle: html" (assoc-ref bundle "text/html"))
      (test-assert "bundle: the text report" (string-contains (assoc-ref bundle "text/plain")
                                                             "expert 0")))))

(test-group "mime-bundle and display"
  (test-equal "a number" '(("text/plain" . "42")) (mime-bundle 42))
  (let ((b (mime-bundle (tensor '(1 2)))))
    (test-equal "a tensor: text and html" '("text/plain" "text/html") (map car b)))
  (let ((b (mime-bundle (plot-bars '(1 2)))))
    (test-assert "a figure: the svg element, no XML prolog" (string-prefix? "<svg" (assoc-ref b "image/svg+xml"))))
  (test-equal "display-html prints the html outside a kernel" "<b>x</b>\n"
              (with-output-to-string (lambda () (display-html "<b>x</b>"))))
  (test-equal "display-svg prints its length" "#<svg 11 characters>\n"
              (with-output-to-string (lambda () (display-svg "<svg></svg>"))))
  (test-assert "display-figure draws text"
    (string-contains (with-output-to-string (lambda () (display-figure (plot-bars '(1 2)))))
                     "+---"))
  (test-moelab-error "display-html: not a string" "expected a string" (display-html 1))
  (test-moelab-error "display-svg: not a string" "expected a string" (display-svg 'x))
  (test-moelab-error "display-figure: not a figure" "expected a figure" (display-figure 1)))

(test-end "notebook")
(exit-with-test-status)
