# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Batched AES-GCM over OpenSSL's EVP interface (AES-NI where the CPU has it), GIL released.

One key and many (nonce, data, aad) items per call. Only 12-byte nonces and 16-byte tags: any
other nonce size, or a key that is not 16, 24 or 32 bytes, raises UnsupportedParameters (a
ValueError) before anything is processed. Sealed data is ciphertext || tag, as `cryptography`'s
AESGCM and node/crypto/aead.py.
`open_batch` gives None for an item that fails authentication (or is shorter than a tag).

One EVP_CIPHER_CTX per thread per call, keyed once; each item only sets its IV. Large batches
are split across pthreads started and joined within the call (_parallel.h, fork-safe, unlike
OpenMP's pool); small ones stay on the calling thread (still without the GIL).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import os as _os


cdef extern from "_parallel.h" nogil:
    ctypedef void (*medchain_task_fn)(void* arg, size_t begin, size_t end, int tid) noexcept nogil
    int medchain_parallel_for(size_t n, int nthreads, size_t grain, medchain_task_fn fn, void* arg)


cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_CIPHER_CTX:
        pass
    ctypedef struct EVP_CIPHER:
        pass
    ctypedef struct ENGINE:
        pass
    EVP_CIPHER_CTX* EVP_CIPHER_CTX_new()
    void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX* ctx)
    const EVP_CIPHER* EVP_aes_128_gcm()
    const EVP_CIPHER* EVP_aes_192_gcm()
    const EVP_CIPHER* EVP_aes_256_gcm()
    int EVP_EncryptInit_ex(EVP_CIPHER_CTX* ctx, const EVP_CIPHER* cipher, ENGINE* impl,
                           const unsigned char* key, const unsigned char* iv)
    int EVP_EncryptUpdate(EVP_CIPHER_CTX* ctx, unsigned char* out, int* outl, const unsigned char* inp, int inl)
    int EVP_EncryptFinal_ex(EVP_CIPHER_CTX* ctx, unsigned char* out, int* outl)
    int EVP_DecryptInit_ex(EVP_CIPHER_CTX* ctx, const EVP_CIPHER* cipher, ENGINE* impl,
                           const unsigned char* key, const unsigned char* iv)
    int EVP_DecryptUpdate(EVP_CIPHER_CTX* ctx, unsigned char* out, int* outl, const unsigned char* inp, int inl)
    int EVP_DecryptFinal_ex(EVP_CIPHER_CTX* ctx, unsigned char* outm, int* outl)
    int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX* ctx, int type, int arg, void* ptr)
    int EVP_CTRL_GCM_GET_TAG
    int EVP_CTRL_GCM_SET_TAG


NONCE_LEN = 12
TAG_LEN = 16


class UnsupportedParameters(ValueError):
    """A key or nonce size this module does not support (node.crypto.batch maps it to AeadError)."""

# Batches with fewer bytes than this stay on one thread: below it, starting threads costs more
# than it saves. Tunable for benchmarks.
PARALLEL_MIN_BYTES = 1 << 20

cdef enum:
    _NONCE = 12
    _TAG = 16
    _CHUNK = 1 << 30  # EVP_*Update takes an int length: feed longer buffers in pieces


