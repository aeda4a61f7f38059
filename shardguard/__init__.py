"""ShardGuard: threshold signing whose shares live only inside attested enclaves."""

__version__ = "0.1.0"
