"""The signer node (ARCHITECTURE §7): the trusted-side service that holds key shares.

* :mod:`shardguard.node.keystore` — the sealed, crash-safe state store of one node (shares per
  key and epoch with two-phase refresh, small node state, peer-witnessed rollback defence).

Nothing is imported here, so importing one node module does not pull in the others.
"""
