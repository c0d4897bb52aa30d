"""Local files -> bronze: the delivered bytes, unchanged, under keys no delivery overwrites."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from minio import Minio

from medallion import storage
from medallion.formats import FOLDER_SUFFIXES, logical_suffix
from medallion.settings import run_slug

PREFIX = "ventas"
DELIVERED_NAME = "delivered-name"  # object metadata: the file name as delivered (%-encoded)
_MAX_NAME = 200  # bytes (UTF-8) of the name part of a key; S3 allows 1024 for the whole key
# Kept in keys: letters and digits of any script, and punctuation S3 keys carry as they are;
# everything else (control characters, separators, characters S3 advises against) -> "_".
_UNSAFE = re.compile(r"[^\w .,;=+@()!$&'-]")


@dataclass
class Delivery:
    path: Path
    sha256: str
    size: int
    key: str
    status: str  # uploaded | already in bronze
    # the delivered file as it was hashed (file_identity), so that silver can read it instead
    # of downloading the same bytes back; None when it changed just before or while hashed
    local: dict | None = None
    hashed_by: str = "bronze"  # or "discovery": its hash, taken while the file is unchanged


@dataclass(frozen=True)
class Ignored:
    """An entry of a delivery folder that is not a sales file: not read, not an error."""

    name: str
    reason: str


# Kept in an empty drop folder by git (incoming/.gitkeep): not worth a line in every run
PLACEHOLDERS = {".gitkeep"}


def scan_input(input_path: Path, allow_empty: bool = False) -> tuple[list[Path], list[Ignored]]:
    """The CSV/JSON files of a delivery and what it leaves out. One file is taken as it is; a
    folder gives the files directly in it whose suffix is in ``FOLDER_SUFFIXES`` (also .gz),
    sorted by name; its other entries (other files, hidden ones, subfolders: names stay unique
    within a delivery) are listed as ignored, with the reason."""
    if not input_path.exists():
        raise FileNotFoundError(f"Input path {input_path} does not exist")
    if input_path.is_file():
        return [input_path], []
    files, ignored = [], []
    for path in sorted(input_path.iterdir()):
        if path.name in PLACEHOLDERS:
            continue
        suffix = logical_suffix(path)
        if path.name.startswith("."):
            ignored.append(Ignored(path.name, "hidden entry"))
        elif path.is_dir():
            ignored.append(Ignored(path.name, "subfolder: folders are not read recursively"))
        elif not path.is_file():
            ignored.append(Ignored(path.name, "not a regular file"))
        elif suffix not in FOLDER_SUFFIXES:
            kind = f"'{suffix}'" if suffix else "no extension"
            ignored.append(Ignored(path.name, f"not a CSV/JSON sales file ({kind})"))
        else:
            files.append(path)
    if not files and not allow_empty:
        raise FileNotFoundError(
            f"No CSV or JSON files in {input_path} (looked for {sorted(FOLDER_SUFFIXES)}, "
            f"also .gz; ignored: {', '.join(i.name for i in ignored) or 'nothing'})"
        )
    return files, ignored


def list_input_files(input_path: Path, allow_empty: bool = False) -> list[Path]:
    """The CSV/JSON files of a delivery (``scan_input`` without what it ignores)."""
    return scan_input(input_path, allow_empty)[0]


def safe_object_name(name: str) -> str:
    """The file name as it can stand in an object key: no path separators, no '..', no
    control characters; letters of any script stay, so the key stays readable:
    '..\\..\\evil.csv' -> 'evil.csv'; 'año\\x01.csv' (a control character) -> 'año_.csv'."""
    name = unicodedata.normalize("NFC", name)
    parts = [p for p in re.split(r"[/\\]", name) if p.strip(" .")]  # no '.', '..' or ''
    text = re.sub(r"\.{2,}", ".", _UNSAFE.sub("_", "_".join(parts))).strip(" .")
    if len(text.encode()) > _MAX_NAME:
        suffix = "".join(Path(text).suffixes[-2:])[-20:]  # keeps '.csv.gz'
        stem = text[: len(text) - len(suffix)].encode()[: _MAX_NAME - len(suffix.encode())]
        text = stem.decode("utf-8", "ignore") + suffix
    return text or "file"


def delivered_name(client: Minio, bucket: str, key: str) -> str:
    """The name a bronze object was delivered under (its key holds a safe form of it)."""
    stored = client.stat_object(bucket, key).metadata.get(f"x-amz-meta-{DELIVERED_NAME}")
    return unquote(stored) if stored else Path(key).name


def file_identity(path: Path) -> dict[str, int | str] | None:
    """What tells that a local file is unchanged without reading it again, as git's index
    does: its resolved path, device, inode, size, and modification and change times (writing
    to it or replacing it changes one of them; its change time cannot be set back). None when
    there is no such file."""
    try:
        st = path.stat()
    except OSError:
        return None
    return {
        "path": str(path.resolve()),
        "device": st.st_dev,
        "inode": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


# A file's times come from a clock that ticks every few milliseconds: two writes within one tick
# leave the same times. A file last changed this long before it is hashed cannot be written
# again within the tick of that change, so a later write changes its times (git's "racily
# clean" files; git re-reads them, bronze does not vouch for them).
SETTLE_NS = 50_000_000


def settled(identity: dict | None, hashed_at: int) -> bool:
    """Whether a file (its ``file_identity``) was last changed well before ``hashed_at``."""
    return identity is not None and identity["ctime_ns"] < hashed_at - SETTLE_NS


def unchanged(local: dict | None) -> bool:
    """Whether a delivered file (its ``file_identity`` when bronze hashed it) is still the
    same file, with the same bytes: those of its bronze object."""
    return local is not None and file_identity(Path(local["path"])) == local


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_file(path: Path) -> dict:
    """``{"sha256": ..., "identity": ...}``: the file's hash and its ``file_identity`` when it
    was hashed, which vouches for the hash as long as the file keeps it (None when the file
    changed just before or while it was hashed)."""
    hashed_at = time.time_ns()
    before = file_identity(path)
    sha = sha256_of(path)
    identity = before if settled(before, hashed_at) and file_identity(path) == before else None
    return {"sha256": sha, "identity": identity}


def ingest_file(
    client: Minio,
    bucket: str,
    path: Path,
    ingest_date: dt.date | None = None,
    hashed: dict | None = None,
) -> Delivery:
    """Upload one file unless the same bytes under the same name are already in bronze (then
    reuse that object). ``hashed`` is the file's ``hash_file`` from earlier (the run's
    discovery): taken as it is while the file is unchanged, the file is not read twice.

    Key: ``ventas/ingest_date=YYYY-MM-DD/<sha256[:16]>/<safe file name>``; an index object per
    content hash and name makes re-delivering the same file a no-op on any later day, while
    every object keeps the name it was delivered under: in its key when that name is safe
    there, always in its metadata (the messages about it name that file).
    """
    hashed_by = "discovery"
    if not (hashed and hashed["identity"] and file_identity(path) == hashed["identity"]):
        hashed, hashed_by = hash_file(path), "bronze"  # by hand, or the file changed since
    sha, local = hashed["sha256"], hashed["identity"]
    size = path.stat().st_size
    index_key = f"_index/sha256={sha}/{run_slug(path.name)}.json"
    if storage.object_exists(client, bucket, index_key):
        key = storage.get_json(client, bucket, index_key)["key"]
        return Delivery(path, sha, size, key, "already in bronze", local, hashed_by)
    ingest_date = ingest_date or dt.datetime.now(dt.UTC).date()
    name = safe_object_name(path.name)
    key = f"{PREFIX}/ingest_date={ingest_date.isoformat()}/{sha[:16]}/{name}"
    metadata = {"sha256": sha, DELIVERED_NAME: quote(path.name, safe=" ()+,;=@!$&'")}
    client.fput_object(bucket, key, str(path), metadata=metadata)
    storage.put_json(
        client, bucket, index_key, {"key": key, "sha256": sha, "source_path": str(path)}
    )
    return Delivery(path, sha, size, key, "uploaded", local, hashed_by)
