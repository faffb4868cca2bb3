# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""The state tree's per-block update (node/state/smt.py `update`) in C: the same algorithm and the
same bytes as the pure-Python one, which stays as the fallback and the reference (tests/test_smt.py
checks both give the same roots and nodes).

The writes are hashed and sorted into a C array; the recursion walks index ranges of it, parses
internal nodes into a 16-slot C array and hashes every dirty node once with OpenSSL's SHA-256.
Only reading a node (the injected `get`) and storing a dirty one call back into Python.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memcmp, memcpy


cdef extern from "openssl/sha.h" nogil:
    # The low-level calls, not the one-shot SHA256(): in OpenSSL 3 that one fetches the algorithm
    # from the provider on every call, which costs more than hashing a node.
    ctypedef struct SHA256_CTX:
        pass
    int SHA256_Init(SHA256_CTX* c)
    int SHA256_Update(SHA256_CTX* c, const void* data, size_t n)
    int SHA256_Final(unsigned char* md, SHA256_CTX* c)


cdef inline void SHA256(const unsigned char* d, size_t n, unsigned char* md) noexcept nogil:
    cdef SHA256_CTX c
    SHA256_Init(&c)
    SHA256_Update(&c, d, n)
    SHA256_Final(md, &c)


cdef int _cmp(const void* a, const void* b) noexcept nogil:
    return memcmp(a, b, 32)


cdef inline int _nib(const unsigned char* kh, int depth) noexcept nogil:
    cdef unsigned char b = kh[depth >> 1]
    return (b & 15) if (depth & 1) else (b >> 4)


cdef bytes _pos(const unsigned char* kh, int depth):
    cdef unsigned char buf[34]
    cdef int n = depth >> 1
    buf[0] = <unsigned char>depth
    memcpy(buf + 1, kh, n)
    if depth & 1:
        buf[1 + n] = kh[n] & 0xF0
        n += 1
    return PyBytes_FromStringAndSize(<char*>buf, n + 1)


