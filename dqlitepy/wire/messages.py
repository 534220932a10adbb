"""The catalogue of dqlite messages: every request and response class, by type code.

Request and response codes are separate number spaces (``docs/protocol.md`` §1.3):
:data:`REQUESTS` and :data:`RESPONSES` map each code to its class.  The classes
live in :mod:`.requests` (§2) and :mod:`.responses` (§3), on the base
:class:`~.body.Message`; this module gathers them under one name, the one the
rest of the wire layer (and :mod:`dqlitepy.wire`) imports them from.
"""

from __future__ import annotations

from .body import Message
from .requests import (
    AddRequest,
    AssignRequest,
    AuthChallengeRequest,
    AuthProofRequest,
    ClientRequest,
    ClusterRequest,
    ConnectRequest,
    DescribeRequest,
    DumpRequest,
    ExecRequest,
    ExecSqlRequest,
    FinalizeRequest,
    HeartbeatRequest,
    InterruptRequest,
    LeaderRequest,
    OpenRequest,
    PrepareRequest,
    QueryRequest,
    QuerySqlRequest,
    RemoveRequest,
    Request,
    TransferRequest,
    WeightRequest,
)
from .responses import (
    ChallengeResponse,
    DbResponse,
    EmptyResponse,
    FailureResponse,
    FilesResponse,
    MetadataResponse,
    NodeInfo,
    Response,
    ResultResponse,
    RowsResponse,
    ServerResponse,
    ServersResponse,
    StmtResponse,
    WelcomeResponse,
)

__all__ = [
    "REQUESTS",
    "RESPONSES",
    "AddRequest",
    "AssignRequest",
    "AuthChallengeRequest",
    "AuthProofRequest",
    "ChallengeResponse",
    "ClientRequest",
    "ClusterRequest",
    "ConnectRequest",
    "DbResponse",
    "DescribeRequest",
    "DumpRequest",
    "EmptyResponse",
    "ExecRequest",
    "ExecSqlRequest",
    "FailureResponse",
    "FilesResponse",
    "FinalizeRequest",
    "HeartbeatRequest",
    "InterruptRequest",
    "LeaderRequest",
    "Message",
    "MetadataResponse",
    "NodeInfo",
    "OpenRequest",
    "PrepareRequest",
    "QueryRequest",
    "QuerySqlRequest",
    "RemoveRequest",
    "Request",
    "Response",
    "ResultResponse",
    "RowsResponse",
    "ServerResponse",
    "ServersResponse",
    "StmtResponse",
    "TransferRequest",
    "WeightRequest",
    "WelcomeResponse",
]

#: Request classes by type code.
REQUESTS: dict[int, type[Request]] = {
    cls.TYPE: cls
    for cls in (
        LeaderRequest,
        ClientRequest,
        HeartbeatRequest,
        OpenRequest,
        PrepareRequest,
        ExecRequest,
        QueryRequest,
        FinalizeRequest,
        ExecSqlRequest,
        QuerySqlRequest,
        InterruptRequest,
        ConnectRequest,
        AddRequest,
        AssignRequest,
        RemoveRequest,
        DumpRequest,
        ClusterRequest,
        TransferRequest,
        DescribeRequest,
        WeightRequest,
        AuthChallengeRequest,
        AuthProofRequest,
    )
}

#: Response classes by type code.
RESPONSES: dict[int, type[Response]] = {
    cls.TYPE: cls
    for cls in (
        FailureResponse,
        ServerResponse,
        WelcomeResponse,
        ServersResponse,
        DbResponse,
        StmtResponse,
        ResultResponse,
        RowsResponse,
        EmptyResponse,
        FilesResponse,
        MetadataResponse,
        ChallengeResponse,
    )
}
