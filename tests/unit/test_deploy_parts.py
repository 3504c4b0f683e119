"""Pieces of the deployment: SecAgg+ client state across processes, pending rounds on disk,
credentials, payload checks."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedrec.cli.main import app
from fedrec.deploy.credentials import CredentialError, TLSFiles, node_keys, tls_certificates
from fedrec.deploy.launcher import tls_failures
from fedrec.deploy.payload import Payload
from fedrec.deploy.pending import PendingError, PendingRound
from fedrec.deploy.validate import RejectedUploadError, check_reply, plain_vector
from fedrec.privacy.secagg import SecAggClient, SecAggConfig, SecAggServer
from fedrec.privacy.secagg.config import RoundParams
from fedrec.privacy.secagg.errors import MalformedMessageError
from fedrec.privacy.secagg.messages import (
    AdvertiseKeys,
    ForwardedShares,
    MaskedInput,
    MaskingRequest,
    NeighbourKeys,
    ShareKeys,
    ShareReceipt,
    UnmaskRequest,
    UnmaskShares,
)
from fedrec.privacy.secagg.persist import export_client, restore_client


def _round(
    n: int, dim: int, vectors: np.ndarray, persist: set[int], dropped: set[int]
) -> np.ndarray:
    """One SecAgg+ round where the clients in ``persist`` are saved and rebuilt from bytes
    before every stage (as a deployed client process is), through the wire formats."""
    params = RoundParams.create(list(range(n)), dim, SecAggConfig(clip=4.0), 7, b"s" * 16)
    server = SecAggServer(params)
    clients = {c: SecAggClient(c, params) for c in range(n)}

    def get(c: int) -> SecAggClient:
        if c in persist:
            clients[c] = restore_client(params, export_client(clients[c]))
        return clients[c]

    for c in range(n):
        server.receive_advertise_keys(AdvertiseKeys.from_bytes(get(c).advertise_keys().to_bytes()))
    for c, m in server.neighbour_keys().items():
        reply = get(c).share_keys(NeighbourKeys.from_bytes(m.to_bytes()))
        server.receive_share_keys(ShareKeys.from_bytes(reply.to_bytes()))
    for c, m in server.forward_shares().items():
        reply = get(c).receive_shares(ForwardedShares.from_bytes(m.to_bytes()))
        server.receive_receipt(ShareReceipt.from_bytes(reply.to_bytes()))
    for c, m in server.masking_requests().items():
        if c in dropped:
            continue
        reply = get(c).masked_input(MaskingRequest.from_bytes(m.to_bytes()), vectors[c])
        server.receive_masked_input(MaskedInput.from_bytes(reply.to_bytes()))
    for c, m in server.unmask_requests().items():
        reply = get(c).unmask(UnmaskRequest.from_bytes(m.to_bytes()))
        server.receive_unmask_shares(UnmaskShares.from_bytes(reply.to_bytes()))
    res = server.aggregate()
    assert sorted(res.included) == sorted(set(range(n)) - dropped)
    return np.asarray(res.total)


@settings(max_examples=8, deadline=None)
@given(
    persist=st.sets(st.integers(0, 5)),
    dropped=st.sets(st.integers(0, 5), max_size=1),
    seed=st.integers(0, 2**16),
)
def test_persisted_clients_give_the_same_sum(
    persist: set[int], dropped: set[int], seed: int
) -> None:
    vectors = np.random.default_rng(seed).uniform(-1, 1, size=(6, 5))
    total = _round(6, 5, vectors, persist, dropped)
    want = vectors[[c for c in range(6) if c not in dropped]].sum(axis=0)
    assert np.allclose(total, want, atol=1e-5)


def test_restore_refuses_another_round() -> None:
    a = RoundParams.create([0, 1, 2], 4, SecAggConfig(), 1, b"a" * 16)
    b = RoundParams.create([0, 1, 2], 4, SecAggConfig(), 2, b"a" * 16)
    blob = export_client(SecAggClient(0, a))
    with pytest.raises(MalformedMessageError, match="another round"):
        restore_client(b, blob)
    with pytest.raises(MalformedMessageError):
        restore_client(a, blob[:-3])
    with pytest.raises(MalformedMessageError):
        restore_client(a, b"nope" + blob[4:])


def test_pending_round_is_per_round_and_private(tmp_path: Path) -> None:
    p = PendingRound(tmp_path / "run")
    p.start(3, np.arange(4.0))
    p.put_secrets(3, b"k")
    assert p.secrets(3) == b"k" and np.array_equal(p.vector(3), np.arange(4.0))
    assert (tmp_path / "run" / "secagg.bin").stat().st_mode & 0o077 == 0
    with pytest.raises(PendingError, match="round 3"):
        p.vector(2)
    p.start(4, np.zeros(2))  # a new round drops the old secrets
    with pytest.raises(PendingError, match="never advertised"):
        p.secrets(4)
    p.clear()
    with pytest.raises(PendingError, match="holds nothing"):
        p.vector(4)


def test_credentials_verify_and_keys_load(tmp_path: Path) -> None:
    tls = tls_certificates(tmp_path / "tls", ("127.0.0.1", "server.example.org"))
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "server.example.org" in san.get_values_for_type(x509.DNSName)
    assert tls.server_key.stat().st_mode & 0o077 == 0
    key = node_keys(tmp_path / "keys", "node-0")
    load_ssh_private_key(key.private.read_bytes(), password=None)
    assert key.public.read_text().startswith("ecdsa-sha2-nistp384 ")


def _sans(tls: TLSFiles) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    return san.get_values_for_type(x509.DNSName), ips


def test_server_certificate_names_every_host_and_loopback(tmp_path: Path) -> None:
    hosts = ["server.example.org", "10.1.2.3", "[2001:db8::7]", "Link.Example.ORG.", "localhost"]
    dns, ips = _sans(tls_certificates(tmp_path / "a", hosts))
    assert dns == ["server.example.org", "link.example.org", "localhost"]
    assert ips == ["10.1.2.3", "2001:db8::7", "127.0.0.1", "::1"]
    # No host at all: still the loopback names the SuperLink's own SuperExec dials.
    dns, ips = _sans(tls_certificates(tmp_path / "b"))
    assert dns == ["localhost"] and ips == ["127.0.0.1", "::1"]
    dns, ips = _sans(tls_certificates(tmp_path / "c", ["localhost"], loopback=False))
    assert dns == ["localhost"] and ips == []


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("server.example.org:9093", "without a port"),
        ("bad_name.example.org", "neither an IP address"),
        ("-x.org", "neither an IP address"),
        ("", "neither an IP address"),
    ],
)
def test_bad_host_is_refused_by_name(tmp_path: Path, host: str, message: str) -> None:
    with pytest.raises(CredentialError, match=message):
        tls_certificates(tmp_path, [host])
    assert not (tmp_path / "server.pem").exists()


def _handshake(tls: TLSFiles, ca: Path, name: str) -> tuple[str | None, str | None]:
    """One TLS handshake on 127.0.0.1 where the client asks for ``name``: the client's
    verification failure and the server's error (None when there is none)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls.server_cert, tls.server_key)
    server_error: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.recv(1)
            except (ssl.SSLError, OSError) as exc:
                server_error.append(str(exc))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_error = None
        client_ctx = ssl.create_default_context(cafile=str(ca))
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=10) as sock,
                client_ctx.wrap_socket(sock, server_hostname=name),
            ):
                pass
        except ssl.SSLCertVerificationError as exc:
            client_error = exc.verify_message
        thread.join(10)
    return client_error, (server_error[0] if server_error else None)


