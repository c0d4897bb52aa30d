"""The delivery ledger (``audit.deliveries``): which files were delivered, which were loaded.

Every run starts by looking at its input (a file or a folder such as ``incoming/``):

* a file whose exact content (sha256) was loaded before, under any name, is skipped;
* a new file, a changed file under a known name, a file that failed, or one whose run never
  finished is processed by this run (``processing``);
* at the end of the run each processed file is ``loaded`` (its lines reached silver and the
  run was published) or ``failed``, with the reason; a failed file is taken again next time.

What each run decided is also in ``audit.run_log`` (step ``discover``, one row per file). The
entries of a folder that are not sales files (a ``notas.txt``, a subfolder, a hidden file) are
recorded there too, as ``ignored`` with the reason; they are not deliveries: no ledger row, no
task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import Engine, text

from medallion import bronze
from medallion.warehouse import log_step, transaction

# What a run decided for a file it saw
NEW, CHANGED, RETRY, REPROCESS = "new", "changed", "retry", "reprocess"
ALREADY_LOADED, DUPLICATE = "already loaded", "duplicate"
IGNORED = "ignored"  # an entry of the folder that is not a sales file (run log only)
TO_PROCESS = {NEW, CHANGED, RETRY, REPROCESS}


# The ledger's words in Spanish: what the CLI and the runs' index say about each file
DECISIONS_ES = {
    NEW: "nuevo",
    CHANGED: "cambiado",
    RETRY: "reintento",
    REPROCESS: "reproceso",
    ALREADY_LOADED: "ya cargado, se omite",
    DUPLICATE: "duplicado, se omite",
    IGNORED: "ignorado",  # in the folder, but not a sales file (not counted as one)
}
STATUS_ES = {
    "loaded": "cargado",
    "failed": "falló",
    "processing": "sin terminar",
    "duplicate": "duplicado",
}


@dataclass(frozen=True)
class Delivery:
    """One file of a run's input and what the run does with it."""

    file_name: str
    path: str
    sha256: str
    size: int
    decision: str
    note: str = ""
    # the file as it was hashed (bronze.file_identity): bronze takes the hash while it holds
    identity: dict | None = None

    @property
    def to_process(self) -> bool:
        return self.decision in TO_PROCESS


def discover(eng: Engine, input_path: Path, run_id: str, reprocess: bool = False) -> list[Delivery]:
    """Decide, file by file, what this run loads; record the decisions in the ledger. What a
    folder holds besides sales files goes to the run log only, as ignored."""
    seen: dict[str, str] = {}  # sha256 -> file name, within this delivery
    deliveries = []
    # an empty drop folder is a run with nothing new, not an error
    files, ignored = bronze.scan_input(input_path, allow_empty=True)
    with transaction(eng) as conn:
        # one discovery at a time: two runs never both take the same new file
        conn.execute(text("select pg_advisory_xact_lock(hashtext('medallion.ledger'))"))
        for path in files:
            hashed = bronze.hash_file(path)
            delivery = _decide(conn, path, hashed, seen.get(hashed["sha256"]), reprocess)
            seen.setdefault(delivery.sha256, path.name)
            _record_decision(conn, delivery, run_id)
            deliveries.append(delivery)
    for d in deliveries:
        details = {"sha256": d.sha256, "bytes": d.size, "note": d.note}
        log_step(eng, run_id, "discover", d.file_name, status=d.decision, details=details)
    for entry in ignored:
        note = {"note": entry.reason}
        log_step(eng, run_id, "discover", entry.name, status=IGNORED, details=note)
    return deliveries


def _decide(conn, path: Path, hashed: dict, twin: str | None, reprocess: bool) -> Delivery:
    sha = hashed["sha256"]

    def delivery(decision: str, note: str = "") -> Delivery:
        size = path.stat().st_size
        return Delivery(path.name, str(path), sha, size, decision, note, hashed["identity"])

    if twin is not None:
        return delivery(DUPLICATE, f"same content as {twin} in this delivery")
    if reprocess:
        return delivery(REPROCESS)
    loaded = conn.execute(
        text(
            "select file_name, run_id from audit.deliveries where sha256 = :sha "
            "and status = 'loaded' order by file_name = :name desc, updated_at limit 1"
        ),
        {"sha": sha, "name": path.name},
    ).first()
    if loaded is not None and loaded.file_name == path.name:
        return delivery(ALREADY_LOADED, f"loaded by run {loaded.run_id}")
    if loaded is not None:
        note = f"same content as {loaded.file_name}, loaded by run {loaded.run_id}"
        return delivery(DUPLICATE, note)
    earlier = conn.execute(
        text(
            "select bool_or(sha256 = :sha) as same, count(*) as versions "
            "from audit.deliveries where file_name = :name"
        ),
        {"sha": sha, "name": path.name},
    ).one()
    if earlier.same:
        return delivery(RETRY, "not loaded by an earlier run")
    return delivery(CHANGED if earlier.versions else NEW)


def _record_decision(conn, d: Delivery, run_id: str) -> None:
    """Upsert the file's ledger row: a file to process is 'processing' for this run; a skipped
    one only has its last sighting updated (a duplicate gets a row of its own)."""
    status = "processing" if d.to_process else ("duplicate" if d.decision == DUPLICATE else None)
    conn.execute(
        text(
            """
            insert into audit.deliveries as d (file_name, sha256, size_bytes, run_id, status,
                                               message)
            values (:file_name, :sha256, :size, :run_id, coalesce(:status, 'loaded'), :note)
            on conflict (file_name, sha256) do update set
                last_seen_at = now(),
                run_id = case when :status = 'processing' then excluded.run_id else d.run_id end,
                status = coalesce(:status, d.status),
                message = case when :status is null then d.message else excluded.message end,
                updated_at = now()
            """
        ),
        {**asdict(d), "run_id": run_id, "status": status, "note": d.note or None},
    )


def record_outcome(eng: Engine, run_id: str, outcome: dict[tuple[str, str], str | None]) -> None:
    """Close the run's files: ``{(file name, sha256): None if loaded, else the reason}``."""
    with transaction(eng) as conn:
        for (file_name, sha), reason in outcome.items():
            conn.execute(
                text(
                    "update audit.deliveries set status = :status, message = :reason, "
                    "run_id = :run_id, updated_at = now() "
                    "where file_name = :file_name and sha256 = :sha"
                ),
                {
                    "status": "loaded" if reason is None else "failed",
                    "reason": reason,
                    "run_id": run_id,
                    "file_name": file_name,
                    "sha": sha,
                },
            )
