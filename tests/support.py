"""Shared test helpers: tiny models (a timm ViT and a non-ViT test host with its adapter), hand-written
block tensors, composed configs and commands run as a user would. Fixtures are in conftest.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import timm
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from repshift.configs import CONFIG_DIR
from repshift.patch import Adapter, PruneState, score_tokens
from repshift.select import protected_mask

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = CONFIG_DIR
# The tiny random ViT on a few ShapeBench images (smoke=on gives its head ShapeBench's 8 classes).
QUICK = ["smoke=on", "model=tiny"]


def tiny_vit(**kwargs) -> timm.models.vision_transformer.VisionTransformer:
    """A 32x32 ViT with 4 patches: cheap enough to check by hand."""
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=16, embed_dim=16, depth=3, num_heads=2, num_classes=5)
    args.update(kwargs)
    return timm.models.vision_transformer.VisionTransformer(**args).eval()


def vit_block_tensors(model, images) -> list[dict]:
    """Per block of a timm ViT, every tensor of ``x' = x + ls1(attn(norm1(x)))``, ``x̂ = x' + ls2(mlp(norm2(x')))``,
    computed from timm's own submodules: ``x, n1, a_raw, a, x_mid, n2, m_raw, m, x_out``."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    out = []
    for block in model.blocks:
        n1 = block.norm1(x)
        a_raw = block.attn(n1)
        a = block.ls1(a_raw)
        x_mid = x + a
        n2 = block.norm2(x_mid)
        m_raw = block.mlp(n2)
        m = block.ls2(m_raw)
        x_out = x_mid + m
        out.append(dict(x=x, n1=n1, a_raw=a_raw, a=a, x_mid=x_mid, n2=n2, m_raw=m_raw, m=m, x_out=x_out))
        x = x_out
    return out


def distance_by_hand(after, before, metric: str):
    """The L2 / L1 / cosine distance per token, written out."""
    diff = after - before
    if metric == "l2":
        return (diff**2).sum(-1).sqrt()
    if metric == "l1":
        return diff.abs().sum(-1)
    return 1 - (after * before).sum(-1) / (after.norm(dim=-1) * before.norm(dim=-1))


def compose_run(overrides: list[str], return_hydra_config: bool = False):
    """``repshift/configs/run.yaml`` composed with ``overrides``, as ``python -m repshift.run`` would see it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("run", overrides=overrides, return_hydra_config=return_hydra_config)


def run_module(workdir: Path, *args: str, check: bool = True, env: dict | None = None,
               module=("-m", "repshift.run")) -> subprocess.CompletedProcess:
    """Run a repshift command in ``workdir`` the way a user would (W&B off unless ``env`` says otherwise)."""
    command = [sys.executable, *module, *args]
    environment = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(command, cwd=workdir, env=environment, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


#: A UMT-shaped encoder with 4 patches per frame (32x32 frames): cheap enough for every option.
SMALL_UMT = dict(img_size=32, embed_dim=16, depth=3, num_heads=2, proj_dim=8)


def small_encoder(frames: int = 4, **overrides):
    """A small random UMT video encoder (:data:`SMALL_UMT`), eval mode, seeded."""
    from repshift.models import umt  # transformers: only for the tests that use UMT

    torch.manual_seed(0)
    return umt.vision_encoder("b", frames, **{**SMALL_UMT, **overrides}).eval()


def clip(frames: int = 4, size: int = 32, batch: int = 2) -> torch.Tensor:
    """A seeded random clip batch ``[batch, frames, 3, size, size]``."""
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(1))


def make_smoke(target: str, tmp_path: Path, *args: str, env: dict | None = None,
               timeout: int = 1800) -> tuple[str, Path]:
    """``make <target> SMOKE=1`` as a user runs it, writing under ``tmp_path`` (data in ``tmp_path/data``,
    results in ``tmp_path/outputs/smoke``); ``args`` are extra overrides for ARGS. Returns (stdout, results)."""
    outputs = tmp_path / "outputs" / "smoke"
    environment = {**os.environ, "WANDB_MODE": "disabled", "VENV": str(Path(sys.executable).parents[1]), **(env or {})}
    overrides = " ".join((f"paths.output_dir={outputs}", f"paths.data_dir={tmp_path}/data", *args))
    proc = subprocess.run(
        ["make", "-s", "-C", str(ROOT), target, "SMOKE=1", f"ARGS={overrides}", f"OUTPUTS={outputs}"],
        env=environment, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, outputs


#: What torchrun sets in a worker's environment; a test must not pass its own on to the workers it launches.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def run_torchrun_workers(worker_source: str, tmp_path: Path, tests_dir: Path) -> list[dict]:
    """Run ``worker_source`` (a script template with ``{tests_dir}`` and ``{out_dir}``) on two CPU processes
    under torchrun; each writes ``rank<r>.json`` to ``tmp_path``; returns them in rank order."""
    import json
    import textwrap

    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(worker_source).format(tests_dir=str(tests_dir), out_dir=str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


# --------------------------------------------------------------------------- the non-ViT test host


class ToyMixer(nn.Module):
    """A Mamba-shaped layer: ``residual += hidden; hidden = F(LN(residual))`` (two streams out)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.mix = nn.Linear(channels, channels)

    def forward(self, hidden, residual):
        residual = residual + hidden
        return self.mix(self.norm(residual)), residual


class TwoStreamToy(nn.Module):
    """Tokens ``[B, N, 4]`` -> logits; a class token sits in the middle of the sequence."""

    def __init__(self, tokens: int = 8, channels: int = 6, depth: int = 3, classes: int = 3):
        super().__init__()
        self.tokens = tokens
        self.embed = nn.Linear(4, channels)
        self.cls_token = nn.Parameter(torch.randn(1, 1, channels))
        self.layers = nn.ModuleList(ToyMixer(channels) for _ in range(depth))
        self.head = nn.Linear(channels, classes)

    def embed_tokens(self, x):
        """``(hidden, residual, class-token position)`` entering the first layer."""
        middle = x.shape[1] // 2
        h = self.embed(x)
        h = torch.cat([h[:, :middle], self.cls_token.expand(len(x), -1, -1), h[:, middle:]], dim=1)
        return h, torch.zeros_like(h), middle

    def head_from(self, hidden, residual, is_cls):
        """Logits from the class token, wherever it now sits (``is_cls``: ``[B, N]`` one-hot)."""
        return self.head((hidden + residual)[is_cls])

    def forward(self, x):
        hidden, residual, middle = self.embed_tokens(x)
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        return self.head_from(hidden, residual, protected_mask(len(x), hidden.shape[1], [middle], x.device))


class PatchedTwoStreamToy(TwoStreamToy):
    def forward(self, x):
        state: PruneState = self.repshift
        state.reset()
        hidden, residual, middle = self.embed_tokens(x)
        state.begin(hidden, protected=[middle])
        for index, layer in enumerate(self.layers):
            state.enter(index, hidden.shape[1])
            hidden, residual = layer(hidden, residual)
            if state.scoring(index):
                token_scores = score_tokens(state, index, sites={"mlp": (hidden, residual)}, like=hidden)
                hidden, residual = state.prune(index, token_scores, hidden, residual)
        return self.head_from(hidden, residual, state.book["protected"])


class ToyAdapter(Adapter):
    family = "toy-two-stream"
    description = "the test suite's two-stream sequence model"
    sites = ("mlp",)  # the mixer branch: D(F(LN(r)), r)

    def supports(self, model) -> bool:
        return isinstance(model, TwoStreamToy)

    def depth(self, model) -> int:
        return len(model.layers)

    def droppable(self, model) -> int:
        return model.tokens

    def resolve_metric(self, model, metric: str) -> str:
        if metric.startswith("attn"):
            raise ValueError(f"metric={metric} needs attention maps; {self.family} has no attention")
        return metric

    def install(self, model, state: PruneState) -> None:
        model.__class__ = PatchedTwoStreamToy

    def uninstall(self, model) -> None:
        model.__class__ = TwoStreamToy


def make_record(**fields):
    """A valid :class:`repshift.record.RunRecord` (a benchmarked and evaluated DeiT-S run on real weights and
    data) with ``fields`` replacing top-level fields; sections given as dicts are validated as the file would be."""
    from repshift.record import Identity, RunRecord

    base = dict(
        identity=Identity.of({"model": "deit_s"}, [], "cuda:NVIDIA H200", "test"),
        experiment="table5", run_name="model=deit_s", method={"name": "ours", "label": "Ours"},
        model={"name": "deit_s", "arch": "deit_small_patch16_224", "family": "timm-vit"},
        metric="l2", site="mlp", reading="literal", attention="sdpa",
        compress={"layers": [0, 3, 6], "ratio": 0.2}, weights={"real": True, "source": "timm-hub"},
        evaluator="classification", dataset={"name": "imagenet", "root": "/data/imagenet", "synthetic": False,
                                             "n": 50000},
        metrics={"top1": 79.0, "top5": 94.5, "n": 50000, "skipped": 0},
        bench={"throughput": 1000.0, "unit": "img/s", "repeats": [1000.0], "kernel": ["sdpa:flash"], "batch": 512,
               "iters": 10, "warmup": 2, "num_repeats": 1, "precision": "amp-float16", "device": "NVIDIA H200"},
        gmacs=2.99, tokens=[197, 158, 158, 158, 127, 127, 127, 102, 102, 102, 102, 102], config={}, env={},
    )
    return RunRecord.model_validate({**base, **fields})
