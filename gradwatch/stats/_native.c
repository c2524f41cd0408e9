/*
 * gradwatch.stats._native: the CPU statistics of gradients in one compiled pass per tensor.
 *
 * An optional C extension (setup.py builds it where a C compiler is present; without one gradwatch
 * takes the numpy path of gradwatch/stats/host.py, which computes the same columns). On a small model
 * the statistics of a step cost per call, not per entry: numpy needs about a dozen ufunc calls per group
 * of tensors, each a microsecond or more of dispatch, and after PyTorch's backward pass has run those
 * calls are slower still (cold caches). Here each statistic of every tensor of a group comes out of one
 * C call and one pass over each tensor (a second one only where a tensor holds a non-finite entry, or
 * where its mean dominates its spread).
 *
 * Inputs are buffers (numpy arrays over the tensors' memory: C-contiguous of any shape, or 1-D of any
 * stride) of float32, float64 or float16, of any size (large ones too: one pass instead of PyTorch's
 * three, on one thread); every value is converted to double exactly and every sum is accumulated in double (squares
 * of float32 entries are exact in double and can neither underflow nor overflow). Reductions are
 * vectorised with OpenMP SIMD pragmas where the compiler honours them (reordered double sums: a
 * relative error of about n * 1e-16 at most; the centred norm's second pass is corrected for the mean's
 * own rounding, see squares()). NaN and Inf propagate as in numpy. The semantics of each
 * function are those of the numpy function of the same name in host.py, which the tests compare
 * entry for entry.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define GW_SIMD(clauses) _Pragma(GW_STR(omp simd clauses))
#define GW_STR(x) #x
#else
#define GW_SIMD(clauses)
#endif

/* float64 entries outside [TINY, HUGE] in magnitude have their norms taken after rescaling (as host.py) */
#define TINY 1e-150
#define HUGE_ 1e150

enum { K_F32 = 0, K_F64 = 1, K_F16 = 2 };

typedef struct {
    Py_buffer buf;
    int kind;
    Py_ssize_t n;
    Py_ssize_t step; /* bytes between entries */
    const char *p;
} Seg;

static double half_to_double(uint16_t h) {
    int exp = (h >> 10) & 0x1f;
    int mant = h & 0x3ff;
    double v;
    if (exp == 0)
        v = ldexp((double)mant, -24);
    else if (exp == 31)
        v = mant ? NAN : INFINITY;
    else
        v = ldexp((double)(mant | 0x400), exp - 25);
    return (h & 0x8000) ? -v : v;
}

static int kind_of(const Py_buffer *b) {
    const char *f = b->format ? b->format : "B";
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    if (f[0] == 'f' && f[1] == 0 && b->itemsize == 4)
        return K_F32;
    if (f[0] == 'd' && f[1] == 0 && b->itemsize == 8)
        return K_F64;
    if (f[0] == 'e' && f[1] == 0 && b->itemsize == 2)
        return K_F16;
    return -1;
}

/* Open every object of `seq` as a 1-D float buffer. Returns the count, or -1 with an exception set. */
static Py_ssize_t open_segs(PyObject *seq, Seg **out) {
    PyObject *fast = PySequence_Fast(seq, "gradwatch._native: expected a list of arrays");
    if (!fast)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    Seg *segs = (Seg *)PyMem_Calloc(n ? n : 1, sizeof(Seg));
    if (!segs) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t i;
    for (i = 0; i < n; i++) {
        Seg *s = &segs[i];
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, i), &s->buf, PyBUF_STRIDES | PyBUF_FORMAT) < 0)
            goto fail;
        s->kind = kind_of(&s->buf);
        if (s->buf.ndim != 1 && s->kind >= 0 && PyBuffer_IsContiguous(&s->buf, 'C')) {
            s->n = s->buf.len / s->buf.itemsize; /* (a C-contiguous array of any shape: its entries in order) */
            s->step = s->buf.itemsize;
            s->p = (const char *)s->buf.buf;
            continue;
        }
        if (s->buf.ndim != 1 || s->kind < 0) {
            PyBuffer_Release(&s->buf);
            PyErr_Format(PyExc_TypeError,
                         "gradwatch._native: array %zd is not a float32/float64/float16 buffer, C-contiguous or 1-D", i);
            goto fail;
        }
        s->n = s->buf.shape[0];
        s->step = s->buf.strides[0];
        s->p = (const char *)s->buf.buf;
    }
    Py_DECREF(fast);
    *out = segs;
    return n;
