"""Device selection (CUDA/bf16 paths exercised on CPU) and --plan."""

from __future__ import annotations

import pytest
import torch

from specialsam.device import select_device
from specialsam.errors import UserError
from specialsam.sweep.phases import trial_resources
from tests.conftest import run_sweep_cli


def test_cpu_defaults_to_fp32_and_bf16_autocast_runs_on_cpu():
    from specialsam.device import cpu_has_amx_bf16

    dev = select_device()
    if not torch.cuda.is_available():
        assert dev.device.type == "cpu"
        assert dev.precision == ("bf16" if cpu_has_amx_bf16() else "fp32")
    assert select_device("cpu", "fp32").autocast_dtype is None
    # auto narrows per model on CPU: bf16 only for SAM-sized decoders; an explicit bf16 stays
    auto_cpu = select_device("cpu", "auto")
    assert auto_cpu.for_decoder(64).precision == "fp32"
    assert auto_cpu.for_decoder(256).precision == auto_cpu.precision
    assert select_device("cpu", "bf16").for_decoder(64).precision == "bf16"
    # encoders: auto keeps the tiny generalists' 256-px encoders in fp32, SAM-sized ones follow auto
    assert auto_cpu.for_encoder(256).precision == "fp32"
    assert auto_cpu.for_encoder(1024).precision == auto_cpu.precision
    assert select_device("cpu", "bf16").for_encoder(256).precision == "bf16"
    assert select_device("cpu", "fp32").for_encoder(1024).precision == "fp32"
    bf = select_device("cpu", "bf16")
    assert bf.precision == "bf16"
    with bf.autocast():
        y = torch.nn.Linear(8, 4)(torch.randn(2, 8))
    assert y.dtype == torch.bfloat16


def test_cuda_request_without_gpu_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="no CUDA GPU"):
        select_device("cuda")
    with pytest.raises(UserError, match="precision"):
        select_device("cpu", "fp8")


def test_fractional_gpu_request_reaches_tune():
    from ray import tune

    res = trial_resources(1, 0.25)
    assert res == {"cpu": 1.0, "gpu": 0.25}
    wrapped = tune.with_resources(lambda c: None, res)
    pgf = wrapped._resources  # Tune's resource request for each trial (a PlacementGroupFactory)
    assert pgf.required_resources == {"CPU": 1.0, "GPU": 0.25}


def test_plan_prints_the_cost_and_writes_nothing(tmp_path, capsys, cache_dir):
    rc = run_sweep_cli(["--task", "carpet", "--smoke", "--plan"], tmp_path)
    assert rc == 0
    out = capsys.readouterr().out
    assert "phase A (tune) 3, phase B (learning curve) 4, total 7" in out
    assert "encoder passes still to run" in out and "tiny-s" in out
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()
