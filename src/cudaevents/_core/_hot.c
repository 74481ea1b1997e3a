/* The compiled hot path of cudaevents (the extension module cudaevents._core._hot).
 *
 * What is here: the driver calls that run per event or per region, through entry points the
 * Python side found with cuGetProcAddress (bind()), so building needs a C compiler and no CUDA
 * headers; and the fast paths of the methods that run per event or per region (CudaEvent,
 * EventPool, the Timer's region and its harvest), installed on the Python classes as methods.
 *
 * Each method here does its common case and hands every other case (an unbound event, a closed
 * stream, a stream of another library, a miss of the pool, an error message to word) to the
 * Python method it replaces, which it was given at install time: the rules live once, in
 * Python, and C only skips the interpreter where nothing needs deciding. The methods read and
 * write the classes' __slots__ at the offsets their member descriptors give, so the objects are
 * the same with the compiled path and without it, and compiled.use() can switch at run time.
 *
 * Threads: nothing here relies on the GIL for the pool's consistency: the pool's fast paths hold
 * the pool's own lock, as its Python methods do. Host waits in the driver release the GIL. No
 * Python object is released while that lock is held, so no finalizer runs inside it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define NOT_READY 600 /* CUDA_ERROR_NOT_READY */

typedef int (*rec_fn)(void *event, void *stream);
typedef int (*one_fn)(void *handle);
typedef int (*elapsed_fn)(float *ms, void *start, void *end);
typedef int (*wait_fn)(void *stream, void *event, unsigned int flags);
typedef int (*ctx_fn)(void **ctx);

static rec_fn cu_record;
static one_fn cu_query, cu_evsync, cu_squery, cu_ssync;
static elapsed_fn cu_elapsed;
static wait_fn cu_wait;
static ctx_fn cu_ctx_current;
static PyObject *raise_code; /* driver._raise_code(code, call): raises CudaError */
static PyObject *contexts; /* driver._context_ints: device ordinal -> its primary context (int) */
static PyObject *entries_owner; /* what the entry points belong to, kept alive while they are bound */

/* ---------------------------------------------------------------------------------------- */
/* handles and errors                                                                       */

static int handle_of(PyObject *o, void **out) {
    if (PyLong_CheckExact(o)) {
        *out = PyLong_AsVoidPtr(o);
        return (*out == NULL && PyErr_Occurred()) ? -1 : 0;
    }
    if (o == Py_None) {
        *out = NULL;
        return 0;
    }
    PyObject *n = PyNumber_Long(o); /* cuda.bindings handles: their __int__ */
    if (n == NULL)
        return -1;
    *out = PyLong_AsVoidPtr(n);
    Py_DECREF(n);
    return (*out == NULL && PyErr_Occurred()) ? -1 : 0;
}

static PyObject *fail(int err, const char *call) {
    if (raise_code == NULL)
        return PyErr_Format(PyExc_RuntimeError, "%s failed with CUresult %d", call, err);
    PyObject *r = PyObject_CallFunction(raise_code, "is", err, call);
    if (r != NULL) { /* it must raise */
        Py_DECREF(r);
        PyErr_Format(PyExc_RuntimeError, "%s failed with CUresult %d", call, err);
    }
    return NULL;
}

