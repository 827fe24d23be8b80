"""Certificates for the gateway's internal listener (mutual TLS): `make certs`.

A private CA, a server certificate for localhost / 127.0.0.1, and one client certificate
per internal system (the hall, the core tax system). Clients are told apart by a URI
subject alternative name, spiffe://etax.internal/<system>, which the gateway matches.
ECDSA P-256: every TLS stack involved (Envoy's BoringSSL, grpcio, Go for ghz) accepts it.
Development only: production certificates come from the bureau's own PKI.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from etax_platform.settings import REPO_ROOT

DEFAULT_DIR = REPO_ROOT / "deploy" / "certs"
CLIENT_SYSTEMS = ("hall", "core-tax")
SPIFFE_PREFIX = "spiffe://etax.internal/"
_CA_DAYS = 3650
_LEAF_DAYS = 825
# A leaf this close to expiry is issued again by `ensure_certificates`.
_RENEW_BEFORE = datetime.timedelta(days=30)


def client_uri(system: str) -> str:
    return f"{SPIFFE_PREFIX}{system}"


@dataclass(frozen=True)
class CertificatePaths:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca-key.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server-key.pem"

    def client_cert(self, system: str) -> Path:
        return self.directory / f"{system}.pem"

    def client_key(self, system: str) -> Path:
        return self.directory / f"{system}-key.pem"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_cert(path: Path) -> x509.Certificate | None:
    if not path.exists():
        return None
    return x509.load_pem_x509_certificate(path.read_bytes())


def _still_good(path: Path, issuer: x509.Certificate | None) -> bool:
    cert = _load_cert(path)
    if cert is None or cert.not_valid_after_utc - _now() < _RENEW_BEFORE:
        return False
    if issuer is None:
        return True
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "etax identity platform (development)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _create_ca(paths: CertificatePaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("etax private CA"))
        .issuer_name(_name("etax private CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(paths.ca_key, key)
    _write_cert(paths.ca_cert, cert)
    return cert, key


def _issue(  # noqa: PLR0917 - one call site per certificate kind, all arguments named there
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    alt_names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    cert_path: Path,
    key_path: Path,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)


def issue_client_certificate(
    paths: CertificatePaths, system: str, *, uri: str | None = None
) -> tuple[Path, Path]:
    """A client certificate signed by the CA in paths (tests use other URIs too)."""
    ca_cert = _load_cert(paths.ca_cert)
    if ca_cert is None:
        raise FileNotFoundError(paths.ca_cert)
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an EC key")
    _issue(
        ca_cert,
        ca_key,
        system,
        [x509.UniformResourceIdentifier(uri or client_uri(system))],
        ExtendedKeyUsageOID.CLIENT_AUTH,
        paths.client_cert(system),
        paths.client_key(system),
    )
    return paths.client_cert(system), paths.client_key(system)


def ensure_certificates(
    directory: Path = DEFAULT_DIR,
    *,
    clients: tuple[str, ...] = CLIENT_SYSTEMS,
    force: bool = False,
) -> CertificatePaths:
    """Creates whatever is missing, expiring or not signed by the current CA."""
    paths = CertificatePaths(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca_cert = None if force else _load_cert(paths.ca_cert)
    if ca_cert is None or not paths.ca_key.exists() or not _still_good(paths.ca_cert, None):
        ca_cert, ca_key = _create_ca(paths)
    else:
        loaded = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{paths.ca_key} is not an EC key")
        ca_key = loaded
    if force or not _still_good(paths.server_cert, ca_cert) or not paths.server_key.exists():
        _issue(
            ca_cert,
            ca_key,
            "localhost",
            [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ],
            ExtendedKeyUsageOID.SERVER_AUTH,
            paths.server_cert,
            paths.server_key,
        )
    for system in clients:
        if (
            force
            or not _still_good(paths.client_cert(system), ca_cert)
            or not paths.client_key(system).exists()
        ):
            issue_client_certificate(paths, system)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--force", action="store_true", help="issue everything anew")
    args = parser.parse_args(argv)
    paths = ensure_certificates(args.directory, force=args.force)
    print(f"certificates in {paths.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
