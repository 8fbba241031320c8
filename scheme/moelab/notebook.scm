;;; (moelab notebook) — rich display: tensors as HTML tables, routings as
;;; HTML reports with bars, figures as SVG, and display-html, display-svg,
;;; display-figure to show them from a cell.
;;;
;;; A value shows as a MIME bundle: an alist of (MIME-TYPE . TEXT) with
;;; "text/plain" always present. In the Jupyter kernel (moelab-kernel) the
;;; display procedures publish their bundle as a display_data message;
;;; anywhere else they print its text/plain form, so a notebook's code also
;;; runs as a script.

(define-module (moelab notebook)
  #:use-module (moelab tensor)
  #:use-module ((moelab router) #:select (routing? routing-report))
  #:use-module (moelab plot)
  #:use-module (ice-9 format)
  #:use-module (ice-9 match)
  #:use-module (srfi srfi-1)
  #:export (mime-bundle tensor->html routing->html
            display-html display-svg display-figure))

;;; ---- HTML text -------------------------------------------------------------------

(define (escape-html text)
  (call-with-output-string
    (lambda (port)
      (string-for-each
       (lambda (c)
         (case c
           ((#\<) (display "&lt;" port))
           ((#\>) (display "&gt;" port))
           ((#\&) (display "&amp;" port))
           ((#\") (display "&quot;" port))
           (else (write-char c port))))
       text))))

(define (cell x)
  (escape-html (cond ((and (real? x) (inexact? x)) (format #f "~,4f" x))
                     (else (format #f "~a" x)))))

;;; ---- tensors ---------------------------------------------------------------------

(define* (tensor->html t #:optional (limit (tensor-print-limit)))
  "T as an HTML table (a string), elided like the printer: at most LIMIT
rows and LIMIT columns (default: (tensor-print-limit); #f shows all), the
rest shown as …. A 0-D or 1-D tensor is one row; a tensor of 3 or more
dimensions shows its printed form. The caption gives dtype, shape and
device."
  (unless (tensor? t)
    (throw 'moelab-error "tensor->html" "expected a tensor, got ~s" (list t) '(arg)))
  (let* ((shape (tensor-shape t))
         (caption (format #f "~a[~{~a~^ ~}] ~a" (tensor-dtype t) shape (tensor-device t)))
         (style "<table style=\"font-family:monospace;border-collapse:collapse\">"))
    (define (shown n) (if limit (min n limit) n))
    (define (row cells more?)
      (string-append
       "<tr>"
       (string-concatenate
        (map (lambda (c) (string-append "<td style=\"padding:1px 6px;text-align:right\">"
                                        c "</td>"))
             (if more? (append cells '("…")) cells)))
       "</tr>"))
    (match shape
      (()
       (string-append style "<caption>" caption "</caption>"
                      (row (list (cell (tensor-item t))) #f) "</table>"))
      ((n)
       (string-append style "<caption>" caption "</caption>"
                      (row (map (lambda (j) (cell (tensor-ref t j))) (iota (shown n)))
                           (> n (shown n)))
                      "</table>"))
      ((r c)
       (string-append
        style "<caption>" caption "</caption>"
        (string-concatenate
         (map (lambda (i)
                (row (map (lambda (j) (cell (tensor-ref t i j))) (iota (shown c)))
                     (> c (shown c))))
              (iota (shown r))))
        (if (> r (shown r)) (row '("⋮") #f) "")
        "</table>"))
      (_
       (string-append "<pre>" (escape-html (tensor->string t limit)) "</pre>")))))

;;; ---- routings --------------------------------------------------------------------

(define (routing->html obj)
  "The routing report of OBJ (a routing, a router or an MoE layer: what
routing-report prints) as HTML: its first and last lines as text and one
row per expert with its count and a bar scaled to the largest count."
  (let* ((counts #f)
         (text (call-with-output-string
                 (lambda (port) (set! counts (routing-report obj #:port port)))))
         (lines (string-split (string-trim-right text #\newline) #\newline))
         (top (apply max 1 counts))
         (total (apply + counts)))
    (string-append
     "<div style=\"font-family:monospace\"><div>" (escape-html (car lines)) "</div>"
     "<table style=\"border-collapse:collapse\">"
     (string-concatenate
      (map (lambda (id c)
             (format #f "<tr><td>expert ~a</td><td style=\"text-align:right;padding:0 6px\">~a</td><td><div style=\"background:#3b6fb6;height:0.9em;width:~apx\"></div>~a</td></tr>"
                     id c (round (* 200 (/ c top)))
                     (if (and (zero? c) (positive? total)) "dead" "")))
           (iota (length counts)) counts))
     "</table><div>" (escape-html (last lines)) "</div></div>")))

;;; ---- bundles and display ------------------------------------------------------------

;;; An SVG document without its XML declaration and doctype: notebooks inline
;;; the element into HTML, where a prolog is not allowed.
(define (svg-element svg)
  (let ((start (string-contains svg "<svg")))
    (if start (substring svg start) svg)))

(define (mime-bundle value)
  "How VALUE shows in a notebook: an alist of (MIME-TYPE . TEXT), with
\"text/plain\" (its written form) always present, \"text/html\" for a tensor
(tensor->html) or a routing (routing->html), and \"image/svg+xml\" for a
figure (figure->svg, without the XML declaration: notebooks inline it)."
  (let ((plain (call-with-output-string (lambda (port) (write value port)))))
    (cond ((and (tensor? value) (not (tensor-freed? value)))
           `(("text/plain" . ,plain) ("text/html" . ,(tensor->html value))))
          ((routing? value)
           `(("text/plain" . ,(call-with-output-string
                                (lambda (port) (routing-report value #:port port))))
             ("text/html" . ,(routing->html value))))
          ((figure? value)
           `(("text/plain" . ,plain) ("image/svg+xml" . ,(svg-element (figure->svg value)))))
          (else `(("text/plain" . ,plain))))))

;;; What the display procedures do with a bundle. The kernel replaces it with
;;; a procedure that publishes the bundle; by default the text is printed.
(define %display-handler
  (make-parameter
   (lambda (bundle)
     (display (assoc-ref bundle "text/plain"))
     (newline))))

(define (display-html html)
  "Show the HTML text HTML in the notebook (outside a notebook: print it)."
  (unless (string? html)
    (throw 'moelab-error "display-html" "expected a string, got ~s" (list html) '(arg)))
  ((%display-handler) `(("text/html" . ,html) ("text/plain" . ,html))))

(define (display-svg svg)
  "Show the SVG document SVG (a string) in the notebook (outside a notebook:
print a line saying how long it is)."
  (unless (string? svg)
    (throw 'moelab-error "display-svg" "expected a string, got ~s" (list svg) '(arg)))
  ((%display-handler) `(("image/svg+xml" . ,(svg-element svg))
                        ("text/plain" . ,(format #f "#<svg ~a characters>"
                                                 (string-length svg))))))

(define* (display-figure fig #:key (width 640) (height 400))
  "Show the figure FIG in the notebook as SVG of WIDTH × HEIGHT pixels
(outside a notebook: draw it as text, as the REPL's ,plot does)."
  (unless (figure? fig)
    (throw 'moelab-error "display-figure" "expected a figure, got ~s" (list fig) '(arg)))
  ((%display-handler) `(("image/svg+xml" . ,(svg-element (figure->svg fig #:width width #:height height)))
                        ("text/plain" . ,(figure->text fig)))))