fail:
    while (i-- > 0)
        PyBuffer_Release(&segs[i].buf);
    PyMem_Free(segs);
    Py_DECREF(fast);
    return -1;
}

static void close_segs(Seg *segs, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        PyBuffer_Release(&segs[i].buf);
    PyMem_Free(segs);
}

/* A writable C-contiguous float64 buffer of at least `rows` x `cols` entries (rows <= 0: any 1-D of `cols`). */
static int open_out(PyObject *obj, Py_buffer *b, Py_ssize_t rows, Py_ssize_t cols, const char *what) {
    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0)
        return -1;
    Py_ssize_t need = (rows > 0 ? rows : 1) * cols;
    if (kind_of(b) != K_F64 || b->len / 8 != need || (rows > 0 && (b->ndim != 2 || b->shape[1] != cols))) {
        PyBuffer_Release(b);
        PyErr_Format(PyExc_ValueError, "gradwatch._native: %s must be a C-contiguous float64 array of shape (%zd, %zd)",
                     what, rows, cols);
        return -1;
    }
    return 0;
}

static int open_in(PyObject *obj, Py_buffer *b, Py_ssize_t len, const char *what) {
    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    if (kind_of(b) != K_F64 || b->len / 8 != len) {
        PyBuffer_Release(b);
        PyErr_Format(PyExc_ValueError, "gradwatch._native: %s must be a contiguous float64 array of %zd entries",
                     what, len);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- one pass over one segment */

typedef struct {
    double s, q, lo, hi;
    Py_ssize_t nz;
} Acc;

#define SCAN_BODY(LOAD)                                                                   \
    double s = 0.0, q = 0.0, lo = INFINITY, hi = -INFINITY;                               \
    Py_ssize_t nz = 0;                                                                    \
    GW_SIMD(reduction(+ : s, q, nz) reduction(min : lo) reduction(max : hi))              \
    for (Py_ssize_t i = 0; i < n; i++) {                                                  \
        double v = LOAD;                                                                  \
        s += v;                                                                           \
        q += v * v;                                                                       \
        lo = v < lo ? v : lo;                                                             \
        hi = v > hi ? v : hi;                                                             \
        nz += (v != 0.0);                                                                 \
    }                                                                                     \
    a->s = s;                                                                             \
    a->q = q;                                                                             \
    a->lo = lo;                                                                           \
    a->hi = hi;                                                                           \
    a->nz = nz;

/* x86-64 Linux: the hot loops are also compiled for AVX2 and chosen at load time by the CPU (function
 * multiversioning: about 1.7x faster on large tensors than the baseline SSE2 build, which runs elsewhere).
 * One thread: measured inside a training step, splitting a pass across threads was slower than one
 * thread, its threads competing with PyTorch's own, which spin for a while after each parallel op. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define GW_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GW_CLONES
#endif

GW_CLONES static void scan_f32c(const float *x, Py_ssize_t n, Acc *a) { SCAN_BODY((double)x[i]) }
GW_CLONES static void scan_f64c(const double *x, Py_ssize_t n, Acc *a) { SCAN_BODY(x[i]) }

static inline double load(const Seg *g, Py_ssize_t i) {
    const char *p = g->p + i * g->step;
    switch (g->kind) {
    case K_F32:
        return (double)*(const float *)p;
    case K_F64:
        return *(const double *)p;
    default:
        return half_to_double(*(const uint16_t *)p);
    }
}

static void scan_any(const Seg *g, Acc *a) {
    Py_ssize_t n = g->n;
    if (g->kind == K_F32 && g->step == 4) {
        scan_f32c((const float *)g->p, n, a);
        return;
    }
    if (g->kind == K_F64 && g->step == 8) {
        scan_f64c((const double *)g->p, n, a);
        return;
    }
    double s = 0.0, q = 0.0, lo = INFINITY, hi = -INFINITY;
    Py_ssize_t nz = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double v = load(g, i);
        s += v;
        q += v * v;
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
        nz += (v != 0.0);
    }
    a->s = s;
    a->q = q;
    a->lo = lo;
    a->hi = hi;
    a->nz = nz;
}

/* The sum of d^2 over a segment, d = v / scale - shift, and the sum of d into *dsum: with shift the mean,
 * sum d^2 - (sum d)^2 / n is the corrected two-pass sum of squared deviations (Chan, Golub and LeVeque,
 * "Algorithms for computing the sample variance", 1983): the rounding error of the mean itself
 * (a sum of n entries, up to n * 1e-16 relative) cancels to first order. */
GW_CLONES static double squares(const Seg *g, double shift, double scale, double *dsum) {
    Py_ssize_t n = g->n;
    double acc = 0.0, ds = 0.0;
    if (g->kind == K_F32 && g->step == 4) {
        const float *x = (const float *)g->p;
        GW_SIMD(reduction(+ : acc, ds))
        for (Py_ssize_t i = 0; i < n; i++) {
            double d = (double)x[i] / scale - shift;
            acc += d * d;
            ds += d;
        }
    } else if (g->kind == K_F64 && g->step == 8) {
        const double *x = (const double *)g->p;
        GW_SIMD(reduction(+ : acc, ds))
        for (Py_ssize_t i = 0; i < n; i++) {
            double d = x[i] / scale - shift;
            acc += d * d;
            ds += d;
        }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) {
            double d = load(g, i) / scale - shift;
            acc += d * d;
            ds += d;
        }
    }
    *dsum = ds;
    return acc;
}

/* sqrt of the sum of squared deviations from `mean` (scaled by 1 / scale), corrected (see squares) */
static double centred_norm(const Seg *g, double mean, double scale) {
    double ds, sq = squares(g, mean / scale, scale, &ds);
    double dev = sq - ds * ds / (double)g->n;
    return sqrt(dev > 0.0 ? dev : 0.0);
}

/* ---------------------------------------------------------------- grad_stats */

PyDoc_STRVAR(grad_stats_doc,
             "grad_stats(arrays, strides, raw, extremes, values, value_starts)\n\n"
             "The columns of gradwatch.stats.RAW_FIELDS of each array into raw[i, :7] (float64, C order, shape\n"
             "[len(arrays), 7], or 8 with values); min and max into extremes[0, i], extremes[1, i] unless\n"
             "extremes is None; with values (a contiguous float64 array) and value_starts (int64, one start per\n"
             "array), the L2 norm of each segment of values into raw[i, 7]. strides: the nonzero count reads\n"
             "flat[::stride] only. Same results as gradwatch.stats.host.grad_stats's numpy path.");

static PyObject *grad_stats(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "grad_stats takes 6 arguments");
        return NULL;
    }
    Seg *segs = NULL;
    Py_ssize_t n = open_segs(args[0], &segs);
    if (n < 0)
        return NULL;
    PyObject *result = NULL;
    Py_buffer raw = {0}, ext = {0}, vals = {0}, vstarts = {0};
    int have_raw = 0, have_ext = 0, have_vals = 0, have_vstarts = 0;
    Py_ssize_t *strides = NULL;
    PyObject *sfast = PySequence_Fast(args[1], "grad_stats: strides must be a sequence of ints");
    if (!sfast || PySequence_Fast_GET_SIZE(sfast) != n) {
        if (sfast)
            PyErr_SetString(PyExc_ValueError, "grad_stats: one stride per array");
        goto done;
    }
    strides = (Py_ssize_t *)PyMem_Malloc((n ? n : 1) * sizeof(Py_ssize_t));
    if (!strides) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (segs[i].n == 0) {
            PyErr_Format(PyExc_ValueError, "grad_stats: array %zd is empty (no statistics to take)", i);
            goto done;
        }
        strides[i] = PyNumber_AsSsize_t(PySequence_Fast_GET_ITEM(sfast, i), PyExc_OverflowError);
        if (strides[i] < 1) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "grad_stats: strides must be >= 1");
            goto done;
        }
    }
    Py_ssize_t cols = args[4] != Py_None ? 8 : 7;
    if (open_out(args[2], &raw, n, cols, "raw") < 0)
        goto done;
    have_raw = 1;
    if (args[3] != Py_None) {
        if (open_out(args[3], &ext, 2, n, "extremes") < 0)
            goto done;
        have_ext = 1;
    }
    const double *values = NULL;
    const int64_t *vs = NULL;
    Py_ssize_t nvalues = 0;
    if (args[4] != Py_None) {
        if (PyObject_GetBuffer(args[4], &vals, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            goto done;
        have_vals = 1;
        if (kind_of(&vals) != K_F64) {
            PyErr_SetString(PyExc_ValueError, "grad_stats: values must be contiguous float64");
            goto done;
        }
        if (PyObject_GetBuffer(args[5], &vstarts, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            goto done;
        have_vstarts = 1;
        const char *f = vstarts.format;
        if (*f == '<' || *f == '=' || *f == '@')
            f++;
        if (vstarts.itemsize != 8 || (*f != 'q' && *f != 'l') || vstarts.len / 8 != n) {
            PyErr_SetString(PyExc_ValueError, "grad_stats: value_starts must be int64, one per array");
            goto done;
        }
        values = (const double *)vals.buf;
        vs = (const int64_t *)vstarts.buf;
        nvalues = vals.len / 8;
        for (Py_ssize_t i = 0; i < n; i++) {
            if (vs[i] < 0 || vs[i] > nvalues || (i && vs[i] < vs[i - 1])) {
                PyErr_SetString(PyExc_ValueError, "grad_stats: value_starts must ascend within values");
                goto done;
            }
        }
    }
    double *r = (double *)raw.buf;
    double *e = have_ext ? (double *)ext.buf : NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        const Seg *g = &segs[i];
        Acc a;
        scan_any(g, &a);
        Py_ssize_t nonfinite = 0, nans = 0;
        int bad = !isfinite(a.q);
        if (bad) { /* (a finite sum of squares: every entry is finite) */
            for (Py_ssize_t k = 0; k < g->n; k++) {
                double v = load(g, k);
                nonfinite += !isfinite(v);
                nans += isnan(v);
            }
            if (nans) {
                a.lo = NAN;
                a.hi = NAN;
            }
        }
        double maxabs = nans ? NAN : (a.hi > -a.lo ? a.hi : -a.lo) + 0.0; /* (+ 0.0: never -0.0) */
        Py_ssize_t nz = a.nz;
        if (strides[i] > 1) {
            nz = 0;
            for (Py_ssize_t k = 0; k < g->n; k += strides[i])
                nz += (load(g, k) != 0.0);
        }
        double norm = sqrt(a.q), centred = -1.0;
        double count = (double)g->n;
        double spread = a.q - a.s * a.s / count;
        int direct = spread < 1e-6 * a.q; /* (False for NaN) */
        int odd = g->kind == K_F64 && (maxabs > HUGE_ || (maxabs > 0 && maxabs < TINY));
        if (odd)
            direct = 0;
        if (direct)
            centred = centred_norm(g, a.s / count, 1.0);
        if (odd && !nonfinite) { /* squares underflow or overflow float64: rescaled by max |g| */
            double unused;
            norm = maxabs * sqrt(squares(g, 0.0, maxabs, &unused));
            centred = maxabs * centred_norm(g, a.s / count, maxabs);
        }
        if (nonfinite)
            centred = NAN;
        double *row = r + i * cols;
        row[0] = norm;
        row[1] = maxabs;
        row[2] = a.s;
        row[3] = (double)nz;
        row[4] = (double)nonfinite;
        row[5] = (double)nans;
        row[6] = centred;
        if (e) {
            e[i] = a.lo;
            e[n + i] = a.hi;
        }
        if (values) {
            Py_ssize_t end = i + 1 < n ? (Py_ssize_t)vs[i + 1] : nvalues;
            const double *x = values + vs[i];
            Py_ssize_t m = end - (Py_ssize_t)vs[i];
            double acc = 0.0;
            GW_SIMD(reduction(+ : acc))
            for (Py_ssize_t k = 0; k < m; k++)
                acc += x[k] * x[k];
            row[7] = sqrt(acc);
        }
    }
    result = Py_None;
    Py_INCREF(result);
done:
    Py_XDECREF(sfast);
    PyMem_Free(strides);
    if (have_raw)
        PyBuffer_Release(&raw);
    if (have_ext)
        PyBuffer_Release(&ext);
    if (have_vals)
        PyBuffer_Release(&vals);
    if (have_vstarts)
        PyBuffer_Release(&vstarts);
    close_segs(segs, n);
    return result;
}

/* The arrays of args[0] opened, their entries counted: the start of every function taking a list. */
static Py_ssize_t open_list(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *name, Seg **segs,
                            Py_ssize_t *total) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", name, want);
        return -1;
    }
    Py_ssize_t n = open_segs(args[0], segs);
    *total = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        *total += (*segs)[i].n;
    return n;
}

