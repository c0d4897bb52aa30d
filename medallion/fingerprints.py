"""Remembering a file's lines without keeping them: a compact set of 64- and 128-bit siphash
fingerprints, the contract's line key (a key seen again is a conflict) and exact duplicate
lines.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa


class Fingerprints:
    """A set of 64- or 128-bit fingerprints kept as sorted numpy runs: 8 or 16 bytes per entry
    and no Python objects, so it holds a 10M-line delivery in ~100 MB where a Python set of
    digests took over a gigabyte. Runs are merged (a linear timsort merge) up to `max_run`
    entries, which bounds the transient memory of a merge.

    A bitmap indexed by the top `FILTER_BITS` bits of each fingerprint says which ones may have
    been added: only those are looked up in the runs. Almost every line of a delivery is new,
    and at 10M lines looking each one up in every run took 4 s of CPU per set (issue 12). The
    bitmap is 8 MB of zeroed memory, of which the system allocates only the pages written."""

    FILTER_BITS = 26

    def __init__(self, max_run: int = 1 << 21):
        self.max_run = max_run
        self._runs: list[tuple[np.ndarray, np.ndarray | None]] = []
        self._filter = np.zeros(1 << (self.FILTER_BITS - 3), dtype=np.uint8)

    def _slots(self, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(byte, bit) of each fingerprint in the bitmap."""
        slot = hi.astype(np.uint64, copy=False) >> np.uint64(64 - self.FILTER_BITS)
        return slot >> np.uint64(3), np.left_shift(1, slot & np.uint64(7)).astype(np.uint8)

    def _may_have(self, hi: np.ndarray) -> np.ndarray:
        byte, bit = self._slots(hi)
        return (self._filter[byte] & bit) != 0

    def _remember(self, hi: np.ndarray) -> None:
        """Set the bitmap's bits of sorted fingerprints: their bytes are sorted too, so the
        bits of each byte are or-ed together first (no unbuffered ufunc.at)."""
        if not len(hi):
            return
        byte, bit = self._slots(hi)
        starts = np.flatnonzero(np.concatenate(([True], byte[1:] != byte[:-1])))
        self._filter[byte[starts]] |= np.bitwise_or.reduceat(bit, starts)

    def __len__(self) -> int:
        return sum(len(hi) for hi, _ in self._runs)

    def add(self, hi: np.ndarray, lo: np.ndarray | None = None) -> np.ndarray:
        """Add fingerprints; True where one was already there (or earlier in this call)."""
        # sorted needles: the look-ups walk each run in order (cache-friendly), and the new
        # run is pushed already sorted
        order = np.argsort(hi)
        s_hi, s_lo = hi[order], None if lo is None else lo[order]
        if (s_hi[1:] == s_hi[:-1]).any():  # repeats within the call (rare): which ones
            columns = {"hi": hi} if lo is None else {"hi": hi, "lo": lo}
            seen = pd.DataFrame(columns).duplicated().to_numpy(copy=True)
        else:
            seen = np.zeros(len(hi), dtype=bool)
        s_seen = seen[order]
        maybe = np.flatnonzero(self._may_have(s_hi))  # still sorted: the look-ups' needles
        m_hi, m_lo = s_hi[maybe], None if s_lo is None else s_lo[maybe]
        for run_hi, run_lo in self._runs:
            if not len(maybe):
                break
            at = np.minimum(np.searchsorted(run_hi, m_hi), len(run_hi) - 1)
            hit = run_hi[at] == m_hi
            if m_lo is not None and hit.any():
                hit &= self._same_lo(run_hi, run_lo, at, m_hi, m_lo, hit)
            s_seen[maybe] |= hit
        seen[order] = s_seen
        fresh = ~s_seen
        self._push(s_hi[fresh], None if s_lo is None else s_lo[fresh])
        self._remember(s_hi[fresh])
        return seen

    @staticmethod
    def _same_lo(run_hi, run_lo, at, hi, lo, hit) -> np.ndarray:
        same = run_lo[at] == lo
        for i in np.flatnonzero(hit & ~same):  # equal 64-bit halves: look at all of them
            end = np.searchsorted(run_hi, hi[i], side="right")
            same[i] = bool((run_lo[at[i] : end] == lo[i]).any())
        return same

    def _push(self, hi: np.ndarray, lo: np.ndarray | None) -> None:
        """Add a run of new fingerprints, sorted by ``hi``."""
        if not len(hi):
            return
        self._runs.append((hi, lo))
        while len(self._runs) > 1:
            (a_hi, a_lo), (b_hi, b_lo) = self._runs[-2], self._runs[-1]
            if len(a_hi) > 2 * len(b_hi) or len(a_hi) + len(b_hi) > self.max_run:
                break
            merged = np.concatenate([a_hi, b_hi])
            order = np.argsort(merged, kind="stable")  # two sorted runs: a linear merge
            lows = None if a_lo is None else np.concatenate([a_lo, b_lo])[order]
            self._runs[-2:] = [(merged[order], lows)]