def default_threads():
    """Worker threads per call: $MEDCHAIN_NATIVE_THREADS, else the CPUs this process may use."""
    env = _os.environ.get("MEDCHAIN_NATIVE_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(_os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, _os.cpu_count() or 1)


cdef inline object _as_bytes(object x):
    if type(x) is bytes:
        return x
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    raise TypeError(f"expected bytes, got {type(x).__name__}")


cdef const EVP_CIPHER* _cipher_for(Py_ssize_t keylen) noexcept:
    if keylen == 16:
        return EVP_aes_128_gcm()
    if keylen == 24:
        return EVP_aes_192_gcm()
    if keylen == 32:
        return EVP_aes_256_gcm()
    return NULL


cdef bytes _check_key(object key):
    cdef object k = _as_bytes(key)
    if PyBytes_GET_SIZE(k) not in (16, 24, 32):
        raise UnsupportedParameters(f"unsupported AES key size {PyBytes_GET_SIZE(k) * 8} bits (only 128, 192, 256)")
    return <bytes>k


ctypedef int (*_evp_update_fn)(EVP_CIPHER_CTX* ctx, unsigned char* out, int* outl,
                               const unsigned char* inp, int inl) noexcept nogil


cdef inline int _update(_evp_update_fn update, EVP_CIPHER_CTX* ctx, unsigned char* out,
                        const unsigned char* inp, size_t n) noexcept nogil:
    """Feed n bytes through EVP_EncryptUpdate or EVP_DecryptUpdate (out NULL: associated data).
    1 on success."""
    cdef int outl = 0
    cdef size_t step
    while n > 0:
        step = n if n < _CHUNK else _CHUNK
        if update(ctx, out, &outl, inp, <int>step) != 1:
            return 0
        inp += step
        if out != NULL:
            out += outl
        n -= step
    return 1


cdef int _seal_one(EVP_CIPHER_CTX* ctx, const unsigned char* iv, const unsigned char* aad, size_t aadlen,
                   const unsigned char* pt, size_t ptlen, unsigned char* out) noexcept nogil:
    """out (ptlen + 16 bytes) = ciphertext || tag. 1 on success."""
    cdef int outl = 0
    if EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, iv) != 1:
        return 0
    if aadlen and not _update(<_evp_update_fn>EVP_EncryptUpdate, ctx, NULL, aad, aadlen):
        return 0
    if ptlen and not _update(<_evp_update_fn>EVP_EncryptUpdate, ctx, out, pt, ptlen):
        return 0
    if EVP_EncryptFinal_ex(ctx, out + ptlen, &outl) != 1:
        return 0
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, _TAG, out + ptlen) == 1


cdef int _open_one(EVP_CIPHER_CTX* ctx, const unsigned char* iv, const unsigned char* aad, size_t aadlen,
                   const unsigned char* ct, size_t ctlen, unsigned char* out) noexcept nogil:
    """ct is ciphertext || tag (ctlen >= 16); out gets ctlen - 16 bytes. 1 iff authentic."""
    cdef int outl = 0
    cdef size_t n = ctlen - _TAG
    cdef unsigned char tag[16]
    cdef int i
    for i in range(_TAG):
        tag[i] = ct[n + i]
    if EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, iv) != 1:
        return 0
    if aadlen and not _update(<_evp_update_fn>EVP_DecryptUpdate, ctx, NULL, aad, aadlen):
        return 0
    if n and not _update(<_evp_update_fn>EVP_DecryptUpdate, ctx, out, ct, n):
        return 0
    if EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, _TAG, tag) != 1:
        return 0
    if EVP_DecryptFinal_ex(ctx, out + n, &outl) <= 0:
        if n:
            memset(out, 0, n)  # never leave unauthenticated plaintext around
        return 0
    return 1


ctypedef struct _Job:
    EVP_CIPHER_CTX** ctxs   # one per thread id
    const unsigned char** iv
    const unsigned char** aad
    size_t* aadlen
    const unsigned char** data
    size_t* datalen
    unsigned char** out     # NULL: skip the item
    unsigned char* ok


cdef void _seal_task(void* arg, size_t begin, size_t end, int tid) noexcept nogil:
    cdef _Job* j = <_Job*>arg
    cdef size_t i
    for i in range(begin, end):
        j.ok[i] = _seal_one(j.ctxs[tid], j.iv[i], j.aad[i], j.aadlen[i], j.data[i], j.datalen[i], j.out[i])


cdef void _open_task(void* arg, size_t begin, size_t end, int tid) noexcept nogil:
    cdef _Job* j = <_Job*>arg
    cdef size_t i
    for i in range(begin, end):
        if j.out[i] != NULL:
            j.ok[i] = _open_one(j.ctxs[tid], j.iv[i], j.aad[i], j.aadlen[i], j.data[i], j.datalen[i], j.out[i])