/* ---------------------------------------------------------------- gather */

PyDoc_STRVAR(gather_doc, "gather(arrays, out)\n\n"
                         "The entries of each 1-D array, one after the other, converted exactly into the\n"
                         "contiguous float64 array out (exactly as long as all of them together).");

static PyObject *gather(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    Seg *segs = NULL;
    Py_ssize_t total;
    Py_ssize_t n = open_list(args, nargs, 2, "gather", &segs, &total);
    if (n < 0)
        return NULL;
    Py_buffer out;
    if (open_out(args[1], &out, 0, total, "out") < 0) {
        close_segs(segs, n);
        return NULL;
    }
    double *o = (double *)out.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        const Seg *g = &segs[i];
        Py_ssize_t m = g->n;
        if (g->kind == K_F32 && g->step == 4) {
            const float *x = (const float *)g->p;
            GW_SIMD()
            for (Py_ssize_t k = 0; k < m; k++)
                o[k] = (double)x[k];
        } else if (g->kind == K_F64 && g->step == 8) {
            memcpy(o, g->p, (size_t)m * 8);
        } else {
            for (Py_ssize_t k = 0; k < m; k++)
                o[k] = load(g, k);
        }
        o += m;
    }
    PyBuffer_Release(&out);
    close_segs(segs, n);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- update_and_change */

