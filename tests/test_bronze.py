"""Bronze: what it says about a delivered file, so that silver may read the file in place."""

import os
import time

import pytest

from medallion import bronze


@pytest.fixture
def delivered(tmp_path):
    path = tmp_path / "ventas.csv"
    path.write_text("Row ID,Sales\n1,957.5775\n")
    return path


def test_a_file_s_identity_changes_with_its_times_and_with_a_new_file_under_its_name(delivered):
    before = bronze.file_identity(delivered)
    while not bronze.settled(before, time.time_ns()):  # so that a change falls in a later tick
        time.sleep(0.01)
    os.utime(delivered, ns=(before["mtime_ns"], before["mtime_ns"]))  # times alone, set back
    assert bronze.file_identity(delivered) != before  # its change time moved on
    before = bronze.file_identity(delivered)
    replacement = delivered.with_name("new.csv")
    replacement.write_text(delivered.read_text())
    replacement.replace(delivered)
    assert bronze.file_identity(delivered)["inode"] != before["inode"]
    assert bronze.file_identity(delivered.with_name("gone.csv")) is None
    assert not bronze.unchanged(None)


def test_a_file_changed_just_before_it_is_hashed_is_not_vouched_for(delivered):
    identity = bronze.file_identity(delivered)
    assert bronze.settled(identity, identity["ctime_ns"] + bronze.SETTLE_NS + 1)
    assert not bronze.settled(identity, identity["ctime_ns"] + bronze.SETTLE_NS)
    assert not bronze.settled(None, time.time_ns())


def test_ingest_vouches_for_a_settled_file_only(delivered, s3, params, monkeypatch):
    monkeypatch.setattr(bronze, "SETTLE_NS", 3600 * 10**9)  # changed within the hour: not settled
    assert bronze.ingest_file(s3, params["bronze_bucket"], delivered).local is None
    monkeypatch.setattr(bronze, "SETTLE_NS", -(10**9))  # anything is
    delivery = bronze.ingest_file(s3, params["bronze_bucket"], delivered)
    assert delivery.local == bronze.file_identity(delivered)
    assert bronze.unchanged(delivery.local)


def test_ingest_takes_the_discovery_s_hash_while_the_file_is_unchanged(
    delivered, s3, params, monkeypatch
):
    monkeypatch.setattr(bronze, "SETTLE_NS", -(10**9))  # any file is settled
    hashed = bronze.hash_file(delivered)
    assert hashed == {
        "sha256": bronze.sha256_of(delivered),
        "identity": bronze.file_identity(delivered),
    }
    taken = bronze.ingest_file(s3, params["bronze_bucket"], delivered, hashed=hashed)
    assert (taken.sha256, taken.hashed_by) == (hashed["sha256"], "discovery")

    elsewhere = delivered.with_name("otra.csv")  # another file with its own identity
    elsewhere.write_text(delivered.read_text())
    other = bronze.ingest_file(s3, params["bronze_bucket"], elsewhere, hashed=hashed)
    assert other.hashed_by == "bronze"

    time.sleep(0.05)  # the write below falls in a later tick of the file clock
    delivered.write_text("Row ID,Sales\n1,957.5776\n")  # same size, other bytes
    changed = bronze.ingest_file(s3, params["bronze_bucket"], delivered, hashed=hashed)
    assert changed.hashed_by == "bronze"
    assert changed.sha256 == bronze.sha256_of(delivered) != hashed["sha256"]


def test_a_hash_the_file_did_not_keep_still_is_not_taken(delivered, s3, params, monkeypatch):
    monkeypatch.setattr(bronze, "SETTLE_NS", 3600 * 10**9)  # changed within the hour
    hashed = bronze.hash_file(delivered)
    assert hashed["identity"] is None
    wrong = {**hashed, "sha256": "0" * 64}  # were it taken, bronze would name the wrong bytes
    delivery = bronze.ingest_file(s3, params["bronze_bucket"], delivered, hashed=wrong)
    assert (delivery.sha256, delivery.hashed_by) == (hashed["sha256"], "bronze")
