"""Session fixtures of the training tests."""
import pytest

from tests.training.fixtures import write_head_dataset


@pytest.fixture(scope="session")
def head_dataset(tmp_path_factory):
    return write_head_dataset(tmp_path_factory.mktemp("head_dataset"))
