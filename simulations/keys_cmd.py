"""``fedveil keys generate``: the key material of a deployment, one kind per folder.

- ``fedveil keys generate DIR``: the aggregator's HPKE key pair (``aggregator.key``, mode 0600;
  ``aggregator.pub``); prints the public key's fingerprint, which SuperNodes pin with
  ``--node-config "aggregator-fingerprint=..."``, and tells on stderr the fingerprint of the
  downlink signing key derived from it (``aggregator-signing-fingerprint``).
- ``fedveil keys generate --tls [--host H ...] DIR``: a private CA and a SuperLink server
  certificate naming each ``--host`` (default ``127.0.0.1`` and ``localhost``); prints the CA
  certificate's path, the file SuperNodes trust.
- ``fedveil keys generate --node DIR``: a SuperNode authentication key (P-384, OpenSSH); prints
  the public key line to register with ``flwr supernode register``.

Nothing is ever overwritten: an existing key file makes the command fail with one line naming
it. Host names are checked (``certificates.check_host``) before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.crypto import certificates
from common.crypto.signing import derive_signing_key
from common.files import show_path
from common.sealing import PUBLIC_KEY_FILE, AggregatorKeyPair, KeyFileExistsError, write_keypair


def generate_aggregator(directory: Path) -> tuple[str, str]:
    """Write the aggregator's key pair into ``directory``; return the two fingerprints to pin.

    Returns:
        The sealing key's fingerprint (``aggregator-fingerprint``) and that of the downlink
        signing key derived from it (``aggregator-signing-fingerprint``).

    Raises:
        CertificateError: ``aggregator.key`` or ``aggregator.pub`` exists already (a public key
            pinned by SuperNodes is never silently replaced), or the folder cannot be written.

    """
    public = Path(directory) / PUBLIC_KEY_FILE
    if public.exists() or public.is_symlink():
        raise certificates.CertificateError(
            f"{show_path(public)} exists already; refusing to overwrite it (remove or move it, "
            f"or use another folder)"
        )
    keypair = AggregatorKeyPair.generate()
    try:
        write_keypair(directory, keypair)
    except KeyFileExistsError as exc:
        raise certificates.CertificateError(str(exc)) from None
    except OSError as exc:
        raise certificates.CertificateError(
            f"{directory}: cannot write keys ({exc.strerror or exc})"
        ) from None
    return keypair.fingerprint(), derive_signing_key(keypair).fingerprint()


def generate_tls(directory: Path, hosts: Sequence[str], days: int) -> Path:
    """Write a CA and a server certificate for ``hosts``; return the CA certificate's path."""
    files = certificates.create_tls_files(
        directory, hosts=tuple(hosts) or certificates.DEFAULT_HOSTS, days=days
    )
    certificates.check_tls_files(files, host=(tuple(hosts) or certificates.DEFAULT_HOSTS)[0])
    return files.ca_cert


def generate_node(directory: Path) -> str:
    """Write a SuperNode authentication key pair; return the public key line."""
    files = certificates.create_node_key(directory)
    return certificates.check_node_public_key(files.public_key)
