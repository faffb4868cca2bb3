# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Batched secp256k1 ECDSA over libsecp256k1: verify and sign many items per call, GIL released.

Signatures are 64-byte compact (r || s) over 32-byte digests; public keys are 33-byte compressed.
The rules are those of the single path in node/crypto/ecdsa.py: `parse_compact` rejects r or s
>= n, and `secp256k1_ecdsa_verify` rejects high-S (s > n/2) and r = 0 or s = 0. Malformed items
(not a 3-tuple, not bytes-like, wrong lengths, an invalid key) give False, never an exception.

Work is split across cores with pthreads started and joined within the call (_parallel.h; not
OpenMP, whose thread pool makes a forked child hang). Everything the parallel section touches is
plain C memory prepared beforehand with the GIL held; the parsed-key cache is a Python dict
touched only with the GIL held (before and after the parallel section), so it needs no lock.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

import os as _os


cdef extern from *:
    """
    #include <secp256k1.h>
    #ifdef SECP256K1_CONTEXT_NONE
    #define MEDCHAIN_SECP_FLAGS SECP256K1_CONTEXT_NONE
    #else
    #define MEDCHAIN_SECP_FLAGS (SECP256K1_CONTEXT_VERIFY | SECP256K1_CONTEXT_SIGN)
    #endif
    static void medchain_secp_quiet_callback(const char *message, void *data) {
        (void)message; (void)data;  /* illegal-argument reports make the call return 0 */
    }
    """
    unsigned int MEDCHAIN_SECP_FLAGS
    void medchain_secp_quiet_callback(const char *message, void *data) noexcept nogil


cdef extern from "_parallel.h" nogil:
    ctypedef void (*medchain_task_fn)(void* arg, size_t begin, size_t end, int tid) noexcept nogil
    int medchain_parallel_for(size_t n, int nthreads, size_t grain, medchain_task_fn fn, void* arg)


cdef extern from "secp256k1.h" nogil:
    ctypedef struct secp256k1_context:
        pass
    ctypedef struct secp256k1_pubkey:
        unsigned char data[64]
    ctypedef struct secp256k1_ecdsa_signature:
        unsigned char data[64]

    secp256k1_context* secp256k1_context_create(unsigned int flags)
    void secp256k1_context_destroy(secp256k1_context* ctx)
    int secp256k1_context_randomize(secp256k1_context* ctx, const unsigned char* seed32)
    void secp256k1_context_set_illegal_callback(
        secp256k1_context* ctx, void (*fun)(const char*, void*) noexcept nogil, const void* data)
    int secp256k1_ec_pubkey_parse(
        const secp256k1_context* ctx, secp256k1_pubkey* pubkey, const unsigned char* inp, size_t inlen)
    int secp256k1_ecdsa_signature_parse_compact(
        const secp256k1_context* ctx, secp256k1_ecdsa_signature* sig, const unsigned char* input64)
    int secp256k1_ecdsa_signature_serialize_compact(
        const secp256k1_context* ctx, unsigned char* output64, const secp256k1_ecdsa_signature* sig)
    int secp256k1_ecdsa_verify(
        const secp256k1_context* ctx, const secp256k1_ecdsa_signature* sig,
        const unsigned char* msghash32, const secp256k1_pubkey* pubkey)
    int secp256k1_ecdsa_sign(
        const secp256k1_context* ctx, secp256k1_ecdsa_signature* sig, const unsigned char* msghash32,
        const unsigned char* seckey, const void* noncefp, const void* ndata)
    int secp256k1_ec_seckey_verify(const secp256k1_context* ctx, const unsigned char* seckey)


# The parsed-key cache: two generations of at most CACHE_GENERATION entries each. Lookups check
# the young generation, then the old one (promoting a hit); when the young one fills up it
# becomes the old one and the previous old one is dropped. Bounded, O(1), roughly LRU.
CACHE_GENERATION = 32768
# Below this many items a call stays on the calling thread (still without the GIL).
cdef Py_ssize_t PARALLEL_MIN_ITEMS = 16
cdef dict _young = {}
cdef dict _old = {}

cdef secp256k1_context* _ctx = secp256k1_context_create(MEDCHAIN_SECP_FLAGS)
if _ctx == NULL:
    raise ImportError("secp256k1_context_create failed")