PyDoc_STRVAR(update_doc,
             "update_and_change(arrays, before, prev, out)\n\n"
             "For each array (a segment of before and prev, in order): ||now - before||_2 into out[i, 0]\n"
             "and ||before - prev||_1 into out[i, 1]; before and prev contiguous float64, out [n, 2].");

static PyObject *update_and_change(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    Seg *segs = NULL;
    Py_ssize_t total;
    Py_ssize_t n = open_list(args, nargs, 4, "update_and_change", &segs, &total);
    if (n < 0)
        return NULL;
    Py_buffer before, prev, out;
    if (open_in(args[1], &before, total, "before") < 0) {
        close_segs(segs, n);
        return NULL;
    }
    if (open_in(args[2], &prev, total, "prev") < 0) {
        PyBuffer_Release(&before);
        close_segs(segs, n);
        return NULL;
    }
    if (open_out(args[3], &out, n, 2, "out") < 0) {
        PyBuffer_Release(&before);
        PyBuffer_Release(&prev);
        close_segs(segs, n);
        return NULL;
    }
    const double *b = (const double *)before.buf, *p = (const double *)prev.buf;
    double *o = (double *)out.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        const Seg *g = &segs[i];
        Py_ssize_t m = g->n;
        double up = 0.0, change = 0.0;
        if (g->kind == K_F32 && g->step == 4) {
            const float *x = (const float *)g->p;
            GW_SIMD(reduction(+ : up, change))
            for (Py_ssize_t k = 0; k < m; k++) {
                double d = (double)x[k] - b[k];
                up += d * d;
                change += fabs(b[k] - p[k]);
            }
        } else {
            for (Py_ssize_t k = 0; k < m; k++) {
                double d = load(g, k) - b[k];
                up += d * d;
                change += fabs(b[k] - p[k]);
            }
        }
        o[2 * i] = sqrt(up);
        o[2 * i + 1] = change;
        b += m;
        p += m;
    }
    PyBuffer_Release(&before);
    PyBuffer_Release(&prev);
    PyBuffer_Release(&out);
    close_segs(segs, n);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- all_finite */

