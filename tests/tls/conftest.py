"""Certificates for the TLS tests, made by trustme: a CA, and a certificate it signs
for 127.0.0.1 and localhost, written as PEM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme


@dataclass(frozen=True)
class Certificates:
    """PEM files: the node's certificate chain and key, and the CA that signed it."""

    cert: Path
    key: Path
    cacert: Path


def write_certificates(directory: Path, ca: trustme.CA) -> Certificates:
    """A certificate for 127.0.0.1 and localhost signed by *ca*, in *directory*."""
    issued = ca.issue_cert("127.0.0.1", "localhost")
    paths = Certificates(directory / "cert.pem", directory / "key.pem", directory / "ca.pem")
    issued.private_key_and_cert_chain_pem.write_to_path(str(paths.cert))
    issued.private_key_pem.write_to_path(str(paths.key))
    ca.cert_pem.write_to_path(str(paths.cacert))
    return paths


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return write_certificates(tmp_path, trustme.CA())


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """A CA file that did not sign the node's certificate."""
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path
