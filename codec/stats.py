"""Order-0 entropy: the yardstick `codec inspect` prints beside the bits actually spent."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StreamStat:
    name: str            # e.g. "exponent", "sign+mantissa", "plane0"
    symbols: int         # number of symbols in the stream
    entropy_bits: float  # order-0 entropy of the stream, total bits
    spent_bits: int      # bits the encoding actually used

    def merge(self, other: "StreamStat") -> "StreamStat":
        return StreamStat(self.name, self.symbols + other.symbols,
                          self.entropy_bits + other.entropy_bits, self.spent_bits + other.spent_bits)


def entropy_bits_of_counts(counts: np.ndarray) -> float:
    """Total order-0 entropy in bits of a stream with these symbol counts."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    if n == 0:
        return 0.0
    p = counts[counts > 0] / n
    return max(0.0, float(-(counts[counts > 0] * np.log2(p)).sum()))    # a constant stream: 0, not -0


def byte_entropy_bits(data: np.ndarray) -> float:
    """Total order-0 entropy in bits of a uint8 array."""
    return entropy_bits_of_counts(np.bincount(data.reshape(-1).view(np.uint8), minlength=256))