def test_certificate_verifies_by_ip_and_by_name(tmp_path: Path) -> None:
    tls = tls_certificates(tmp_path, ["server.example.org", "10.1.2.3"])
    for name in ("server.example.org", "10.1.2.3", "localhost", "127.0.0.1"):
        assert _handshake(tls, tls.ca_cert, name)[0] is None, name
    client, server = _handshake(tls, tls.ca_cert, "other.example.org")
    assert client is not None and "mismatch" in client
    assert server is not None


def test_certificate_without_loopback_fails_for_127_0_0_1(tmp_path: Path) -> None:
    """The certificate the issue's recipe made: Flower's own SuperExec could not verify it."""
    tls = tls_certificates(tmp_path, ["localhost"], loopback=False)
    client, _ = _handshake(tls, tls.ca_cert, "127.0.0.1")
    assert client is not None and "IP address mismatch" in client


def test_expired_certificate_and_wrong_ca_fail_on_both_sides(tmp_path: Path) -> None:
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=60)
    expired = tls_certificates(tmp_path / "old", ["localhost"], days=30, valid_from=long_ago)
    client, server = _handshake(expired, expired.ca_cert, "localhost")
    assert client == "certificate has expired"
    assert server is not None and "certificate expired" in server.lower()
    ours = tls_certificates(tmp_path / "ours", ["localhost"])
    theirs = tls_certificates(tmp_path / "theirs", ["localhost"])
    client, server = _handshake(ours, theirs.ca_cert, "localhost")
    assert client == "unable to get local issuer certificate"
    assert server is not None and "unknown ca" in server.lower()


