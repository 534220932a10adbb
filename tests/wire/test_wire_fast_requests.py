"""The server's fast decoding of EXEC, QUERY, EXEC_SQL and QUERY_SQL against the Reader's.

``decode_body`` of these four requests reads the common case straight from the body's
bytes and hands anything else to the general decoder (``_decode`` through a
:class:`~dqlitepy.wire.codec.Reader`).  Both must give the same request, or the same
error, for every body: well-formed ones of every parameter type and schema, cut ones,
and garbage.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dqlitepy.wire import (
    ExecRequest,
    ExecSqlRequest,
    QueryRequest,
    QuerySqlRequest,
    RemoteProtocolError,
    ValueTuple,
)
from dqlitepy.wire.codec import Reader

_CLASSES = [ExecRequest, QueryRequest, ExecSqlRequest, QuerySqlRequest]
_PARAM = st.one_of(
    st.none(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.floats(allow_nan=False),
    st.text().map(lambda t: t.replace("\x00", "")),
    st.binary(max_size=20),
    st.booleans(),
)


def _outcome(decode: Any) -> Any:
    try:
        return decode()
    except RemoteProtocolError as exc:
        return type(exc), str(exc)


def _both(cls: Any, body: bytes, schema: int) -> tuple[Any, Any]:
    fast = _outcome(lambda: cls.decode_body(body, schema))
    general = _outcome(lambda: cls._decode(Reader(body), schema, False))
    return fast, general


def _request(cls: Any, params: list[Any], wide: bool) -> Any:
    values = ValueTuple.of(params)
    if cls in (ExecRequest, QueryRequest):
        return cls(3, 7, values, wide)
    return cls(0, "SELECT v FROM t WHERE k = ? -- é", values, wide)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_CLASSES), st.lists(_PARAM, max_size=6), st.booleans(), st.data())
def test_well_formed_and_cut_bodies_decode_alike(
    cls: Any, params: list[Any], wide: bool, data: st.DataObject
) -> None:
    request = _request(cls, params, wide)
    body = request.encode_body()
    fast, general = _both(cls, body, request.schema)
    assert fast == general == request
    cut = data.draw(st.integers(min_value=0, max_value=len(body)))
    assert _both(cls, body[:cut], request.schema)[0] == _both(cls, body[:cut], request.schema)[1]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_CLASSES), st.binary(max_size=80), st.sampled_from([0, 1, 2]))
def test_garbage_decodes_alike(cls: Any, body: bytes, schema: int) -> None:
    fast, general = _both(cls, body, schema)
    assert fast == general


@pytest.mark.parametrize("cls", _CLASSES)
def test_unknown_parameter_type_after_a_good_one_is_refused_alike(cls: Any) -> None:
    """The general decoder checks every type first: the fast one must not answer first."""
    sql = b"SELECT 1\x00" + bytes(7)
    prefix = bytes(8) if cls in (ExecRequest, QueryRequest) else bytes(8) + sql
    body = prefix + bytes([2, 1, 77]) + bytes(5) + bytes(16)
    fast, general = _both(cls, body, 0)
    assert fast == general
    assert "unknown parameter type 77" in str(fast)