secp256k1_context_set_illegal_callback(_ctx, medchain_secp_quiet_callback, NULL)
_seed = _os.urandom(32)
if not secp256k1_context_randomize(_ctx, <const unsigned char*>PyBytes_AS_STRING(_seed)):
    raise ImportError("secp256k1_context_randomize failed")
del _seed


cdef enum:
    DIGEST_LEN = 32
    SIG_LEN = 64
    PUBKEY_LEN = 33


cdef inline unsigned char _verify_one(const unsigned char* sig64, const unsigned char* digest32,
                                      const secp256k1_pubkey* key) noexcept nogil:
    cdef secp256k1_ecdsa_signature sig
    if not secp256k1_ecdsa_signature_parse_compact(_ctx, &sig, sig64):
        return 0  # r or s >= n
    return secp256k1_ecdsa_verify(_ctx, &sig, digest32, key) == 1  # 0 for high-S, r = 0, s = 0


cdef inline unsigned char _sign_one(const unsigned char* digest32, const unsigned char* seckey,
                                    unsigned char* out64) noexcept nogil:
    cdef secp256k1_ecdsa_signature sig
    # NULL nonce function: RFC 6979, as coincurve's sign_recoverable; the result is low-S
    if not secp256k1_ecdsa_sign(_ctx, &sig, digest32, seckey, NULL, NULL):
        memset(out64, 0, SIG_LEN)
        return 0
    return secp256k1_ecdsa_signature_serialize_compact(_ctx, out64, &sig) == 1


ctypedef struct _ParseJob:
    const Py_ssize_t* todo      # indices of the keys to parse
    const unsigned char* raw    # 33 bytes per key
    secp256k1_pubkey* keys
    unsigned char* kstate       # 1 parsed, 0 invalid


ctypedef struct _VerifyJob:
    const unsigned char* digests
    const unsigned char* sigs
    const Py_ssize_t* kidx      # key index per item, -1 for a malformed item
    const secp256k1_pubkey* keys
    const unsigned char* kstate
    unsigned char* out


ctypedef struct _SignJob:
    const unsigned char* digests
    const unsigned char* seckey
    unsigned char** out
    unsigned char* ok


cdef void _parse_task(void* arg, size_t begin, size_t end, int tid) noexcept nogil:
    cdef _ParseJob* job = <_ParseJob*>arg
    cdef size_t j
    cdef Py_ssize_t k
    for j in range(begin, end):
        k = job.todo[j]
        job.kstate[k] = secp256k1_ec_pubkey_parse(_ctx, &job.keys[k], job.raw + k * PUBKEY_LEN, PUBKEY_LEN) == 1


cdef void _verify_task(void* arg, size_t begin, size_t end, int tid) noexcept nogil:
    cdef _VerifyJob* job = <_VerifyJob*>arg
    cdef size_t i
    cdef Py_ssize_t k
    for i in range(begin, end):
        k = job.kidx[i]
        if k >= 0 and job.kstate[k] == 1:
            job.out[i] = _verify_one(job.sigs + i * SIG_LEN, job.digests + i * DIGEST_LEN, &job.keys[k])
        else:
            job.out[i] = 0


cdef void _sign_task(void* arg, size_t begin, size_t end, int tid) noexcept nogil:
    cdef _SignJob* job = <_SignJob*>arg
    cdef size_t i
    for i in range(begin, end):
        job.ok[i] = _sign_one(job.digests + i * DIGEST_LEN, job.seckey, job.out[i])


