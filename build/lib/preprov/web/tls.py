"""A lab certificate authority and the server's certificate, for `https://` URLs.

On first start with HTTPS enabled a CA is made in the state directory
(`ca.crt`, `ca.key`); the server's certificate is issued by it for the
server's addresses and names, and issued again when they change. Phones (or
`curl --cacert`) trust the CA, downloadable from the administration listener
at `/api/ca.crt`.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_DAYS = 3650


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    path.chmod(0o600)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "preprov lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # fmt: skip


def lab_ca(state_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, key = state_dir / "ca.crt", state_dir / "ca.key"
    if crt.exists() and key.exists():
        ca_key = serialization.load_pem_private_key(key.read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(crt.read_bytes()), ca_key
    state_dir.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("preprov lab CA"))
        .issuer_name(_name("preprov lab CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    _write_key(key, ca_key)
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, ca_key


def server_certificate(state_dir: Path, names: Iterable[str]) -> tuple[Path, Path]:
    """The server's certificate and key files, issued for these addresses and names."""
    wanted = sorted(set(names))
    crt, key = state_dir / "server.crt", state_dir / "server.key"
    if crt.exists() and key.exists():
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        have = sorted([str(v) for v in san.get_values_for_type(x509.IPAddress)]
                      + san.get_values_for_type(x509.DNSName))  # fmt: skip
        if have == wanted:
            return crt, key
    ca_cert, ca_key = lab_ca(state_dir)
    skey = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for n in wanted:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(wanted[0] if wanted else "preprov"))
        .issuer_name(ca_cert.subject)
        .public_key(skey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(key, skey)
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, key


def server_context(state_dir: Path, names: Iterable[str]) -> ssl.SSLContext:
    crt, key = server_certificate(state_dir, names)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    return ctx