cdef class _Batch:
    """The C view of one call's items: pointers into bytes objects kept alive in `keep`."""
    cdef Py_ssize_t n
    cdef const unsigned char** iv
    cdef const unsigned char** aad
    cdef size_t* aadlen
    cdef const unsigned char** data
    cdef size_t* datalen
    cdef unsigned char** out
    cdef unsigned char* ok
    cdef list keep
    cdef size_t total
    cdef _Job job

    def __cinit__(self, Py_ssize_t n):
        self.n = n
        self.keep = []
        self.total = 0
        cdef Py_ssize_t m = n if n > 0 else 1
        self.iv = <const unsigned char**>malloc(m * sizeof(void*))
        self.aad = <const unsigned char**>malloc(m * sizeof(void*))
        self.aadlen = <size_t*>malloc(m * sizeof(size_t))
        self.data = <const unsigned char**>malloc(m * sizeof(void*))
        self.datalen = <size_t*>malloc(m * sizeof(size_t))
        self.out = <unsigned char**>malloc(m * sizeof(void*))
        self.ok = <unsigned char*>malloc(m)
        if (self.iv == NULL or self.aad == NULL or self.aadlen == NULL or self.data == NULL
                or self.datalen == NULL or self.out == NULL or self.ok == NULL):
            raise MemoryError()

    def __dealloc__(self):
        free(self.iv); free(self.aad); free(self.aadlen); free(self.data); free(self.datalen)
        free(self.out); free(self.ok)

    cdef size_t grain(self) noexcept nogil:
        """Items per work chunk: about 64 KiB of data, at least 1, at most 64 items."""
        cdef size_t avg = self.total // <size_t>self.n + 1
        cdef size_t g = 65536 // avg
        return 1 if g < 1 else (64 if g > 64 else g)

    cdef void prepare_job(self, EVP_CIPHER_CTX** ctxs) noexcept:
        self.job.ctxs = ctxs
        self.job.iv = self.iv
        self.job.aad = self.aad
        self.job.aadlen = self.aadlen
        self.job.data = self.data
        self.job.datalen = self.datalen
        self.job.out = self.out
        self.job.ok = self.ok

    cdef fill(self, list seq):
        """Check every item (raising before any work) and point at its bytes."""
        cdef Py_ssize_t i
        cdef object item, nonce, data, aad
        for i in range(self.n):
            item = seq[i]
            nonce, data, aad = item
            nonce = _as_bytes(nonce)
            if PyBytes_GET_SIZE(nonce) != _NONCE:
                raise UnsupportedParameters(
                    f"unsupported nonce size {PyBytes_GET_SIZE(nonce)} bytes (only {_NONCE}) in item {i}")
            data = _as_bytes(data)
            aad = b"" if aad is None else _as_bytes(aad)
            if type(item) is not tuple or data is not item[1] or nonce is not item[0]:
                # a tuple of bytes (kept alive by seq) needs nothing; anything else, or a copy
                # made above, must be kept alive while the GIL is released
                self.keep.append((nonce, data, aad))
            elif aad is not item[2]:
                self.keep.append(aad)
            self.iv[i] = <const unsigned char*>PyBytes_AS_STRING(nonce)
            self.data[i] = <const unsigned char*>PyBytes_AS_STRING(data)
            self.datalen[i] = <size_t>PyBytes_GET_SIZE(data)
            self.aad[i] = <const unsigned char*>PyBytes_AS_STRING(aad)
            self.aadlen[i] = <size_t>PyBytes_GET_SIZE(aad)
            self.total += self.datalen[i] + self.aadlen[i]
            self.ok[i] = 0
            self.out[i] = NULL


cdef int _pick_threads(object threads, _Batch b):
    cdef Py_ssize_t t
    if threads is None:
        if b.n < 2 or b.total < <size_t>PARALLEL_MIN_BYTES:
            return 1
        t = default_threads()
    else:
        t = int(threads)
    if t > b.n:
        t = b.n
    if t > 64:
        t = 64
    return <int>(t if t > 0 else 1)


