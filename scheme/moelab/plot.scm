;;; (moelab plot) — figures drawn by gnuplot: line plots, heatmaps, bar
;;; charts and curves from a metrics file, rendered to SVG, PNG, PDF or the
;;; terminal.
;;;
;;; A figure is a value: the gnuplot commands that draw it (data inline, as
;;; datablocks). Rendering runs gnuplot as a child process, feeds it the
;;; terminal, the output file and the commands through a pipe, and reads the
;;; file back. Nothing is drawn until a figure is rendered.
;;;
;;; @example
;;; (define fig (plot-lines '(("run a" . (3.2 2.9 2.7)) ("run b" . (3.3 2.8 2.5)))
;;;                         #:title "loss" #:xlabel "step"))
;;; (save-figure fig "loss.svg")
;;; (display (figure->text fig))
;;; @end example

(define-module (moelab plot)
  #:use-module (moelab tensor)
  #:use-module ((moelab train) #:select (read-jsonl))
  #:use-module (ice-9 popen)
  #:use-module (ice-9 format)
  #:use-module (ice-9 rdelim)
  #:use-module ((ice-9 textual-ports) #:select (get-string-all))
  #:use-module (ice-9 match)
  #:use-module (srfi srfi-1)
  #:use-module (srfi srfi-9)
  #:use-module (srfi srfi-9 gnu)
  #:export (plot-lines plot-heatmap plot-bars plot-jsonl
            figure? figure-title figure-kind figure-script
            figure->svg figure->text save-figure show-figure
            gnuplot-program))

;;; ---- errors ------------------------------------------------------------------

;;; A moelab-error from WHO; the thrown message is a format string, so tildes
;;; in the text are doubled.
(define (plot-error who fmt . args)
  (let ((text (apply format #f fmt args)))
    (throw 'moelab-error who (string-join (string-split text #\~) "~~")
           '() '(arg))))

;;; ---- figures -----------------------------------------------------------------

(define-record-type <figure>
  (make-figure kind title script)
  %figure?
  (kind %figure-kind)         ; 'lines 'heatmap 'bars
  (title %figure-title)       ; a string or #f
  (script %figure-script))    ; gnuplot commands, without terminal and output

(define (figure? x)
  "#t when X is a figure (what plot-lines, plot-heatmap, plot-bars and
plot-jsonl return)."
  (%figure? x))

(define (figure-kind fig)
  "What FIG draws: lines, heatmap or bars (a symbol)."
  (%figure-kind fig))

(define (figure-title fig)
  "The title of FIG (a string), or #f when it has none."
  (%figure-title fig))

(define (figure-script fig)
  "The gnuplot commands that draw FIG, data included, without the terminal
and output settings that rendering adds (a string; handy to save a figure
as a gnuplot script and tune it by hand)."
  (%figure-script fig))

(set-record-type-printer!
 <figure>
 (lambda (fig port)
   (format port "#<figure ~a~@[ ~s~]>" (figure-kind fig) (figure-title fig))))

;;; ---- gnuplot text ----------------------------------------------------------------

(define (label->string x)
  (cond ((string? x) x)
        ((symbol? x) (symbol->string x))
        ((number? x) (number->string x))
        (else (format #f "~a" x))))

(define (quoted x)
  "X as a gnuplot double-quoted string."
  (call-with-output-string
    (lambda (port)
      (write-char #\" port)
      (string-for-each
       (lambda (c)
         (case c
           ((#\" #\\) (write-char #\\ port) (write-char c port))
           ((#\newline) (display "\\n" port))
           (else (write-char c port))))
       (label->string x))
      (write-char #\" port))))

(define (datum x)
  "The number X as gnuplot reads it (NaN for a missing or non-finite value)."
  (cond ((not (real? x)) "NaN")
        ((or (nan? x) (inf? x)) "NaN")
        (else (number->string (exact->inexact x)))))

(define (short-number x)
  "X written with at most 3 decimals (a cell label)."
  (if (and (exact? x) (integer? x))
      (number->string x)
      (let ((r (/ (round (* (inexact->exact x) 1000)) 1000)))
        (if (integer? r)
            (number->string r)
            (number->string (exact->inexact r))))))

(define (datablock name rows)
  "A gnuplot datablock $NAME from ROWS, each a list of numbers or strings."
  (string-append
   "$" name " << EOD\n"
   (string-concatenate
    (map (lambda (row)
           (string-append
            (string-join (map (lambda (x) (if (string? x) (quoted x) (datum x))) row)
                         " ")
            "\n"))
         rows))
   "EOD\n"))

(define (common-settings who title xlabel ylabel)
  (string-append
   (if title (format #f "set title ~a\n" (quoted title)) "")
   (if xlabel (format #f "set xlabel ~a\n" (quoted xlabel)) "")
   (if ylabel (format #f "set ylabel ~a\n" (quoted ylabel)) "")))

(define (tics axis labels)
  "Tic marks on AXIS named by LABELS at 0, 1, …"
  (format #f "set ~atics (~a)\n" axis
          (string-join
           (map (lambda (label i) (format #f "~a ~a" (quoted label) i))
                labels (iota (length labels)))
           ", ")))

;;; ---- input shapes ------------------------------------------------------------------

(define (numbers who what x)
  "X (a list of reals or a 1-D tensor) as a list of reals."
  (cond ((tensor? x)
         (unless (= (length (tensor-shape x)) 1)
           (plot-error who "~a: expected a 1-D tensor, got shape ~a" what (tensor-shape x)))
         (tensor->list x))
        ((and (list? x) (every real? x)) x)
        (else (plot-error who "~a: expected a list of numbers or a 1-D tensor, got ~s"
                          what x))))

(define (matrix-rows who x)
  "X (a 2-D tensor or a list of equal-length lists of reals) as a list of rows."
  (let ((rows (cond ((tensor? x)
                     (unless (= (length (tensor-shape x)) 2)
                       (plot-error who "expected a 2-D tensor, got shape ~a"
                                   (tensor-shape x)))
                     (tensor->list x))
                    ((and (pair? x) (every list? x)) x)
                    (else (plot-error who "expected a 2-D tensor or a list of lists, got ~s"
                                      x)))))
    (when (or (null? rows) (null? (car rows)))
      (plot-error who "the matrix is empty"))
    (let ((n (length (car rows))))
      (for-each (lambda (row i)
                  (unless (= (length row) n)
                    (plot-error who "row ~a has ~a values, row 0 has ~a" i (length row) n))
                  (unless (every real? row)
                    (plot-error who "row ~a holds a value that is not a number: ~s" i row)))
                rows (iota (length rows))))
    rows))

(define (point? p)
  (or (and (pair? p) (real? (car p)) (real? (cdr p)))
      (and (list? p) (= (length p) 2) (every real? p))))

(define (point-y p) (if (real? (cdr p)) (cdr p) (cadr p)))

(define (series-points who name s xs)
  "The (x y) rows of one series S: a list of numbers or a 1-D tensor (x from
XS or 0, 1, …), or a list of (x . y) pairs or (x y) lists."
  (if (and (pair? s) (every point? s))
      (map (lambda (p) (list (car p) (point-y p))) s)
      (let ((ys (numbers who (format #f "series ~s" name) s)))
        (when (and xs (not (= (length xs) (length ys))))
          (plot-error who "series ~s has ~a values but #:x has ~a" name (length ys) (length xs)))
        (map list (or xs (iota (length ys))) ys))))

(define (named-series? s)
  (and (pair? s)
       (every (lambda (e) (and (pair? e) (or (string? (car e)) (symbol? (car e))))) s)))

;;; ---- the figures ---------------------------------------------------------------------

(define* (plot-lines series #:key title xlabel ylabel log-y? x)
  "A line plot of SERIES: one series (a list of numbers, a 1-D tensor, or a
list of (x . y) pairs) or several, as an alist of (name . series) drawn on one
pair of axes with a key. Without x values a series is drawn over 0, 1, …;
#:x gives them for every series that is a plain list or tensor. #:log-y? puts
the y axis on a log scale (loss curves). Returns a figure."
  (let* ((who "plot-lines")
         (xs (and x (numbers who "#:x" x)))
         (named (if (named-series? series) series (list (cons #f series)))))
    (when (null? named)
      (plot-error who "no series to plot"))
    (let ((blocks (map (lambda (entry i)
                         (datablock (format #f "s~a" i)
                                    (series-points who (or (car entry) "series")
                                                   (cdr entry) xs)))
                       named (iota (length named)))))
      (make-figure
       'lines title
       (string-append
        (string-concatenate blocks)
        (common-settings who title xlabel ylabel)
        (if log-y? "set logscale y\n" "")
        "set key top right\nif (GPVAL_TERM ne \"dumb\") { set grid }\n"
        "plot "
        (string-join
         (map (lambda (entry i)
                (format #f "$s~a using 1:2 with linespoints pt 7 ps 0.4 ~a" i
                        (if (car entry) (string-append "title " (quoted (car entry))) "notitle")))
              named (iota (length named)))
         ", ")
        "\n")))))

(define* (plot-heatmap matrix #:key rows cols title xlabel ylabel values?)
  "A heatmap of MATRIX (a 2-D tensor or a list of equal-length lists of
numbers), one cell per entry, row 0 at the top. ROWS and COLS name the rows
and columns (lists of strings, symbols or numbers; tokens per expert over
layers × experts, domain × expert shares). #:values? writes each value in its
cell. Returns a figure."
  (let* ((who "plot-heatmap")
         (m (matrix-rows who matrix))
         (r (length m))
         (c (length (car m))))
    (define (check-labels what labels n)
      (when (and labels (not (= (length labels) n)))
        (plot-error who "~a has ~a labels for ~a ~a" what (length labels) n what)))
    (check-labels "#:rows" rows r)
    (check-labels "#:cols" cols c)
    (make-figure
     'heatmap title
     (string-append
      (datablock "m" m)
      (common-settings who title xlabel ylabel)
      (format #f "set xrange [-0.5:~a]\nset yrange [~a:-0.5]\n" (- c 0.5) (- r 0.5))
      ;; a tic per column and per row unless there are too many to read
      (cond (cols (tics "x" cols)) ((<= c 24) "set xtics 1\n") (else ""))
      (cond (rows (tics "y" rows)) ((<= r 24) "set ytics 1\n") (else ""))
      ;; white for the smallest value, dark blue for the largest
      "set tics scale 0\nset palette defined (0 \"#ffffff\", 1 \"#08306b\")\n"
      (if values?
          ;; white on the darker half of the palette, black on the lighter
          (let* ((all (concatenate m))
                 (middle (/ (+ (apply min all) (apply max all)) 2)))
            (string-concatenate
             (append-map (lambda (row i)
                           (map (lambda (v j)
                                  (format #f "set label ~a at ~a,~a center front textcolor rgb ~s\n"
                                          (quoted (short-number v)) j i
                                          (if (> v middle) "white" "black")))
                                row (iota c)))
                         m (iota r))))
          "")
      "plot $m matrix with image failsafe notitle\n"))))

(define* (plot-bars values #:key labels title xlabel ylabel)
  "A bar chart of VALUES (a list of numbers or a 1-D tensor: one layer's
tokens per expert), bar i named by the i-th of LABELS when given. Returns a
figure."
  (let* ((who "plot-bars")
         (vs (numbers who "values" values)))
    (when (null? vs)
      (plot-error who "no values to plot"))
    (when (and labels (not (= (length labels) (length vs))))
      (plot-error who "~a labels for ~a values" (length labels) (length vs)))
    (make-figure
     'bars title
     (string-append
      (datablock "b" (map list (iota (length vs)) vs))
      (common-settings who title xlabel ylabel)
      (format #f "set xrange [-0.5:~a]\nset yrange [0:*]\n" (- (length vs) 0.5))
      (tics "x" (or labels (iota (length vs))))
      "set style fill solid 0.8 border -1\nset boxwidth 0.8\nif (GPVAL_TERM ne \"dumb\") { set grid y }\n"
      "plot $b using 1:2 with boxes lc rgb \"#3b6fb6\" notitle\n"))))

(define (plot-jsonl path . keys-and-options)
  "Curves straight from the metrics file PATH (JSON Lines, as
make-metrics-log writes): (plot-jsonl PATH KEY … [#:x KEY] [#:title T]
[#:xlabel S] [#:ylabel S] [#:log-y? B]). One line per KEY (a symbol or a
string, or a list of them) over the #:x key (default step), from the records
that have both; null values are left out. Returns a figure.

@example
(plot-jsonl \"runs/a/metrics.jsonl\" 'loss 'max-vio #:log-y? #t)
@end example"
  (let* ((who "plot-jsonl")
         (options (let split ((args keys-and-options) (acc '()))
                    (cond ((null? args) acc)
                          ((keyword? (car args))
                           (when (null? (cdr args))
                             (plot-error who "~a needs a value" (car args)))
                           (split (cddr args) (acons (car args) (cadr args) acc)))
                          (else (split (cdr args) acc)))))
         (keys (let strip ((args keys-and-options))
                 (cond ((null? args) '())
                       ((keyword? (car args)) (strip (cddr args)))
                       ((list? (car args)) (append (car args) (strip (cdr args))))
                       (else (cons (car args) (strip (cdr args)))))))
         (option (lambda (k default) (or (assq-ref options k) default)))
         (_ (for-each (lambda (o)
                        (unless (memq (car o) '(#:x #:title #:xlabel #:ylabel #:log-y?))
                          (plot-error who "unknown option ~a" (car o))))
                      options))
         (x (option #:x 'step))
         (title (option #:title #f))
         (xlabel (option #:xlabel #f))
         (ylabel (option #:ylabel #f))
         (log-y? (option #:log-y? #f))
         (key->symbol (lambda (k) (if (symbol? k) k (string->symbol (label->string k)))))
         (records (filter pair? (read-jsonl path)))
         (x-key (key->symbol x)))
    (when (null? keys)
      (plot-error who "no keys to plot from ~a" path))
    (let ((series
           (map (lambda (k)
                  (let* ((key (key->symbol k))
                         (points (filter-map
                                  (lambda (rec)
                                    (let ((xv (assq-ref rec x-key))
                                          (yv (assq-ref rec key)))
                                      (and (real? xv) (real? yv) (not (nan? yv))
                                           (cons xv yv))))
                                  records)))
                    (when (null? points)
                      (plot-error who "no record of ~a has both ~a and ~a" path x-key key))
                    (cons (symbol->string key) points)))
                keys)))
      (plot-lines series #:title title #:xlabel (or xlabel (symbol->string x-key))
                  #:ylabel ylabel #:log-y? log-y?))))

;;; ---- rendering -----------------------------------------------------------------------

(define (gnuplot-program)
  "The gnuplot program figures are rendered with: $MOELAB_GNUPLOT, or gnuplot
found on PATH. Raises moelab-error naming the Debian package when there is
none."
  (let ((override (getenv "MOELAB_GNUPLOT")))
    (or (if override
            (and (access? override X_OK) override)
            (search-path (parse-path (or (getenv "PATH") "")) "gnuplot"))
        (plot-error "gnuplot-program"
                    "gnuplot not found~a: figures need it (apt-get install gnuplot-nox)"
                    (if override (format #f " at MOELAB_GNUPLOT=~a" override)
                        " on PATH")))))

(define (temporary-file suffix)
  (let* ((port (mkstemp! (string-copy (string-append (or (getenv "TMPDIR") "/tmp")
                                                    "/moelab-plot-XXXXXX"))))
         (name (port-filename port)))
    (close-port port)
    (delete-file name)
    (string-append name suffix)))

(define (slurp file)
  (if (file-exists? file) (call-with-input-file file get-string-all) ""))

(define (render who fig terminal output)
  "Run gnuplot on FIG with the TERMINAL line, writing OUTPUT (a file name)."
  (unless (figure? fig)
    (plot-error who "expected a figure, got ~s" fig))
  (let* ((program (gnuplot-program))
         (errors (temporary-file ".err"))
         (err-port (open-output-file errors))
         (pipe (with-error-to-port err-port
                 (lambda ()
                   (with-output-to-port err-port
                     (lambda () (open-pipe* OPEN_WRITE program)))))))
    (close-port err-port)
    (display (string-append terminal "\n"
                            "set output " (quoted output) "\n"
                            (figure-script fig)
                            "unset output\n")
             pipe)
    (let* ((status (close-pipe pipe))
           (messages (string-trim-both (slurp errors))))
      (delete-file errors)
      (unless (and (eqv? (status:exit-val status) 0) (string-null? messages))
        (when (file-exists? output) (delete-file output))
        (plot-error who "gnuplot failed on ~a: ~a" fig
                    (if (string-null? messages)
                        (format #f "exit status ~a" (status:exit-val status))
                        messages))))))

(define (terminal-line kind width height)
  (case kind
    ((svg) (format #f "set terminal svg size ~a,~a noenhanced font \"sans,11\" background \"white\""
                   width height))
    ((png) (format #f "set terminal pngcairo size ~a,~a noenhanced font \"sans,10\"" width height))
    ((pdf) (format #f "set terminal pdfcairo size ~,2fin,~,2fin noenhanced font \"sans,10\""
                   (/ width 100.) (/ height 100.)))
    ((dumb) (format #f "set terminal dumb size ~a,~a noenhanced" width height))
    ((block) (format #f "set terminal block size ~a,~a" width height))))

(define (render-to-string who fig kind width height)
  (let ((out (temporary-file (symbol->string kind))))
    (render who fig (terminal-line kind width height) out)
    (let ((text (slurp out)))
      (delete-file out)
      ;; the dumb terminal starts each page with a form feed
      (string-trim text #\page))))

(define* (figure->svg fig #:key (width 640) (height 400))
  "The figure FIG drawn as an SVG document (a string) WIDTH × HEIGHT pixels."
  (render-to-string "figure->svg" fig 'svg width height))

(define* (figure->text fig #:key (width 79) (height 24) (terminal 'dumb))
  "The figure FIG drawn as text for a terminal of WIDTH columns and HEIGHT
lines: gnuplot's dumb terminal (ASCII), or #:terminal 'block (Unicode block
characters, where the gnuplot build has that terminal)."
  (unless (memq terminal '(dumb block))
    (plot-error "figure->text" "#:terminal: expected dumb or block, got ~s" terminal))
  (render-to-string "figure->text" fig terminal width height))

(define* (save-figure fig path #:key (width 640) (height 400) format)
  "Draw the figure FIG into the file PATH: SVG, PNG or PDF, chosen by #:format
('svg 'png 'pdf) or else by PATH's extension. WIDTH and HEIGHT are in pixels
(a PDF page is WIDTH/100 × HEIGHT/100 inches). Returns PATH."
  (let* ((who "save-figure")
         (ext (let ((dot (string-rindex path #\.)))
                (and dot (string->symbol (string-downcase (substring path (1+ dot)))))))
         (fmt (or format ext)))
    (unless (memq fmt '(svg png pdf))
      (plot-error who "cannot tell the format of ~s: expected #:format 'svg, 'png or 'pdf or a .svg, .png or .pdf file" path))
    (let ((tmp (temporary-file (symbol->string fmt))))
      (render who fig (terminal-line fmt width height) tmp)
      ;; copy, not rename: PATH may be on another file system
      (copy-file tmp path)
      (delete-file tmp)
      path)))

(define* (show-figure fig #:key (port (current-output-port)) width height)
  "Print the figure FIG to PORT as text, sized to the terminal ($COLUMNS and
$LINES, else 79 × 24). The REPL's ,plot does this."
  (define (env-number name default)
    (let ((n (and=> (getenv name) string->number)))
      (if (and n (exact-integer? n) (> n 10)) n default)))
  (display (figure->text fig #:width (or width (min 120 (env-number "COLUMNS" 79)))
                         #:height (or height (min 40 (max 12 (- (env-number "LINES" 24) 2)))))
           port)
  (values))
