"""Oblivious transfer for DKLs23: endemic base OT and random OT extension (DKLs23 spec §1.2, §2).

.. danger:: hazmat.
"""

#: Base OTs per ordered pair (κ = 256).
BASE_OTS = 256
