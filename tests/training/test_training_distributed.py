"""The torchrun setup that distill train, distill teach and finetune share (auricle.training.distributed)."""

from __future__ import annotations

import json
import os
import textwrap

import pytest
import torch
from conftest import ROOT
from torchrun_support import failure_report, torchrun

from auricle.devices import DeviceError
from auricle.training.distributed import Distributed
from auricle.training.schedule import Schedule


@pytest.fixture
def alone(monkeypatch):
    """A process not started by torchrun."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_alone_is_rank_zero_of_one_and_collectives_are_no_ops(alone):
    import torch.distributed as dist

    where = Distributed("cpu")
    assert (where.rank, where.world, where.main, where.device) == (0, 1, True, torch.device("cpu"))
    assert not dist.is_initialized() and not where.started_group
    state = torch.arange(3)
    assert where.share({"stop": True}) == {"stop": True}
    assert where.mean(0.25) == 0.25 and where.total(2, 3) == [2, 3]
    assert where.all_true(False) is False and where.all_true(True) is True
    assert where.gather(state)[0] is state
    where.barrier()
    where.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks the GPU where there is one")
def test_device_choice(alone, monkeypatch):
    assert Distributed("auto").device == torch.device("cpu")
    assert Distributed(torch.device("cpu")).device == torch.device("cpu")
    with pytest.raises(DeviceError, match="^--device cuda: "):
        Distributed("cuda")  # one line, not torch's error at the first tensor
    with pytest.raises(DeviceError, match="^--device tpu: not a device"):
        Distributed("tpu")


def test_plain_cuda_on_one_process_is_used_as_it_is(alone, monkeypatch):
    """torch.cuda.set_device refuses a device without an index; one process on "cuda" needs none set."""
    from torch.cuda._utils import _get_device_index

    from auricle.training import distributed

    made_current = []
    monkeypatch.setattr(distributed, "torch_device", torch.device)  # as if this machine had GPUs
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: made_current.append(_get_device_index(device)))
    assert Distributed("cuda").device == torch.device("cuda") and made_current == []
    assert Distributed("cuda:1").device == torch.device("cuda:1") and made_current == [1]


def test_the_same_seed_gives_the_same_run(alone):
    """What a rank draws depends on the seed alone: the setup itself draws nothing."""

    def draws(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        Distributed("cpu")
        return torch.rand(4)

    assert torch.equal(draws(3), draws(3))
    assert not torch.equal(draws(3), draws(4))


def test_schedule_as_finetune_uses_it_warms_up_then_decays_to_zero():
    schedule = Schedule(1.0, 10, 2, final_fraction=0.0)
    assert [schedule.lr(step) for step in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert schedule.lr(6) == pytest.approx(0.5) and schedule.lr(10) == 0.0


@pytest.mark.integration
def test_two_gloo_processes_share_rank_zeros_values(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(textwrap.dedent(f"""
        import json, torch
        from auricle.training.distributed import Distributed

        where = Distributed("cpu")
        answer = {{
            "rank": where.rank, "world": where.world, "joined": where.started_group,
            "share": where.share(f"from rank {{where.rank}}"),
            "mean": where.mean(float(where.rank)),
            "total": where.total(1, where.rank),
            "all_true": where.all_true(where.rank == 0),
            "gather": [t.tolist() for t in where.gather(torch.tensor([where.rank, 10 + where.rank]))],
        }}
        where.barrier()
        where.close()
        (__import__("pathlib").Path({str(tmp_path)!r}) / f"rank{{where.rank}}.json").write_text(json.dumps(answer))
    """))
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    completed = torchrun(["--standalone", "--nproc_per_node", "2", str(script)], tmp_path / "logs", environment,
                         timeout=120)
    assert completed.returncode == 0, failure_report(completed, tmp_path / "logs")
    for rank in (0, 1):
        answer = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert answer == {"rank": rank, "world": 2, "joined": True, "share": "from rank 0", "mean": 0.5,
                          "total": [2, 1], "all_true": False, "gather": [[0, 10], [1, 11]]}
