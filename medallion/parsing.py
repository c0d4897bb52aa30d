"""Reading one delivered file as it comes: check its type and size, detect its compression
and encoding (formats), hand it to the CSV or the JSON reader (csv_reader, json_reader), and
return what was detected with the records chunk by chunk as text, each with its line number
and raw text; `prefetched` reads the next chunk while the caller works on the current one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from medallion.contract import Contract
from medallion.csv_reader import read_csv
from medallion.formats import (
    GZIP_MAGIC,
    SUPPORTED,
    InputFileError,
    SourceFormat,
    detect_encoding,
    logical_suffix,
    too_big,
)
from medallion.json_reader import read_json


def prefetched(chunks: Iterator[pd.DataFrame], depth: int = 1) -> Iterator[pd.DataFrame]:
    """Read the next chunk(s) in a background thread while the caller works on the current
    one: Arrow parses CSV without holding the GIL, so reading and checking overlap."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        slots.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as err:  # handed to the consumer, raised there
            slots.put(err)

    worker = threading.Thread(target=produce, name="chunk-reader", daemon=True)
    worker.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def read_chunks(
    path: Path, contract: Contract, source: str, batch_size: int = 100_000
) -> tuple[SourceFormat, Iterator[pd.DataFrame]]:
    """Detect how the file is written and return that with an iterator of raw chunks."""
    suffix = logical_suffix(path)
    if suffix not in SUPPORTED:
        raise InputFileError(
            f"{source}: unsupported file type '{suffix}' (expected {sorted(SUPPORTED)})."
        )
    fmt = SourceFormat()
    with path.open("rb") as fh:
        fmt.compression = "gzip" if fh.read(2) == GZIP_MAGIC else None
    max_bytes = contract.limits.max_file_mb << 20
    if fmt.compression is None and path.stat().st_size > max_bytes:
        raise InputFileError(too_big(source, max_bytes))
    fmt.encoding = detect_encoding(path, contract.parsing.encodings, source, max_bytes)
    if suffix in {".json", ".jsonl", ".ndjson"}:
        return fmt, read_json(path, fmt, contract, source, batch_size)
    return fmt, read_csv(path, fmt, contract, source, batch_size)
