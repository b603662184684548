"""How embeddings travel between numpy and PostgreSQL: pgvector's binary wire formats.

One place, symmetric encoders and decoders (the pgvector-python layout): ``vector`` and
``halfvec`` decode to ``numpy.ndarray`` (float32), ``sparsevec`` to pgvector's ``SparseVector``.
:func:`register_codecs` wires them into a connection; the pool calls it for every connection.
"""

from __future__ import annotations

import struct
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt
from pgvector import HalfVector, SparseVector, Vector

_HEADER = struct.Struct(">HH")
_BE_F32 = np.dtype(">f4")
_BE_F16 = np.dtype(">f2")

FloatArray = npt.NDArray[np.float32]


class EncodedVector:
    """A vector already in pgvector's binary ``vector`` format.

    Passing these instead of arrays lets a batch encode each embedding once and lets asyncpg
    bind them as scalars inside ``vector[]`` parameters (it would unpack a numpy array).
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"<EncodedVector {(len(self.data) - _HEADER.size) // 4} dims>"


MAX_DIM = 65535  # the binary formats' 16-bit dimension count


def _as_array(value: Any) -> npt.NDArray[Any]:
    """``value`` as a 1-D numpy array of real numbers; anything else is a ValueError (which
    asyncpg reports as invalid input for that parameter), never a silent cast of booleans,
    complex numbers, strings or objects. (Documents and query vectors were already checked
    more strictly by :func:`docstore.models.embedding_array`; this guards raw SQL.)"""
    if isinstance(value, Vector | HalfVector):
        value = value.to_numpy()
    array = np.asarray(value)
    if array.ndim != 1:
        raise ValueError(f"expected a 1-dimensional vector, got {array.ndim} dimensions")
    if array.dtype.kind not in "fiu":
        raise ValueError(f"a vector holds real numbers, not numpy dtype {array.dtype}")
    if array.shape[0] > MAX_DIM:
        raise ValueError(f"a vector has at most {MAX_DIM} dimensions, got {array.shape[0]}")
    return array


def _encode(value: Any, dtype: np.dtype[Any]) -> bytes:
    array = _as_array(value)
    return _HEADER.pack(array.shape[0], 0) + array.astype(dtype, copy=False).tobytes()


def _decode(data: bytes, dtype: np.dtype[Any]) -> FloatArray:
    dim, _unused = _HEADER.unpack_from(data)
    return np.frombuffer(data, dtype=dtype, count=dim, offset=_HEADER.size).astype(np.float32)


def encode_vector(value: Any) -> bytes:
    """numpy array / list / pgvector ``Vector`` / :class:`EncodedVector` → ``vector`` binary."""
    if isinstance(value, EncodedVector):
        return value.data
    return _encode(value, _BE_F32)


def decode_vector(data: bytes) -> FloatArray:
    """pgvector ``vector`` binary → float32 numpy array."""
    return _decode(data, _BE_F32)


def encode_halfvec(value: Any) -> bytes:
    """numpy array / list / pgvector ``HalfVector`` → pgvector ``halfvec`` binary."""
    return _encode(value, _BE_F16)


def decode_halfvec(data: bytes) -> FloatArray:
    """pgvector ``halfvec`` binary → float32 numpy array."""
    return _decode(data, _BE_F16)


def encode_sparsevec(value: Any) -> bytes:
    """pgvector ``SparseVector`` (or anything it accepts) → ``sparsevec`` binary."""
    vector = value if isinstance(value, SparseVector) else SparseVector(value)
    return bytes(vector.to_binary())


def decode_sparsevec(data: bytes) -> SparseVector:
    """``sparsevec`` binary → pgvector ``SparseVector``."""
    return SparseVector.from_binary(data)


_CODECS = {
    "vector": (encode_vector, decode_vector),
    "halfvec": (encode_halfvec, decode_halfvec),
    "sparsevec": (encode_sparsevec, decode_sparsevec),
}


async def register_codecs(conn: asyncpg.Connection, schema: str) -> None:
    """Register the vector, halfvec and sparsevec codecs on ``conn`` (types in ``schema``)."""
    for type_name, (encoder, decoder) in _CODECS.items():
        await conn.set_type_codec(
            type_name, schema=schema, encoder=encoder, decoder=decoder, format="binary"
        )