cdef class _Updater:
    cdef object get
    cdef dict out
    cdef unsigned char* items  # n entries of key_hash(32) || value_hash(32), sorted
    cdef Py_ssize_t n

    cdef int run(self, int depth, Py_ssize_t lo, Py_ssize_t hi, object rec, const unsigned char* resident,
                 unsigned char* h, const unsigned char** kv_out) except -1:
        """The new hash (into h) of the subtree at `depth` over items[lo:hi], whose stored internal
        node is `rec`, or whose single leaf is `resident` (kh || vh), or which is empty. Sets
        *kv_out to the leaf's kh || vh when the subtree is now one leaf, else NULL. Pointers stay
        valid: they point into the items array or into records held by this or a caller's frame."""
        cdef unsigned char children[16 * 32]
        cdef const unsigned char* leaves[16]
        cdef unsigned char node[3 + 16 * 32 + 2 + 16 * 64]
        cdef int present = 0, leafmask = 0  # bitmaps
        cdef const unsigned char* r
        cdef const unsigned char* kh0
        cdef const unsigned char* ckv
        cdef const unsigned char* cres
        cdef Py_ssize_t i, j, k, a, b, m, cnt
        cdef int nib, bm, lm, has_res, res_nib = -1
        cdef object child
        if resident != NULL:  # an existing leaf here: it moves down unless this block rewrites it
            a, b = lo, hi
            while a < b:
                m = (a + b) >> 1
                if memcmp(self.items + 64 * m, resident, 32) < 0:
                    a = m + 1
                else:
                    b = m
            if a < hi and memcmp(self.items + 64 * a, resident, 32) == 0:
                resident = NULL
        cnt = hi - lo + (1 if resident != NULL else 0)
        if rec is None and cnt == 1:
            ckv = self.items + 64 * lo if hi > lo else resident
            node[0] = 0
            memcpy(node + 1, ckv, 64)
            SHA256(node, 65, h)
            if depth == 0:
                self.out[b"\x00"] = PyBytes_FromStringAndSize(<char*>node, 65)
            kv_out[0] = ckv
            return 0
        if rec is not None:
            r = <const unsigned char*>PyBytes_AS_STRING(rec)
            bm = (r[1] << 8) | r[2]
            k = 3
            for nib in range(16):
                if bm >> nib & 1:
                    memcpy(children + 32 * nib, r + k, 32)
                    k += 32
            lm = (r[k] << 8) | r[k + 1]
            k += 2
            for nib in range(16):
                if lm >> nib & 1:
                    leaves[nib] = r + k
                    k += 64
            present, leafmask = bm, lm
        kh0 = self.items + 64 * lo if hi > lo else resident
        if resident != NULL:
            res_nib = _nib(resident, depth)
        i = lo
        while i < hi or res_nib >= 0:
            nib = _nib(self.items + 64 * i, depth) if i < hi else 16
            if res_nib >= 0 and res_nib < nib:
                nib = res_nib  # the resident leaf alone under this nibble
                j = i
            else:
                j = i + 1
                while j < hi and _nib(self.items + 64 * j, depth) == nib:
                    j += 1
            has_res = res_nib == nib
            if has_res:
                res_nib = -1
                cres = resident
                child = None
            elif leafmask >> nib & 1:
                cres = leaves[nib]
                child = None
            else:
                cres = NULL
                child = self.get(_pos(self.items + 64 * i, depth + 1)) if present >> nib & 1 else None
            ckv = NULL
            self.run(depth + 1, i, j, child, cres, children + 32 * nib, &ckv)
            present |= 1 << nib
            if ckv != NULL:
                leafmask |= 1 << nib
                leaves[nib] = ckv
            else:
                leafmask &= ~(1 << nib)
            i = j
        node[0] = 1
        node[1] = present >> 8
        node[2] = present & 255
        k = 3
        for nib in range(16):
            if present >> nib & 1:
                memcpy(node + k, children + 32 * nib, 32)
                k += 32
        SHA256(node, k, h)
        node[k] = leafmask >> 8
        node[k + 1] = leafmask & 255
        k += 2
        for nib in range(16):
            if leafmask >> nib & 1:
                memcpy(node + k, leaves[nib], 64)
                k += 64
        self.out[_pos(kh0, depth)] = PyBytes_FromStringAndSize(<char*>node, k)
        kv_out[0] = NULL
        return 0


def update(get, writes):
    """(root, dirty nodes) for one block's writes (a non-empty dict of bytes to bytes)."""
    cdef Py_ssize_t n = len(writes), i = 0
    cdef unsigned char* items = <unsigned char*>malloc(64 * n if n else 64)
    cdef unsigned char root[32]
    cdef const unsigned char* kv = NULL
    cdef bytes kb, vb
    cdef _Updater u
    if items == NULL:
        raise MemoryError()
    try:
        for k, v in writes.items():
            kb, vb = k, v
            SHA256(<const unsigned char*>PyBytes_AS_STRING(kb), PyBytes_GET_SIZE(kb), items + 64 * i)
            SHA256(<const unsigned char*>PyBytes_AS_STRING(vb), PyBytes_GET_SIZE(vb), items + 64 * i + 32)
            i += 1
        qsort(items, n, 64, _cmp)
        u = _Updater.__new__(_Updater)
        u.get, u.out, u.items, u.n = get, {}, items, n
        rec = get(b"\x00")
        if rec is not None and (<bytes>rec)[0] == 0:  # a lone leaf at the root
            u.run(0, 0, n, None, <const unsigned char*>PyBytes_AS_STRING(rec) + 1, root, &kv)
        else:
            u.run(0, 0, n, rec, NULL, root, &kv)
        return PyBytes_FromStringAndSize(<char*>root, 32), u.out
    finally:
        free(items)
