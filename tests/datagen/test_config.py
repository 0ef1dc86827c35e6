"""GenerateConfig's checks: what cannot work is refused before anything is written."""
import pytest

from tests import CONFIGS
from avatar3d.config import ConfigError, load_config
from avatar3d.datagen.config import GenerateConfig


def test_a_plan_that_cannot_fit_in_the_drivers_memory_is_refused_before_any_file(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(ConfigError, match=r"num_samples=1000000000000: the driver's plan needs ~953,674.3 GiB .* "
                                          r"pass num_samples <= [\d,]+$"):
        load_config(GenerateConfig, str(CONFIGS / "generate_tiny.yaml"), ["num_samples=1000000000000", f"output_dir={out}"])
    assert not out.exists()
    assert load_config(GenerateConfig, str(CONFIGS / "generate_tiny.yaml"),
                       ["num_samples=500000", f"output_dir={out}"]).num_samples == 500000  # the paper's size fits


def test_an_empty_output_folder_is_refused():
    with pytest.raises(ConfigError, match="output_dir is empty"):
        load_config(GenerateConfig, str(CONFIGS / "generate_tiny.yaml"), ["output_dir="])
