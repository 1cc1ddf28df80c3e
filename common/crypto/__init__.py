"""All of fedveil's low-level cryptography, behind one package.

``common.crypto.hpke``: HPKE (RFC 9180) seal and open of updates; ``common.crypto.aggregator_keys``:
the aggregator's X25519 key pair and its files; ``common.crypto.certificates``: TLS certificates
and SuperNode authentication keys for deployments. Nothing outside this package imports
``cryptography`` or ``pyhpke``.
"""