_KEYS = ("medallion-silver", "ventas-lineas-16")  # siphash keys (16 characters)


def fingerprint(values: pd.Series, bits: int = 128) -> tuple[np.ndarray, np.ndarray | None]:
    """Vectorised siphash of text values: (high, low) 64-bit halves (low is None for 64 bits)."""
    # UTF-8 bytes straight from Arrow: the same hashes as of the str values, without encoding
    # each str again in Python (three times faster)
    text = (
        pa.array(values.astype("string"), type=pa.string(), from_pandas=True)
        .fill_null("\x00")
        .cast(pa.binary())
        .to_numpy(zero_copy_only=False)
    )
    hi = pd.util.hash_array(text, hash_key=_KEYS[0], categorize=False)
    lo = pd.util.hash_array(text, hash_key=_KEYS[1], categorize=False) if bits == 128 else None
    return hi, lo


class LineKeys:
    """The contract's line key: the source's own line id where the file has it, otherwise
    order id + position of the line in its order. A key seen again on a line that is not an
    exact duplicate is a conflict: both lines go on, and the later one wins in the warehouse.
    Keys are remembered as 64-bit fingerprints (a collision could only add one to the count
    of conflicts, never change a row)."""

    def __init__(self, source_id: str | None):
        self.source_id = source_id
        self._positions: Counter = Counter()
        self._seen = Fingerprints()

    def assign(self, table: pa.Table) -> tuple[pa.Array, int]:
        """Each row's line key (text) and how many of them were seen before."""
        names = [c for c in (self.source_id, "order_id") if c and c in table.column_names]
        chunk = table.select(names).to_pandas()
        key = pd.Series(pd.NA, index=chunk.index, dtype="string")
        if self.source_id and self.source_id in chunk:
            key = chunk[self.source_id].astype("string")
        missing = key.isna() & chunk["order_id"].notna()
        if missing.any():  # order id + position, only where the source has no line id
            order = chunk.loc[missing, "order_id"].astype("string")
            known = order.map(lambda o: self._positions[o]).astype("Int64")
            position = known + order.groupby(order).cumcount() + 1
            self._positions.update(order.value_counts().to_dict())
            key[missing] = order + "-" + position.astype("string")
        present = key.notna().to_numpy()
        hi, _ = fingerprint(key[present], bits=64)
        return pa.array(key, type=pa.string(), from_pandas=True), int(self._seen.add(hi).sum())


class ExactDuplicates:
    """Lines whose raw text was already seen in the file (a 128-bit fingerprint per line)."""

    def __init__(self) -> None:
        self._seen = Fingerprints()

    def mark(self, raw: pd.Series) -> pd.Series:
        hi, lo = fingerprint(raw)
        return pd.Series(self._seen.add(hi, lo), index=raw.index)

    def mark_hashed(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """As ``mark``, from the lines' fingerprints (computed elsewhere, e.g. in a thread)."""
        return self._seen.add(hi, lo)