def default_threads():
    """Worker threads per call: $MEDCHAIN_NATIVE_THREADS, else the CPUs this process may use."""
    env = _os.environ.get("MEDCHAIN_NATIVE_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(_os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, _os.cpu_count() or 1)


cdef int _threads_for(object threads, Py_ssize_t n):
    cdef Py_ssize_t t = default_threads() if threads is None else int(threads)
    if t < 1:
        t = 1
    if t > n:
        t = n
    if t < 1:
        t = 1
    if t > 64:
        t = 64
    return <int>t


cdef inline object _as_bytes(object x):
    """bytes stays, bytearray and memoryview are copied to bytes, anything else is None."""
    if type(x) is bytes:
        return x
    if isinstance(x, (bytearray, memoryview)):
        try:
            return bytes(x)
        except (TypeError, ValueError, BufferError):
            return None
    if isinstance(x, bytes):  # a subclass of bytes
        return bytes(x)
    return None


cdef object _cache_get(bytes key):
    cdef object hit = _young.get(key)
    if hit is not None:
        return hit
    hit = _old.get(key)
    if hit is not None:
        _cache_put(key, hit)
    return hit


cdef object _cache_put(bytes key, object parsed):
    global _young, _old
    if len(_young) >= CACHE_GENERATION:
        _old = _young
        _young = {}
    _young[key] = parsed


def cache_info():
    """(entries, capacity) of the parsed public-key cache."""
    return (len(_young) + len(_old), 2 * CACHE_GENERATION)


def cache_clear():
    global _young, _old
    _young = {}
    _old = {}


def verify_batch(items, threads=None):
    """Verify (pubkey33, digest32, sig64) triples; one bool per item, in order.

    threads: worker threads (default `default_threads()`); the GIL is released while verifying.
    """
    cdef list seq = list(items)
    cdef Py_ssize_t n = len(seq)
    if n == 0:
        return []
    cdef int nthreads = _threads_for(threads, n)

    cdef unsigned char* digests = <unsigned char*>malloc(n * DIGEST_LEN)
    cdef unsigned char* sigs = <unsigned char*>malloc(n * SIG_LEN)
    cdef Py_ssize_t* kidx = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
    cdef unsigned char* out = <unsigned char*>malloc(n)
    # per distinct public key in this batch: the parsed key, its 33 raw bytes, its state
    cdef secp256k1_pubkey* keys = <secp256k1_pubkey*>malloc(n * sizeof(secp256k1_pubkey))
    cdef unsigned char* raw = <unsigned char*>malloc(n * PUBKEY_LEN)
    cdef unsigned char* kstate = <unsigned char*>malloc(n)  # 0 invalid, 1 parsed, 2 to parse
    cdef Py_ssize_t* todo = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t))
    if (digests == NULL or sigs == NULL or kidx == NULL or out == NULL or keys == NULL
            or raw == NULL or kstate == NULL or todo == NULL):
        free(digests); free(sigs); free(kidx); free(out); free(keys); free(raw); free(kstate); free(todo)
        raise MemoryError()

    cdef dict seen = {}
    cdef list distinct = []
    cdef Py_ssize_t i, j, k, u, nkeys = 0, ntodo = 0
    cdef object item, pk, d, s, cached, idx
    cdef bytes pkb
    cdef _ParseJob pjob
    cdef _VerifyJob vjob
    try:
        # 1. with the GIL: unpack, check lengths, copy into C arrays, look keys up in the cache
        for i in range(n):
            kidx[i] = -1
            item = seq[i]
            try:
                pk, d, s = item
            except (TypeError, ValueError):
                continue
            pk = _as_bytes(pk)
            d = _as_bytes(d)
            s = _as_bytes(s)
            if pk is None or d is None or s is None:
                continue
            if (PyBytes_GET_SIZE(pk) != PUBKEY_LEN or PyBytes_GET_SIZE(d) != DIGEST_LEN
                    or PyBytes_GET_SIZE(s) != SIG_LEN):
                continue
            memcpy(digests + i * DIGEST_LEN, PyBytes_AS_STRING(d), DIGEST_LEN)
            memcpy(sigs + i * SIG_LEN, PyBytes_AS_STRING(s), SIG_LEN)
            pkb = <bytes>pk
            idx = seen.get(pkb)
            if idx is not None:
                kidx[i] = <Py_ssize_t>idx
                continue
            u = nkeys
            nkeys += 1
            seen[pkb] = u
            distinct.append(pkb)
            kidx[i] = u
            cached = _cache_get(pkb)
            if cached is not None:
                memcpy(keys[u].data, PyBytes_AS_STRING(cached), 64)
                kstate[u] = 1
            else:
                memcpy(raw + u * PUBKEY_LEN, PyBytes_AS_STRING(pkb), PUBKEY_LEN)
                kstate[u] = 2
                todo[ntodo] = u
                ntodo += 1

        # 2. without the GIL, on all threads: parse the new keys, then verify every item
        pjob.todo = todo
        pjob.raw = raw
        pjob.keys = keys
        pjob.kstate = kstate
        vjob.digests = digests
        vjob.sigs = sigs
        vjob.kidx = kidx
        vjob.keys = keys
        vjob.kstate = kstate
        vjob.out = out
        with nogil:
            if ntodo > 0:
                # a parse costs ~5 us: only worth threads for many new keys
                medchain_parallel_for(ntodo, nthreads if ntodo >= 256 else 1, 64, _parse_task, &pjob)
            # a verify costs ~50 us: threads pay off from a handful of items
            medchain_parallel_for(n, nthreads if n >= PARALLEL_MIN_ITEMS else 1, 8, _verify_task, &vjob)

        # 3. with the GIL: remember the newly parsed valid keys, build the result
        for j in range(ntodo):
            k = todo[j]
            if kstate[k] == 1:
                _cache_put(<bytes>distinct[k], PyBytes_FromStringAndSize(<char*>keys[k].data, 64))
        return [out[i] != 0 for i in range(n)]
    finally:
        free(digests); free(sigs); free(kidx); free(out); free(keys); free(raw); free(kstate); free(todo)


