"""Datasets on an object store: read and written through s3:// URIs against a real S3-compatible server
(moto's, started on 127.0.0.1 by tests/s3_server.py), with the same guarantees as a local folder."""
import pytest

from avatar3d.datagen.dataset import dataset_files, open_dataset, read_table
from tests.s3_server import fresh_prefix, s3_bucket, s3_server  # noqa: F401 - fixtures


def test_a_dataset_in_a_bucket_reads_the_same_rows_as_the_local_folder(s3_bucket, head_dataset):
    uri = s3_bucket.upload_folder(head_dataset, fresh_prefix("ds"))
    local, remote = open_dataset(head_dataset), open_dataset(uri)
    assert type(remote.filesystem).__name__ == "S3FileSystem"
    assert remote.num_rows == local.num_rows == 16 and remote.image_size == local.image_size
    assert [f.rsplit("/", 1)[1] for f in remote.files] == [f.rsplit("/", 1)[1] for f in local.files]
    assert remote.read().equals(local.read())
    assert remote.fingerprint() == local.fingerprint()
    assert read_table(uri, ["id", "view"]).equals(read_table(head_dataset, ["id", "view"]))


def test_a_missing_prefix_in_a_bucket_is_one_line(s3_bucket):
    with pytest.raises(FileNotFoundError, match=r"data.path: s3://.* does not exist") as err:
        open_dataset(s3_bucket.uri("no-such-dataset"))
    assert "\n" not in str(err.value)
    assert dataset_files(s3_bucket.uri("no-such-dataset"))[1] == []
