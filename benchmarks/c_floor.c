/* The C floor of event-pair timing: a ring of pre-made timing events recorded and read from C,
 * through driver entry points that Python found with cuGetProcAddress. Built and used by
 * benchmarks/c_floor.py; nothing here belongs to the library.
 *
 * Events are recorded in pairs: a region's start at an even position of the ring, its end at the
 * next one. A ring much larger than the regions in flight keeps a pair from being recorded again
 * before it is read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

typedef int (*record_fn)(void *event, void *stream);
typedef int (*elapsed_fn)(float *ms, void *start, void *end);
typedef int (*query_fn)(void *event);

static record_fn record_;
static elapsed_fn elapsed_;
static query_fn query_;
static void **ring_;
static Py_ssize_t ring_len_, next_;
static void *stream_;

static PyObject *cf_bind(PyObject *self, PyObject *args) {
    unsigned long long record, elapsed, query;
    if (!PyArg_ParseTuple(args, "KKK", &record, &elapsed, &query))
        return NULL;
    record_ = (record_fn)(uintptr_t)record;
    elapsed_ = (elapsed_fn)(uintptr_t)elapsed;
    query_ = (query_fn)(uintptr_t)query;
    Py_RETURN_NONE;
}

static PyObject *cf_set_ring(PyObject *self, PyObject *args) {
    PyObject *events;
    unsigned long long stream;
    if (!PyArg_ParseTuple(args, "OK", &events, &stream))
        return NULL;
    PyObject *seq = PySequence_Fast(events, "events must be a sequence of handles (ints)");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 2 || n % 2) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "the ring needs an even number of events, at least 2; got %zd", n);
    }
    void **ring = malloc(n * sizeof(void *));
    if (ring == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        ring[i] = (void *)(uintptr_t)PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred()) {
            free(ring);
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    free(ring_);
    ring_ = ring;
    ring_len_ = n;
    next_ = 0;
    stream_ = (void *)(uintptr_t)stream;
    Py_RETURN_NONE;
}

static int record_next(void) {
    void *event = ring_[next_];
    next_ = next_ + 1 == ring_len_ ? 0 : next_ + 1;
    return record_(event, stream_);
}

static PyObject *failed(const char *what, int err) {
    return PyErr_Format(PyExc_RuntimeError, "%s failed with CUresult %d", what, err);
}

/* Whether bind() and set_ring() came first; else a RuntimeError saying so. */
static int ready(void) {
    if (record_ != NULL && ring_ != NULL)
        return 1;
    PyErr_SetString(PyExc_RuntimeError, "call c_floor.bind(...) and c_floor.set_ring(...) first");
    return 0;
}

/* n records of the ring's next events, in a C loop. */
static PyObject *records(Py_ssize_t n) {
    if (!ready())
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        int err = record_next();
        if (err)
            return failed("cuEventRecord", err);
    }
    Py_RETURN_NONE;
}

/* One record from Python: a region's begin or its end. */
static PyObject *cf_mark(PyObject *self, PyObject *unused) {
    return records(1);
}

/* n empty regions, two records each, in a C loop. */
static PyObject *cf_regions(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0 && PyErr_Occurred())
        return NULL;
    return records(2 * n);
}

/* The last n regions' times, read from C: the sum of their milliseconds (each end queried
 * first, as a harvest does). */
static PyObject *cf_read(PyObject *self, PyObject *arg) {
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if ((n < 0 && PyErr_Occurred()) || !ready())
        return NULL;
    if (2 * n > ring_len_)
        return PyErr_Format(PyExc_ValueError, "only %zd regions fit the ring", ring_len_ / 2);
    double total = 0.0;
    Py_ssize_t at = next_;
    for (Py_ssize_t i = 0; i < n; i++) {
        at = at >= 2 ? at - 2 : at - 2 + ring_len_;
        int err = query_(ring_[at + 1]);
        if (err)
            return failed("cuEventQuery", err);
        float ms = 0.0f;
        err = elapsed_(&ms, ring_[at], ring_[at + 1]);
        if (err)
            return failed("cuEventElapsedTime", err);
        total += ms;
    }
    return PyFloat_FromDouble(total);
}

static PyMethodDef methods[] = {
    {"bind", cf_bind, METH_VARARGS, "bind(record, elapsed, query): the driver entry points' addresses"},
    {"set_ring", cf_set_ring, METH_VARARGS, "set_ring(events, stream): the timing events to record, in pairs, and the stream"},
    {"mark", cf_mark, METH_NOARGS, "mark(): record the ring's next event on the stream"},
    {"regions", cf_regions, METH_O, "regions(n): n empty regions (two records each) in a C loop"},
    {"read", cf_read, METH_O, "read(n): the total ms of the last n regions, queried and read from C"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "c_floor", "Event-pair timing from C.", -1, methods};

PyMODINIT_FUNC PyInit_c_floor(void) { return PyModule_Create(&module); }
