"""The driver's check that a checkpoint is loadable by the workers about to start (no worker, no DeepSpeed),
and the DeepSpeed engine's learning rate on resume (one process, in a subprocess of its own)."""
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from avatar3d.config import ConfigError
from avatar3d.training.ray_fit import check_checkpoint_to_load
from tests.cluster.fake_cluster import free_ports


def _checkpoint(folder, strategy, workers, tags=("G", "D")):
    """The files each engine's save() writes (DeepSpeed: model states + one ZeRO shard per worker)."""
    for tag in tags:
        (folder / tag).mkdir(parents=True)
        if strategy == "deepspeed":
            (folder / tag / "mp_rank_00_model_states.pt").write_bytes(b"")
            for rank in range(workers):
                (folder / tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
        else:
            (folder / tag / "tree.json").write_text("{}")
    return folder


def _scaling(strategy, workers):
    return SimpleNamespace(strategy=strategy, num_workers=workers)


def test_the_same_strategy_and_worker_count_pass(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt", "deepspeed", 2)
    check_checkpoint_to_load(tmp_path / "out", "run", str(ckpt), _scaling("deepspeed", 2), ("G", "D"), "x")
    plain = _checkpoint(tmp_path / "plain", "plain", 1)
    check_checkpoint_to_load(tmp_path / "out", "run", str(plain), _scaling("plain", 3), ("G", "D"), "x")
    zero0 = _checkpoint(tmp_path / "zero0", "deepspeed", 0)  # stage 0 writes no shards: any count loads it
    check_checkpoint_to_load(tmp_path / "out", "run", str(zero0), _scaling("deepspeed", 3), ("G", "D"), "x")


def test_another_worker_count_or_strategy_is_refused_naming_the_way_out(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt", "deepspeed", 2)
    with pytest.raises(ConfigError, match=r"^resume: .*ckpt holds ZeRO optimiser shards of 2 workers, .* "
                                          r"scaling.num_workers=4; resume with scaling.num_workers=2, or RESTART$"):
        check_checkpoint_to_load(tmp_path / "out", "run", str(ckpt), _scaling("deepspeed", 4), ("G", "D"), "RESTART")
    with pytest.raises(ConfigError, match=r"^resume: .* was written with scaling.strategy=deepspeed; resume with "
                                          r"scaling.strategy=deepspeed, or RESTART$"):
        check_checkpoint_to_load(tmp_path / "out", "run", str(ckpt), _scaling("plain", 2), ("G", "D"), "RESTART")
    plain = _checkpoint(tmp_path / "plain", "plain", 1, tags=("engine",))
    with pytest.raises(ConfigError, match="written with scaling.strategy=plain"):
        check_checkpoint_to_load(tmp_path / "out", "run", str(plain), _scaling("deepspeed", 1), ("engine",), "x")


def test_a_run_name_that_ran_before_is_checked_by_its_latest_checkpoint(tmp_path):
    """Ray restores the run's last checkpoint when the run name runs again; that one decides, not resume."""
    runs = tmp_path / "out" / "ray" / "run"
    runs.mkdir(parents=True)
    (runs / "checkpoint_manager_snapshot.json").write_text("{}")  # Ray's own file beside the folders
    _checkpoint(runs / "checkpoint_2026-12-03_10-00-00.000000", "deepspeed", 1)
    _checkpoint(runs / "checkpoint_2026-12-03_11-00-00.000000", "deepspeed", 2)
    with pytest.raises(ConfigError, match=r"^run_name=run \(its last checkpoint\): .*11-00-00.* shards of 2 "
                                          r"workers.*, or pass another run_name to start afresh$"):
        check_checkpoint_to_load(tmp_path / "out", "run", "", _scaling("deepspeed", 1), ("G", "D"), "x")
    check_checkpoint_to_load(tmp_path / "out", "run", "", _scaling("deepspeed", 2), ("G", "D"), "x")


# Saves a ZeRO-{stage} engine at one rate, loads it into an engine built at another: the rate is the new one
# (lazy-regularisation corrected), the moments the saved ones; then a step at rate 0 changes nothing.
_DEEPSPEED_RATE = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    dist.init_process_group("gloo")
    from avatar3d.gan.optim import OptimizerSpec
    from avatar3d.training.engines import DeepSpeedEngine
    folder, stage = sys.argv[1], int(sys.argv[2])

    def engine(lr):
        torch.manual_seed(0)
        return DeepSpeedEngine(torch.nn.Linear(4, 2), OptimizerSpec(lr, reg_interval=4), stage, 2)

    def train(e):
        e.backward(e.module(torch.randn(2, 4)).square().sum())
        e.step()

    def moments(e):  # ZeRO keeps the torch optimiser's state under base_optimizer_state
        state = e.optimizer.state_dict()["base_optimizer_state"]["state"] if stage else e.optimizer.state
        return [s["exp_avg"].clone() for s in state.values()]

    first = engine(0.002)
    train(first)
    first.save(folder, "G")
    saved = moments(first)
    second = engine(0.0005)
    second.load(folder, "G")
    print("lrs", sorted({g["lr"] for g in second.optimizer.param_groups}))
    print("moments", len(saved) > 0 and all(torch.equal(a, b) for a, b in zip(saved, moments(second))))
    frozen = engine(0.0)
    frozen.load(folder, "G")
    before = [p.detach().clone() for p in frozen.module.parameters()]
    train(frozen)
    print("frozen", all(torch.equal(a, b) for a, b in zip(before, frozen.module.parameters())))
""")


@pytest.mark.parametrize("stage", [1, pytest.param(0, marks=pytest.mark.slow)])  # 1: the ZeRO-wrapped optimiser
def test_a_deepspeed_engine_loads_its_state_at_this_runs_learning_rate(tmp_path, stage):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_ports(1)[0]), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "DS_ACCELERATOR": "cpu"}
    out = subprocess.run([sys.executable, "-c", _DEEPSPEED_RATE, str(tmp_path), str(stage)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.split(" ")[0] in
                 ("lrs", "moments", "frozen"))
    assert lines["lrs"] == f"[{0.0005 * 4 / 5!r}]", out.stdout
    assert lines["moments"] == "True" and lines["frozen"] == "True", out.stdout
