"""ShardGuard's hazmat layer: groups, scalars, Shamir/Feldman, transcripts, proofs.

.. danger:: Everything here is a raw primitive. Misuse (reusing a nonce, skipping a check)
   breaks security. Protocol code in :mod:`shardguard.protocols` is the safe entry point.

This package imports nothing else of ShardGuard's.
"""
