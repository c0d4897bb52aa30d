"""The delivery ledger against the real warehouse: what a run takes, skips and retries."""

import re
import uuid

import pytest
from sqlalchemy import text

from medallion import ledger


@pytest.fixture
def folder(tmp_path):
    """A drop folder whose file names and contents no other test uses (the ledger is per
    warehouse and recognises content under any name)."""
    tag = uuid.uuid4().hex[:8]

    def drop(name: str, content: str):
        path = tmp_path / f"{tag}_{name}"
        path.write_text(f"{content}{tag}\n")
        return path

    drop.path = tmp_path
    drop.tag = tag
    return drop


def run_id() -> str:
    return f"test_ledger__{uuid.uuid4().hex[:8]}"


def decisions(found) -> dict[str, str]:
    return {d.file_name.split("_", 1)[1]: d.decision for d in found}


def statuses(db, tag: str) -> dict[tuple[str, str], str]:
    with db.connect() as conn:
        rows = conn.execute(
            text("select file_name, sha256, status from audit.deliveries where file_name like :t"),
            {"t": f"{tag}_%"},
        ).all()
    return {(f.split("_", 1)[1], sha[:8]): status for f, sha, status in rows}


def close(db, run: str, found, failed: set[str] = frozenset()) -> None:
    ledger.record_outcome(
        db,
        run,
        {
            (d.file_name, d.sha256): ("broken" if d.file_name.endswith(tuple(failed)) else None)
            for d in found
            if d.to_process
        },
    )


def test_new_files_are_taken_once_and_then_skipped(db, folder):
    folder("a.csv", "a,b\n1,2\n")
    folder("b.json", "[]")
    first_run = run_id()
    first = ledger.discover(db, folder.path, first_run)
    assert decisions(first) == {"a.csv": "new", "b.json": "new"}
    assert set(statuses(db, folder.tag).values()) == {"processing"}
    close(db, first_run, first)
    assert set(statuses(db, folder.tag).values()) == {"loaded"}

    again = ledger.discover(db, folder.path, run_id())
    assert decisions(again) == {"a.csv": "already loaded", "b.json": "already loaded"}
    assert not any(d.to_process for d in again)
    assert all(first_run in d.note for d in again)


def test_changed_content_is_loaded_and_same_content_under_a_new_name_is_not(db, folder):
    a = folder("a.csv", "a,b\n1,2\n")
    first_run = run_id()
    close(db, first_run, ledger.discover(db, folder.path, first_run))
    a.write_text(f"a,b\n1,3\n{folder.tag}\n")
    folder("copia_de_a.csv", "a,b\n1,2\n")  # the first content again, under another name
    found = ledger.discover(db, folder.path, run_id())
    assert decisions(found) == {"a.csv": "changed", "copia_de_a.csv": "duplicate"}
    assert "a.csv" in next(d.note for d in found if d.decision == "duplicate")
    assert sorted(statuses(db, folder.tag).values()) == ["duplicate", "loaded", "processing"]


def test_a_failed_file_and_an_unfinished_run_are_retried(db, folder):
    folder("malo.csv", "x\n")
    folder("bueno.csv", "a,b\n1,2\n")
    first_run = run_id()
    close(db, first_run, ledger.discover(db, folder.path, first_run), failed={"malo.csv"})
    with db.connect() as conn:
        message = conn.execute(
            text("select message from audit.deliveries where file_name = :f"),
            {"f": f"{folder.tag}_malo.csv"},
        ).scalar_one()
    assert message == "broken"
    folder("nuevo.csv", "a,b\n5,6\n")
    second = ledger.discover(db, folder.path, run_id())  # never closed: a killed run
    assert decisions(second) == {
        "bueno.csv": "already loaded",
        "malo.csv": "retry",
        "nuevo.csv": "new",
    }
    third = ledger.discover(db, folder.path, run_id())
    assert decisions(third)["nuevo.csv"] == "retry"


