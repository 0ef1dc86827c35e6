"""The one dataset reader: checks with one-line errors, reading, fingerprints, URIs."""
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from avatar3d.datagen.dataset import dataset_files, open_dataset, read_table


def _rows(path):
    return read_table(path).to_pydict()


def test_check_dataset_counts_rows_and_sizes(head_dataset):
    info = open_dataset(head_dataset)
    assert info.num_rows == 16 and len(info.files) == 2 and info.image_size == (32, 32)


@pytest.mark.parametrize("case, pattern", [
    ("missing", "does not exist"),
    ("empty_folder", "no Parquet shards"),
    ("no_rows", "has no rows"),
    ("wrong_schema", "lacks column"),
    ("bad_label", "camera labels have 24 values"),
    ("corrupt", "not readable Parquet"),
    ("unset", "no dataset given"),
])
def test_bad_datasets_fail_with_one_line(tmp_path, head_dataset, case, pattern):
    target = tmp_path / "ds"
    (target / "shards").mkdir(parents=True)
    rows = _rows(head_dataset)
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "no_rows":
        pq.write_table(pa.table({k: v[:0] for k, v in rows.items()}), target / "shards" / "part-a-00000.parquet")
    elif case == "wrong_schema":
        pq.write_table(pa.table({"id": ["a"], "camera": [[0.0] * 25]}), target / "shards" / "part-a-00000.parquet")
    elif case == "bad_label":
        rows["camera"] = [c[:24] for c in rows["camera"]]
        pq.write_table(pa.table(rows), target / "shards" / "part-a-00000.parquet")
    elif case == "corrupt":
        (target / "shards" / "part-a-00000.parquet").write_bytes(b"PAR1 not really")
    elif case == "unset":
        target = ""
    with pytest.raises((ValueError, FileNotFoundError), match=pattern) as info:
        open_dataset(target)
    assert "\n" not in str(info.value)



def test_read_is_in_index_order_and_selects_columns(head_dataset):
    ds = open_dataset(head_dataset)
    table = ds.read(["id", "camera"])
    assert table.column_names == ["id", "camera"] and table.num_rows == 16
    full = ds.read()
    assert full.column("index").to_pylist() == sorted(full.column("index").to_pylist())
    assert table.column("id").to_pylist() == full.column("id").to_pylist()
    batches = list(ds.iter_batches(["id"], batch_size=5))
    assert sum(len(b["id"]) for b in batches) == 16 and max(len(b["id"]) for b in batches) == 5


def test_file_uri_reads_the_same_rows_as_the_path(head_dataset):
    by_path = open_dataset(head_dataset)
    by_uri = open_dataset(head_dataset.resolve().as_uri())
    assert by_uri.num_rows == by_path.num_rows and by_uri.image_size == by_path.image_size
    assert by_uri.read(["id"]).equals(by_path.read(["id"]))
    assert by_uri.fingerprint() == by_path.fingerprint()


def test_fingerprint_follows_content_not_location(tmp_path, head_dataset):
    copy = tmp_path / "copy"
    shutil.copytree(head_dataset, copy)
    assert open_dataset(copy).fingerprint() == open_dataset(head_dataset).fingerprint()
    _, files = dataset_files(copy)
    table = pq.read_table(files[0])
    pq.write_table(table.slice(1), files[0])  # one row fewer in one shard
    assert open_dataset(copy).fingerprint() != open_dataset(head_dataset).fingerprint()


def test_unknown_uri_scheme_is_one_line():
    with pytest.raises(ValueError, match="not a filesystem URI") as err:
        open_dataset("nosuchscheme://bucket/ds")
    assert "\n" not in str(err.value)


def test_read_table_of_an_empty_folder_is_an_empty_table(tmp_path):
    table = read_table(tmp_path, ["id", "view"])
    assert table.num_rows == 0 and table.column_names == ["id", "view"]
