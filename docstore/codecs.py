"""How values travel between Python and PostgreSQL: pgvector's binary formats, and JSON.

One place, symmetric encoders and decoders (the pgvector-python layout): ``vector`` and
``halfvec`` decode to ``numpy.ndarray`` (float32), ``sparsevec`` to pgvector's ``SparseVector``,
``jsonb`` to Python objects (``json.loads``: dicts, lists, str, int, float, bool, None).
:func:`register_codecs` wires them into a connection; the pools call it (through their
``init``) for every connection, the replica's and a read-only store's included. ``json`` (not
``jsonb``) stays text, as asyncpg gives it: ``EXPLAIN (FORMAT JSON)`` and asyncpg's
``PreparedStatement.explain()`` decode it themselves.

A ``jsonb`` parameter takes any JSON-serializable Python object (``json.dumps``) —
or a ``str``, which is taken as JSON text already encoded (as asyncpg's own codec does), so
``json.dumps(...)`` passed to a ``$1::jsonb`` keeps working. A JSON document that is itself a
string is therefore passed as ``json.dumps("text")``. The codecs use the binary format, so
``copy_records_to_table`` of a table with a ``jsonb`` column takes objects too.

Numbers decode as ``json.loads`` decodes them: integers exactly, others as the nearest
``float``, so a ``jsonb`` number beyond a double's precision (``1e-400``,
``0.10000000000000000001``) comes back rounded (and a read-modify-write stores the rounded
value). Select ``::text`` (or ``::numeric`` of the member) where such numbers must stay exact.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
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


def keys_param(keys: Iterable[int]) -> list[str]:
    """Integer keys (ids, range bounds) for a ``$n::text[]::bigint[]`` parameter.

    asyncpg knows ``text[]`` on every connection, but introspects any other array type the
    first time a connection meets it (a catalog query of 5–10 ms on a new session, and a
    migration's sessions are new): so the migration's statements (and the deletion of
    sources' jobs) take and return ids as ``text[]`` (results ``array_agg(id::text …)``)."""
    return [str(k) for k in keys]


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


_JSONB_VERSION = b"\x01"  # jsonb's binary format: a version byte, then the JSON text


def encode_json(value: Any) -> bytes:
    """A Python object (or JSON text in a ``str``) → ``json`` binary (UTF-8 JSON text)."""
    return (value if isinstance(value, str) else json.dumps(value)).encode()


def decode_json(data: bytes) -> Any:
    """``json`` binary → the Python object (``json.loads``)."""
    return json.loads(data)


def encode_jsonb(value: Any) -> bytes:
    """A Python object (or JSON text in a ``str``) → ``jsonb`` binary."""
    return _JSONB_VERSION + encode_json(value)


def decode_jsonb(data: bytes) -> Any:
    """``jsonb`` binary → the Python object (``json.loads``)."""
    if data[:1] != _JSONB_VERSION:
        raise ValueError(f"unsupported jsonb format version {data[:1]!r}")
    return json.loads(data[1:])


_VECTOR_CODECS = {
    "vector": (encode_vector, decode_vector),
    "halfvec": (encode_halfvec, decode_halfvec),
    "sparsevec": (encode_sparsevec, decode_sparsevec),
}
_JSON_CODECS = {
    "jsonb": (encode_jsonb, decode_jsonb),
    # Not ``json``: asyncpg's ``PreparedStatement.explain()`` (and anyone's ``EXPLAIN (FORMAT
    # JSON)``) expects the plan as text and decodes it itself.
}


async def register_vector_codecs(conn: asyncpg.Connection, schema: str) -> None:
    """Register the vector, halfvec and sparsevec codecs on ``conn`` (types in ``schema``)."""
    for type_name, (encoder, decoder) in _VECTOR_CODECS.items():
        await conn.set_type_codec(
            type_name, schema=schema, encoder=encoder, decoder=decoder, format="binary"
        )


async def register_json_codecs(conn: asyncpg.Connection) -> None:
    """Register the jsonb codec on ``conn`` (a built-in type: no round trip)."""
    for type_name, (encoder, decoder) in _JSON_CODECS.items():
        await conn.set_type_codec(
            type_name, schema="pg_catalog", encoder=encoder, decoder=decoder, format="binary"
        )


async def register_codecs(conn: asyncpg.Connection, schema: str, *, jsonb: bool = True) -> None:
    """Register docstore's codecs on ``conn``: vector, halfvec and sparsevec (pgvector's types
    in ``schema``) and, unless ``jsonb=False``, jsonb (Python objects, see the module
    docstring)."""
    await register_vector_codecs(conn, schema)
    if jsonb:
        await register_json_codecs(conn)