static int bound(void) {
    if (cu_record == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the compiled hot path is not bound to a driver (bind() first)");
        return 0;
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* bind(): the driver's entry points                                                        */

static void *entry(PyObject *entries, const char *name) {
    PyObject *v = PyDict_GetItemString(entries, name); /* borrowed */
    if (v == NULL) {
        PyErr_Format(PyExc_KeyError, "bind() needs the entry point %s", name);
        return NULL;
    }
    void *p = PyLong_AsVoidPtr(v);
    if (p == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "the entry point %s is NULL", name);
    return p;
}

static PyObject *hot_bind(PyObject *m, PyObject *args) {
    PyObject *entries, *raiser, *ctxs, *owner;
    if (!PyArg_ParseTuple(args, "O!OO!O", &PyDict_Type, &entries, &raiser, &PyDict_Type, &ctxs, &owner))
        return NULL;
    void *p[8];
    static const char *names[8] = {"cuEventRecord", "cuEventQuery", "cuEventSynchronize", "cuEventElapsedTime",
                                   "cuStreamWaitEvent", "cuStreamQuery", "cuStreamSynchronize", "cuCtxGetCurrent"};
    for (int i = 0; i < 8; i++)
        if ((p[i] = entry(entries, names[i])) == NULL)
            return NULL;
    cu_ctx_current = (ctx_fn)p[7];
    Py_INCREF(ctxs);
    Py_XSETREF(contexts, ctxs);
    Py_INCREF(owner); /* a stand-in driver's entry points live as long as it does */
    Py_XSETREF(entries_owner, owner);
    cu_record = (rec_fn)p[0];
    cu_query = (one_fn)p[1];
    cu_evsync = (one_fn)p[2];
    cu_elapsed = (elapsed_fn)p[3];
    cu_wait = (wait_fn)p[4];
    cu_squery = (one_fn)p[5];
    cu_ssync = (one_fn)p[6];
    Py_INCREF(raiser);
    Py_XSETREF(raise_code, raiser);
    Py_RETURN_NONE;
}

static PyObject *hot_unbind(PyObject *m, PyObject *unused) {
    cu_record = NULL;
    cu_ctx_current = NULL;
    Py_CLEAR(entries_owner);
    cu_query = cu_evsync = cu_squery = cu_ssync = NULL;
    cu_elapsed = NULL;
    cu_wait = NULL;
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------------------- */
/* the driver wrappers (driver.event_record & co. while the compiled path is in use)         */

static PyObject *hot_event_record(PyObject *m, PyObject *const *args, Py_ssize_t n) {
    void *e, *s;
    if (n != 2)
        return PyErr_Format(PyExc_TypeError, "event_record(event, stream) takes 2 arguments");
    if (!bound() || handle_of(args[0], &e) || handle_of(args[1], &s))
        return NULL;
    int err = cu_record(e, s);
    if (err)
        return fail(err, "cuEventRecord");
    Py_RETURN_NONE;
}

static PyObject *query_result(int err, const char *call) {
    if (!err)
        Py_RETURN_TRUE;
    if (err == NOT_READY)
        Py_RETURN_FALSE;
    return fail(err, call);
}

static PyObject *hot_event_query(PyObject *m, PyObject *h) {
    void *e;
    if (!bound() || handle_of(h, &e))
        return NULL;
    return query_result(cu_query(e), "cuEventQuery");
}

static PyObject *hot_event_synchronize(PyObject *m, PyObject *h) {
    void *e;
    int err;
    if (!bound() || handle_of(h, &e))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    err = cu_evsync(e);
    Py_END_ALLOW_THREADS
    if (err)
        return fail(err, "cuEventSynchronize");
    Py_RETURN_NONE;
}

static PyObject *hot_event_elapsed_ms(PyObject *m, PyObject *const *args, Py_ssize_t n) {
    void *a, *b;
    float ms = 0;
    if (n != 2)
        return PyErr_Format(PyExc_TypeError, "event_elapsed_ms(start, end) takes 2 arguments");
    if (!bound() || handle_of(args[0], &a) || handle_of(args[1], &b))
        return NULL;
    int err = cu_elapsed(&ms, a, b);
    if (!err)
        return PyFloat_FromDouble(ms);
    if (err == NOT_READY)
        Py_RETURN_NONE;
    return fail(err, "cuEventElapsedTime");
}

static PyObject *hot_stream_wait_event(PyObject *m, PyObject *const *args, Py_ssize_t n) {
    void *s, *e;
    if (n != 2)
        return PyErr_Format(PyExc_TypeError, "stream_wait_event(stream, event) takes 2 arguments");
    if (!bound() || handle_of(args[0], &s) || handle_of(args[1], &e))
        return NULL;
    int err = cu_wait(s, e, 0);
    if (err)
        return fail(err, "cuStreamWaitEvent");
    Py_RETURN_NONE;
}

static PyObject *hot_stream_query(PyObject *m, PyObject *h) {
    void *s;
    if (!bound() || handle_of(h, &s))
        return NULL;
    return query_result(cu_squery(s), "cuStreamQuery");
}

static PyObject *hot_stream_synchronize(PyObject *m, PyObject *h) {
    void *s;
    int err;
    if (!bound() || handle_of(h, &s))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    err = cu_ssync(s);
    Py_END_ALLOW_THREADS
    if (err)
        return fail(err, "cuStreamSynchronize");
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------------------- */
/* slots: the offsets of a class's __slots__, read from their member descriptors            */

#define SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))

static Py_ssize_t slot_offset(PyObject *cls, const char *name) {
    PyObject *d = PyObject_GetAttrString(cls, name);
    if (d == NULL)
        return -1;
    Py_ssize_t off = -1;
    if (Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX)
        off = ((PyMemberDescrObject *)d)->d_member->offset;
    else
        PyErr_Format(PyExc_TypeError, "%R.%s is not a __slots__ member", cls, name);
    Py_DECREF(d);
    return off;
}

/* Set a slot, dropping the old value after (ints, bools and None here: nothing runs). */
static inline void slot_set(PyObject *o, Py_ssize_t off, PyObject *v) {
    PyObject **p = (PyObject **)((char *)o + off);
    PyObject *old = *p;
    Py_INCREF(v);
    *p = v;
    Py_XDECREF(old);
}

static inline int is_none(PyObject *v) { return v == NULL || v == Py_None; }

/* The Python method a fast path hands over to: fallback(self, *args, **kwargs). */
static PyObject *hand_over(PyObject *fb, PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t n = PyVectorcall_NARGS(nargsf) + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[8];
    PyObject **a = n + 1 <= 8 ? small : PyMem_Malloc((n + 1) * sizeof(PyObject *));
    if (a == NULL)
        return PyErr_NoMemory();
    a[0] = self;
    if (n)
        memcpy(a + 1, args, n * sizeof(PyObject *));
    PyObject *r = PyObject_Vectorcall(fb, a, PyVectorcall_NARGS(nargsf) + 1, kwnames);
    if (a != small)
        PyMem_Free(a);
    return r;
}

#define METHOD_ARGS PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames
#define HAND_OVER(fb) return hand_over(fb, self, args, nargsf, kwnames)

/* ---------------------------------------------------------------------------------------- */
/* GpuStream: what a fast path reads of a stream                                            */

static PyTypeObject *stream_type;
static Py_ssize_t st_handle, st_device, st_special;

/* The native handle of a live GpuStream whose handle names one stream (not 0, 1 or 2, which
 * need their device's context current): 0 with *out set; 1 when the fast path does not apply;
 * -1 on an error. */
/* Whether device's primary context is current on this thread (so a special handle names a
 * stream of that device without a push): 1 yes, 0 no or unknown. */
static int context_is_current(PyObject *device) {
    void *ctx = NULL;
    if (cu_ctx_current == NULL || contexts == NULL || cu_ctx_current(&ctx) || ctx == NULL)
        return 0;
    PyObject *want = PyDict_GetItemWithError(contexts, device); /* borrowed */
    if (want == NULL) {
        PyErr_Clear();
        return 0;
    }
    void *w = PyLong_AsVoidPtr(want);
    if (w == NULL && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return w == ctx;
}

/* The native handle of a live GpuStream usable without pushing a context (a handle naming one
 * stream, or a special one, 0, 1 or 2, of the device whose context is current: torch's default
 * stream is 0): 0 with *out set; 1 when the fast path does not apply; -1 on an error. */
static int plain_stream(PyObject *s, void **out, PyObject **device) {
    if (Py_TYPE(s) != stream_type)
        return 1;
    PyObject *h = SLOT(s, st_handle), *special = SLOT(s, st_special);
    *device = SLOT(s, st_device);
    if (is_none(h) || *device == NULL || special == NULL)
        return 1;
    if (special != Py_False && !context_is_current(*device))
        return 1;
    return handle_of(h, out) ? -1 : 0;
}

static int same_int(PyObject *a, PyObject *b) {
    if (a == b)
        return 1;
    if (a == NULL || b == NULL)
        return 0;
    return PyObject_RichCompareBool(a, b, Py_EQ) == 1;
}

/* ---------------------------------------------------------------------------------------- */
/* interned names and constants                                                             */

static PyObject *s_acquire, *s_release, *s_release_deferred, *s_append, *s_harvest, *s_get;
static PyObject *s_pending, *s_spare, *s_nvtx, *s_step, *s_since, *s_every, *s_popleft, *s_gpu_stream, *s_shared;
static PyObject *s_entered, *s_share;
static PyObject *minus_one;

/* ---------------------------------------------------------------------------------------- */
/* CudaEvent                                                                                */

static Py_ssize_t ev_handle, ev_device, ev_flags, ev_pool, ev_recorded, ev_closed;
static PyObject *ev_fb_init, *ev_fb_record, *ev_fb_wait, *ev_fb_query, *ev_fb_close, *ev_fb_del;
static PyObject *default_pool_fn, *event_type;

static PyObject *k_device, *k_timing, *k_blocking_sync, *k_interprocess, *k_pool;
static PyObject *pool_type; /* EventPool, once installed: its events call its fast paths directly */
static PyObject *pl_acquire(PyObject *, PyObject *const *, size_t, PyObject *);
static PyObject *pl_release(PyObject *, PyObject *const *, size_t, PyObject *);

static int name_is(PyObject *a, PyObject *b) {
    return a == b || PyUnicode_Compare(a, b) == 0;
}

/* __init__(self, device=None, *, timing=False, blocking_sync=False, interprocess=False, pool=None)
 * Fast: an unbound event (device None), flags given as bools, not interprocess. One argument
 * at a time: 1 taken, 0 not for the fast path. */
typedef struct {
    PyObject *timing, *bs, *pool;
} ev_args;

static int ev_arg(ev_args *a, PyObject *k, PyObject *v) {
    if (name_is(k, k_timing))
        a->timing = v;
    else if (name_is(k, k_blocking_sync))
        a->bs = v;
    else if (name_is(k, k_pool))
        a->pool = v;
    else if ((name_is(k, k_device) && v == Py_None) || (name_is(k, k_interprocess) && (v == Py_None || v == Py_False)))
        return 1;
    else
        return 0;
    return 1;
}

/* the slots of a new unbound event: 1 done, 0 not for the fast path, -1 error */
static int ev_set(PyObject *self, ev_args *a) {
    if ((a->timing != Py_True && a->timing != Py_False) || (a->bs != Py_True && a->bs != Py_False))
        return 0;
    long flags = (a->timing == Py_True ? 0 : 0x2) | (a->bs == Py_True ? 0x1 : 0);
    PyObject *f = PyLong_FromLong(flags), *pool = a->pool;
    if (f == NULL)
        return -1;
    if (pool == Py_None) {
        if ((pool = PyObject_CallNoArgs(default_pool_fn)) == NULL) {
            Py_DECREF(f);
            return -1;
        }
    } else {
        Py_INCREF(pool);
    }
    slot_set(self, ev_handle, Py_None);
    slot_set(self, ev_closed, Py_False);
    slot_set(self, ev_recorded, Py_False);
    slot_set(self, ev_device, minus_one);
    Py_XSETREF(SLOT(self, ev_flags), f);
    Py_XSETREF(SLOT(self, ev_pool), pool);
    return 1;
}

static PyObject *ev_init(METHOD_ARGS) {
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    ev_args a = {Py_False, Py_False, Py_None};
    if (n > 1 || (n == 1 && args[0] != Py_None))
        HAND_OVER(ev_fb_init);
    Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nk; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (!ev_arg(&a, k, args[n + i]) || (n == 1 && name_is(k, k_device)))
            HAND_OVER(ev_fb_init); /* (a device given twice: Python words the error) */
    }
    int r = ev_set(self, &a);
    if (r < 0)
        return NULL;
    if (r == 0)
        HAND_OVER(ev_fb_init);
    Py_RETURN_NONE;
}

/* The same as the type's own tp_init (speed_slots()), without the lookup of __init__. */
static int ev_tp_init(PyObject *self, PyObject *args, PyObject *kwds) {
    ev_args a = {Py_False, Py_False, Py_None};
    Py_ssize_t n = PyTuple_GET_SIZE(args), pos = 0;
    int fast = n == 0 || (n == 1 && PyTuple_GET_ITEM(args, 0) == Py_None);
    PyObject *k, *v;
    while (fast && kwds && PyDict_Next(kwds, &pos, &k, &v))
        fast = ev_arg(&a, k, v) && !(n == 1 && name_is(k, k_device));
    int r = fast ? ev_set(self, &a) : 0;
    if (r)
        return r < 0 ? -1 : 0;
    PyObject *full = PyTuple_New(n + 1); /* (self, *args) for the Python __init__ */
    if (full == NULL)
        return -1;
    PyTuple_SET_ITEM(full, 0, Py_NewRef(self));
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(full, i + 1, Py_NewRef(PyTuple_GET_ITEM(args, i)));
    PyObject *res = PyObject_Call(ev_fb_init, full, kwds);
    Py_DECREF(full);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* record(self, stream): fast on a plain GpuStream of the event's device, or of any device
 * for an unbound event (its handle comes from the pool here). */
static PyObject *ev_record(METHOD_ARGS) {
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames || cu_record == NULL)
        HAND_OVER(ev_fb_record);
    void *sh, *eh;
    PyObject *sdev;
    int r = plain_stream(args[0], &sh, &sdev);
    if (r)
        return r < 0 ? NULL : hand_over(ev_fb_record, self, args, nargsf, kwnames);
    PyObject *h = SLOT(self, ev_handle);
    if (is_none(h)) {
        if (SLOT(self, ev_closed) != Py_False)
            HAND_OVER(ev_fb_record);
        PyObject *pool = SLOT(self, ev_pool), *flags = SLOT(self, ev_flags);
        if (pool == NULL || flags == NULL)
            HAND_OVER(ev_fb_record);
        PyObject *a[3] = {pool, sdev, flags};
        h = (PyObject *)Py_TYPE(pool) == pool_type ? pl_acquire(pool, a + 1, 2, NULL)
                                                   : PyObject_VectorcallMethod(s_acquire, a, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (h == NULL)
            return NULL;
        Py_XSETREF(SLOT(self, ev_handle), h); /* takes the reference */
        slot_set(self, ev_device, sdev);
    } else if (!same_int(SLOT(self, ev_device), sdev)) {
        HAND_OVER(ev_fb_record);
    }
    if (handle_of(h, &eh))
        return NULL;
    int err = cu_record(eh, sh);
    if (err)
        return fail(err, "cuEventRecord");
    slot_set(self, ev_recorded, Py_True);
    return Py_NewRef(self);
}

/* The handle of a recorded, open event, or NULL (borrowed). */
static PyObject *recorded_handle(PyObject *self) {
    PyObject *h = SLOT(self, ev_handle);
    if (is_none(h) || SLOT(self, ev_recorded) != Py_True)
        return NULL;
    return h;
}

static PyObject *ev_query(METHOD_ARGS) {
    PyObject *h = recorded_handle(self);
    void *e;
    if (h == NULL || PyVectorcall_NARGS(nargsf) || kwnames || cu_query == NULL)
        HAND_OVER(ev_fb_query);
    if (handle_of(h, &e))
        return NULL;
    return query_result(cu_query(e), "cuEventQuery");
}

static PyObject *ev_wait(METHOD_ARGS) {
    PyObject *h = recorded_handle(self), *sdev;
    void *e, *sh;
    if (h == NULL || PyVectorcall_NARGS(nargsf) != 1 || kwnames || cu_wait == NULL)
        HAND_OVER(ev_fb_wait);
    int r = plain_stream(args[0], &sh, &sdev);
    if (r)
        return r < 0 ? NULL : hand_over(ev_fb_wait, self, args, nargsf, kwnames);
    if (handle_of(h, &e))
        return NULL;
    int err = cu_wait(sh, e, 0);
    if (err)
        return fail(err, "cuStreamWaitEvent");
    Py_RETURN_NONE;
}

/* close(self): the handle back to the pool. */
static PyObject *ev_close(METHOD_ARGS) {
    if (PyVectorcall_NARGS(nargsf) || kwnames)
        HAND_OVER(ev_fb_close);
    PyObject *pool = SLOT(self, ev_pool), *dev = SLOT(self, ev_device), *flags = SLOT(self, ev_flags);
    if (pool == NULL || dev == NULL || flags == NULL)
        HAND_OVER(ev_fb_close);
    slot_set(self, ev_closed, Py_True);
    PyObject *h = SLOT(self, ev_handle);
    if (is_none(h))
        Py_RETURN_NONE;
    SLOT(self, ev_handle) = Py_NewRef(Py_None); /* we own h now */
    PyObject *a[4] = {pool, dev, flags, h};
    PyObject *r = (PyObject *)Py_TYPE(pool) == pool_type
                      ? pl_release(pool, a + 1, 3, NULL)
                      : PyObject_VectorcallMethod(s_release, a, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(h);
    return r;
}

/* __del__(self): as close(), through the pool's lock-free return (the collector may run this
 * inside the pool's lock); a finalizer raises nothing. */
static void ev_finalize(PyObject *self) {
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *pool = SLOT(self, ev_pool), *dev = SLOT(self, ev_device), *flags = SLOT(self, ev_flags);
    if (SLOT(self, ev_closed) != NULL)
        slot_set(self, ev_closed, Py_True);
    PyObject *h = SLOT(self, ev_handle);
    if (!is_none(h) && pool != NULL && dev != NULL && flags != NULL) {
        SLOT(self, ev_handle) = Py_NewRef(Py_None);
        PyObject *a[4] = {pool, dev, flags, h};
        PyObject *r = PyObject_VectorcallMethod(s_release_deferred, a, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(h);
        if (r == NULL)
            PyErr_Clear();
        Py_XDECREF(r);
    }
    PyErr_Restore(et, ev, tb);
}

static PyObject *ev_del(METHOD_ARGS) {
    ev_finalize(self);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------------------- */
/* Lock: the pool's lock, which C takes without a method call. Like threading.Lock it waits
 * with the GIL released (a holder may need the GIL to get to its release).                  */

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    int locked;
} Lock;

static int lock_take(Lock *l) {
    if (!PyThread_acquire_lock(l->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(l->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
    l->locked = 1;
    return 0;
}

static int lock_give(Lock *l) {
    if (!l->locked) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return -1;
    }
    l->locked = 0;
    PyThread_release_lock(l->lock);
    return 0;
}

static PyObject *lock_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if (PyTuple_GET_SIZE(args) || (kw && PyDict_GET_SIZE(kw)))
        return PyErr_Format(PyExc_TypeError, "Lock() takes no arguments");
    Lock *l = (Lock *)type->tp_alloc(type, 0);
    if (l == NULL)
        return NULL;
    if ((l->lock = PyThread_allocate_lock()) == NULL) {
        Py_DECREF(l);
        return PyErr_NoMemory();
    }
    return (PyObject *)l;
}

static void lock_dealloc(Lock *l) {
    if (l->lock) {
        if (l->locked)
            PyThread_release_lock(l->lock);
        PyThread_free_lock(l->lock);
    }
    Py_TYPE(l)->tp_free((PyObject *)l);
}

static PyObject *lock_acquire(Lock *l, PyObject *unused) {
    lock_take(l);
    Py_RETURN_TRUE;
}

static PyObject *lock_release(Lock *l, PyObject *unused) {
    if (lock_give(l))
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *lock_exit(Lock *l, PyObject *args) {
    if (lock_give(l))
        return NULL;
    Py_RETURN_FALSE;
}

static PyObject *lock_locked(Lock *l, PyObject *unused) { return PyBool_FromLong(l->locked); }

static PyMethodDef lock_methods[] = {
    {"acquire", (PyCFunction)lock_acquire, METH_NOARGS, "Take the lock, waiting (GIL released) while another holds it."},
    {"release", (PyCFunction)lock_release, METH_NOARGS, "Let the lock go."},
    {"locked", (PyCFunction)lock_locked, METH_NOARGS, "Whether the lock is held."},
    {"__enter__", (PyCFunction)lock_acquire, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)lock_exit, METH_VARARGS, NULL},
    {NULL},
};

static PyTypeObject LockType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cudaevents._core._hot.Lock",
    .tp_basicsize = sizeof(Lock),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Lock(): a mutex with acquire/release and with-blocks, which the compiled fast paths take directly.",
    .tp_new = lock_new,
    .tp_dealloc = (destructor)lock_dealloc,
    .tp_methods = lock_methods,
};

/* ---------------------------------------------------------------------------------------- */
/* EventPool: acquire and release of a key that exists, under the pool's lock               */

static Py_ssize_t pl_lock, pl_keys, pl_returned, pl_max, pl_state, pl_total;
static Py_ssize_t key_free, key_counts;
static Py_ssize_t c_creates, c_reuses, c_live, c_high;
static PyObject *pl_fb_acquire, *pl_fb_release;
static PyObject *s_exiting;

static int lock_call(PyObject *lock, PyObject *name) {
    if (Py_IS_TYPE(lock, &LockType))
        return name == s_acquire ? lock_take((Lock *)lock) : lock_give((Lock *)lock);
    PyObject *r = PyObject_VectorcallMethod(name, &lock, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* counts.<off> += delta (a Python int slot) */
static int add_to(PyObject *counts, Py_ssize_t off, Py_ssize_t delta, Py_ssize_t *now) {
    PyObject *v = SLOT(counts, off);
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "pool counts unset");
        return -1;
    }
    Py_ssize_t x = PyLong_AsSsize_t(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    x += delta;
    PyObject *nv = PyLong_FromSsize_t(x);
    if (nv == NULL)
        return -1;
    Py_SETREF(SLOT(counts, off), nv);
    if (now)
        *now = x;
    return 0;
}

static int raise_high(PyObject *counts, Py_ssize_t live) {
    PyObject *v = SLOT(counts, c_high);
    Py_ssize_t high = v ? PyLong_AsSsize_t(v) : 0;
    if (high == -1 && PyErr_Occurred())
        return -1;
    if (live > high) {
        PyObject *nv = PyLong_FromSsize_t(live);
        if (nv == NULL)
            return -1;
        Py_XSETREF(SLOT(counts, c_high), nv);
    }
    return 0;
}

/* live (and high water) += delta in one device's counts and in the total */
static int count_live(PyObject *counts, PyObject *total, Py_ssize_t delta) {
    Py_ssize_t live;
    if (add_to(counts, c_live, delta, &live) || (delta > 0 && raise_high(counts, live)))
        return -1;
    if (add_to(total, c_live, delta, &live) || (delta > 0 && raise_high(total, live)))
        return -1;
    return 0;
}

/* The pool's _Key for (device, flags), or NULL (borrowed; no error set) */
static PyObject *pool_key(PyObject *self, PyObject *device, PyObject *flags) {
    PyObject *keys = SLOT(self, pl_keys);
    if (keys == NULL || !PyDict_CheckExact(keys))
        return NULL;
    PyObject *t = PyTuple_Pack(2, device, flags);
    if (t == NULL)
        return NULL;
    PyObject *key = PyDict_GetItemWithError(keys, t);
    Py_DECREF(t);
    return key;
}

static int nothing_returned(PyObject *self) {
    PyObject *ret = SLOT(self, pl_returned);
    return ret != NULL && PyObject_Size(ret) == 0;
}

/* acquire(self, device, flags): a cached handle, else the Python path (a miss creates) */
static PyObject *pl_acquire(METHOD_ARGS) {
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames || !nothing_returned(self))
        HAND_OVER(pl_fb_acquire);
    PyObject *lock = SLOT(self, pl_lock), *total = SLOT(self, pl_total);
    if (lock == NULL || total == NULL)
        HAND_OVER(pl_fb_acquire);
    Py_INCREF(lock); /* the after-fork hook may replace it meanwhile */
    if (lock_call(lock, s_acquire)) {
        Py_DECREF(lock);
        return NULL;
    }
    PyObject *handle = NULL;
    int failed = 0;
    PyObject *key = pool_key(self, args[0], args[1]);
    if (key == NULL && PyErr_Occurred()) {
        failed = 1;
    } else if (key != NULL) {
        PyObject *free = SLOT(key, key_free), *counts = SLOT(key, key_counts);
        Py_ssize_t n = (free && PyList_CheckExact(free)) ? PyList_GET_SIZE(free) : 0;
        if (n && counts) {
            if (add_to(counts, c_reuses, 1, NULL) || count_live(counts, total, 1)) {
                failed = 1;
            } else {
                handle = Py_NewRef(PyList_GET_ITEM(free, n - 1));
                if (PyList_SetSlice(free, n - 1, n, NULL)) /* a shrink: cannot fail */
                    failed = 1;
            }
        }
    }
    if (lock_call(lock, s_release))
        failed = 1;
    Py_DECREF(lock);
    if (failed) {
        Py_XDECREF(handle);
        return NULL;
    }
    if (handle == NULL)
        HAND_OVER(pl_fb_acquire);
    return handle;
}

/* release(self, device, flags, handle): into the free list of an existing key with room */
static PyObject *pl_release(METHOD_ARGS) {
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames || !nothing_returned(self))
        HAND_OVER(pl_fb_release);
    PyObject *lock = SLOT(self, pl_lock), *total = SLOT(self, pl_total), *cap = SLOT(self, pl_max);
    if (lock == NULL || total == NULL || cap == NULL)
        HAND_OVER(pl_fb_release);
    Py_ssize_t limit = -1;
    if (cap != Py_None) {
        PyObject *state = SLOT(self, pl_state);
        PyObject *exiting = state ? PyObject_GetAttr(state, s_exiting) : NULL;
        if (exiting == NULL)
            return NULL;
        int ex = PyObject_IsTrue(exiting);
        Py_DECREF(exiting);
        if (ex < 0)
            return NULL;
        if (!ex && ((limit = PyLong_AsSsize_t(cap)) == -1 && PyErr_Occurred()))
            return NULL;
    }
    Py_INCREF(lock);
    if (lock_call(lock, s_acquire)) {
        Py_DECREF(lock);
        return NULL;
    }
    int failed = 0, done = 0;
    PyObject *key = pool_key(self, args[0], args[1]);
    if (key == NULL && PyErr_Occurred()) {
        failed = 1;
    } else if (key != NULL) {
        PyObject *free = SLOT(key, key_free), *counts = SLOT(key, key_counts);
        if (free && counts && PyList_CheckExact(free) && (limit < 0 || PyList_GET_SIZE(free) < limit)) {
            if (count_live(counts, total, -1) || PyList_Append(free, args[2]))
                failed = 1;
            done = 1;
        }
    }
    if (lock_call(lock, s_release))
        failed = 1;
    Py_DECREF(lock);
    if (failed)
        return NULL;
    if (!done)
        HAND_OVER(pl_fb_release);
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------------------- */
/* the Timer's region (_Open): begin and end on a plain GpuStream with spare handles         */

#if PY_VERSION_HEX >= 0x030D0000
#define LOCKED(o) Py_BEGIN_CRITICAL_SECTION(o)
#define UNLOCKED Py_END_CRITICAL_SECTION()
#else
#define LOCKED(o) {
#define UNLOCKED }
#endif

static Py_ssize_t op_timer, op_name, op_stream, op_start, op_end, op_key, op_nvtx, st_id;

/* A Timer's attribute: its slot where the timer is a Timer (install_timer), else by name. */
static PyTypeObject *timer_type;
static Py_ssize_t tm_nvtx, tm_spare, tm_pending, tm_step, tm_since, tm_every, tm_shared;

static PyObject *tget(PyObject *timer, Py_ssize_t off, PyObject *name) {
    if (timer_type != NULL && PyObject_TypeCheck(timer, timer_type)) {
        PyObject *v = SLOT(timer, off);
        if (v == NULL)
            return PyErr_Format(PyExc_AttributeError, "the Timer has no %U yet", name);
        return Py_NewRef(v);
    }
    return PyObject_GetAttr(timer, name);
}

static int tset(PyObject *timer, Py_ssize_t off, PyObject *name, PyObject *v) {
    if (timer_type != NULL && PyObject_TypeCheck(timer, timer_type)) {
        slot_set(timer, off, v);
        return 0;
    }
    return PyObject_SetAttr(timer, name, v);
}
static PyObject *op_fb_init, *op_fb_enter, *op_fb_exit;

static PyObject *op_init(METHOD_ARGS) {
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (n < 2 || n > 3 || kwnames || !PyUnicode_CheckExact(args[1]))
        HAND_OVER(op_fb_init);
    slot_set(self, op_timer, args[0]);
    slot_set(self, op_name, args[1]);
    slot_set(self, op_stream, n == 3 ? args[2] : Py_None);
    slot_set(self, op_start, Py_None);
    slot_set(self, op_end, Py_None);
    slot_set(self, op_key, Py_None);
    slot_set(self, op_nvtx, Py_False);
    Py_RETURN_NONE;
}

static int op_tp_init(PyObject *self, PyObject *args, PyObject *kwds) {
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (n < 2 || n > 3 || (kwds && PyDict_GET_SIZE(kwds)) || !PyUnicode_CheckExact(PyTuple_GET_ITEM(args, 1))) {
        PyObject *full = PyTuple_New(n + 1);
        if (full == NULL)
            return -1;
        PyTuple_SET_ITEM(full, 0, Py_NewRef(self));
        for (Py_ssize_t i = 0; i < n; i++)
            PyTuple_SET_ITEM(full, i + 1, Py_NewRef(PyTuple_GET_ITEM(args, i)));
        PyObject *res = PyObject_Call(op_fb_init, full, kwds);
        Py_DECREF(full);
        if (res == NULL)
            return -1;
        Py_DECREF(res);
        return 0;
    }
    PyObject *r = op_init(self, &PyTuple_GET_ITEM(args, 0), n, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Two handles from the end of a spare list (start, then end), or 0 when it has fewer. */
static int take_two(PyObject *spare, PyObject **start, PyObject **end) {
    int got = 0;
    LOCKED(spare);
    Py_ssize_t n = PyList_GET_SIZE(spare);
    if (n >= 2) {
        *start = Py_NewRef(PyList_GET_ITEM(spare, n - 1));
        *end = Py_NewRef(PyList_GET_ITEM(spare, n - 2));
        got = PyList_SetSlice(spare, n - 2, n, NULL) == 0 ? 1 : -1;
    }
    UNLOCKED;
    if (got < 0) {
        Py_DECREF(*start);
        Py_DECREF(*end);
    }
    return got;
}

static int give_two(PyObject *spare, PyObject *start, PyObject *end) {
    return PyList_Append(spare, start) || PyList_Append(spare, end) ? -1 : 0;
}

static PyObject *timer_spare(PyObject *timer, PyObject *device) {
    PyObject *spares = tget(timer, tm_spare, s_spare);
    if (spares == NULL)
        return NULL;
    PyObject *spare = PyDict_CheckExact(spares) ? PyDict_GetItemWithError(spares, device) : NULL;
    Py_XINCREF(spare);
    Py_DECREF(spares);
    return spare; /* new reference, or NULL (maybe with an error set) */
}

static PyObject *op_enter(METHOD_ARGS) {
    PyObject *timer = SLOT(self, op_timer), *stream = SLOT(self, op_stream), *sdev;
    void *sh, *eh;
    if (timer == NULL || stream == NULL || !is_none(SLOT(self, op_key)) || PyVectorcall_NARGS(nargsf) || kwnames ||
        cu_record == NULL)
        HAND_OVER(op_fb_enter);
    if (stream == Py_None) { /* torch's current stream, or the legacy default one: the timer says */
        PyObject *a[2] = {timer, Py_None};
        stream = PyObject_VectorcallMethod(s_gpu_stream, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (stream == NULL)
            return NULL;
        Py_XSETREF(SLOT(self, op_stream), stream); /* borrowed from here on */
    }
    int r = plain_stream(stream, &sh, &sdev);
    if (r)
        return r < 0 ? NULL : hand_over(op_fb_enter, self, args, nargsf, kwnames);
    PyObject *nv = tget(timer, tm_nvtx, s_nvtx);
    if (nv == NULL)
        return NULL;
    Py_DECREF(nv);
    if (nv != Py_None)
        HAND_OVER(op_fb_enter);
    PyObject *spare = timer_spare(timer, sdev);
    if (spare == NULL) {
        if (PyErr_Occurred())
            return NULL;
        HAND_OVER(op_fb_enter);
    }
    PyObject *start, *end;
    int got = PyList_CheckExact(spare) ? take_two(spare, &start, &end) : 0;
    if (got <= 0) {
        Py_DECREF(spare);
        if (got < 0)
            return NULL;
        HAND_OVER(op_fb_enter);
    }
    PyObject *key = NULL;
    PyObject *sid = SLOT(stream, st_id);
    int err = 0;
    if (sid == NULL || handle_of(start, &eh) || (err = cu_record(eh, sh)) ||
        (key = PyTuple_Pack(2, sdev, sid)) == NULL) {
        give_two(spare, start, end);
        Py_DECREF(spare);
        Py_DECREF(start);
        Py_DECREF(end);
        if (err)
            return fail(err, "cuEventRecord");
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "a GpuStream without its _id");
        return NULL;
    }
    Py_DECREF(spare);
    Py_XSETREF(SLOT(self, op_start), start);
    Py_XSETREF(SLOT(self, op_end), end);
    Py_XSETREF(SLOT(self, op_key), key);
    return Py_NewRef(self);
}

/* timer._since_harvest += n, harvesting once it reaches _harvest_every (unlocked: it only paces) */
static int pace(PyObject *timer, Py_ssize_t n) {
    PyObject *since = tget(timer, tm_since, s_since), *add = NULL, *more = NULL, *every = NULL;
    int due = -1;
    if (since != NULL && (add = PyLong_FromSsize_t(n)) != NULL && (more = PyNumber_Add(since, add)) != NULL &&
        tset(timer, tm_since, s_since, more) == 0 && (every = tget(timer, tm_every, s_every)) != NULL)
        due = PyObject_RichCompareBool(more, every, Py_GE);
    Py_XDECREF(since);
    Py_XDECREF(add);
    Py_XDECREF(more);
    Py_XDECREF(every);
    PyObject *h = due > 0 ? PyObject_CallMethodNoArgs(timer, s_harvest) : NULL;
    Py_XDECREF(h);
    return due < 0 || (due && h == NULL) ? -1 : 0;
}

static PyObject *op_exit(METHOD_ARGS) {
    PyObject *timer = SLOT(self, op_timer), *stream = SLOT(self, op_stream), *start = SLOT(self, op_start);
    PyObject *end = SLOT(self, op_end), *key = SLOT(self, op_key), *sdev;
    void *sh, *eh;
    if (timer == NULL || is_none(start) || is_none(end) || key == NULL || !PyTuple_CheckExact(key) ||
        SLOT(self, op_nvtx) != Py_False || cu_record == NULL)
        HAND_OVER(op_fb_exit);
    int r = plain_stream(stream, &sh, &sdev);
    if (r)
        return r < 0 ? NULL : hand_over(op_fb_exit, self, args, nargsf, kwnames);
    PyObject *pending = tget(timer, tm_pending, s_pending);
    if (pending == NULL)
        return NULL;
    PyObject *queue = PyDict_CheckExact(pending) ? PyDict_GetItemWithError(pending, key) : NULL;
    Py_XINCREF(queue);
    Py_DECREF(pending);
    if (queue == NULL) {
        if (PyErr_Occurred())
            return NULL;
        HAND_OVER(op_fb_exit); /* the stream's first region: the Python path makes its queue */
    }
    PyObject *step = tget(timer, tm_step, s_step);
    if (step == NULL) {
        Py_DECREF(queue);
        return NULL;
    }
    Py_INCREF(start);
    slot_set(self, op_start, Py_None);
    int err = 0;
    if (handle_of(end, &eh) || (err = cu_record(eh, sh))) {
        PyObject *spare = timer_spare(timer, PyTuple_GET_ITEM(key, 0));
        if (spare != NULL) {
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            give_two(spare, start, end);
            PyErr_Restore(et, ev, tb);
            Py_DECREF(spare);
        }
        Py_DECREF(start);
        Py_DECREF(step);
        Py_DECREF(queue);
        return err ? fail(err, "cuEventRecord") : NULL;
    }
    PyObject *entry = PyTuple_New(4);
    if (entry == NULL) {
        Py_DECREF(start);
        Py_DECREF(step);
        Py_DECREF(queue);
        return NULL;
    }
    PyObject *name = SLOT(self, op_name);
    PyTuple_SET_ITEM(entry, 0, Py_NewRef(name ? name : Py_None));
    PyTuple_SET_ITEM(entry, 1, start);
    PyTuple_SET_ITEM(entry, 2, Py_NewRef(end));
    PyTuple_SET_ITEM(entry, 3, step);
    PyObject *a[2] = {queue, entry};
    PyObject *res = PyObject_VectorcallMethod(s_append, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(entry);
    Py_DECREF(queue);
    if (res == NULL)
        return NULL;
    Py_DECREF(res);
    /* pacing: unlocked, as in Python (it only paces harvesting) */
    if (pace(timer, 1))
        return NULL;
    Py_RETURN_NONE;
}

/* Timer.begin(self, name, stream=None) and Timer.end(self, token): a region without a with
 * block, for hooks (LayerTimer's); the region's own fast paths, without a Python frame. */
static PyObject *tm_fb_begin, *tm_fb_end, *region_type;

/* A region of timer named name begun on stream: _Open(timer, name, stream).__enter__() */
static PyObject *begin_region(PyObject *timer, PyObject *name, PyObject *stream) {
    PyObject *a[3] = {timer, name, stream};
    PyObject *token = PyObject_Vectorcall(region_type, a, 3, NULL);
    if (token == NULL)
        return NULL;
    PyObject *r = op_enter(token, NULL, 0, NULL);
    Py_DECREF(token);
    return r; /* the token itself */
}

static PyObject *tm_begin(METHOD_ARGS) {
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (n < 1 || n > 2 || kwnames || region_type == NULL)
        HAND_OVER(tm_fb_begin);
    return begin_region(self, args[0], n == 2 ? args[1] : Py_None);
}

static PyObject *tm_end(METHOD_ARGS) {
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames || (PyObject *)Py_TYPE(args[0]) != region_type ||
        SLOT(args[0], op_timer) != self)
        HAND_OVER(tm_fb_end); /* the Python method words the misuse */
    return op_exit(args[0], NULL, 0, NULL);
}

/* Timer._unshared(self, handles): of handles regions are done with, those to give back (all
 * but shared ones other regions still use); under the timer's lock, as in Python. */
static PyObject *tm_fb_unshared;

static PyObject *tm_unshared(METHOD_ARGS) {
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames || !PyList_CheckExact(args[0]))
        HAND_OVER(tm_fb_unshared);
    PyObject *shared = tget(self, tm_shared, s_shared);
    if (shared == NULL)
        return NULL;
    if (!PyDict_CheckExact(shared)) {
        Py_DECREF(shared);
        HAND_OVER(tm_fb_unshared);
    }
    PyObject *handles = args[0], *out = PyList_New(0);
    Py_ssize_t n = PyList_GET_SIZE(handles);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *h = PyList_GET_ITEM(handles, i), *count = PyDict_GetItemWithError(shared, h);
        int bad = 0;
        if (count == NULL) {
            bad = PyErr_Occurred() != NULL || PyList_Append(out, h);
        } else {
            long c = PyLong_AsLong(count);
            if (c == -1 && PyErr_Occurred()) {
                bad = 1;
            } else if (c <= 1) {
                bad = PyDict_DelItem(shared, h) || PyList_Append(out, h);
            } else {
                PyObject *less = PyLong_FromLong(c - 1);
                bad = less == NULL || PyDict_SetItem(shared, h, less);
                Py_XDECREF(less);
            }
        }
        if (bad)
            Py_CLEAR(out);
    }
    Py_DECREF(shared);
    return out;
}

/* Timer._meet(self, ending, names, stream): the regions of ending that are open on stream end,
 * and those of names begin, at one record there (what LayerTimer's backward does between
 * modules). C ends the other tokens and does the rest where the spare handles suffice; a
 * stream's first region, too few spares, NVTX, other kinds of tokens: the Python methods. */
static PyObject *tm_fb_meet;

/* need handles from the end of a spare list, last first (as pops take them), or NULL (none
 * taken; an error set only on an error) */
static PyObject *take_n(PyObject *spare, Py_ssize_t need) {
    PyObject *out = NULL;
    LOCKED(spare);
    Py_ssize_t n = PyList_GET_SIZE(spare);
    if (n >= need && (out = PyList_New(need)) != NULL) {
        for (Py_ssize_t i = 0; i < need; i++)
            PyList_SET_ITEM(out, i, Py_NewRef(PyList_GET_ITEM(spare, n - 1 - i)));
        if (PyList_SetSlice(spare, n - need, n, NULL))
            Py_CLEAR(out);
    }
    UNLOCKED;
    return out;
}

/* Timer._share(self, here, names, s, key) where the spares suffice and the queue exists */
static PyObject *share(PyObject *self, PyObject *here, PyObject *names, PyObject *s, PyObject *key, void *sh) {
    Py_ssize_t nh = PyList_GET_SIZE(here), nn = PyList_GET_SIZE(names);
    PyObject *pending = tget(self, tm_pending, s_pending), *shared = NULL, *queue = NULL, *spare = NULL;
    PyObject *handles = NULL;
    if (pending != NULL && PyDict_CheckExact(pending)) {
        queue = Py_XNewRef(PyDict_GetItemWithError(pending, key));
        shared = queue ? tget(self, tm_shared, s_shared) : NULL;
        spare = shared ? timer_spare(self, PyTuple_GET_ITEM(key, 0)) : NULL;
        if (spare && PyList_CheckExact(spare) && PyDict_CheckExact(shared))
            handles = take_n(spare, 1 + nn);
    }
    Py_XDECREF(pending);
    PyObject *began = NULL, *step = NULL, *count = NULL;
    if (handles == NULL) {
        if (!PyErr_Occurred()) {
            PyObject *a[5] = {self, here, names, s, key};
            began = PyObject_VectorcallMethod(s_share, a, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        }
        goto done;
    }
    PyObject *mark = PyList_GET_ITEM(handles, 0);
    void *mh;
    int err = 0;
    if (handle_of(mark, &mh) || (err = cu_record(mh, sh))) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        for (Py_ssize_t i = 0; i <= nn; i++)
            PyList_Append(spare, PyList_GET_ITEM(handles, i));
        PyErr_Restore(et, ev, tb);
        if (err)
            fail(err, "cuEventRecord");
        goto done;
    }
    /* no lock: mark is fresh, and one dict store is atomic (see the Python method) */
    if ((count = PyLong_FromSsize_t(nh + nn)) == NULL || PyDict_SetItem(shared, mark, count) ||
        (step = tget(self, tm_step, s_step)) == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < nh; i++) {
        PyObject *token = PyList_GET_ITEM(here, i), *start = SLOT(token, op_start), *name = SLOT(token, op_name);
        PyObject *entry = PyTuple_Pack(4, name ? name : Py_None, start, mark, step), *r = NULL;
        if (entry == NULL || PyList_Append(spare, SLOT(token, op_end))) { /* its end, taken at its begin, not needed now */
            Py_XDECREF(entry);
            goto done;
        }
        slot_set(token, op_start, Py_None);
        slot_set(token, op_end, mark);
        PyObject *a[2] = {queue, entry};
        r = PyObject_VectorcallMethod(s_append, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_DECREF(entry);
        if (r == NULL)
            goto done;
        Py_DECREF(r);
    }
    began = PyList_New(nn);
    for (Py_ssize_t i = 0; began != NULL && i < nn; i++) {
        PyObject *a[3] = {self, PyList_GET_ITEM(names, i), s};
        PyObject *token = PyObject_Vectorcall(region_type, a, 3, NULL);
        if (token == NULL) {
            Py_CLEAR(began);
            break;
        }
        slot_set(token, op_start, mark);
        slot_set(token, op_end, PyList_GET_ITEM(handles, 1 + i));
        slot_set(token, op_key, key);
        PyList_SET_ITEM(began, i, token);
    }
    if (began != NULL && pace(self, nh))
        Py_CLEAR(began);
done: /* after the record, an error of memory: the handles stay with the regions or the spares */
    Py_XDECREF(count);
    Py_XDECREF(step);
    Py_XDECREF(handles);
    Py_XDECREF(spare);
    Py_XDECREF(shared);
    Py_XDECREF(queue);
    return began;
}

static PyObject *tm_meet(METHOD_ARGS) {
    PyObject *nv, *sdev;
    void *sh;
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[1]) ||
        region_type == NULL || cu_record == NULL || (nv = tget(self, tm_nvtx, s_nvtx)) == NULL) {
        if (PyErr_Occurred())
            return NULL;
        HAND_OVER(tm_fb_meet);
    }
    Py_DECREF(nv);
    PyObject *ending = args[0], *names = args[1], *s = args[2];
    int r = nv == Py_None ? plain_stream(s, &sh, &sdev) : 1;
    if (r < 0)
        return NULL;
    PyObject *sid = r ? NULL : SLOT(s, st_id);
    for (Py_ssize_t i = 0; sid != NULL && i < PyList_GET_SIZE(ending); i++) {
        PyObject *token = PyList_GET_ITEM(ending, i);
        if ((PyObject *)Py_TYPE(token) != region_type || SLOT(token, op_nvtx) != Py_False)
            sid = NULL;
    }
    for (Py_ssize_t i = 0; sid != NULL && i < PyList_GET_SIZE(names); i++)
        if (!PyUnicode_CheckExact(PyList_GET_ITEM(names, i)))
            sid = NULL;
    if (sid == NULL)
        HAND_OVER(tm_fb_meet);
    PyObject *key = PyTuple_Pack(2, sdev, sid), *here = key ? PyList_New(0) : NULL, *began = NULL;
    int bad = here == NULL;
    for (Py_ssize_t i = 0; !bad && i < PyList_GET_SIZE(ending); i++) {
        PyObject *token = Py_NewRef(PyList_GET_ITEM(ending, i)), *tkey = SLOT(token, op_key);
        if (!is_none(SLOT(token, op_start))) {
            if (tkey != NULL && PyTuple_CheckExact(tkey) && PyTuple_GET_SIZE(tkey) == 2 &&
                same_int(PyTuple_GET_ITEM(tkey, 0), sdev) && same_int(PyTuple_GET_ITEM(tkey, 1), sid)) {
                bad = PyList_Append(here, token);
            } else {
                PyObject *x = op_exit(token, NULL, 0, NULL);
                bad = x == NULL;
                Py_XDECREF(x);
            }
        }
        Py_DECREF(token);
    }
    if (!bad && PyList_GET_SIZE(here) + PyList_GET_SIZE(names) < 2) { /* nothing to share */
        for (Py_ssize_t i = 0; !bad && i < PyList_GET_SIZE(here); i++) {
            PyObject *x = op_exit(PyList_GET_ITEM(here, i), NULL, 0, NULL);
            bad = x == NULL;
            Py_XDECREF(x);
        }
        began = bad ? NULL : PyList_New(PyList_GET_SIZE(names));
        for (Py_ssize_t i = 0; began != NULL && i < PyList_GET_SIZE(names); i++) {
            PyObject *token = begin_region(self, PyList_GET_ITEM(names, i), s);
            if (token == NULL)
                Py_CLEAR(began);
            else
                PyList_SET_ITEM(began, i, token);
        }
    } else if (!bad) {
        began = share(self, here, names, s, key, sh);
    }
    Py_XDECREF(here);
    Py_XDECREF(key);
    return began;
}

/* _Laps.__call__(self, name): end the phase running and begin the next at one timing event
 * (what Timer._meet does for one ending region and one name); the first phase, other streams,
 * NVTX and anything unusual go to Python. */
static Py_ssize_t lp_timer, lp_stream, lp_open, lp_state;
static PyObject *lp_fb_call;

static PyObject *lp_call(METHOD_ARGS) {
    PyObject *timer = SLOT(self, lp_timer), *stream = SLOT(self, lp_stream), *open = SLOT(self, lp_open);
    PyObject *state = SLOT(self, lp_state), *sdev;
    void *sh, *mh;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames || !PyUnicode_CheckExact(args[0]) || timer == NULL ||
        state == NULL || !PyUnicode_CheckExact(state) || PyUnicode_Compare(state, s_entered) != 0 ||
        is_none(open) || (PyObject *)Py_TYPE(open) != region_type || cu_record == NULL)
        HAND_OVER(lp_fb_call);
    int r = plain_stream(stream, &sh, &sdev);
    if (r)
        return r < 0 ? NULL : hand_over(lp_fb_call, self, args, nargsf, kwnames);
    PyObject *ostart = SLOT(open, op_start), *oend = SLOT(open, op_end), *key = SLOT(open, op_key);
    PyObject *sid = SLOT(stream, st_id);
    if (is_none(ostart) || is_none(oend) || key == NULL || !PyTuple_CheckExact(key) || PyTuple_GET_SIZE(key) != 2 ||
        sid == NULL || SLOT(open, op_nvtx) != Py_False || !same_int(PyTuple_GET_ITEM(key, 0), sdev) ||
        !same_int(PyTuple_GET_ITEM(key, 1), sid))
        HAND_OVER(lp_fb_call);
    PyObject *nv = tget(timer, tm_nvtx, s_nvtx);
    if (nv == NULL)
        return NULL;
    Py_DECREF(nv);
    if (nv != Py_None)
        HAND_OVER(lp_fb_call);
    PyObject *pending = tget(timer, tm_pending, s_pending), *shared = NULL, *queue = NULL, *spare = NULL;
    if (pending == NULL)
        return NULL;
    queue = PyDict_CheckExact(pending) ? PyDict_GetItemWithError(pending, key) : NULL;
    Py_XINCREF(queue);
    Py_DECREF(pending);
    if (queue == NULL) {
        if (PyErr_Occurred())
            return NULL;
        HAND_OVER(lp_fb_call);
    }
    shared = tget(timer, tm_shared, s_shared);
    spare = shared ? timer_spare(timer, sdev) : NULL;
    PyObject *mark = NULL, *end = NULL;
    int got = (spare && PyList_CheckExact(spare) && PyDict_CheckExact(shared)) ? take_two(spare, &mark, &end) : 0;
    if (got <= 0) {
        Py_XDECREF(shared);
        Py_XDECREF(spare);
        Py_DECREF(queue);
        if (got < 0 || PyErr_Occurred())
            return NULL;
        HAND_OVER(lp_fb_call);
    }
    int err = 0;
    PyObject *token = NULL, *entry = NULL, *step = NULL, *res = NULL;
    if (handle_of(mark, &mh) || (err = cu_record(mh, sh))) {
        give_two(spare, mark, end);
        if (err)
            fail(err, "cuEventRecord");
        goto fail;
    }
    /* the mark ends the open phase and starts the next: two regions share it (as in _meet) */
    PyObject *two = PyLong_FromLong(2);
    if (two == NULL || PyDict_SetItem(shared, mark, two)) {
        Py_XDECREF(two);
        goto lost;
    }
    Py_DECREF(two);
    if ((step = tget(timer, tm_step, s_step)) == NULL || (entry = PyTuple_New(4)) == NULL)
        goto lost;
    PyObject *oname = SLOT(open, op_name);
    PyTuple_SET_ITEM(entry, 0, Py_NewRef(oname ? oname : Py_None));
    PyTuple_SET_ITEM(entry, 1, Py_NewRef(ostart));
    PyTuple_SET_ITEM(entry, 2, Py_NewRef(mark));
    PyTuple_SET_ITEM(entry, 3, step);
    step = NULL;
    if (PyList_Append(spare, oend)) /* taken at its begin, not needed now */
        goto lost;
    slot_set(open, op_start, Py_None);
    slot_set(open, op_end, mark);
    {
        PyObject *a[2] = {queue, entry};
        res = PyObject_VectorcallMethod(s_append, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (res == NULL)
            goto lost;
        Py_DECREF(res);
    }
    {
        PyObject *a[3] = {timer, args[0], stream};
        token = PyObject_Vectorcall(region_type, a, 3, NULL);
    }
    if (token == NULL)
        goto lost;
    slot_set(token, op_start, mark);
    slot_set(token, op_end, end);
    slot_set(token, op_key, key);
    slot_set(self, lp_open, token);
    Py_DECREF(token);
    Py_DECREF(entry);
    Py_DECREF(mark);
    Py_DECREF(end);
    Py_DECREF(spare);
    Py_DECREF(shared);
    Py_DECREF(queue);
    /* pacing, as a region's end does */
    if (pace(timer, 1))
        return NULL;
    Py_RETURN_NONE;
lost: /* after the record: an error of memory; the handles stay with the phases or the spares */
    Py_XDECREF(step);
    Py_XDECREF(entry);
fail:
    Py_XDECREF(mark);
    Py_XDECREF(end);
    Py_DECREF(spare);
    Py_DECREF(shared);
    Py_DECREF(queue);
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* LayerTimer's hooks (the _Engine of cudaevents._profiler.torch_layers): the stream of a module
 * call found in C, its forward region begun and ended, and with backward timed, the autograd
 * nodes at its boundary armed (NodeHook) and its backward region begun, ended and met with the
 * next one's (Timer._meet), without Python frames. A call torch.compile traces, stale entries,
 * a thread's first use, objects of other kinds: the Python methods. As in Python, the GIL
 * orders what threads do here (autograd runs one device's nodes on one thread).            */

#define NO_TENSOR (-2)
#define CPU_ONLY (-1)

static PyObject *en_fb_stream_for, *en_fb_begin, *en_fb_end;
static PyObject *s_fixed, *s_Tensor, *s_last_device, *s_capturing, *s_streams, *s_raw_stream, *s_is_cuda;
static PyObject *s_get_device, *s_compiling, *s_backward, *s_local, *s_stack, *s_timer, *s_begin, *s_end;
static PyObject *s_name, *s_begin_forward, *s_end_forward;
static PyObject *s_gpu_stream_of, *s_stack_method;

/* The CUDA ordinal of a tensor, CPU_ONLY for one elsewhere, NO_TENSOR for no tensor; -3 on error. */
static long tensor_device(PyObject *v, PyTypeObject *tensor) {
    if (!PyObject_TypeCheck(v, tensor))
        return NO_TENSOR;
    PyObject *cuda = PyObject_GetAttr(v, s_is_cuda);
    if (cuda == NULL)
        return -3;
    Py_DECREF(cuda);
    if (cuda != Py_True)
        return CPU_ONLY;
    PyObject *d = PyObject_CallMethodNoArgs(v, s_get_device);
    if (d == NULL)
        return -3;
    long dev = PyLong_AsLong(d);
    Py_DECREF(d);
    return (dev == -1 && PyErr_Occurred()) ? -3 : dev;
}

/* _device_of(values): the first CUDA tensor's device, one level into lists, tuples and dicts */
static long device_of(PyObject *values, PyTypeObject *tensor) {
    long seen = NO_TENSOR;
    PyObject *it = PyObject_GetIter(values);
    if (it == NULL)
        return -3;
    PyObject *v;
    while ((v = PyIter_Next(it)) != NULL) {
        long d = tensor_device(v, tensor);
        if (d == NO_TENSOR && (PyTuple_CheckExact(v) || PyList_CheckExact(v) || PyDict_Check(v))) {
            PyObject *inner = PyDict_Check(v) ? PyDict_Values(v) : Py_NewRef(v);
            PyObject *w;
            Py_ssize_t n = inner ? PySequence_Fast_GET_SIZE(inner) : 0;
            if (inner == NULL || !(PyTuple_Check(inner) || PyList_Check(inner)))
                d = -3;
            for (Py_ssize_t i = 0; i < n && d != -3; i++) {
                w = PySequence_Fast_GET_ITEM(inner, i);
                long e = tensor_device(w, tensor);
                if (e >= 0 || e == -3) {
                    d = e;
                    break;
                }
                if (e == CPU_ONLY)
                    seen = CPU_ONLY;
            }
            Py_XDECREF(inner);
        }
        Py_DECREF(v);
        if (d >= 0 || d == -3) {
            Py_DECREF(it);
            return d;
        }
        if (d == CPU_ONLY)
            seen = CPU_ONLY;
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -3 : seen;
}

static PyObject *attr_call(PyObject *o, PyObject *name) { /* o.<name>(), the attribute not a method */
    PyObject *f = PyObject_GetAttr(o, name);
    if (f == NULL)
        return NULL;
    PyObject *r = PyObject_CallNoArgs(f);
    Py_DECREF(f);
    return r;
}

/* The GpuStream of torch's current stream on device dev (an int): the engine's cached wrapper
 * of that stream's handle, else its Python _gpu_stream(dev), which makes one. */
static PyObject *engine_gpu_stream(PyObject *self, PyObject *dev) {
    long device = PyLong_AsLong(dev);
    if (device == -1 && PyErr_Occurred())
        return NULL;
    PyObject *streams = PyObject_GetAttr(self, s_streams), *raw = PyObject_GetAttr(self, s_raw_stream);
    PyObject *found = NULL;
    if (streams && raw && raw != Py_None && PyList_CheckExact(streams) && device >= 0 &&
        device < PyList_GET_SIZE(streams)) {
        PyObject *by_handle = PyList_GET_ITEM(streams, device);
        PyObject *handle = PyObject_CallOneArg(raw, dev);
        if (handle != NULL && PyDict_CheckExact(by_handle)) {
            found = PyDict_GetItemWithError(by_handle, handle);
            Py_XINCREF(found);
        }
        Py_XDECREF(handle);
    }
    Py_XDECREF(streams);
    Py_XDECREF(raw);
    if (found == NULL && !PyErr_Occurred()) {
        PyObject *a[2] = {self, dev};
        found = PyObject_VectorcallMethod(s_gpu_stream_of, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    return found;
}

/* Whether the engine says events recorded now go into a CUDA graph capture: 1, 0, -1 error. */
static int engine_capturing(PyObject *self) {
    PyObject *capturing = PyObject_GetAttr(self, s_capturing);
    if (capturing == NULL)
        return -1;
    int yes = 0;
    if (capturing != Py_None) {
        PyObject *c = PyObject_CallNoArgs(capturing);
        yes = c ? PyObject_IsTrue(c) : -1;
        Py_XDECREF(c);
    }
    Py_DECREF(capturing);
    return yes;
}

/* _stream_for(self, values, kwargs=None) */
static PyObject *en_stream_for(METHOD_ARGS) {
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (n < 1 || n > 2 || kwnames)
        HAND_OVER(en_fb_stream_for);
    PyObject *values = args[0], *kwargs = n == 2 ? args[1] : Py_None;
    PyObject *fixed = PyObject_GetAttr(self, s_fixed);
    if (fixed == NULL || fixed != Py_None)
        return fixed;
    Py_DECREF(fixed);
    PyObject *tensor = PyObject_GetAttr(self, s_Tensor);
    if (tensor == NULL)
        return NULL;
    if (!PyType_Check(tensor)) {
        Py_DECREF(tensor);
        HAND_OVER(en_fb_stream_for);
    }
    long device = device_of(values, (PyTypeObject *)tensor);
    if (device == NO_TENSOR && PyDict_Check(kwargs) && PyDict_GET_SIZE(kwargs)) {
        PyObject *vals = PyDict_Values(kwargs);
        device = vals ? device_of(vals, (PyTypeObject *)tensor) : -3;
        Py_XDECREF(vals);
    }
    Py_DECREF(tensor);
    if (device == -3)
        return NULL;
    if (device == CPU_ONLY)
        Py_RETURN_NONE; /* host work: nothing on a GPU stream to time */
    PyObject *dev;
    if (device == NO_TENSOR) { /* no tensor inputs: assume the device last seen */
        if ((dev = PyObject_GetAttr(self, s_last_device)) == NULL)
            return NULL;
        long last = PyLong_AsLong(dev);
        if (last == -1 && PyErr_Occurred()) {
            Py_DECREF(dev);
            return NULL;
        }
        if (last < 0) {
            Py_DECREF(dev);
            Py_RETURN_NONE;
        }
    } else {
        if ((dev = PyLong_FromLong(device)) == NULL || PyObject_SetAttr(self, s_last_device, dev)) {
            Py_XDECREF(dev);
            return NULL;
        }
    }
    int capturing = engine_capturing(self);
    PyObject *found = capturing ? NULL : engine_gpu_stream(self, dev);
    Py_DECREF(dev);
    if (capturing > 0)
        Py_RETURN_NONE; /* events recorded into a CUDA graph capture cannot be timed */
    return found;
}

static int is_true_call(PyObject *self, PyObject *name) { /* bool(self.<name>()) */
    PyObject *r = attr_call(self, name);
    int t = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    return t;
}

static int is_true_attr(PyObject *self, PyObject *name) { /* bool(self.<name>) */
    PyObject *r = PyObject_GetAttr(self, name);
    int t = r ? PyObject_IsTrue(r) : -1;
    Py_XDECREF(r);
    return t;
}

/* self._local.<name>; else self.<make>() where make is given, or NULL without an error set. */
static PyObject *engine_local(PyObject *self, PyObject *name, PyObject *make) {
    PyObject *local = PyObject_GetAttr(self, s_local);
    if (local == NULL)
        return NULL;
    PyObject *v = PyObject_GetAttr(local, name);
    Py_DECREF(local);
    if (v != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError))
        return v;
    PyErr_Clear();
    return make ? PyObject_CallMethodNoArgs(self, make) : NULL;
}

/* -- LayerTimer's backward: the objects of torch_layers the C code reads (install_engine) -- */

static PyTypeObject *call_type, *stack_type, *module_type;
static Py_ssize_t ca_state, ca_parent, ca_inputs, ca_device, ca_token, ca_begun;
static Py_ssize_t sk_modules, sk_tokens, sk_calls, sk_last_node, sk_last_calls;
static Py_ssize_t md_backward_name, md_ancestors;
static PyObject *en_fb_begin_backward, *en_fb_end_backward, *en_fb_meet;
static PyObject *s_grad_fn, *s_values, *s_register_prehook, *s_begin_backward, *s_end_backward, *s_epoch;
static PyObject *s_grad_enabled, *s_callback_queued, *s_queue_end, *s_backward_stack, *s_begun, *s_meet, *s_meets;
static PyObject *s_ancestors, *s_backward_name, *empty_tuple;

/* NodeHook: a backward hook on an autograd node (Node.register_prehook), for one call or the
 * calls one node begins: called with the node's grad_outputs, it calls engine.<method>(arg,
 * epoch) by name (so it follows compiled.use()) and returns None (the gradients unchanged). */
typedef struct {
    PyObject_HEAD
    PyObject *engine, *method, *arg, *epoch;
} NodeHook;

static int hook_traverse(NodeHook *h, visitproc visit, void *arg) {
    Py_VISIT(h->engine);
    Py_VISIT(h->arg);
    Py_VISIT(h->epoch);
    return 0;
}

static int hook_clear(NodeHook *h) {
    Py_CLEAR(h->engine);
    Py_CLEAR(h->arg);
    Py_CLEAR(h->epoch);
    return 0;
}

static void hook_dealloc(NodeHook *h) {
    PyObject_GC_UnTrack(h);
    hook_clear(h);
    Py_CLEAR(h->method);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyObject *hook_call(NodeHook *h, PyObject *args, PyObject *kw) {
    if (h->engine == NULL)
        Py_RETURN_NONE; /* cleared by the collector */
    PyObject *a[3] = {h->engine, h->arg, h->epoch};
    PyObject *r = PyObject_VectorcallMethod(h->method, a, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyTypeObject NodeHookType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cudaevents._core._hot.NodeHook",
    .tp_basicsize = sizeof(NodeHook),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "LayerTimer's hook on an autograd node: engine.<method>(arg, epoch) before the node runs.",
    .tp_dealloc = (destructor)hook_dealloc,
    .tp_traverse = (traverseproc)hook_traverse,
    .tp_clear = (inquiry)hook_clear,
    .tp_call = (ternaryfunc)hook_call,
};

/* node.register_prehook(NodeHook(engine, method, arg, epoch)): 0, -1 on an error. */
static int hook_node(PyObject *node, PyObject *engine, PyObject *method, PyObject *arg, PyObject *epoch) {
    NodeHook *h = PyObject_GC_New(NodeHook, &NodeHookType);
    if (h == NULL)
        return -1;
    h->engine = Py_NewRef(engine);
    h->method = Py_NewRef(method);
    h->arg = Py_NewRef(arg);
    h->epoch = Py_NewRef(epoch);
    PyObject_GC_Track(h);
    PyObject *r = PyObject_CallMethodOneArg(node, s_register_prehook, (PyObject *)h);
    Py_DECREF(h);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

static int holds(PyObject *seq, PyObject *o) { /* o in seq, for a list or tuple of objects compared by identity */
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++)
        if (items[i] == o)
            return 1;
    return 0;
}

/* v.grad_fn appended to nodes where v is a tensor whose node is new there: 1 (a tensor), 0 (not
 * a tensor), -1 (an error). */
static int add_node(PyObject *v, PyTypeObject *tensor, PyObject *nodes) {
    if (!PyObject_TypeCheck(v, tensor))
        return 0;
    PyObject *node = PyObject_GetAttr(v, s_grad_fn);
    if (node == NULL)
        return -1;
    int r = node == Py_None || holds(nodes, node) || PyList_Append(nodes, node) == 0 ? 1 : -1;
    Py_DECREF(node);
    return r;
}

/* _grad_nodes(values, Tensor, into): 0, -1 on an error */
static int grad_nodes(PyObject *values, PyTypeObject *tensor, PyObject *into) {
    PyObject *seq = PySequence_Fast(values, "LayerTimer looks into a sequence of values");
    if (seq == NULL)
        return -1;
    int bad = 0;
    for (Py_ssize_t i = 0; !bad && i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *v = Py_NewRef(PySequence_Fast_GET_ITEM(seq, i));
        int r = add_node(v, tensor, into);
        if (r < 0) {
            bad = 1;
        } else if (r == 0 && (PyTuple_CheckExact(v) || PyList_CheckExact(v) || PyDict_Check(v))) {
            PyObject *inner = PyDict_CheckExact(v) ? PyDict_Values(v)
                              : PyDict_Check(v)    ? PyObject_CallMethodNoArgs(v, s_values)
                                                   : Py_NewRef(v);
            PyObject *fast = inner ? PySequence_Fast(inner, "LayerTimer looks into a dict's values") : NULL;
            Py_XDECREF(inner);
            bad = fast == NULL;
            for (Py_ssize_t j = 0; !bad && j < PySequence_Fast_GET_SIZE(fast); j++)
                bad = add_node(PySequence_Fast_GET_ITEM(fast, j), tensor, into) < 0;
            Py_XDECREF(fast);
        }
        Py_DECREF(v);
    }
    Py_DECREF(seq);
    return bad ? -1 : 0;
}

static PyObject *engine_tensor(PyObject *self) { /* self._Tensor, a type */
    PyObject *t = PyObject_GetAttr(self, s_Tensor);
    if (t != NULL && !PyType_Check(t)) {
        Py_DECREF(t);
        return PyErr_Format(PyExc_TypeError, "the engine's _Tensor is not a type");
    }
    return t;
}

/* _arm_end(self, call, args, kwargs, stack): 0, -1 on an error */
static int arm_end(PyObject *self, PyObject *call, PyObject *args, PyObject *kwargs, PyObject *stack) {
    PyObject *tensor = engine_tensor(self), *nodes = tensor ? PyList_New(0) : NULL, *epoch = NULL, *last = NULL;
    int bad = nodes == NULL || grad_nodes(args, (PyTypeObject *)tensor, nodes);
    if (!bad && PyList_GET_SIZE(nodes) == 0) { /* keyword arguments only where no positional one needs a gradient */
        int some = PyObject_IsTrue(kwargs);
        PyObject *vals = some > 0 ? PyObject_CallMethodNoArgs(kwargs, s_values) : NULL;
        bad = some < 0 || (some && (vals == NULL || grad_nodes(vals, (PyTypeObject *)tensor, nodes)));
        Py_XDECREF(vals);
    }
    if (!bad && PyList_GET_SIZE(nodes)) {
        slot_set(call, ca_inputs, nodes);
        epoch = PyObject_GetAttr(self, s_epoch);
        last = Py_XNewRef(SLOT(stack, sk_last_node));
        bad = epoch == NULL;
        for (Py_ssize_t i = 0; !bad && i < PyList_GET_SIZE(nodes); i++) {
            PyObject *node = PyList_GET_ITEM(nodes, i);
            /* the node with the last begin hook begins another module's backward, ending this one */
            if (node != last)
                bad = hook_node(node, self, s_end_backward, call, epoch);
        }
    }
    Py_XDECREF(last);
    Py_XDECREF(epoch);
    Py_XDECREF(nodes);
    Py_XDECREF(tensor);
    return bad ? -1 : 0;
}

/* _arm_begin(self, call, output, stack): 0, -1 on an error */
static int arm_begin(PyObject *self, PyObject *call, PyObject *output, PyObject *stack) {
    PyObject *inputs = SLOT(call, ca_inputs);
    if (inputs == NULL || !(PyList_CheckExact(inputs) || PyTuple_CheckExact(inputs))) {
        PyErr_SetString(PyExc_TypeError, "a LayerTimer call's inputs are a list");
        return -1;
    }
    Py_INCREF(inputs);
    slot_set(call, ca_inputs, empty_tuple);
    PyObject *values = PyTuple_CheckExact(output) || PyList_CheckExact(output) ? Py_NewRef(output)
                                                                                : PyTuple_Pack(1, output);
    PyObject *tensor = values ? engine_tensor(self) : NULL, *nodes = tensor ? PyList_New(0) : NULL;
    PyObject *epoch = nodes ? PyObject_GetAttr(self, s_epoch) : NULL;
    int bad = epoch == NULL || grad_nodes(values, (PyTypeObject *)tensor, nodes);
    for (Py_ssize_t i = 0; !bad && i < PyList_GET_SIZE(nodes); i++) {
        PyObject *node = PyList_GET_ITEM(nodes, i), *last_calls = SLOT(stack, sk_last_calls), *calls;
        if (holds(inputs, node))
            continue; /* an input passed through (nn.Identity): no backward of its own */
        if (node == SLOT(stack, sk_last_node)) {
            /* the output of the module that ended last (inside this one), returned as is: one
             * hook begins the outer module's backward, then the inner one's */
            bad = last_calls == NULL || !PyList_Check(last_calls) || PyList_Insert(last_calls, 0, call);
            if (bad && !PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "a LayerTimer stack's last calls are a list");
            continue;
        }
        bad = (calls = PyList_New(1)) == NULL;
        if (!bad) {
            PyList_SET_ITEM(calls, 0, Py_NewRef(call));
            bad = hook_node(node, self, s_begin_backward, calls, epoch);
        }
        if (!bad) {
            Py_XSETREF(SLOT(stack, sk_last_node), Py_NewRef(node));
            Py_XSETREF(SLOT(stack, sk_last_calls), Py_NewRef(calls));
        }
        Py_XDECREF(calls);
    }
    Py_XDECREF(epoch);
    Py_XDECREF(nodes);
    Py_XDECREF(tensor);
    Py_XDECREF(values);
    Py_DECREF(inputs);
    return bad ? -1 : 0;
}

/* A new _Call(state, parent, device): the slots its __init__ sets, without a Python frame. */
static PyObject *new_call(PyObject *state, PyObject *parent, PyObject *device) {
    PyObject *c = call_type->tp_alloc(call_type, 0);
    if (c == NULL)
        return NULL;
    slot_set(c, ca_state, state);
    slot_set(c, ca_parent, parent);
    slot_set(c, ca_device, device);
    slot_set(c, ca_inputs, empty_tuple);
    slot_set(c, ca_token, Py_None);
    slot_set(c, ca_begun, Py_False);
    return c;
}

/* The engine's _Stack for this thread with its lists (borrowed from it), or NULL: an error set,
 * or none (not a _Stack of lists: the Python method decides). */
static PyObject *engine_stack(PyObject *self, PyObject **modules, PyObject **tokens, PyObject **calls) {
    PyObject *stack = engine_local(self, s_stack, s_stack_method);
    if (stack == NULL)
        return NULL;
    if (Py_TYPE(stack) == stack_type) {
        *modules = SLOT(stack, sk_modules);
        *tokens = SLOT(stack, sk_tokens);
        *calls = SLOT(stack, sk_calls);
        if (*modules && *tokens && *calls && PyList_CheckExact(*modules) && PyList_CheckExact(*tokens) &&
            PyList_CheckExact(*calls))
            return stack;
    }
    Py_DECREF(stack);
    return NULL;
}

/* begin_forward(self, state, args, kwargs=None) */
static PyObject *en_begin(METHOD_ARGS) {
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (n < 2 || n > 3 || kwnames || stack_type == NULL)
        HAND_OVER(en_fb_begin);
    int backward = is_true_attr(self, s_backward);
    if (backward < 0)
        return NULL;
    int compiling = is_true_call(self, s_compiling);
    if (compiling)
        return compiling < 0 ? NULL : Py_NewRef(Py_None); /* traced by torch.compile: no hook in the graph */
    PyObject *state = args[0], *kwargs = n == 3 ? args[2] : Py_None;
    PyObject *a[3] = {self, args[1], kwargs};
    PyObject *stream = en_stream_for(self, a + 1, 2, NULL), *token = Py_None;
    if (stream == NULL)
        return NULL;
    if (stream != Py_None) {
        PyObject *timer = PyObject_GetAttr(self, s_timer), *name = PyObject_GetAttr(state, s_name);
        if (timer && name) {
            PyObject *b[3] = {timer, name, stream};
            token = PyObject_VectorcallMethod(s_begin, b, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        } else {
            token = NULL;
        }
        Py_XDECREF(timer);
        Py_XDECREF(name);
    } else {
        Py_INCREF(token);
    }
    PyObject *modules, *tokens, *calls, *call = Py_NewRef(Py_None);
    PyObject *stack = token ? engine_stack(self, &modules, &tokens, &calls) : NULL;
    int bad = stack == NULL;
    if (bad && !PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "a LayerTimer stack holds lists");
    if (!bad && backward && token != Py_None) {
        int grad = is_true_call(self, s_grad_enabled); /* an untimed forward has no backward region */
        if (grad > 0) {
            Py_ssize_t k = PyList_GET_SIZE(calls);
            PyObject *device = Py_TYPE(stream) == stream_type ? SLOT(stream, st_device) : minus_one;
            if (device == NULL)
                PyErr_SetString(PyExc_AttributeError, "a GpuStream without its _device");
            Py_SETREF(call, device ? new_call(state, k ? PyList_GET_ITEM(calls, k - 1) : Py_None, device) : NULL);
            bad = call == NULL || arm_end(self, call, args[1], kwargs, stack);
        } else {
            bad = grad < 0;
        }
    }
    bad = bad || (backward && PyList_Append(calls, call)) || PyList_Append(modules, state) ||
          PyList_Append(tokens, token);
    Py_XDECREF(call);
    Py_XDECREF(stack);
    Py_XDECREF(token);
    Py_DECREF(stream);
    if (bad)
        return NULL;
    Py_RETURN_NONE;
}

/* end_forward(self, state, output=None), the innermost module ending (stale entries: Python) */
static PyObject *en_end(METHOD_ARGS) {
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (n < 1 || n > 2 || kwnames || stack_type == NULL)
        HAND_OVER(en_fb_end);
    int backward = is_true_attr(self, s_backward);
    if (backward < 0)
        return NULL;
    int compiling = is_true_call(self, s_compiling);
    if (compiling)
        return compiling < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *modules, *tokens, *calls, *stack = engine_stack(self, &modules, &tokens, &calls);
    if (stack == NULL) {
        if (PyErr_Occurred())
            return NULL;
        HAND_OVER(en_fb_end);
    }
    Py_ssize_t m = PyList_GET_SIZE(modules), t = PyList_GET_SIZE(tokens), k = PyList_GET_SIZE(calls);
    if (m == 0 || t != m || PyList_GET_ITEM(modules, m - 1) != args[0]) { /* stale entries: Python */
        Py_DECREF(stack);
        HAND_OVER(en_fb_end);
    }
    PyObject *token = Py_NewRef(PyList_GET_ITEM(tokens, t - 1));
    PyObject *call = backward && k ? Py_NewRef(PyList_GET_ITEM(calls, k - 1)) : NULL;
    int bad = PyList_SetSlice(modules, m - 1, m, NULL) || PyList_SetSlice(tokens, t - 1, t, NULL) ||
              (call && PyList_SetSlice(calls, k - 1, k, NULL));
    if (!bad && token != Py_None) {
        PyObject *timer = PyObject_GetAttr(self, s_timer);
        PyObject *b[2] = {timer, token};
        PyObject *r = timer ? PyObject_VectorcallMethod(s_end, b, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL) : NULL;
        Py_XDECREF(timer);
        bad = r == NULL;
        Py_XDECREF(r);
    }
    Py_DECREF(token);
    if (!bad && call != NULL && call != Py_None) {
        if (Py_TYPE(call) != call_type) {
            PyErr_SetString(PyExc_TypeError, "a LayerTimer stack holds _Call entries");
            bad = 1;
        } else {
            bad = arm_begin(self, call, n == 2 ? args[1] : Py_None, stack);
        }
    }
    Py_XDECREF(call);
    if (!bad && PyList_GET_SIZE(modules) == 0) { /* the outermost timed forward is over: hold no node of its graph */
        PyObject *empty = PyList_New(0);
        bad = empty == NULL;
        if (!bad) {
            Py_XSETREF(SLOT(stack, sk_last_node), Py_NewRef(Py_None));
            Py_XSETREF(SLOT(stack, sk_last_calls), empty);
        }
    }
    Py_DECREF(stack);
    if (bad)
        return NULL;
    Py_RETURN_NONE;
}

/* epoch != self._epoch: 1, 0, -1 on an error */
static int stale_epoch(PyObject *self, PyObject *epoch) {
    PyObject *now = PyObject_GetAttr(self, s_epoch);
    int r = now ? PyObject_RichCompareBool(epoch, now, Py_NE) : -1;
    Py_XDECREF(now);
    return r;
}

/* _encloses(outer, call): 1, 0, -1 on an error */
static int encloses(PyObject *outer, PyObject *call) {
    if (Py_TYPE(outer) != call_type) {
        PyErr_SetString(PyExc_TypeError, "LayerTimer's backward stacks hold _Call entries");
        return -1;
    }
    for (PyObject *c = SLOT(call, ca_parent); c != NULL && c != Py_None; c = SLOT(c, ca_parent)) {
        if (c == outer)
            return 1;
        if (Py_TYPE(c) != call_type)
            break;
    }
    PyObject *state = SLOT(call, ca_state), *outer_state = SLOT(outer, ca_state);
    if (state == NULL || outer_state == NULL) {
        PyErr_SetString(PyExc_AttributeError, "a LayerTimer call without its module");
        return -1;
    }
    PyObject *ancestors = Py_TYPE(state) == module_type ? Py_XNewRef(SLOT(state, md_ancestors))
                                                         : PyObject_GetAttr(state, s_ancestors);
    int r = ancestors ? PySequence_Contains(ancestors, outer_state) : -1;
    Py_XDECREF(ancestors);
    return r;
}

/* [c.token for c in calls if c.token is not None], reversed: from the last call */
static PyObject *tokens_of(PyObject *calls, int reversed) {
    Py_ssize_t n = PyList_GET_SIZE(calls);
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *call = PyList_GET_ITEM(calls, reversed ? n - 1 - i : i), *token;
        if (Py_TYPE(call) != call_type) {
            PyErr_SetString(PyExc_TypeError, "LayerTimer's backward stacks hold _Call entries");
            Py_CLEAR(out);
        } else if (!is_none(token = SLOT(call, ca_token)) && PyList_Append(out, token)) {
            Py_CLEAR(out);
        }
    }
    return out;
}

/* self._meet(tokens, starting, stream), by name */
static PyObject *engine_meet(PyObject *self, PyObject *tokens, PyObject *starting, PyObject *stream) {
    if (tokens == NULL)
        return NULL;
    PyObject *a[4] = {self, tokens, starting, stream};
    PyObject *r = PyObject_VectorcallMethod(s_meet, a, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(tokens);
    return r;
}

static int all_calls(PyObject *list) { /* a list of _Call objects */
    if (!PyList_CheckExact(list))
        return 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++)
        if (Py_TYPE(PyList_GET_ITEM(list, i)) != call_type)
            return 0;
    return 1;
}

static int index_of(PyObject *list, PyObject *o) { /* the last index of o (identity) in a list, or -1 */
    for (Py_ssize_t i = PyList_GET_SIZE(list) - 1; i >= 0; i--)
        if (PyList_GET_ITEM(list, i) == o)
            return (int)i;
    return -1;
}

/* begin_backward(self, calls, epoch) */
static PyObject *en_begin_backward(METHOD_ARGS) {
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames || call_type == NULL || !all_calls(args[0]))
        HAND_OVER(en_fb_begin_backward);
    PyObject *calls = args[0];
    int skip = stale_epoch(self, args[1]);
    if (!skip)
        skip = is_true_call(self, s_compiling);
    if (skip)
        return skip < 0 ? NULL : Py_NewRef(Py_None);
    int queued = is_true_attr(self, s_callback_queued);
    if (queued == 0) {
        PyObject *r = PyObject_CallMethodNoArgs(self, s_queue_end);
        queued = r ? 1 : -1;
        Py_XDECREF(r);
    }
    if (queued < 0)
        return NULL;
    PyObject *open = engine_local(self, s_backward, s_backward_stack), *begun = PyObject_GetAttr(self, s_begun);
    PyObject *ending = PyList_New(0), *starting = PyList_New(0), *stream = NULL, *r = NULL;
    int bad = open == NULL || begun == NULL || ending == NULL || starting == NULL;
    if (!bad && (!PyList_CheckExact(open) || !PyList_Check(begun))) {
        PyErr_SetString(PyExc_TypeError, "LayerTimer's backward stacks are lists");
        bad = 1;
    }
    for (Py_ssize_t i = 0; !bad && i < PyList_GET_SIZE(calls); i++) {
        PyObject *call = PyList_GET_ITEM(calls, i), *was = SLOT(call, ca_begun);
        int done = was ? PyObject_IsTrue(was) : -1;
        if (done) {
            bad = done < 0;
            continue;
        }
        Py_INCREF(call);
        slot_set(call, ca_begun, Py_True);
        bad = PyList_Append(begun, call);
        Py_ssize_t top;
        while (!bad && (top = PyList_GET_SIZE(open)) > 0) {
            PyObject *ended = PyList_GET_ITEM(open, top - 1);
            int in = encloses(ended, call);
            if (in) {
                bad = in < 0;
                break;
            }
            int at = index_of(starting, ended); /* begun by this same hook: not a region after all */
            bad = (at >= 0 ? PyList_SetSlice(starting, at, at + 1, NULL) : PyList_Append(ending, ended)) ||
                  PyList_SetSlice(open, top - 1, top, NULL);
        }
        bad = bad || PyList_Append(starting, call) || PyList_Append(open, call);
        Py_DECREF(call);
    }
    if (!bad && PyList_GET_SIZE(starting)) { /* torch's current stream on the forward's device, as autograd sets it */
        stream = PyObject_GetAttr(self, s_fixed);
        if (stream == Py_None) {
            int capturing = engine_capturing(self);
            Py_SETREF(stream, capturing ? (capturing < 0 ? NULL : Py_NewRef(Py_None))
                                        : engine_gpu_stream(self, SLOT(PyList_GET_ITEM(starting, 0), ca_device)));
        }
        bad = stream == NULL;
    }
    if (!bad)
        r = engine_meet(self, tokens_of(ending, 0), starting, stream ? stream : Py_None);
    Py_XDECREF(stream);
    Py_XDECREF(open);
    Py_XDECREF(begun);
    Py_XDECREF(ending);
    Py_XDECREF(starting);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* end_backward(self, call, epoch) */
static PyObject *en_end_backward(METHOD_ARGS) {
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames || call_type == NULL || Py_TYPE(args[0]) != call_type)
        HAND_OVER(en_fb_end_backward);
    PyObject *call = args[0], *was = SLOT(call, ca_begun);
    int skip = stale_epoch(self, args[1]);
    if (!skip) {
        int t = was ? PyObject_IsTrue(was) : -1;
        skip = t < 0 ? -1 : !t;
    }
    if (skip)
        return skip < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *open = engine_local(self, s_backward, NULL);
    if (open == NULL || !PyList_CheckExact(open)) {
        if (open == NULL)
            return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
        Py_DECREF(open);
        HAND_OVER(en_fb_end_backward);
    }
    int i = index_of(open, call);
    PyObject *ending = i >= 0 ? PyList_GetSlice(open, i, PyList_GET_SIZE(open)) : NULL, *r = NULL;
    if (ending != NULL && PyList_SetSlice(open, i, PyList_GET_SIZE(open), NULL) == 0) {
        PyObject *starting = PyList_New(0);
        r = starting ? engine_meet(self, tokens_of(ending, 1), starting, Py_None) : NULL;
        Py_XDECREF(starting);
    } else if (i < 0) {
        r = Py_NewRef(Py_None);
    }
    Py_XDECREF(ending);
    Py_DECREF(open);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* _meet(self, tokens, starting, stream): on a GpuStream through the timer's _meet, else each
 * token ended and each region begun through the timer's end and begin */
static PyObject *en_meet(METHOD_ARGS) {
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames || call_type == NULL || !PyList_CheckExact(args[0]) ||
        !all_calls(args[1]))
        HAND_OVER(en_fb_meet);
    PyObject *tokens = args[0], *starting = args[1], *stream = args[2], *where = stream;
    int meets = is_true_attr(self, s_meets);
    if (meets < 0)
        return NULL;
    if (stream == Py_None && meets && PyList_GET_SIZE(tokens)) {
        PyObject *first = PyList_GET_ITEM(tokens, 0);
        if ((PyObject *)Py_TYPE(first) != region_type || SLOT(first, op_stream) == NULL)
            HAND_OVER(en_fb_meet);
        where = SLOT(first, op_stream);
    }
    Py_ssize_t n = stream == Py_None ? 0 : PyList_GET_SIZE(starting);
    PyObject *timer = PyObject_GetAttr(self, s_timer), *names = timer ? PyList_New(n) : NULL, *began = NULL;
    for (Py_ssize_t i = 0; names != NULL && i < n; i++) {
        PyObject *state = SLOT(PyList_GET_ITEM(starting, i), ca_state);
        PyObject *name = state == NULL ? NULL
                         : Py_TYPE(state) == module_type ? Py_XNewRef(SLOT(state, md_backward_name))
                                                         : PyObject_GetAttr(state, s_backward_name);
        if (name == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_AttributeError, "a LayerTimer call without its module's backward name");
            Py_CLEAR(names);
        } else {
            PyList_SET_ITEM(names, i, name);
        }
    }
    if (names != NULL && meets && Py_TYPE(where) == stream_type) {
        PyObject *a[4] = {timer, tokens, names, where};
        began = PyObject_VectorcallMethod(s_meet, a, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    } else if (names != NULL) {
        int bad = 0;
        for (Py_ssize_t i = 0; !bad && i < PyList_GET_SIZE(tokens); i++) {
            PyObject *a[2] = {timer, PyList_GET_ITEM(tokens, i)};
            PyObject *r = PyObject_VectorcallMethod(s_end, a, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            bad = r == NULL;
            Py_XDECREF(r);
        }
        began = bad ? NULL : PyList_New(n);
        for (Py_ssize_t i = 0; began != NULL && i < n; i++) {
            PyObject *a[3] = {timer, PyList_GET_ITEM(names, i), stream};
            PyObject *token = PyObject_VectorcallMethod(s_begin, a, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            if (token == NULL)
                Py_CLEAR(began);
            else
                PyList_SET_ITEM(began, i, token);
        }
    }
    PyObject *fast = began ? PySequence_Fast(began, "Timer._meet gives a list") : NULL;
    for (Py_ssize_t i = 0; fast != NULL && i < PyList_GET_SIZE(starting) && i < PySequence_Fast_GET_SIZE(fast); i++)
        slot_set(PyList_GET_ITEM(starting, i), ca_token, PySequence_Fast_GET_ITEM(fast, i));
    Py_XDECREF(fast);
    Py_XDECREF(began);
    Py_XDECREF(names);
    Py_XDECREF(timer);
    if (fast == NULL)
        return NULL;
    Py_RETURN_NONE;
}

/* forward_pre(engine, state, module, args, kwargs) and forward_post(engine, state, module, args,
 * output): the hooks LayerTimer registers (functools.partial(hook, engine, state)); they call
 * the engine's methods by name, so they follow compiled.use() like every other fast path. */
static PyObject *hot_forward_pre(PyObject *m, PyObject *const *args, Py_ssize_t n) {
    if (n != 5)
        return PyErr_Format(PyExc_TypeError, "forward_pre(engine, state, module, args, kwargs) takes 5 arguments");
    PyObject *a[4] = {args[0], args[1], args[3], args[4]};
    return PyObject_VectorcallMethod(s_begin_forward, a, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static PyObject *hot_forward_post(PyObject *m, PyObject *const *args, Py_ssize_t n) {
    if (n != 5)
        return PyErr_Format(PyExc_TypeError, "forward_post(engine, state, module, args, output) takes 5 arguments");
    PyObject *a[3] = {args[0], args[1], args[4]};
    return PyObject_VectorcallMethod(s_end_forward, a, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* ---------------------------------------------------------------------------------------- */
/* harvest_queue(queue, ref, device, stream, samples, done, sample_type): the finished head
 * of one GPU stream's queue of regions (name, start, end, step) becomes samples; the handles
 * of each harvested region are appended to done (as they go, so an error loses none). */

static int ended(PyObject *queue, Py_ssize_t i) { /* 1 finished, 0 pending, -1 error */
    PyObject *entry = PySequence_GetItem(queue, i);
    if (entry == NULL)
        return -1;
    void *e;
    int rc = -1;
    if (PyTuple_Check(entry) && PyTuple_GET_SIZE(entry) == 4 && !handle_of(PyTuple_GET_ITEM(entry, 2), &e)) {
        int err = cu_query(e);
        if (!err)
            rc = 1;
        else if (err == NOT_READY)
            rc = 0;
        else
            fail(err, "cuEventQuery");
    } else if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_TypeError, "a Timer queue entry is (name, start, end, step)");
    }
    Py_DECREF(entry);
    return rc;
}

/* How many regions at the head have finished: the newest end first, then a binary search. */
static Py_ssize_t finished(PyObject *queue) {
    Py_ssize_t n = PyObject_Size(queue);
    if (n <= 0)
        return n;
    Py_ssize_t lo = 0, hi = n - 1;
    int r = ended(queue, hi);
    if (r)
        return r < 0 ? -1 : hi + 1;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if ((r = ended(queue, mid)) < 0)
            return -1;
        if (r)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static PyObject *hot_harvest_queue(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7)
        return PyErr_Format(PyExc_TypeError, "harvest_queue() takes 7 arguments");
    PyObject *queue = args[0], *ref = args[1], *device = args[2], *stream = args[3];
    PyObject *samples = args[4], *done = args[5];
    PyTypeObject *sample_type = (PyTypeObject *)args[6];
    if (!PyList_CheckExact(samples) || !PyList_CheckExact(done) || !PyType_Check(args[6]) ||
        !PyType_IsSubtype(sample_type, &PyTuple_Type))
        return PyErr_Format(PyExc_TypeError, "harvest_queue(): samples and done are lists, sample_type a tuple type");
    if (!bound())
        return NULL;
    void *r = NULL;
    if (ref != Py_None && handle_of(ref, &r))
        return NULL;
    Py_ssize_t n = finished(queue);
    if (n <= 0)
        return n < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *popleft = PyObject_GetAttr(queue, s_popleft);
    if (popleft == NULL)
        return NULL;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *entry = PySequence_GetItem(queue, 0);
        if (entry == NULL)
            goto out;
        void *a, *b;
        float ms = 0, at = 0;
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 4 || handle_of(PyTuple_GET_ITEM(entry, 1), &a) ||
            handle_of(PyTuple_GET_ITEM(entry, 2), &b)) {
            Py_DECREF(entry);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "a bad Timer queue entry");
            goto out;
        }
        int err = cu_elapsed(&ms, a, b);
        if (!err && ref != Py_None)
            err = cu_elapsed(&at, r, a);
        if (err == NOT_READY) { /* threads ended regions out of stream order */
            Py_DECREF(entry);
            break;
        }
        if (err) {
            Py_DECREF(entry);
            fail(err, "cuEventElapsedTime");
            goto out;
        }
        PyObject *left = PyObject_CallNoArgs(popleft);
        if (left == NULL) {
            Py_DECREF(entry);
            goto out;
        }
        Py_DECREF(left);
        PyObject *sample = sample_type->tp_alloc(sample_type, 6);
        PyObject *atv = PyFloat_FromDouble(ref == Py_None ? Py_NAN : (double)at), *msv = PyFloat_FromDouble(ms);
        if (sample == NULL || atv == NULL || msv == NULL) {
            Py_XDECREF(sample);
            Py_XDECREF(atv);
            Py_XDECREF(msv);
            /* the region left the queue: its handles still come back */
            PyList_Append(done, PyTuple_GET_ITEM(entry, 1));
            PyList_Append(done, PyTuple_GET_ITEM(entry, 2));
            Py_DECREF(entry);
            goto out;
        }
        PyTuple_SET_ITEM(sample, 0, Py_NewRef(PyTuple_GET_ITEM(entry, 0)));
        PyTuple_SET_ITEM(sample, 1, Py_NewRef(device));
        PyTuple_SET_ITEM(sample, 2, Py_NewRef(stream));
        PyTuple_SET_ITEM(sample, 3, atv);
        PyTuple_SET_ITEM(sample, 4, msv);
        PyTuple_SET_ITEM(sample, 5, Py_NewRef(PyTuple_GET_ITEM(entry, 3)));
        int bad = PyList_Append(samples, sample);
        Py_DECREF(sample);
        bad |= PyList_Append(done, PyTuple_GET_ITEM(entry, 1));
        bad |= PyList_Append(done, PyTuple_GET_ITEM(entry, 2));
        Py_DECREF(entry);
        if (bad)
            goto out;
    }
    result = Py_NewRef(Py_None);
out:
    Py_DECREF(popleft);
    return result;
}


/* ---------------------------------------------------------------------------------------- */
/* Word: a counter's value in pinned host memory, stored with release and read with acquire
 * ordering (the GPU's stream memory operations write and read the same word).             */

typedef struct {
    PyObject_HEAD
    void *address;
    int bits;
} Word;

static inline uint64_t word_load(Word *w) {
    return w->bits == 64 ? __atomic_load_n((uint64_t *)w->address, __ATOMIC_ACQUIRE)
                         : __atomic_load_n((uint32_t *)w->address, __ATOMIC_ACQUIRE);
}

static int word_init(Word *self, PyObject *args, PyObject *kw) {
    unsigned long long address;
    int bits;
    static char *names[] = {"address", "bits", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Ki", names, &address, &bits))
        return -1;
    if (bits != 32 && bits != 64) {
        PyErr_Format(PyExc_ValueError, "a Word has 32 or 64 bits, not %d", bits);
        return -1;
    }
    if (!address || address % (bits / 8)) {
        PyErr_Format(PyExc_ValueError, "a Word's address must be a non-null multiple of %d", bits / 8);
        return -1;
    }
    self->address = (void *)(uintptr_t)address;
    self->bits = bits;
    return 0;
}

static PyObject *word_get(Word *self, void *c) {
    return PyLong_FromUnsignedLongLong(word_load(self));
}

static int word_set(Word *self, PyObject *v, void *c) {
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "a Word's value cannot be deleted");
        return -1;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (self->bits == 32) {
        if (x > 0xffffffffULL) {
            PyErr_Format(PyExc_OverflowError, "%llu does not fit in 32 bits", x);
            return -1;
        }
        __atomic_store_n((uint32_t *)self->address, (uint32_t)x, __ATOMIC_RELEASE);
    } else {
        __atomic_store_n((uint64_t *)self->address, (uint64_t)x, __ATOMIC_RELEASE);
    }
    return 0;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* spin(value, seconds) -> bool: busy-read until the word is >= value or seconds pass, with the
 * GIL released (other threads run meanwhile); True when the value was reached. */
static PyObject *word_spin(Word *self, PyObject *const *args, Py_ssize_t n) {
    if (n != 2)
        return PyErr_Format(PyExc_TypeError, "spin(value, seconds) takes 2 arguments");
    unsigned long long v = PyLong_AsUnsignedLongLong(args[0]);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    double seconds = PyFloat_AsDouble(args[1]);
    if (seconds == -1.0 && PyErr_Occurred())
        return NULL;
    int reached;
    Py_BEGIN_ALLOW_THREADS
    double until = now_s() + seconds;
    unsigned spins = 0;
    while (!(reached = word_load(self) >= v)) {
        if (++spins % 64 == 0 && now_s() >= until)
            break;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(reached);
}

static PyGetSetDef word_getset[] = {
    {"value", (getter)word_get, (setter)word_set, "The word's value (acquire load, release store).", NULL},
    {NULL},
};

static PyMethodDef word_methods[] = {
    {"spin", (PyCFunction)(void (*)(void))word_spin, METH_FASTCALL,
     "spin(value, seconds) -> bool: busy-read (GIL released) until the word is >= value or seconds pass."},
    {NULL},
};

static PyTypeObject WordType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cudaevents._core._hot.Word",
    .tp_basicsize = sizeof(Word),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Word(address, bits): a 32- or 64-bit counter word in host memory, read and written atomically.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)word_init,
    .tp_getset = word_getset,
    .tp_methods = word_methods,
};

/* ---------------------------------------------------------------------------------------- */
/* install_*(): offsets and fallbacks; they return the methods to set on the classes         */

#define FAST_METHOD(fn, name) {name, (PyCFunction)(void (*)(void))fn, METH_FASTCALL | METH_KEYWORDS, NULL}

static PyMethodDef ev_defs[] = {
    FAST_METHOD(ev_init, "__init__"), FAST_METHOD(ev_record, "record"), FAST_METHOD(ev_wait, "wait"),
    FAST_METHOD(ev_query, "query"),   FAST_METHOD(ev_close, "close"),   FAST_METHOD(ev_del, "__del__"),
};
static PyObject **ev_fbs[] = {&ev_fb_init, &ev_fb_record, &ev_fb_wait, &ev_fb_query, &ev_fb_close, &ev_fb_del};

static PyMethodDef pl_defs[] = {FAST_METHOD(pl_acquire, "acquire"), FAST_METHOD(pl_release, "release")};
static PyObject **pl_fbs[] = {&pl_fb_acquire, &pl_fb_release};

static PyMethodDef op_defs[] = {
    FAST_METHOD(op_init, "__init__"), FAST_METHOD(op_enter, "__enter__"), FAST_METHOD(op_exit, "__exit__")};
static PyObject **op_fbs[] = {&op_fb_init, &op_fb_enter, &op_fb_exit};

static PyMethodDef tm_defs[] = {FAST_METHOD(tm_begin, "begin"), FAST_METHOD(tm_end, "end"),
                                FAST_METHOD(tm_unshared, "_unshared"), FAST_METHOD(tm_meet, "_meet")};
static PyObject **tm_fbs[] = {&tm_fb_begin, &tm_fb_end, &tm_fb_unshared, &tm_fb_meet};

static PyMethodDef lp_defs[] = {FAST_METHOD(lp_call, "__call__")};
static PyObject **lp_fbs[] = {&lp_fb_call};

static PyMethodDef en_defs[] = {
    FAST_METHOD(en_stream_for, "_stream_for"),       FAST_METHOD(en_begin, "begin_forward"),
    FAST_METHOD(en_end, "end_forward"),              FAST_METHOD(en_begin_backward, "begin_backward"),
    FAST_METHOD(en_end_backward, "end_backward"),    FAST_METHOD(en_meet, "_meet")};
static PyObject **en_fbs[] = {&en_fb_stream_for,     &en_fb_begin,        &en_fb_end,
                              &en_fb_begin_backward, &en_fb_end_backward, &en_fb_meet};

/* {name: method descriptor of cls} for defs, after keeping fallbacks[name] for each */
static PyObject *methods_for(PyObject *cls, PyObject *fallbacks, PyMethodDef *defs, PyObject ***fbs, int n) {
    if (!PyType_Check(cls) || !PyDict_Check(fallbacks))
        return PyErr_Format(PyExc_TypeError, "install needs a class and a dict of its Python methods");
    for (int i = 0; i < n; i++) {
        PyObject *fb = PyDict_GetItemString(fallbacks, defs[i].ml_name);
        if (fb == NULL || !PyCallable_Check(fb))
            return PyErr_Format(PyExc_KeyError, "install needs the Python method %s", defs[i].ml_name);
        Py_INCREF(fb);
        Py_XSETREF(*fbs[i], fb);
    }
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *d = PyDescr_NewMethod((PyTypeObject *)cls, &defs[i]);
        if (d == NULL || PyDict_SetItemString(out, defs[i].ml_name, d)) {
            Py_XDECREF(d);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(d);
    }
    return out;
}

static int offsets(PyObject *cls, const char **names, Py_ssize_t **outs, int n) {
    for (int i = 0; i < n; i++)
        if ((*outs[i] = slot_offset(cls, names[i])) < 0)
            return -1;
    return 0;
}

static PyObject *hot_install_stream(PyObject *m, PyObject *cls) {
    static const char *names[] = {"_handle", "_device", "_special", "_id"};
    Py_ssize_t *outs[] = {&st_handle, &st_device, &st_special, &st_id};
    if (!PyType_Check(cls) || offsets(cls, names, outs, 4))
        return NULL;
    Py_INCREF(cls);
    Py_XSETREF(stream_type, (PyTypeObject *)cls);
    Py_RETURN_NONE;
}

static PyObject *hot_install_event(PyObject *m, PyObject *args) {
    PyObject *cls, *fallbacks, *dp;
    if (!PyArg_ParseTuple(args, "OO!O", &cls, &PyDict_Type, &fallbacks, &dp))
        return NULL;
    static const char *names[] = {"_handle", "_device", "_flags", "_pool", "_recorded", "_closed"};
    Py_ssize_t *outs[] = {&ev_handle, &ev_device, &ev_flags, &ev_pool, &ev_recorded, &ev_closed};
    if (offsets(cls, names, outs, 6))
        return NULL;
    Py_INCREF(dp);
    Py_XSETREF(default_pool_fn, dp);
    Py_INCREF(cls);
    Py_XSETREF(event_type, cls);
    return methods_for(cls, fallbacks, ev_defs, ev_fbs, 6);
}

static PyObject *hot_install_pool(PyObject *m, PyObject *args) {
    PyObject *cls, *key_cls, *counts_cls, *fallbacks;
    if (!PyArg_ParseTuple(args, "OOOO!", &cls, &key_cls, &counts_cls, &PyDict_Type, &fallbacks))
        return NULL;
    static const char *pn[] = {"_lock", "_keys", "_returned", "_max_cached", "_state", "_total"};
    Py_ssize_t *po[] = {&pl_lock, &pl_keys, &pl_returned, &pl_max, &pl_state, &pl_total};
    static const char *kn[] = {"free", "counts"};
    Py_ssize_t *ko[] = {&key_free, &key_counts};
    static const char *cn[] = {"creates", "reuses", "live", "high"};
    Py_ssize_t *co[] = {&c_creates, &c_reuses, &c_live, &c_high};
    if (offsets(cls, pn, po, 6) || offsets(key_cls, kn, ko, 2) || offsets(counts_cls, cn, co, 4))
        return NULL;
    PyObject *methods = methods_for(cls, fallbacks, pl_defs, pl_fbs, 2);
    if (methods != NULL) {
        Py_INCREF(cls);
        Py_XSETREF(pool_type, cls);
    }
    return methods;
}

static PyObject *hot_install_region(PyObject *m, PyObject *args) {
    PyObject *cls, *fallbacks;
    if (!PyArg_ParseTuple(args, "OO!", &cls, &PyDict_Type, &fallbacks))
        return NULL;
    static const char *names[] = {"timer", "name", "stream", "start", "end", "key", "nvtx"};
    Py_ssize_t *outs[] = {&op_timer, &op_name, &op_stream, &op_start, &op_end, &op_key, &op_nvtx};
    if (offsets(cls, names, outs, 7))
        return NULL;
    Py_INCREF(cls);
    Py_XSETREF(region_type, cls);
    return methods_for(cls, fallbacks, op_defs, op_fbs, 3);
}

static PyObject *hot_install_timer(PyObject *m, PyObject *args) {
    PyObject *cls, *fallbacks;
    if (!PyArg_ParseTuple(args, "OO!", &cls, &PyDict_Type, &fallbacks))
        return NULL;
    static const char *names[] = {"_nvtx", "_spare", "_pending", "_step", "_since_harvest", "_harvest_every", "_shared"};
    Py_ssize_t *outs[] = {&tm_nvtx, &tm_spare, &tm_pending, &tm_step, &tm_since, &tm_every, &tm_shared};
    if (offsets(cls, names, outs, 7))
        return NULL;
    PyObject *methods = methods_for(cls, fallbacks, tm_defs, tm_fbs, 4);
    if (methods != NULL) {
        Py_INCREF(cls);
        Py_XSETREF(timer_type, (PyTypeObject *)cls);
    }
    return methods;
}

static PyObject *hot_install_laps(PyObject *m, PyObject *args) {
    PyObject *cls, *fallbacks;
    if (!PyArg_ParseTuple(args, "OO!", &cls, &PyDict_Type, &fallbacks))
        return NULL;
    static const char *names[] = {"timer", "stream", "open", "state"};
    Py_ssize_t *outs[] = {&lp_timer, &lp_stream, &lp_open, &lp_state};
    if (offsets(cls, names, outs, 4))
        return NULL;
    return methods_for(cls, fallbacks, lp_defs, lp_fbs, 1);
}

/* speed_slots(cls): once the methods are set on the class, point its tp_init (and the event's
 * tp_finalize) at the C functions themselves, sparing the lookup of __init__ / __del__ at
 * every object. Setting __init__ or __del__ on the class again (uninstalling) resets them. */
static PyObject *hot_speed_slots(PyObject *m, PyObject *cls) {
    if (!PyType_Check(cls))
        return PyErr_Format(PyExc_TypeError, "speed_slots() takes a class");
    PyTypeObject *t = (PyTypeObject *)cls;
    if (cls == event_type) {
        t->tp_init = ev_tp_init;
        t->tp_finalize = ev_finalize;
    } else if (cls == region_type) {
        t->tp_init = op_tp_init;
    }
    PyType_Modified(t);
    Py_RETURN_NONE;
}

static PyObject *hot_install_engine(PyObject *m, PyObject *args) {
    PyObject *cls, *fallbacks, *mod, *call, *stack;
    if (!PyArg_ParseTuple(args, "OO!O!O!O!", &cls, &PyDict_Type, &fallbacks, &PyType_Type, &mod, &PyType_Type, &call,
                          &PyType_Type, &stack))
        return NULL;
    static const char *mn[] = {"backward_name", "ancestors"};
    Py_ssize_t *mo[] = {&md_backward_name, &md_ancestors};
    static const char *cn[] = {"state", "parent", "inputs", "device", "token", "begun"};
    Py_ssize_t *co[] = {&ca_state, &ca_parent, &ca_inputs, &ca_device, &ca_token, &ca_begun};
    static const char *sn[] = {"modules", "tokens", "calls", "last_node", "last_calls"};
    Py_ssize_t *so[] = {&sk_modules, &sk_tokens, &sk_calls, &sk_last_node, &sk_last_calls};
    if (offsets(mod, mn, mo, 2) || offsets(call, cn, co, 6) || offsets(stack, sn, so, 5))
        return NULL;
    PyObject *methods = methods_for(cls, fallbacks, en_defs, en_fbs, 6);
    if (methods != NULL) {
        Py_XSETREF(module_type, (PyTypeObject *)Py_NewRef(mod));
        Py_XSETREF(call_type, (PyTypeObject *)Py_NewRef(call));
        Py_XSETREF(stack_type, (PyTypeObject *)Py_NewRef(stack));
    }
    return methods;
}

/* ---------------------------------------------------------------------------------------- */

static PyMethodDef hot_functions[] = {
    {"bind", hot_bind, METH_VARARGS,
     "bind(entries, raise_code, contexts, owner): the driver's entry points {name: address}, owned by owner."},
    {"unbind", hot_unbind, METH_NOARGS, "unbind(): forget the entry points (every call then raises)."},
    {"event_record", (PyCFunction)(void (*)(void))hot_event_record, METH_FASTCALL, "cuEventRecord(event, stream)."},
    {"event_query", hot_event_query, METH_O, "cuEventQuery(event): True, False (NOT_READY) or CudaError."},
    {"event_synchronize", hot_event_synchronize, METH_O, "cuEventSynchronize(event), the GIL released."},
    {"event_elapsed_ms", (PyCFunction)(void (*)(void))hot_event_elapsed_ms, METH_FASTCALL,
     "cuEventElapsedTime(start, end): ms, or None while either is pending."},
    {"stream_wait_event", (PyCFunction)(void (*)(void))hot_stream_wait_event, METH_FASTCALL,
     "cuStreamWaitEvent(stream, event, 0)."},
    {"stream_query", hot_stream_query, METH_O, "cuStreamQuery(stream): True, False (NOT_READY) or CudaError."},
    {"stream_synchronize", hot_stream_synchronize, METH_O, "cuStreamSynchronize(stream), the GIL released."},
    {"harvest_queue", (PyCFunction)(void (*)(void))hot_harvest_queue, METH_FASTCALL,
     "harvest_queue(queue, ref, device, stream, samples, done, sample_type): a Timer queue's finished head."},
    {"install_stream", hot_install_stream, METH_O, "install_stream(GpuStream): the slots the fast paths read."},
    {"install_event", hot_install_event, METH_VARARGS, "install_event(CudaEvent, fallbacks, default_pool) -> methods."},
    {"install_pool", hot_install_pool, METH_VARARGS, "install_pool(EventPool, _Key, _Counts, fallbacks) -> methods."},
    {"install_region", hot_install_region, METH_VARARGS, "install_region(_Open, fallbacks) -> methods."},
    {"install_timer", hot_install_timer, METH_VARARGS, "install_timer(Timer, fallbacks) -> methods (after install_region)."},
    {"speed_slots", hot_speed_slots, METH_O, "speed_slots(cls): tp_init/tp_finalize straight to C (after install)."},
    {"install_engine", hot_install_engine, METH_VARARGS,
     "install_engine(_Engine, fallbacks, _Module, _Call, _Stack) -> methods (after install_stream)."},
    {"forward_pre", (PyCFunction)(void (*)(void))hot_forward_pre, METH_FASTCALL,
     "forward_pre(engine, state, module, args, kwargs): LayerTimer's forward pre-hook."},
    {"forward_post", (PyCFunction)(void (*)(void))hot_forward_post, METH_FASTCALL,
     "forward_post(engine, state, module, args, output): LayerTimer's forward hook."},
    {"install_laps", hot_install_laps, METH_VARARGS, "install_laps(_Laps, fallbacks) -> methods (after install_region)."},
    {NULL},
};

static struct PyModuleDef hot_module = {
    PyModuleDef_HEAD_INIT, "cudaevents._core._hot",
    "The compiled hot path of cudaevents (see _hot.c and cudaevents._core.compiled).", -1, hot_functions,
};

#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC PyInit__hot(void) {
    INTERN(s_acquire, "acquire");
    INTERN(s_release, "release");
    INTERN(s_release_deferred, "release_deferred");
    INTERN(s_append, "append");
    INTERN(s_harvest, "harvest");
    INTERN(s_get, "get");
    INTERN(s_pending, "_pending");
    INTERN(s_spare, "_spare");
    INTERN(s_nvtx, "_nvtx");
    INTERN(s_step, "_step");
    INTERN(s_since, "_since_harvest");
    INTERN(s_every, "_harvest_every");
    INTERN(s_popleft, "popleft");
    INTERN(s_gpu_stream, "_gpu_stream");
    INTERN(s_shared, "_shared");
    INTERN(s_entered, "entered");
    INTERN(s_fixed, "_fixed");
    INTERN(s_Tensor, "_Tensor");
    INTERN(s_last_device, "_last_device");
    INTERN(s_capturing, "_capturing");
    INTERN(s_streams, "_streams");
    INTERN(s_raw_stream, "_raw_stream");
    INTERN(s_is_cuda, "is_cuda");
    INTERN(s_get_device, "get_device");
    INTERN(s_compiling, "_compiling");
    INTERN(s_backward, "backward");
    INTERN(s_local, "_local");
    INTERN(s_stack, "stack");
    INTERN(s_timer, "timer");
    INTERN(s_begin, "begin");
    INTERN(s_end, "end");
    INTERN(s_name, "name");
    INTERN(s_begin_forward, "begin_forward");
    INTERN(s_end_forward, "end_forward");
    INTERN(s_gpu_stream_of, "_gpu_stream");
    INTERN(s_stack_method, "_stack");
    INTERN(s_exiting, "exiting");
    INTERN(s_grad_fn, "grad_fn");
    INTERN(s_values, "values");
    INTERN(s_register_prehook, "register_prehook");
    INTERN(s_begin_backward, "begin_backward");
    INTERN(s_end_backward, "end_backward");
    INTERN(s_epoch, "_epoch");
    INTERN(s_grad_enabled, "_grad_enabled");
    INTERN(s_callback_queued, "_callback_queued");
    INTERN(s_queue_end, "_queue_end_of_backward");
    INTERN(s_backward_stack, "_backward_stack");
    INTERN(s_begun, "_begun");
    INTERN(s_meet, "_meet");
    INTERN(s_meets, "_meets");
    INTERN(s_share, "_share");
    INTERN(s_ancestors, "ancestors");
    INTERN(s_backward_name, "backward_name");
    INTERN(k_device, "device");
    INTERN(k_timing, "timing");
    INTERN(k_blocking_sync, "blocking_sync");
    INTERN(k_interprocess, "interprocess");
    INTERN(k_pool, "pool");
    if ((minus_one = PyLong_FromLong(-1)) == NULL ||
        (empty_tuple = PyTuple_New(0)) == NULL)
        return NULL;
    if (PyType_Ready(&WordType) < 0 || PyType_Ready(&LockType) < 0 || PyType_Ready(&NodeHookType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&hot_module);
    if (m == NULL)
        return NULL;
    /* no Py_MOD_GIL_NOT_USED: this code relies on the GIL (borrowed reads, the Lock's flag) */
    if (PyModule_AddObjectRef(m, "Word", (PyObject *)&WordType) < 0 ||
        PyModule_AddObjectRef(m, "Lock", (PyObject *)&LockType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