cdef EVP_CIPHER_CTX** _contexts(int nthreads, bytes key, bint encrypt) except NULL:
    cdef const EVP_CIPHER* cipher = _cipher_for(PyBytes_GET_SIZE(key))
    cdef EVP_CIPHER_CTX** ctxs = <EVP_CIPHER_CTX**>malloc(nthreads * sizeof(EVP_CIPHER_CTX*))
    cdef int t, rc
    if ctxs == NULL:
        raise MemoryError()
    for t in range(nthreads):
        ctxs[t] = EVP_CIPHER_CTX_new()
        if ctxs[t] == NULL:
            _free_contexts(ctxs, t)
            raise MemoryError("EVP_CIPHER_CTX_new failed")
        if encrypt:
            rc = EVP_EncryptInit_ex(ctxs[t], cipher, NULL, <const unsigned char*>PyBytes_AS_STRING(key), NULL)
        else:
            rc = EVP_DecryptInit_ex(ctxs[t], cipher, NULL, <const unsigned char*>PyBytes_AS_STRING(key), NULL)
        if rc != 1:
            _free_contexts(ctxs, t + 1)
            raise RuntimeError("EVP cipher initialisation failed")
    return ctxs


cdef void _free_contexts(EVP_CIPHER_CTX** ctxs, int n) noexcept:
    cdef int t
    for t in range(n):
        EVP_CIPHER_CTX_free(ctxs[t])  # also wipes the key schedule
    free(ctxs)


def seal_batch(key, items, threads=None):
    """Seal (nonce, plaintext, aad) items under one key: a list of ciphertext || tag."""
    cdef bytes k = _check_key(key)
    cdef list seq = list(items)
    cdef _Batch b = _Batch(len(seq))
    b.fill(seq)
    cdef Py_ssize_t i, n = b.n
    cdef list result = []
    cdef bytes o
    for i in range(n):
        o = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(b.datalen[i] + _TAG))  # filled below
        result.append(o)
        b.out[i] = <unsigned char*>PyBytes_AS_STRING(o)
    if n == 0:
        return result
    cdef int nthreads = _pick_threads(threads, b)
    cdef EVP_CIPHER_CTX** ctxs = _contexts(nthreads, k, True)
    cdef int failed = 0
    try:
        b.prepare_job(ctxs)
        with nogil:
            medchain_parallel_for(n, nthreads, b.grain(), _seal_task, &b.job)
            for i in range(n):
                if not b.ok[i]:
                    failed += 1
    finally:
        _free_contexts(ctxs, nthreads)
    if failed:
        raise RuntimeError(f"EVP AES-GCM encryption failed for {failed} of {n} items")
    return result


def open_batch(key, items, threads=None):
    """Open (nonce, ciphertext || tag, aad) items under one key; None where authentication fails."""
    cdef bytes k = _check_key(key)
    cdef list seq = list(items)
    cdef _Batch b = _Batch(len(seq))
    b.fill(seq)
    cdef Py_ssize_t i, n = b.n
    cdef list plain = []
    cdef bytes o
    cdef unsigned char dummy[1]
    for i in range(n):
        if b.datalen[i] < _TAG:
            plain.append(None)
            continue
        o = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(b.datalen[i] - _TAG))  # filled below
        plain.append(o)
        # an empty result may be the shared b"" object: give OpenSSL a scratch byte instead
        b.out[i] = <unsigned char*>PyBytes_AS_STRING(o) if b.datalen[i] > _TAG else dummy
    if n == 0:
        return plain
    cdef int nthreads = _pick_threads(threads, b)
    cdef EVP_CIPHER_CTX** ctxs = _contexts(nthreads, k, False)
    try:
        b.prepare_job(ctxs)
        with nogil:
            medchain_parallel_for(n, nthreads, b.grain(), _open_task, &b.job)
    finally:
        _free_contexts(ctxs, nthreads)
    for i in range(n):
        if not b.ok[i]:
            plain[i] = None
    return plain
