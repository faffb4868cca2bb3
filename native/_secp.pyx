# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Batched secp256k1 ECDSA over libsecp256k1: verify and sign many items per call, GIL released.

Signatures are 64-byte compact (r || s) over 32-byte digests; public keys are 33-byte compressed.
The rules are those of the single path in node/crypto/ecdsa.py: `parse_compact` rejects r or s
>= n, and `secp256k1_ecdsa_verify` rejects high-S (s > n/2) and r = 0 or s = 0. Malformed items
(not a 3-tuple, not bytes-like, wrong lengths, an invalid key) give False, never an exception.

Which libsecp256k1: the module links the system one (-lsecp256k1, Debian's 0.2.0) and works with
it from import on; node/crypto/batch.py then hands it the function addresses of the newer build
that coincurve bundles (`init_from_coincurve`), which verifies ~12% faster per core, and from then
on the loops call that build through function pointers typed from secp256k1.h. The system build
stays as the fallback (`use_system_library`, or when coincurve's addresses cannot be had).
`library()` says which one is in use.

Work is split across cores with pthreads started and joined within the call (_parallel.h; not
OpenMP, whose thread pool makes a forked child hang). Everything the parallel section touches is
plain C memory prepared beforehand with the GIL held; the parsed-key cache is a Python dict
touched only with the GIL held (before and after the parallel section), so it needs no lock.
Threads share one libsecp256k1 context per build: verify, sign, parse and serialize take it as
`const secp256k1_context *`, which secp256k1.h documents as safe to use from several threads at
once; nothing here calls the non-const functions (randomize, destroy) after creating it.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

import os as _os


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


cdef extern from * nogil:
    """
    #include <stdint.h>
    #include <string.h>
    #include <secp256k1.h>
    #ifdef SECP256K1_CONTEXT_NONE
    #define MEDCHAIN_SECP_FLAGS SECP256K1_CONTEXT_NONE
    #else
    #define MEDCHAIN_SECP_FLAGS (SECP256K1_CONTEXT_VERIFY | SECP256K1_CONTEXT_SIGN)
    #endif

    /* Every call into libsecp256k1 goes through one of these function-pointer types. They are
     * taken from the installed (Debian) secp256k1.h itself, so the signatures are exactly those
     * of the stable API, whichever build the pointers point into. */
    typedef __typeof__(&secp256k1_context_create) medchain_context_create_fn;
    typedef __typeof__(&secp256k1_context_destroy) medchain_context_destroy_fn;
    typedef __typeof__(&secp256k1_context_randomize) medchain_context_randomize_fn;
    typedef __typeof__(&secp256k1_context_set_illegal_callback) medchain_set_illegal_callback_fn;
    typedef __typeof__(&secp256k1_ec_pubkey_parse) medchain_ec_pubkey_parse_fn;
    typedef __typeof__(&secp256k1_ecdsa_signature_parse_compact) medchain_signature_parse_compact_fn;
    typedef __typeof__(&secp256k1_ecdsa_signature_serialize_compact) medchain_signature_serialize_compact_fn;
    typedef __typeof__(&secp256k1_ecdsa_verify) medchain_ecdsa_verify_fn;
    typedef __typeof__(&secp256k1_ecdsa_sign) medchain_ecdsa_sign_fn;
    typedef __typeof__(&secp256k1_ec_seckey_verify) medchain_ec_seckey_verify_fn;

    /* The opaque structs are 64 bytes in every release (secp256k1.h documents them as such);
     * the other build's size is checked at run time by init_from_coincurve. */
    _Static_assert(sizeof(secp256k1_pubkey) == 64, "secp256k1_pubkey is not 64 bytes");
    _Static_assert(sizeof(secp256k1_ecdsa_signature) == 64, "secp256k1_ecdsa_signature is not 64 bytes");

    /* One libsecp256k1 build: a context created by that build and its functions. The context
     * is only ever passed as const (verify, sign, parse, serialize), which libsecp256k1
     * documents as safe from many threads at once; it is never destroyed or re-randomised. */
    typedef struct {
        const secp256k1_context *ctx;
        medchain_ec_pubkey_parse_fn ec_pubkey_parse;
        medchain_signature_parse_compact_fn signature_parse_compact;
        medchain_signature_serialize_compact_fn signature_serialize_compact;
        medchain_ecdsa_verify_fn ecdsa_verify;
        medchain_ecdsa_sign_fn ecdsa_sign;
        medchain_ec_seckey_verify_fn ec_seckey_verify;
    } medchain_secp_lib;

    /* The order of the addresses medchain_secp_lib_from_addresses takes (FUNCTIONS below). */
    enum {
        MEDCHAIN_F_CONTEXT_CREATE, MEDCHAIN_F_CONTEXT_DESTROY, MEDCHAIN_F_CONTEXT_RANDOMIZE,
        MEDCHAIN_F_SET_ILLEGAL_CALLBACK, MEDCHAIN_F_EC_PUBKEY_PARSE, MEDCHAIN_F_SIGNATURE_PARSE_COMPACT,
        MEDCHAIN_F_SIGNATURE_SERIALIZE_COMPACT, MEDCHAIN_F_ECDSA_VERIFY, MEDCHAIN_F_ECDSA_SIGN,
        MEDCHAIN_F_EC_SECKEY_VERIFY, MEDCHAIN_F_COUNT
    };

    static void medchain_secp_quiet_callback(const char *message, void *data) {
        (void)message; (void)data;  /* illegal-argument reports make the call return 0 */
    }

    /* A new context from `create`, quiet on illegal arguments, randomised with seed32. */
    static secp256k1_context *medchain_secp_new_context(
            medchain_context_create_fn create, medchain_context_destroy_fn destroy,
            medchain_context_randomize_fn randomize, medchain_set_illegal_callback_fn set_illegal,
            const unsigned char *seed32, const char **error) {
        secp256k1_context *ctx = create(MEDCHAIN_SECP_FLAGS);
        if (ctx == NULL) {
            *error = "secp256k1_context_create failed";
            return NULL;
        }
        set_illegal(ctx, medchain_secp_quiet_callback, NULL);
        if (!randomize(ctx, seed32)) {
            destroy(ctx);
            *error = "secp256k1_context_randomize failed";
            return NULL;
        }
        return ctx;
    }

    /* The library this module links (-lsecp256k1, Debian's libsecp256k1). NULL or an error. */
    static const char *medchain_secp_lib_system(medchain_secp_lib *L, const unsigned char *seed32) {
        const char *error = NULL;
        secp256k1_context *ctx = medchain_secp_new_context(
            secp256k1_context_create, secp256k1_context_destroy, secp256k1_context_randomize,
            secp256k1_context_set_illegal_callback, seed32, &error);
        if (ctx == NULL)
            return error;
        L->ctx = ctx;
        L->ec_pubkey_parse = secp256k1_ec_pubkey_parse;
        L->signature_parse_compact = secp256k1_ecdsa_signature_parse_compact;
        L->signature_serialize_compact = secp256k1_ecdsa_signature_serialize_compact;
        L->ecdsa_verify = secp256k1_ecdsa_verify;
        L->ecdsa_sign = secp256k1_ecdsa_sign;
        L->ec_seckey_verify = secp256k1_ec_seckey_verify;
        return NULL;
    }

    /* Another build, from the addresses of its functions (MEDCHAIN_F_* order). NULL or an error. */
    static const char *medchain_secp_lib_from_addresses(medchain_secp_lib *L, const uintptr_t *a,
                                                        const unsigned char *seed32) {
        const char *error = NULL;
        for (int i = 0; i < MEDCHAIN_F_COUNT; i++)
            if (a[i] == 0)
                return "a function address is 0";
        secp256k1_context *ctx = medchain_secp_new_context(
            (medchain_context_create_fn)a[MEDCHAIN_F_CONTEXT_CREATE],
            (medchain_context_destroy_fn)a[MEDCHAIN_F_CONTEXT_DESTROY],
            (medchain_context_randomize_fn)a[MEDCHAIN_F_CONTEXT_RANDOMIZE],
            (medchain_set_illegal_callback_fn)a[MEDCHAIN_F_SET_ILLEGAL_CALLBACK], seed32, &error);
        if (ctx == NULL)
            return error;
        L->ctx = ctx;
        L->ec_pubkey_parse = (medchain_ec_pubkey_parse_fn)a[MEDCHAIN_F_EC_PUBKEY_PARSE];
        L->signature_parse_compact = (medchain_signature_parse_compact_fn)a[MEDCHAIN_F_SIGNATURE_PARSE_COMPACT];
        L->signature_serialize_compact =
            (medchain_signature_serialize_compact_fn)a[MEDCHAIN_F_SIGNATURE_SERIALIZE_COMPACT];
        L->ecdsa_verify = (medchain_ecdsa_verify_fn)a[MEDCHAIN_F_ECDSA_VERIFY];
        L->ecdsa_sign = (medchain_ecdsa_sign_fn)a[MEDCHAIN_F_ECDSA_SIGN];
        L->ec_seckey_verify = (medchain_ec_seckey_verify_fn)a[MEDCHAIN_F_EC_SECKEY_VERIFY];
        return NULL;
    }

    static inline int medchain_pubkey_parse(const medchain_secp_lib *L, secp256k1_pubkey *key,
                                            const unsigned char *in33) {
        return L->ec_pubkey_parse(L->ctx, key, in33, 33) == 1;
    }

    static inline unsigned char medchain_verify_one(const medchain_secp_lib *L, const unsigned char *sig64,
                                                    const unsigned char *digest32, const secp256k1_pubkey *key) {
        secp256k1_ecdsa_signature sig;
        if (!L->signature_parse_compact(L->ctx, &sig, sig64))
            return 0;  /* r or s >= n */
        return L->ecdsa_verify(L->ctx, &sig, digest32, key) == 1;  /* 0 for high-S, r = 0, s = 0 */
    }

    static inline unsigned char medchain_sign_one(const medchain_secp_lib *L, const unsigned char *digest32,
                                                  const unsigned char *seckey, unsigned char *out64) {
        secp256k1_ecdsa_signature sig;
        /* NULL nonce function: RFC 6979, as coincurve's sign_recoverable; the result is low-S */
        if (!L->ecdsa_sign(L->ctx, &sig, digest32, seckey, NULL, NULL)) {
            memset(out64, 0, 64);
            return 0;
        }
        return L->signature_serialize_compact(L->ctx, out64, &sig) == 1;
    }

    static inline int medchain_seckey_verify(const medchain_secp_lib *L, const unsigned char *seckey) {
        return L->ec_seckey_verify(L->ctx, seckey) == 1;
    }
    """
    ctypedef struct medchain_secp_lib:
        const secp256k1_context* ctx
    enum:
        MEDCHAIN_F_COUNT
    const char* medchain_secp_lib_system(medchain_secp_lib* L, const unsigned char* seed32)
    const char* medchain_secp_lib_from_addresses(medchain_secp_lib* L, const uintptr_t* a,
                                                 const unsigned char* seed32)
    int medchain_pubkey_parse(const medchain_secp_lib* L, secp256k1_pubkey* key, const unsigned char* in33)
    unsigned char medchain_verify_one(const medchain_secp_lib* L, const unsigned char* sig64,
                                      const unsigned char* digest32, const secp256k1_pubkey* key)
    unsigned char medchain_sign_one(const medchain_secp_lib* L, const unsigned char* digest32,
                                    const unsigned char* seckey, unsigned char* out64)
    int medchain_seckey_verify(const medchain_secp_lib* L, const unsigned char* seckey)


# The parsed-key cache: two generations of at most CACHE_GENERATION entries each. Lookups check
# the young generation, then the old one (promoting a hit); when the young one fills up it
# becomes the old one and the previous old one is dropped. Bounded, O(1), roughly LRU.
CACHE_GENERATION = 32768
# Below this many items a call stays on the calling thread (still without the GIL).
cdef Py_ssize_t PARALLEL_MIN_ITEMS = 16
cdef dict _young = {}
cdef dict _old = {}


# --- which libsecp256k1 build -----------------------------------------------------------------
#
# Two builds can serve the loops: the one this module links (-lsecp256k1: Debian's 0.2.0), ready
# at import, and the one coincurve bundles (newer, and ~12% faster per verification here), which
# node/crypto/batch.py hands over once at import through `init_from_coincurve` (function
# addresses from coincurve's cffi module). Each build gets its own context, created by that build
# (a context must never be passed to another build's functions: their layouts differ), quiet on
# illegal arguments and randomised; contexts live as long as the process. A call copies the
# selected build (`_lib`) once, with the GIL held, and uses only that copy, so switching builds
# never affects a call already running. Parsed keys are in the build's internal format: the
# cache is cleared on every switch, and a call that started under another build does not fill it.

#: The functions `init_from_coincurve` needs, in the order the C side takes them.
FUNCTIONS = (
    "secp256k1_context_create",
    "secp256k1_context_destroy",
    "secp256k1_context_randomize",
    "secp256k1_context_set_illegal_callback",
    "secp256k1_ec_pubkey_parse",
    "secp256k1_ecdsa_signature_parse_compact",
    "secp256k1_ecdsa_signature_serialize_compact",
    "secp256k1_ecdsa_verify",
    "secp256k1_ecdsa_sign",
    "secp256k1_ec_seckey_verify",
)
assert len(FUNCTIONS) == MEDCHAIN_F_COUNT

cdef medchain_secp_lib _system_lib      # Debian's, linked
cdef medchain_secp_lib _coincurve_lib   # coincurve's, once init_from_coincurve succeeded
cdef medchain_secp_lib _lib             # the one calls use
cdef object _coincurve_addresses = None  # the addresses _coincurve_lib was built from
cdef object _keepalive = None           # the module those addresses point into
cdef str _library = "system"
cdef unsigned long _generation = 0      # bumped on every switch (for the key cache)


cdef bytes _new_seed():
    return _os.urandom(32)


cdef const char* _err
_seed = _new_seed()
_err = medchain_secp_lib_system(&_system_lib, <const unsigned char*>PyBytes_AS_STRING(_seed))
del _seed
if _err != NULL:
    raise ImportError(f"libsecp256k1 (system): {_err.decode()}")
_lib = _system_lib


cdef _select(medchain_secp_lib* lib, str name):
    global _lib, _library, _generation
    _lib = lib[0]
    _library = name
    _generation += 1
    cache_clear()


def init_from_coincurve(addresses, int pubkey_size, int signature_size, keepalive=None):
    """Switch the loops to another libsecp256k1 build: coincurve's bundled one.

    addresses: {name: address} for every name in FUNCTIONS (e.g. from cffi:
    `int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))`); pubkey_size, signature_size: that
    build's sizeof(secp256k1_pubkey) and sizeof(secp256k1_ecdsa_signature), which must be 64 as
    here; keepalive: an object to keep referenced (the module the addresses point into). The
    functions are called through pointers typed from the installed secp256k1.h: the API and ABI
    of these functions have not changed since libsecp256k1 0.1.

    The first call creates a context with that build; later calls with the same addresses just
    select it again. Raises ValueError for a missing or zero address or a size mismatch,
    RuntimeError if the context cannot be created or other addresses were given before.
    """
    global _coincurve_addresses, _keepalive
    if pubkey_size != 64 or signature_size != 64:
        raise ValueError(f"struct sizes differ from secp256k1.h's: secp256k1_pubkey {pubkey_size}, "
                         f"secp256k1_ecdsa_signature {signature_size} (want 64 and 64)")
    cdef uintptr_t addr[MEDCHAIN_F_COUNT]
    cdef Py_ssize_t i
    cdef object a
    cdef tuple key
    for i in range(MEDCHAIN_F_COUNT):
        try:
            a = addresses[FUNCTIONS[i]]
        except KeyError:
            raise ValueError(f"no address for {FUNCTIONS[i]}") from None
        if not isinstance(a, int) or a <= 0:
            raise ValueError(f"bad address for {FUNCTIONS[i]}: {a!r}")
        addr[i] = <uintptr_t>a
    key = tuple([addr[i] for i in range(MEDCHAIN_F_COUNT)])
    cdef medchain_secp_lib lib
    cdef const char* err
    cdef bytes seed
    if _coincurve_addresses is None:
        seed = _new_seed()
        err = medchain_secp_lib_from_addresses(&lib, addr, <const unsigned char*>PyBytes_AS_STRING(seed))
        if err != NULL:
            raise RuntimeError(f"libsecp256k1 (coincurve): {err.decode()}")
        global _coincurve_lib
        _coincurve_lib = lib
        _coincurve_addresses = key
        _keepalive = keepalive
    elif _coincurve_addresses != key:
        raise RuntimeError("init_from_coincurve was already called with other addresses")
    _select(&_coincurve_lib, "coincurve")


def use_system_library():
    """Switch the loops (back) to the libsecp256k1 this module links (Debian's)."""
    _select(&_system_lib, "system")


def use_coincurve_library():
    """Switch back to coincurve's build after `use_system_library`; RuntimeError if never set up."""
    if _coincurve_addresses is None:
        raise RuntimeError("init_from_coincurve has not succeeded")
    _select(&_coincurve_lib, "coincurve")


def library():
    """The build the loops use: "coincurve" (coincurve's bundled one) or "system" (-lsecp256k1)."""
    return _library


cdef enum:
    DIGEST_LEN = 32
    SIG_LEN = 64
    PUBKEY_LEN = 33


ctypedef struct _ParseJob:
    const medchain_secp_lib* lib
    const Py_ssize_t* todo      # indices of the keys to parse
    const unsigned char* raw    # 33 bytes per key
    secp256k1_pubkey* keys
    unsigned char* kstate       # 1 parsed, 0 invalid


ctypedef struct _VerifyJob:
    const medchain_secp_lib* lib
    const unsigned char* digests
    const unsigned char* sigs
    const Py_ssize_t* kidx      # key index per item, -1 for a malformed item
    const secp256k1_pubkey* keys
    const unsigned char* kstate
    unsigned char* out


ctypedef struct _SignJob:
    const medchain_secp_lib* lib
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
        job.kstate[k] = medchain_pubkey_parse(job.lib, &job.keys[k], job.raw + k * PUBKEY_LEN)


cdef void _verify_task(void* arg, size_t begin, size_t end, int tid) noexcept nogil:
    cdef _VerifyJob* job = <_VerifyJob*>arg
    cdef size_t i
    cdef Py_ssize_t k
    for i in range(begin, end):
        k = job.kidx[i]
        if k >= 0 and job.kstate[k] == 1:
            job.out[i] = medchain_verify_one(job.lib, job.sigs + i * SIG_LEN, job.digests + i * DIGEST_LEN,
                                             &job.keys[k])
        else:
            job.out[i] = 0


cdef void _sign_task(void* arg, size_t begin, size_t end, int tid) noexcept nogil:
    cdef _SignJob* job = <_SignJob*>arg
    cdef size_t i
    for i in range(begin, end):
        job.ok[i] = medchain_sign_one(job.lib, job.digests + i * DIGEST_LEN, job.seckey, job.out[i])


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
    if threads is None and n < PARALLEL_MIN_ITEMS:
        return 1  # one thread anyway: not the environment and affinity lookups (~3 us, per call)
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


cdef object _cache_get(bytes key, unsigned long generation):
    """The cached parsed key, if any, made by the build selected at `generation`."""
    if generation != _generation:
        return None  # another build was selected since: its cache was cleared
    cdef object hit = _young.get(key)
    if hit is not None:
        return hit
    hit = _old.get(key)
    if hit is not None:
        _cache_put(key, hit, generation)
    return hit


cdef object _cache_put(bytes key, object parsed, unsigned long generation):
    global _young, _old
    if generation != _generation:
        return  # parsed by a build that is no longer selected
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
    # the build this call uses throughout, whatever another thread selects meanwhile
    cdef medchain_secp_lib lib = _lib
    cdef unsigned long generation = _generation

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
            cached = _cache_get(pkb, generation)
            if cached is not None:
                memcpy(keys[u].data, PyBytes_AS_STRING(cached), 64)
                kstate[u] = 1
            else:
                memcpy(raw + u * PUBKEY_LEN, PyBytes_AS_STRING(pkb), PUBKEY_LEN)
                kstate[u] = 2
                todo[ntodo] = u
                ntodo += 1

        # 2. without the GIL, on all threads: parse the new keys, then verify every item
        pjob.lib = &lib
        pjob.todo = todo
        pjob.raw = raw
        pjob.keys = keys
        pjob.kstate = kstate
        vjob.lib = &lib
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
                _cache_put(<bytes>distinct[k], PyBytes_FromStringAndSize(<char*>keys[k].data, 64), generation)
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
    cdef medchain_secp_lib lib = _lib  # the build this call uses throughout
    cdef unsigned char seckey[32]
    memcpy(seckey, PyBytes_AS_STRING(sk), 32)
    if not medchain_seckey_verify(&lib, seckey):
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
        sjob.lib = &lib
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
