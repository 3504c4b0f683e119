"""TLS certificates and SuperNode authentication keys for a deployment.

``tls_certificates`` makes a private certificate authority and a server certificate signed by
it for the SuperLink's addresses (self-signed trust: every SuperNode and the ``flwr`` CLI are
given the CA certificate, so they reject any other server). The certificate always names the
loopback addresses too: Flower's SuperLink starts its own SuperExec, which dials the
SuperLink's bind address over TLS (a bind-all address becomes 127.0.0.1 or ::1), and no
ServerApp ever starts if that connection fails verification. ``node_keys`` makes one NIST P-384
key pair per SuperNode, in the OpenSSH format Flower reads; the SuperLink, started with
``--enable-supernode-auth``, accepts only nodes whose public key was registered. Private keys
are written with owner-only permissions.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrec.utils.atomic import atomic_write_bytes

LOOPBACK = ("localhost", "127.0.0.1", "::1")
"""The names the SuperLink's own processes reach it by; every server certificate carries them."""

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class CredentialError(ValueError):
    """A host that cannot go into a certificate; the message names it."""


@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    private: Path
    public: Path


def _private(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)
    os.chmod(path, 0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS SAN for a host name (TLS clients match an IP
    only against IP SANs, so an address written as a DNS name would never verify)."""
    bare = host.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    try:
        return x509.IPAddress(ipaddress.ip_address(bare))
    except ValueError:
        pass
    name = bare.rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(p) for p in name.split(".")):
        hint = " (give the name without a port)" if ":" in name else ""
        raise CredentialError(f"--host {host!r} is neither an IP address nor a host name{hint}")
    return x509.DNSName(name.lower())


def server_names(hosts: Iterable[str], *, loopback: bool = True) -> list[x509.GeneralName]:
    """The certificate's subject alternative names: ``hosts`` then the loopback names, each
    once."""
    names: list[x509.GeneralName] = []
    for h in [*hosts, *(LOOPBACK if loopback else ())]:
        san = _san(h)
        if san not in names:
            names.append(san)
    if not names:
        raise CredentialError("a server certificate needs at least one host")
    return names


def tls_certificates(
    directory: Path,
    hosts: Iterable[str] = (),
    days: int = 30,
    *,
    loopback: bool = True,
    valid_from: datetime.datetime | None = None,
) -> TLSFiles:
    """A CA and a server certificate valid for ``hosts`` (IP addresses or DNS names) and, with
    ``loopback``, for localhost, 127.0.0.1 and ::1. ``valid_from`` (default: a few minutes
    ago, for clock skew) and ``loopback=False`` exist to make broken certificates in tests."""
    names = server_names(hosts, loopback=loopback)
    directory.mkdir(parents=True, exist_ok=True)
    start = valid_from or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    end = start + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    # A name of its own: a client holding another fedrec CA then reports "unable to get local
    # issuer certificate" rather than a puzzling signature failure on a same-named issuer.
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"fedrec deployment CA {os.urandom(4).hex()}")]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    common = str(names[0].value)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    files = TLSFiles(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    atomic_write_bytes(files.ca_cert, ca.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    _private(files.server_key, _pem_key(key))
    # The CA key is not kept: nothing else will ever be signed for this deployment.
    return files


def node_keys(directory: Path, name: str) -> NodeKey:
    """A SuperNode's authentication key pair (OpenSSH format, P-384)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    out = NodeKey(directory / name, directory / f"{name}.pub")
    _private(
        out.private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    atomic_write_bytes(
        out.public,
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ),
    )
    return out
