# cython: boundscheck=False, wraparound=False, cdivision=True
"""The wire decoder's fast path (node/wire/codec.py): one msgpack value of the types the wire allows
(nil, bool, int, bin, str, arrays of them, nested at most MAX_DEPTH), with no trailing bytes, and in
canonical mode only the encoding msgpack's packer would have written (shortest headers, smallest
int format). Anything else raises ValueError, and the caller runs the pure-Python reference, which
says why; so this module decides speed, never what is accepted (tests/test_wire_native.py holds
the two to the same answers).

Why: a validator decodes every transaction twice (envelope and payload) and several state records
per transaction; msgpack.unpackb with the limits, the type walk and the canonical re-encode cost
about 2.8 us a payload, this about 0.4.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint16_t, uint32_t, uint64_t

DEF MAX_DEPTH = 8


class TooManyValues(Exception):
    """More values than the caller's budget: a verdict, not a miss (the reference is not run, so a
    frame of millions of one-byte values costs the budget's work, not the frame's)."""


cdef inline uint16_t _u16(const unsigned char* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t _u32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t _u64(const unsigned char* p) noexcept nogil:
    return (<uint64_t>_u32(p) << 32) | _u32(p + 4)


cdef class _Reader:
    cdef const unsigned char* buf
    cdef Py_ssize_t n
    cdef Py_ssize_t pos
    cdef bint canon
    cdef Py_ssize_t left  # values still allowed

    cdef inline const unsigned char* take(self, Py_ssize_t k) except NULL:
        cdef const unsigned char* p
        if k < 0 or k > self.n - self.pos:
            raise ValueError("truncated")
        p = self.buf + self.pos
        self.pos += k
        return p

    cdef object length(self, Py_ssize_t k, Py_ssize_t shortest_from):
        """A length header of k bytes; in canonical mode its value must need that width."""
        cdef const unsigned char* p = self.take(k)
        cdef Py_ssize_t v
        if k == 1:
            v = p[0]
        elif k == 2:
            v = _u16(p)
        else:
            v = _u32(p)
        if self.canon and v < shortest_from:
            raise ValueError("non-canonical length")
        return v

    cdef object value(self, int depth):
        cdef const unsigned char* p = self.take(1)
        cdef unsigned char c = p[0]
        cdef Py_ssize_t ln
        cdef uint64_t u
        cdef int64_t s
        if self.left == 0:
            raise TooManyValues()
        self.left -= 1
        if c <= 0x7f:
            return <long>c
        if c >= 0xe0:
            return <long>(<int8_t>c)
        if 0xa0 <= c <= 0xbf:
            return self.text(c & 0x1f)
        if 0x90 <= c <= 0x9f:
            return self.array(c & 0x0f, depth)
        if c == 0xc0:
            return None
        if c == 0xc2:
            return False
        if c == 0xc3:
            return True
        if c == 0xc4:
            return self.blob(self.length(1, 0))
        if c == 0xc5:
            return self.blob(self.length(2, 0x100))
        if c == 0xc6:
            return self.blob(self.length(4, 0x10000))
        if c == 0xcc:
            u = self.take(1)[0]
            if self.canon and u < 0x80:
                raise ValueError("non-canonical int")
            return <long>u
        if c == 0xcd:
            u = _u16(self.take(2))
            if self.canon and u < 0x100:
                raise ValueError("non-canonical int")
            return <long>u
        if c == 0xce:
            u = _u32(self.take(4))
            if self.canon and u < 0x10000:
                raise ValueError("non-canonical int")
            return u
        if c == 0xcf:
            u = _u64(self.take(8))
            if self.canon and u < 0x100000000:
                raise ValueError("non-canonical int")
            return u
        if c == 0xd0:
            s = <int8_t>self.take(1)[0]
            if self.canon and s >= -32:
                raise ValueError("non-canonical int")
            return <long>s
        if c == 0xd1:
            s = <int16_t>_u16(self.take(2))
            if self.canon and s >= -128:
                raise ValueError("non-canonical int")
            return <long>s
        if c == 0xd2:
            s = <int32_t>_u32(self.take(4))
            if self.canon and s >= -32768:
                raise ValueError("non-canonical int")
            return s
        if c == 0xd3:
            s = <int64_t>_u64(self.take(8))
            if self.canon and s >= -2147483648:
                raise ValueError("non-canonical int")
            return s
        if c == 0xd9:
            return self.text(self.length(1, 32))
        if c == 0xda:
            return self.text(self.length(2, 0x100))
        if c == 0xdb:
            return self.text(self.length(4, 0x10000))
        if c == 0xdc:
            return self.array(self.length(2, 16), depth)
        if c == 0xdd:
            return self.array(self.length(4, 0x10000), depth)
        raise ValueError("a type the wire does not allow (map, float, ext)")

    cdef object blob(self, Py_ssize_t ln):
        cdef const unsigned char* p = self.take(ln)
        return PyBytes_FromStringAndSize(<const char*>p, ln)

    cdef object text(self, Py_ssize_t ln):
        cdef const unsigned char* p = self.take(ln)
        return PyUnicode_DecodeUTF8(<const char*>p, ln, NULL)  # strict: a bad sequence raises

    cdef object array(self, Py_ssize_t count, int depth):
        cdef list out
        cdef Py_ssize_t i
        if count == 0:
            return []
        if depth >= MAX_DEPTH:
            raise ValueError("nesting too deep")
        if count > self.n - self.pos:  # every item takes a byte at least
            raise ValueError("truncated")
        if count > self.left:  # before the list is made
            raise TooManyValues()
        out = [None] * count
        for i in range(count):
            out[i] = self.value(depth + 1)
        return out


def decode(bytes data, bint canonical, Py_ssize_t max_values=-1):
    """The value `data` encodes, or ValueError (which the caller answers with the reference), or
    TooManyValues past `max_values` values (each scalar and each array counts one; -1: no limit)."""
    cdef _Reader r = _Reader.__new__(_Reader)
    cdef object v
    r.buf = <const unsigned char*>data
    r.n = len(data)
    r.pos = 0
    r.canon = canonical
    r.left = max_values if max_values >= 0 else len(data) + 1  # a value takes a byte at least
    v = r.value(0)
    if r.pos != r.n:
        raise ValueError("trailing bytes")
    return v
