"""The GPU path (marked ``cuda``; skipped without a CUDA GPU): bf16 and fp16 AMP (fp16 with its
gradient scaler in the resume state and its scalars logged), channels_last, torch.compile with
the default backend, DDP with NCCL and SyncBatchNorm, and `kdw bench --device cuda`.

Run them with ``pytest -m cuda tests/test_cuda_path.py`` on a machine with a GPU; the results
and the card go to docs/benchmarks.md."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from conftest import BIN, REPO, run_dirs, subprocess_env, write_config
from kd_engine.config import validate

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def cuda_raw(tmp_path, **top) -> dict:
    raw = {"name": "cuda_path", "method": "standard", "seed": 0, "device": "cuda", "epochs": 2,
           "data": {"name": "digits", "batch_size": 64},
           "teacher": {"name": "resnet", "params": {"width": 8, "depth": 1}, "train": {"epochs": 1}},
           "student": {"name": "resnet", "params": {"width": 8, "depth": 1}},
           "distill": {"terms": [{"loss": "kd", "params": {"temperature": 4.0}}]},
           "optimizer": {"name": "sgd", "lr": 0.05}, "schedule": {"name": "cosine"},
           "record": {"tensorboard": False},
           "runs_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")}
    raw.update(top)
    return raw


def train(raw):
    from kd_engine.run import train as run_train
    from kd_engine.store import open_run

    return open_run(run_train(validate(raw), distributed=False))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_trains_and_fp16_keeps_its_scaler(tmp_path, amp):
    run = train(cuda_raw(tmp_path, amp=amp))
    meta = run.meta()
    assert meta["status"] == "finished" and meta["device"].startswith("cuda")
    assert meta["final_metrics"]["test/student_acc"] > 0.5  # digits: learnt, not only run
    state = torch.load(run.run_dir / "checkpoints" / "state.pt", weights_only=True)
    keys = set(run.scalar_keys())
    if amp == "fp16":
        assert state["steps"]["scaler"]["scale"] > 0 and {"amp/scale", "amp/skipped_steps"} <= keys
    else:
        assert "scaler" not in state["steps"] and "amp/scale" not in keys


def test_fp16_resume_restores_the_scaler(tmp_path, monkeypatch):
    from conftest import stop_after_epoch
    from kd_engine.run import train as run_train
    from kd_engine.store import open_run
    from kd_engine.trainer import StopRequested, Trainer

    straight = train(cuda_raw(tmp_path / "a", amp="fp16", epochs=3))
    raw = cuda_raw(tmp_path / "b", amp="fp16", epochs=3)
    put_back = stop_after_epoch(monkeypatch, Trainer, "_end_of_epoch", 0)
    with pytest.raises(StopRequested):
        run_train(validate(raw), distributed=False)
    put_back()
    (run_dir,) = [d for d in run_dirs(tmp_path / "b" / "runs") if "cuda_path" in d.name]
    resumed = open_run(run_train(None, resume=run_dir, distributed=False))
    a, b = (torch.load(r.run_dir / "checkpoints" / "state.pt", weights_only=True) for r in (straight, resumed))
    assert a["steps"]["scaler"] == b["steps"]["scaler"] and a["steps"]["optimizer_steps"] == b["steps"]["optimizer_steps"]
    for key, value in a["distiller"].items():
        assert torch.allclose(value.float(), b["distiller"][key].float(), atol=1e-5), key


def test_channels_last_gives_the_same_logits(tmp_path):
    from kd_engine.models import build_model

    cfg = validate(cuda_raw(tmp_path))
    torch.manual_seed(0)
    model = build_model(cfg.student, (1, 8, 8), 10).cuda().eval()
    x = torch.randn(16, 1, 8, 8, device="cuda")
    with torch.no_grad():
        plain = model(x)
        nhwc = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(plain, nhwc, atol=1e-4)
    run = train(cuda_raw(tmp_path / "run", channels_last=True, amp="bf16"))
    assert run.meta()["status"] == "finished"


def test_compile_with_the_default_backend(tmp_path):
    run = train(cuda_raw(tmp_path, compile=True, epochs=1))
    assert run.meta()["status"] == "finished"
    from kd_engine.models import build_model

    weights = load_file(str(run.run_dir / "checkpoints" / "student.safetensors"))
    build_model(validate(cuda_raw(tmp_path)).student, (1, 8, 8), 10).load_state_dict(weights)


def test_nccl_ddp_with_sync_batchnorm_on_one_rank(tmp_path):
    """NCCL and SyncBatchNorm on this GPU: a one-rank process group (NCCL refuses two ranks on
    one GPU), the engine's own conversion, a DDP step."""
    script = textwrap.dedent("""
        import os, torch, torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel
        from kd_engine.config import validate
        from kd_engine.models import build_model
        from kd_engine.trainers.speed import prepare_models
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
        dist.init_process_group("nccl", rank=0, world_size=1)
        cfg = validate({"student": {"name": "resnet", "params": {"width": 8, "depth": 1}},
                        "sync_batchnorm": True, "device": "cuda"})
        holder = torch.nn.Module()
        holder.student = build_model(cfg.student, (1, 8, 8), 10)
        prepare_models(holder, cfg, distributed=True, device=torch.device("cuda"))
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in holder.modules())
        model = DistributedDataParallel(holder.student.cuda())
        loss = model(torch.randn(8, 1, 8, 8, device="cuda")).sum()
        loss.backward()
        dist.destroy_process_group()
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per rank: two GPUs")
def test_torchrun_nccl_two_ranks_with_sync_batchnorm(tmp_path):
    raw = cuda_raw(tmp_path, sync_batchnorm=True)
    config = write_config(tmp_path / "ddp.yaml", raw)
    proc = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node=2", "--standalone", "-m", "kd_engine.cli",
                           "train", str(config)], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from kd_engine.store import open_run

    (run_dir,) = run_dirs(tmp_path / "runs")
    meta = open_run(run_dir).meta()
    assert meta["status"] == "finished" and meta["world_size"] == 2


def test_bench_on_the_gpu(tmp_path):
    from kd_engine.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--device", "cuda", "--quick", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    for arm in results["arms"].values():
        assert arm["images_per_s"] > 0 and arm["peak_gpu_memory_mb"] > 0
    assert results["settings"]["device_name"]