def test_identical_files_in_one_delivery_are_loaded_once(db, folder):
    folder("x.csv", "same\n")
    folder("y.csv", "same\n")
    found = ledger.discover(db, folder.path, run_id())
    assert decisions(found) == {"x.csv": "new", "y.csv": "duplicate"}


def test_reprocess_takes_everything(db, folder):
    folder("a.csv", "a\n")
    first_run = run_id()
    close(db, first_run, ledger.discover(db, folder.path, first_run))
    found = ledger.discover(db, folder.path, run_id(), reprocess=True)
    assert decisions(found) == {"a.csv": "reprocess"}


def test_an_empty_drop_folder_is_nothing_new(db, tmp_path):
    assert ledger.discover(db, tmp_path, run_id()) == []
    with pytest.raises(FileNotFoundError):
        ledger.discover(db, tmp_path / "missing", run_id())


def test_each_decision_is_in_the_run_log(db, folder):
    folder("a.csv", "a\n")
    run = run_id()
    ledger.discover(db, folder.path, run)
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "select source, status from audit.run_log where run_id = :r and step = 'discover'"
            ),
            {"r": run},
        ).all()
    assert rows == [(f"{folder.tag}_a.csv", "new")]


def test_what_is_not_a_sales_file_in_a_folder_is_ignored_and_reported(db, folder, capsys):
    from medallion import bronze, cli, runs

    folder("a.csv", "a,b\n1,2\n")
    (folder.path / "notas.txt").write_text("delivered by Ana, call her if something is wrong\n")
    (folder.path / "viejos").mkdir()
    (folder.path / "viejos" / "b.csv").write_text(f"a,b\n3,4\n{folder.tag}\n")
    (folder.path / ".DS_Store").write_bytes(b"\0\0")
    (folder.path / ".gitkeep").touch()  # the drop folder's placeholder: not worth a line
    run = run_id()
    found = ledger.discover(db, folder.path, run)
    assert decisions(found) == {"a.csv": "new"}  # the CSV is taken, nothing else
    with db.connect() as conn:
        logged = conn.execute(
            text(
                "select source, status, details ->> 'note' from audit.run_log "
                "where run_id = :r and step = 'discover' order by source"
            ),
            {"r": run},
        ).all()
        delivered = conn.execute(
            text("select file_name from audit.deliveries where run_id = :r"), {"r": run}
        ).scalars()
    assert [(source, status) for source, status, _ in logged] == [
        (".DS_Store", "ignored"),
        (f"{folder.tag}_a.csv", "new"),
        ("notas.txt", "ignored"),
        ("viejos", "ignored"),
    ]
    notes = {source: note for source, _, note in logged}
    assert notes["notas.txt"] == "not a CSV/JSON sales file ('.txt')"
    assert notes["viejos"].startswith("subfolder")
    assert list(delivered) == [f"{folder.tag}_a.csv"]  # no ledger row for what was ignored
    # a .txt given by itself is still read as delimited text
    assert bronze.list_input_files(folder.path / "notas.txt") == [folder.path / "notas.txt"]

    # they become no task, and the run's summary names them without counting them as files
    prepared = runs.prepare_run(run, overrides={"input_path": str(folder.path)})
    tasks = runs.discover(prepared)
    assert [d["file_name"] for d in tasks if d["notebooks"]] == [f"{folder.tag}_a.csv"]
    assert [d["file_name"] for d in tasks] == [f"{folder.tag}_a.csv"]
    cli.print_summary(runs.summary(db, run))
    out = capsys.readouterr().out
    assert "archivos nuevos:       1 de 1" in out
    assert re.search(r"notas\.txt +ignorado \(not a CSV/JSON sales file \('\.txt'\)\)", out)
    assert re.search(r"viejos +ignorado \(subfolder", out)


def test_a_folder_of_only_other_files_says_what_it_ignored(tmp_path):
    from medallion import bronze

    (tmp_path / "notas.txt").write_text("nothing to load\n")
    with pytest.raises(FileNotFoundError, match=r"ignored: notas\.txt"):
        bronze.list_input_files(tmp_path)
