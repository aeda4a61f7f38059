"""Private key of the simulated enclave's development root CA — deliberately public, development only:
anyone can forge simulated evidence; verifiers refuse it unless allow_simulated.

It signs the leaf certificates of :class:`shardguard.enclave.simulated.SimulatedPlatform`'s
Nitro-shaped documents; its certificate and SPKI pin are :mod:`shardguard.attestation.dev_root`.
Publishing it is the point: simulated evidence proves nothing, so no one should be tempted to
trust it. P-384, PKCS#8 PEM, no passphrase.
"""

from __future__ import annotations

__all__ = ["DEV_ROOT_KEY_PEM"]

DEV_ROOT_KEY_PEM = b"""-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDDw21dga++iBjOIoigw
1U4yB7vfZIU1j9pa+BzqJY4z6nXl+SNn+SHZTA1KzDc5nEqhZANiAATndvZFA5ow
8ATeMKhnO7/ORbr91iYIUQeiqqJUWXMbyoylpVMV1oNhmCA5p8iZrGI8eTo0LkBB
WH1+kLsDo0cgbUSYyf+1B7+6GynXl4a25wPnt1EiJzRkg191MK2EbLA=
-----END PRIVATE KEY-----
"""
