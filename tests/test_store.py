"""The one result store (store.py) as a contract: what a rerun resumes, what it refuses,
what a damaged file says, the lock, the atomic save, and the keyed items.

The oracle is the file itself, read back with plain h5py."""
import json
import os

import h5py
import numpy as np
import pytest

from errors import UserError
from store import KeyedStore, Lock, ResultStore

FIELDS = {"value": ((), np.nan), "vector": ((3,), 0.0)}


def _store(path, n=4, settings=None, **kw):
    return ResultStore(str(path), "test-kind", "test file", n, FIELDS, settings or {"a": 1}, **kw)


def _finished(path, n=4, done=(0, 2)):
    s = _store(path, n)
    s.record(list(done), {"value": [float(i) for i in done], "vector": [np.full(3, float(i)) for i in done]})
    s.save()
    s.close()
    return path


def test_a_rerun_resumes_the_finished_items(tmp_path):
    path = _finished(tmp_path / "r.h5")
    s = _store(path)
    assert s.resumed and list(s.todo()) == [1, 3] and s.values["value"][2] == 2.0
    assert s.values["vector"][2].tolist() == [2.0, 2.0, 2.0]
    with h5py.File(path, "r") as f:  # the layout: a dataset per field, done, settings
        assert f["done"][()].tolist() == [1, 0, 1, 0] and json.loads(f.attrs["settings"]) == {"a": 1}
        assert f.attrs["format"] == "test-kind" and f["vector"].shape == (4, 3)


def test_other_settings_are_refused_and_overwrite_starts_afresh(tmp_path):
    path = _finished(tmp_path / "r.h5")
    with pytest.raises(UserError, match="different settings"):
        _store(path, settings={"a": 2})
    s = _store(path, settings={"a": 2}, overwrite=True)
    assert not s.resumed and s.n_done == 0


def test_a_file_without_a_finished_item_is_no_settings_record(tmp_path):
    path = tmp_path / "r.h5"
    s = _store(path)
    s.save()  # a first run that failed before its first item
    s.close()
    assert _store(path, settings={"a": 2}).n_done == 0  # the corrected run is not blocked


def test_grow_keeps_the_stored_items_beyond_n(tmp_path):
    path = _finished(tmp_path / "r.h5", n=4, done=(0, 3))
    s = _store(path, n=2, grow=True)
    assert s.n_total == 4 and list(s.todo(2)) == [1] and s.values["value"][3] == 3.0


@pytest.mark.parametrize("damage,needle", [
    (lambda f: f.attrs.__setitem__("settings", "{not json"), "not valid JSON"),
    (lambda f: f.__delitem__("done"), "no 'done' mask"),
    (lambda f: (f.__delitem__("done"), f.__setitem__("done", np.ones((2, 2), "u1"))), "does not hold the items"),
    (lambda f: f.__delitem__("vector"), "finished items have no 'vector'"),
    (lambda f: (f.__delitem__("value"), f.__setitem__("value", np.zeros(7))), "'value' has shape"),
    (lambda f: f.attrs.__setitem__("format", "other-kind"), "not a test file"),
])
def test_a_damaged_file_is_one_line_that_says_overwrite(damage, needle, tmp_path):
    path = _finished(tmp_path / "r.h5")
    with h5py.File(path, "a") as f:
        damage(f)
    with pytest.raises(UserError, match="overwrite") as e:
        _store(path)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert _store(path, overwrite=True).n_done == 0  # --overwrite replaces it
    assert os.listdir(tmp_path) == ["r.h5"]  # the refused store left no lock behind


def test_overwrite_replaces_only_our_files_and_never_an_input(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("mine")
    with pytest.raises(UserError, match="not a file of this toolkit"):
        _store(text, overwrite=True)
    ckpt = tmp_path / "m.t7"
    ckpt.write_bytes(b"PK\x03\x04")
    with pytest.raises(UserError, match="is the --model_file"):
        _store(tmp_path / "." / "m.t7", inputs={"--model_file": str(ckpt)})
    assert text.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["m.t7", "notes.txt"]


def test_the_lock_refuses_a_second_store_and_goes_with_the_first(tmp_path):
    path = tmp_path / "r.h5"
    first = _store(path)
    with pytest.raises(UserError, match="in use by another run"):
        _store(path)
    assert os.path.exists(tmp_path / ".r.h5.lock")
    first.close()
    assert not os.path.exists(tmp_path / ".r.h5.lock")
    with _store(path):  # a context manager too
        pass


def test_a_stale_lock_file_does_not_block(tmp_path):
    (tmp_path / ".r.h5.lock").write_text("")  # left by a killed run: no process holds it
    _store(tmp_path / "r.h5").close()
    lock = Lock(str(tmp_path / "r.h5"), "x")
    lock.release()
    assert os.listdir(tmp_path) == []


def test_a_grid_shaped_store_records_flat_indices(tmp_path):
    s = ResultStore(str(tmp_path / "g.h5"), "k", "grid file", (2, 3), {"v": ((), np.nan)}, {})
    s.record([1, 5], {"v": [10.0, 50.0]})
    assert s.values["v"][0, 1] == 10.0 and s.values["v"][1, 2] == 50.0 and list(s.todo()) == [0, 2, 3, 4]


def test_a_store_in_memory_writes_nothing(tmp_path):
    s = ResultStore(None, "k", "x", 2, {"v": ((), np.nan)}, {})
    s.record([0], {"v": 1.0})
    s.save()
    s.close()
    assert os.listdir(tmp_path) == []


def test_keyed_items_resume_by_name_and_keep_the_others(tmp_path):
    path = str(tmp_path / "k.h5")
    s = KeyedStore(path, "keyed", "keyed file", ["0/base", "0/lmax"], {"s": 1}, format_version=3)
    s.record([1], {"lambda_max": 4.0, "products": 7})
    s.write_more = lambda f: f.create_group("summary")
    s.save()
    s.close()
    with h5py.File(path, "r") as f:
        assert f["items/0/lmax"].attrs["done"] == 1 and f["items/0/lmax/lambda_max"][()] == 4.0
        assert f.attrs["format_version"] == 3 and "summary" in f
    again = KeyedStore(path, "keyed", "keyed file", ["0/lmax", "1/base"], {"s": 1})
    assert again.resumed and list(again.todo()) == [1] and again.index("0/lmax") == 0
    assert set(again.items) == {"0/lmax"}
    again.close()
    with pytest.raises(UserError, match="different settings"):
        KeyedStore(path, "keyed", "keyed file", ["1/base"], {"s": 2})  # items of other keys still count


def test_the_output_folder_is_made_as_the_first_save_would(tmp_path):
    s = _store(tmp_path / "new" / "deeper" / "r.h5")
    s.save()
    s.close()
    assert os.listdir(tmp_path / "new" / "deeper") == ["r.h5"]