def sign_batch(secret, digests, threads=None):
    """Sign 32-byte digests with one secret key: 64-byte compact low-S signatures (RFC 6979).

    Byte for byte what coincurve's `PrivateKey(secret).sign_recoverable(d, hasher=None)[:64]`
    gives. Raises ValueError (before signing anything) for an invalid secret or a digest that is
    not 32 bytes.
    """
    cdef object sk = _as_bytes(secret)
    if sk is None:
        raise TypeError("secret must be bytes")
    if PyBytes_GET_SIZE(sk) != 32:
        raise ValueError(f"secret key must be 32 bytes, got {PyBytes_GET_SIZE(sk)}")
    cdef unsigned char seckey[32]
    memcpy(seckey, PyBytes_AS_STRING(sk), 32)
    if not secp256k1_ec_seckey_verify(_ctx, seckey):
        memset(seckey, 0, 32)
        raise ValueError("invalid secret key (zero or not below the curve order)")

    cdef list seq = list(digests)
    cdef Py_ssize_t n = len(seq)
    cdef Py_ssize_t i
    cdef object d
    cdef list blobs = []
    for i in range(n):
        d = _as_bytes(seq[i])
        if d is None:
            memset(seckey, 0, 32)
            raise TypeError(f"digest {i} must be bytes")
        if PyBytes_GET_SIZE(d) != DIGEST_LEN:
            memset(seckey, 0, 32)
            raise ValueError(f"digest {i} must be 32 bytes, got {PyBytes_GET_SIZE(d)}")
        blobs.append(d)
    if n == 0:
        memset(seckey, 0, 32)
        return []

    cdef int nthreads = _threads_for(threads, n)
    cdef unsigned char* msgs = <unsigned char*>malloc(n * DIGEST_LEN)
    cdef unsigned char** outp = <unsigned char**>malloc(n * sizeof(unsigned char*))
    cdef unsigned char* ok = <unsigned char*>malloc(n)
    if msgs == NULL or outp == NULL or ok == NULL:
        free(msgs); free(outp); free(ok)
        memset(seckey, 0, 32)
        raise MemoryError()
    cdef list result = []
    cdef bytes o
    cdef _SignJob sjob
    cdef int failed = 0
    try:
        for i in range(n):
            memcpy(msgs + i * DIGEST_LEN, PyBytes_AS_STRING(blobs[i]), DIGEST_LEN)
            o = PyBytes_FromStringAndSize(NULL, SIG_LEN)  # filled below, before anyone sees it
            result.append(o)
            outp[i] = <unsigned char*>PyBytes_AS_STRING(o)
        sjob.digests = msgs
        sjob.seckey = seckey
        sjob.out = outp
        sjob.ok = ok
        with nogil:
            medchain_parallel_for(n, nthreads if n >= PARALLEL_MIN_ITEMS else 1, 8, _sign_task, &sjob)
        for i in range(n):
            if not ok[i]:
                failed += 1
        if failed:
            raise RuntimeError(f"secp256k1_ecdsa_sign failed for {failed} of {n} digests")
        return result
    finally:
        memset(seckey, 0, 32)
        free(msgs); free(outp); free(ok)
