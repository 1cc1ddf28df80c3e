"""A federation's key material, made on first use and checked before any process starts.

With TLS: a private CA and a server certificate for ``127.0.0.1``/``localhost`` in ``tls/``.
With SuperNode authentication: one P-384 key pair per node in ``nodes/node-<i>/``. Always: the
aggregator's HPKE key pair (``keys/``, or the key the config names), whose fingerprint every
node pins, as it pins the downlink signing key derived from it (``signing_fingerprint``).
Files kept from an earlier run are reused only if they pass the same checks (a bad or expired
certificate, or a damaged key, is a one-line error and nothing is overwritten).
"""

from __future__ import annotations

from pathlib import Path

from common.crypto import certificates
from common.crypto.signing import derive_signing_key
from common.sealing import AggregatorKeyPair, load_private_key, write_keypair
from deployment.errors import DeployError
from deployment.layout import HOST, Layout


def aggregator_key_path(layout: Layout, key: str) -> Path:
    """Return the aggregator's private key: the one the config names, else the work dir's."""
    return Path(key) if key else layout.keys / "aggregator.key"


def prepare_material(layout: Layout, nodes: int, *, tls: bool, auth: bool, key: str) -> str:
    """Create (or check, when kept from before) certificates and keys; return the fingerprint."""
    if tls:
        files = certificates.TlsFiles.in_directory(layout.tls)
        if not files.server_cert.exists():
            certificates.create_tls_files(layout.tls)
        certificates.check_tls_files(files, host=HOST)
    if auth:
        for index in range(nodes):
            folder = layout.node(index)
            if not (folder / certificates.NODE_PRIVATE_KEY_FILE).exists():
                certificates.create_node_key(folder, comment=f"fedveil-node-{index}")
            certificates.check_node_private_key(folder / certificates.NODE_PRIVATE_KEY_FILE)
            certificates.check_node_public_key(folder / certificates.NODE_PUBLIC_KEY_FILE)
    path = aggregator_key_path(layout, key)
    if not path.exists() and not key:
        write_keypair(layout.keys, AggregatorKeyPair.generate())
    try:
        return load_private_key(path).fingerprint()
    except ValueError as exc:
        raise DeployError(str(exc)) from None


def signing_fingerprint(path: Path) -> str:
    """Return the fingerprint of the downlink signing key derived from the key at ``path``."""
    try:
        return derive_signing_key(load_private_key(path)).fingerprint()
    except ValueError as exc:
        raise DeployError(str(exc)) from None
