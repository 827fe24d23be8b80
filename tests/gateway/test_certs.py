"""`make certs`: the private CA and the certificates of the internal listener."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from etax_platform.certs import CLIENT_SYSTEMS, client_uri, ensure_certificates


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_server_and_client_certificates_are_signed_by_the_ca(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path)
    ca = _load(paths.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = _load(paths.server_cert)
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    for system in CLIENT_SYSTEMS:
        client = _load(paths.client_cert(system))
        client.verify_directly_issued_by(ca)
        uris = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [client_uri(system)]
        usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    assert paths.ca_key.stat().st_mode & 0o077 == 0


def test_second_run_keeps_what_is_there_and_force_renews(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    ensure_certificates(tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before
    ensure_certificates(tmp_path, force=True)
    assert paths.ca_cert.read_bytes() != before[paths.ca_cert]
    _load(paths.server_cert).verify_directly_issued_by(_load(paths.ca_cert))


def test_a_missing_leaf_is_issued_again_by_the_existing_ca(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path)
    ca_before = paths.ca_cert.read_bytes()
    paths.client_cert("hall").unlink()
    ensure_certificates(tmp_path)
    assert paths.ca_cert.read_bytes() == ca_before
    _load(paths.client_cert("hall")).verify_directly_issued_by(_load(paths.ca_cert))
