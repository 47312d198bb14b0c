"""The local stack's private certificate authority and its servers' TLS certificates, made once
into the data dir's secrets/ with the `cryptography` package (owner-only files).

Clients trust the CA (settings.kafka_security.ssl_cafile points at it by default); a server's
certificate names the loopback addresses and hosts it serves on, so clients check the host name
as they would against a real cluster.
"""

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALID_FOR = datetime.timedelta(days=825)  # the longest TLS server certificates are commonly trusted for
CA_NAME = "flight_platform local CA"


@dataclass(frozen=True)
class ServerCertificate:
    # The server's key (PKCS#8, unencrypted: Java 17 cannot read PBES2-encrypted keys, so the file's
    # owner-only mode protects it, as a web server's key is), its certificate and the CA's, in one
    # PEM file (as Kafka's PEM key store reads it).
    pem_file: Path


def write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)


def _certificate(subject: str, key, issuer: x509.Name, signing_key, extensions) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALID_FOR))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signing_key, hashes.SHA256())


def ensure_ca(secrets_dir: Path) -> tuple[Path, Path]:
    """The CA's certificate and key files, made on first use. Returns (certificate, key)."""
    cert_file, key_file = secrets_dir / "local-ca.pem", secrets_dir / "local-ca.key"
    if not cert_file.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        cert = _certificate(CA_NAME, key, name, key, [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                           data_encipherment=False, key_agreement=False, key_cert_sign=True,
                           crl_sign=True, encipher_only=False, decipher_only=False), True)])
        write_private(key_file, key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file


def ensure_server_certificate(secrets_dir: Path, name: str, hosts: list[str]) -> ServerCertificate:
    """A certificate for the server `name` on `hosts` (IP addresses or DNS names), signed by the
    local CA, made unless one exists."""
    files = ServerCertificate(secrets_dir / f"{name}.pem")
    if files.pem_file.exists():
        return files
    ca_cert_file, ca_key_file = ensure_ca(secrets_dir)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_file.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address(host)) if _is_ip(host) else x509.DNSName(host)
             for host in dict.fromkeys([*hosts, "localhost"])]
    cert = _certificate(name, key, ca_cert.subject, ca_key, [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.SubjectAlternativeName(names), False),
        # Servers and, between Kafka nodes, clients of each other.
        (x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH,
                                x509.ExtendedKeyUsageOID.CLIENT_AUTH]), False)])
    write_private(files.pem_file, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM))
    return files


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
