"""A researcher's client for ``cohort serve``.

Queries go over Arrow Flight SQL (``pyarrow.flight``) and come back as
pandas DataFrames with each noisy value's 95% error; studies, consent and
compensation go over the gRPC study API (``server/proto/cohort/v1``). Both
carry the bearer token that ``cohort login`` prints::

    import cohort_client
    c = cohort_client.connect("https://127.0.0.1:50051", token, ca_cert="cohort-data/server/tls/cert.pem")
    print(c.explain(1, "SELECT gender, COUNT(*) AS n FROM patients GROUP BY gender"))
    answer = c.query(1, "SELECT gender, COUNT(*) AS n FROM patients GROUP BY gender")
    answer.frame, answer.error_95("n"), answer.remaining

Errors from the server (a refused query, an exhausted budget, a caller who
is not the study's researcher) are raised as :class:`CohortError`, with the
server's message and its gRPC status code.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Optional

import grpc
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
from google.protobuf import any_pb2

from . import cohort_pb2 as pb
from . import cohort_pb2_grpc as rpc

__all__ = ["Answer", "Client", "CohortError", "connect", "login", "pb"]

_STATEMENT = "type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"


class CohortError(Exception):
    """The server refused a call. ``code`` is the gRPC status name
    (``INVALID_ARGUMENT``, ``FAILED_PRECONDITION``, ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Answer:
    """A query's answer: the table, each release's 95% error, the cost and
    the budget left after it, the fee its privacy cost paid (shared equally
    by the ``members`` consenting patients), and the deadline it was
    released at (milliseconds after the request: a function of the plan and
    the consenting count, never of the data)."""

    frame: pd.DataFrame
    releases: list = field(default_factory=list)
    cost: str = ""
    remaining: str = ""
    fee_wei: int = 0
    share_wei: int = 0
    members: int = 0
    deadline_ms: Optional[int] = None

    def error_95(self, column: str) -> list[float]:
        """The 95% error of each row's value in ``column`` (the noise's
        half-width at 95% confidence), in the frame's row order."""
        if column not in self.frame:
            raise KeyError(f"no column {column!r} in the answer")
        shown = list(self.frame[column])
        # A release names the planner's expression, not the SQL alias: it is
        # found by its values, which are the column's. A value a small-cell
        # rule withheld is missing on both sides.
        def missing(v) -> bool:
            return v is None or pd.isna(v)

        def same(v, x) -> bool:
            if missing(v) or missing(x):
                return missing(v) and missing(x)
            return abs(float(v) - float(x)) <= 1e-9 * max(1.0, abs(float(x)))

        for r in self.releases:
            values, errors = r.get("values") or [], r.get("error_95") or []
            if len(values) == len(shown) == len(errors) and all(
                same(v, x) for v, x in zip(values, shown)
            ):
                return [float(e) for e in errors]
        raise KeyError(f"no noisy release gives column {column!r}")


def _encode_statement(sql: str) -> bytes:
    """A Flight SQL ``CommandStatementQuery`` (field 1: the query) in an Any."""
    text = sql.encode("utf-8")
    length, varint = len(text), bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    command = b"\x0a" + bytes(varint) + text
    return any_pb2.Any(type_url=_STATEMENT, value=command).SerializeToString()


def _flight_error(e: Exception) -> CohortError:
    """pyarrow raises a Flight status as a FlightError subclass or, for
    INVALID_ARGUMENT and others, as an ArrowException whose text is
    "Flight returned <code> error, with message: <message>"."""
    text = str(e)
    code = "UNKNOWN"
    if text.startswith("Flight returned ") and " error, with message: " in text:
        head, text = text[len("Flight returned "):].split(" error, with message: ", 1)
        code = head.strip().upper().replace(" ", "_")
    else:
        kinds = {
            flight.FlightUnauthenticatedError: "UNAUTHENTICATED",
            flight.FlightUnauthorizedError: "PERMISSION_DENIED",
            flight.FlightUnavailableError: "UNAVAILABLE",
            flight.FlightTimedOutError: "DEADLINE_EXCEEDED",
            flight.FlightInternalError: "INTERNAL",
        }
        code = next((name for kind, name in kinds.items() if isinstance(e, kind)), code)
    # pyarrow appends the gRPC details after the server's message.
    for marker in (". Detail:", ". gRPC client debug context:", "\ngRPC client debug context:"):
        text = text.split(marker)[0]
    return CohortError(code, text.strip())


class Client:
    """One signed-in account's connection to a ``cohort serve``."""

    def __init__(self, server: str, token: str, ca_cert: Optional[str] = None):
        if not server.startswith(("https://", "http://")):
            raise ValueError(f"{server!r} is not a server address (https://host:port)")
        tls = server.startswith("https://")
        address = server.split("://", 1)[1].rstrip("/")
        root = open(ca_cert, "rb").read() if (tls and ca_cert) else None
        self._token = token
        self._flight = flight.FlightClient(
            f"grpc+tls://{address}" if tls else f"grpc://{address}",
            tls_root_certs=root,
        )
        if tls:
            channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=root))
        else:
            channel = grpc.insecure_channel(address)
        self._channel = channel
        self.studies = rpc.StudiesStub(channel)
        self.consents = rpc.ConsentsStub(channel)
        self.compensation = rpc.CompensationStub(channel)
        self.audit = rpc.AuditStub(channel)
        self.records = rpc.RecordsStub(channel)

    # -- Flight SQL ---------------------------------------------------------

    def _options(self, study: int) -> flight.FlightCallOptions:
        return flight.FlightCallOptions(
            headers=[
                (b"authorization", f"Bearer {self._token}".encode()),
                (b"cohort-study", str(study).encode()),
            ]
        )

    def _statement(self, study: int, sql: str) -> pa.Table:
        options = self._options(study)
        descriptor = flight.FlightDescriptor.for_command(_encode_statement(sql))
        try:
            info = self._flight.get_flight_info(descriptor, options)
            return self._flight.do_get(info.endpoints[0].ticket, options).read_all()
        except (flight.FlightError, pa.ArrowException) as e:
            raise _flight_error(e) from None

    def query(self, study: int, sql: str) -> Answer:
        """Runs ``sql`` privately against ``study``'s view: debited from its
        budget, answered once."""
        table = self._statement(study, sql)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        return Answer(
            frame=table.to_pandas(),
            releases=json.loads(meta.get("cohort.releases", "[]")),
            cost=meta.get("cohort.cost", ""),
            remaining=meta.get("cohort.remaining", ""),
            fee_wei=int(meta.get("cohort.fee_wei", "0")),
            share_wei=int(meta.get("cohort.share_wei", "0")),
            members=int(meta.get("cohort.members", "0")),
            deadline_ms=int(meta["cohort.deadline_ms"]) if "cohort.deadline_ms" in meta else None,
        )

    def explain(self, study: int, sql: str) -> str:
        """The private plan of ``sql`` (bounds, mechanisms, cost, error),
        without running it or spending anything."""
        table = self._statement(study, f"EXPLAIN PRIVACY {sql}")
        return "\n".join(table.column("plan").to_pylist())

    # -- the study API ------------------------------------------------------

    def call(self, method, request):
        """Calls a study-API method (e.g. ``client.studies.Show``) with the
        token; raises :class:`CohortError` with the server's message."""
        try:
            return method(request, metadata=[("authorization", f"Bearer {self._token}")])
        except grpc.RpcError as e:
            raise CohortError(e.code().name, e.details()) from None

    def study(self, study: int) -> pb.Study:
        """The study as ``cohort study show`` shows it."""
        return self.call(self.studies.Show, pb.StudyRef(study_id=study))

    def list_studies(self) -> list:
        return list(self.call(self.studies.List, pb.ListStudiesRequest()).studies)

    def release(self, study: int, k: int, l: Optional[int] = None):
        """A k-anonymous extract of ``study``'s view (if its stewards allowed
        microdata), as a DataFrame, with what the server measured of it
        (``measured_k``, ``measured_l``) and its on-chain hash."""
        import io

        import pyarrow.parquet as pq

        x = self.call(self.studies.Release, pb.ReleaseRequest(study_id=study, k=k, l=l))
        return pq.read_table(io.BytesIO(x.parquet)).to_pandas(), x

    def propose(self, study_toml: str) -> pb.Proposed:
        return self.call(self.studies.Propose, pb.ProposeRequest(study_toml=study_toml))

    def consent(self, study: int, days: int = 30, purposes: Optional[list] = None) -> pb.ConsentChange:
        return self.call(
            self.consents.Give,
            pb.GiveConsentRequest(study_id=study, days=days, purposes=purposes or []),
        )

    def withdraw(self, study: int) -> pb.ConsentChange:
        return self.call(self.consents.Withdraw, pb.StudyRef(study_id=study))

    def my_consents(self) -> list:
        return list(self.call(self.consents.List, pb.ListConsentsRequest()).consents)

    def earnings(self, study: Optional[int] = None) -> pb.Earnings:
        return self.call(self.compensation.Show, pb.CompensationRequest(study_id=study))

    def close(self) -> None:
        self._flight.close()
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


def connect(server: str, token: str, ca_cert: Optional[str] = None) -> Client:
    """A client for ``server`` (``https://host:port``) with a token from
    ``cohort login``; ``ca_cert`` is the certificate to trust (the server's
    generated ``<data dir>/server/tls/cert.pem`` for local use)."""
    return Client(server, token, ca_cert)


def login(account: str, server: str, *, cohort: str = "cohort", data_dir: Optional[str] = None,
          totp: Optional[str] = None) -> str:
    """Signs in as ``account`` with ``cohort login`` (its key stays in the
    keystore, which needs $COHORT_PASSPHRASE) and returns the token."""
    args = [cohort]
    if data_dir:
        args += ["--data-dir", data_dir]
    args += ["login", "--as", account, "--server", server, "--json"]
    if totp:
        args += ["--totp", totp]
    done = subprocess.run(args, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise CohortError("UNAUTHENTICATED", done.stderr.strip())
    return json.loads(done.stdout)["token"]
