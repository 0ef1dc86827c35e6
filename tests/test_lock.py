"""One writer per output folder: a second job fails at once naming the holder; a SIGKILLed holder frees it."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import CONFIGS
from avatar3d.config import ConfigError
from avatar3d.lock import LOCK_FILE, folder_lock

HOLD = "import sys, time\nfrom avatar3d.lock import folder_lock\nwith folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"


@pytest.fixture
def holder(tmp_path):
    """A process holding the lock of tmp_path/out until killed."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    proc.kill()
    proc.wait()


def test_a_second_writer_fails_at_once_naming_the_holder(holder):
    out, proc = holder
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"output_dir='{out}' is in use by another avatar3d job \(pid {proc.pid} on "):
        with folder_lock(out):
            pass
    assert time.perf_counter() - t0 < 1


def test_a_killed_holder_leaves_the_folder_free_to_resume(holder):
    out, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with folder_lock(out) as path:  # kill -9 left the file, not the lock
        assert path == out / LOCK_FILE and f"pid {os.getpid()} " in path.read_text()
    with folder_lock(out):  # released on exit too
        pass


def test_generate_into_a_folder_another_job_writes_fails_in_one_line(holder, capsys):
    from avatar3d.cli import main

    out, proc = holder
    before = sorted(p.name for p in out.iterdir())
    assert main(["generate", "--config", str(CONFIGS / "generate_procedural.yaml"), "num_samples=4", "resolution=16",
                 f"output_dir={out}", "tracking.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"is in use by another avatar3d job (pid {proc.pid} " in err
    assert sorted(p.name for p in out.iterdir()) == before == [LOCK_FILE]
