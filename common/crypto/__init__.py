"""All of fedveil's low-level cryptography, behind one package.

``common.crypto.certificates``: TLS certificates and SuperNode authentication keys for
deployments. HPKE sealing of updates lives in ``common.sealing`` and moves here next.
"""