/* 0 if every entry is finite, else NaN (in float: twice as many lanes to a vector as in double) */
GW_CLONES static float finite_f32c(const float *x, Py_ssize_t m) {
    float acc = 0.0f;
    GW_SIMD(reduction(+ : acc))
    for (Py_ssize_t k = 0; k < m; k++)
        acc += 0.0f * x[k];
    return acc;
}

PyDoc_STRVAR(all_finite_doc, "all_finite(arrays) -> bool\n\nWhether every entry of every 1-D array is finite.");

static PyObject *all_finite(PyObject *self, PyObject *arg) {
    (void)self;
    Seg *segs = NULL;
    Py_ssize_t n = open_segs(arg, &segs);
    if (n < 0)
        return NULL;
    int ok = 1;
    for (Py_ssize_t i = 0; i < n && ok; i++) {
        const Seg *g = &segs[i];
        Py_ssize_t m = g->n;
        double acc = 0.0; /* 0 * v is 0 for every finite v, NaN for NaN and +-Inf */
        if (g->kind == K_F32 && g->step == 4) {
            acc = finite_f32c((const float *)g->p, m);
        } else {
            for (Py_ssize_t k = 0; k < m; k++)
                acc += 0.0 * load(g, k);
        }
        ok = acc == 0.0;
    }
    close_segs(segs, n);
    return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"grad_stats", (PyCFunction)(void (*)(void))grad_stats, METH_FASTCALL, grad_stats_doc},
    {"gather", (PyCFunction)(void (*)(void))gather, METH_FASTCALL, gather_doc},
    {"update_and_change", (PyCFunction)(void (*)(void))update_and_change, METH_FASTCALL, update_doc},
    {"all_finite", all_finite, METH_O, all_finite_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gradwatch.stats._native",
    "The CPU statistics of small tensors in one compiled pass (see gradwatch/stats/host.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