def test_tls_failures_quote_each_reason_once(tmp_path: Path) -> None:
    reason = "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch"
    (tmp_path / "superlink.log").write_text(
        "INFO: Starting Flower SuperExec\nERROR: SSL/TLS handshake error detected.\n"
        f"httpcore.ConnectError: {reason}\nhttpx.ConnectError: {reason}\n"
    )
    (tmp_path / "node-00000.log").write_text("INFO: all good\n")
    logs = [tmp_path / "superlink.log", tmp_path / "node-00000.log", tmp_path / "missing.log"]
    assert tls_failures(logs) == [f"superlink.log: {reason}"]
    assert tls_failures(logs[1:]) == []


def test_credentials_command_names_every_host(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app,
        ["deploy", "credentials", "--out", str(tmp_path), "-n", "2", "--host", "a.example.org",
         "--host", "192.0.2.5"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "a.example.org, 192.0.2.5, localhost, 127.0.0.1, ::1" in " ".join(res.output.split())
    assert sorted(p.name for p in (tmp_path / "keys").iterdir())[0] == "node-00000"
    bad = CliRunner().invoke(app, ["deploy", "credentials", "-o", str(tmp_path), "--host", "a:1"])
    assert bad.exit_code == 2 and "without a port" in bad.output


def test_reply_checks() -> None:
    p = Payload(meta={"round": 2, "nonce": "ab", "n_examples": 3, "loss": 0.5})
    check_reply(p, round_=2, nonce="ab", max_bytes=1000)
    with pytest.raises(RejectedUploadError, match="replayed"):
        check_reply(p, round_=2, nonce="cd", max_bytes=1000)
    p.arrays["vector"] = np.zeros(4, np.float32)
    with pytest.raises(RejectedUploadError, match="exceeds"):
        check_reply(p, round_=2, nonce="ab", max_bytes=10)
    vec, n, loss = plain_vector(p, 4)
    assert n == 3 and loss == 0.5 and vec.shape == (4,)
    p.arrays["vector"] = np.array([0, np.inf, 0, 0], np.float32)
    with pytest.raises(RejectedUploadError, match="NaN or infinite"):
        plain_vector(p, 4)
    p.arrays["vector"] = np.zeros(4, np.float32)
    p.meta["loss"] = float("inf")
    with pytest.raises(RejectedUploadError, match="loss"):
        plain_vector(p, 4)
