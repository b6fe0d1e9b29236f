"""The Hydra entry point: one run = one model, one compression setting, one result.json.

    python -m repshift.run model=deit_s dataset=imagenet metric=l2 site=mlp
    python -m repshift.run -m experiment=table5 hydra/launcher=slurm
    torchrun --nproc_per_node=4 -m repshift.run experiment=table5 model=deit_b method=ours

A run, in order:

1. checks its settings (:mod:`repshift.settings`: types, counts, choices; every wrong key in one message)
   and the device;
2. checks and fingerprints its inputs (tokenizer, data root, annotation files, checkpoint) before any model
   is built, and works out its identity (:mod:`repshift.identity`);
3. is skipped when a folder holds a result of this identity (``force=true`` re-runs it); otherwise settles
   on its folder: the one named from the overrides, or ``<name>@<identity key>`` when that one holds another
   run's result. It writes ``run.log``, ``.hydra/`` and a state file (running / failed: what
   ``repshift.status`` shows) there;
4. builds and loads the model, compresses it, then trains / evaluates / benchmarks (:mod:`repshift.tasks`);
5. writes its :class:`~repshift.record.RunRecord` (result.json, atomically) and logs it to W&B.

A failed run writes its traceback to its run.log, leaves no result.json, and raises :class:`RunFailed`, which
keeps nothing of the run alive (a sweep keeps every failed run's exception: with its traceback, each would
keep its model). :class:`SweepGuard` stops a sequential sweep whose first runs all fail the same way
before doing any work (``keep_going=true`` goes on).
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

import repshift
import repshift.configs as configs
import repshift.distributed as distributed
import repshift.identity as identity
import repshift.provenance as provenance
import repshift.scores as scores
import repshift.settings as settings
import repshift.status as status
import repshift.tasks as tasks
from repshift.models import build_model
from repshift.record import RESULT_NAME, Identity, RecordError, RunRecord
from repshift.wandb_log import NullLogger

log = logging.getLogger("repshift.run")


def run_name(override_dirname: str = "") -> str:
    """A folder name from the overrides: stable across relaunches, one path component, and distinct for
    distinct overrides: when making it safe changed a character (``ck/good.pth``, ``label=é``), or the name
    had to be shortened, a hash of the overrides as written is appended."""
    name = re.sub(r"[^A-Za-z0-9=,.+_\-\[\]]", "_", override_dirname) or "defaults"
    digest = hashlib.sha1(override_dirname.encode()).hexdigest()
    if len(name) > 180:
        return f"{name[:160]}-{digest[:12]}"
    return name if name == override_dirname or not override_dirname else f"{name}-{digest[:8]}"


OmegaConf.register_new_resolver("run_name", run_name, replace=True)
# experiment_name is one folder name: the run folder cannot leave the outputs folder (checked before Hydra
# creates any folder, since run.dir is resolved from it)
OmegaConf.register_new_resolver("one_folder", settings.check_folder_name, replace=True)
# The launch directory, usable before Hydra is set up (sweep folders resolve that early).
OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)

#: A sequential sweep whose first this many runs fail the same way before doing any work stops.
STOP_AFTER = 3


class RunFailed(CompactHydraException):
    """A run that ended without a result: what failed and where its traceback is. It is raised with no
    traceback of the failure attached, so nothing of the run (its model, its data) outlives it."""

    def __init__(self, message: str, signature: tuple, early: bool, run_dir: Optional[Path]):
        super().__init__(message)
        self.signature, self.early, self.run_dir = signature, early, run_dir


# ------------------------------------------------------------------------------------------ methods

def compresses(cfg: DictConfig) -> bool:
    """Whether the run removes tokens: a schedule with something to drop (merging: ``layers: null`` is every
    block, ToMe's constant ``r``)."""
    c = cfg.compress
    every_block = c.layers is None and c.get("mode") == "merge"
    return (every_block or bool(c.layers)) and bool(c.ratio or c.num)


def run_settings(cfg: DictConfig) -> dict:
    """What a run does, in the terms a method declares (:data:`repshift.configs.DECLARABLE`)."""
    return {"prunes": compresses(cfg), "metric": cfg.metric, "site": cfg.site, "attention": cfg.attention,
            "mode": cfg.compress.get("mode", "sequence"), "proportional": cfg.compress.get("proportional"),
            # ToMe merges in every block (layers: null); vid-TLDR and pruning in the blocks they list
            "blocks": "every" if cfg.compress.layers is None else "listed"}


def recorded_method(cfg: DictConfig) -> dict:
    """The method a run is recorded and tabulated under (the one place a run's method is decided).

    The rule (docs/architecture.md, "Methods"): a run is recorded under what it actually ran. The method whose
    declaration matches the run's settings names it, whatever ``method=`` asked for (``method=ours metric=attn
    attention=eager`` is recorded as ``attn``, with a warning); a run that matches no method is named from what
    it ran (``cos-block``, ``l2-attn``, ``attn_cls``). A ``method.name`` of your own that is no method's name
    (``method.name=top50``) is kept as written. A non-literal reading of a shift score is part of the name.
    """
    run = run_settings(cfg)
    requested = cfg.method.get("name")
    known = configs.methods()
    declares = None
    if requested and requested not in known:
        name, label = str(requested), str(cfg.method.get("label") or requested)
    else:
        matching = [spec for spec in known.values() if spec.matches(run)]
        spec = known.get(requested) if requested in [m.name for m in matching] else (
            matching[0] if len(matching) == 1 else None)
        if spec is not None:
            name, label, declares = spec.name, spec.label, {k: list(v) for k, v in spec.declares.items()}
        else:
            name = run["metric"] + (f"-{run['site']}" if run["metric"] in scores.SHIFT_METRICS else "")
            name += "" if run["mode"] == "sequence" else f"-{run['mode']}"
            label = name
        if requested and name != requested:
            log.warning("%s, but this run does %s: it is recorded as %s, what it ran", known[requested].describe(),
                        ", ".join(known[requested].conflicts(run)), name)
    if run["prunes"] and cfg.metric in scores.SHIFT_METRICS and cfg.reading != "literal":
        name, label = f"{name}@{cfg.reading}", f"{label} ({cfg.reading} reading)"
    return {"name": name, "label": label, "requested": requested if requested and requested != name else None,
            "declares": declares}


#: The model families vid-TLDR's published schedules (compress=vid_tldr) are written for.
VID_TLDR_FAMILIES = ("umt", "umt_qa")


def check_merging(cfg: DictConfig) -> None:
    """Say plainly that vid-TLDR's schedules are UMT's, before their lookup (by ``model.size``) fails on another
    model with an interpolation error (ToMe merging on a ViT is ``method=tome``: the adapter says what it serves),
    and that a merge with nothing to merge is no run (``method=tome`` needs its ``r``)."""
    c = cfg.compress
    if c.get("mode") == "merge" and c.layers is None and not (c.num or c.ratio):
        raise ValueError(f"compress.mode=merge in every block (method={cfg.method.name}) needs ToMe's r, the tokens "
                         "merged per block: give compress.num=<r> (an int, or one per block)")
    if "vid_tldr" in cfg and cfg.model.get("family") not in VID_TLDR_FAMILIES:
        raise ValueError(
            f"compress=vid_tldr (vid-TLDR's published merging schedules, method={cfg.method.name}) applies to UMT "
            f"models (model.family in {VID_TLDR_FAMILIES}); model={cfg.model.name} is not one: use model=umt_b or "
            "umt_l, or method=tome for ToMe merging on a ViT"
        )


# ------------------------------------------------------------------------------------------ device

def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} asked for, but torch sees no CUDA device (use device=auto or cpu)")
    return device


def device_identity(device: torch.device) -> str:
    """The device as a run's identity records it: ``cpu``, or ``cuda:<GPU name>`` (a throughput is the GPU's)."""
    return f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type


# ------------------------------------------------------------------------------------------ building

def compress_model(model, cfg: DictConfig):
    """Apply the configured pruning and attention backend; a plain sdpa Base stays the model's own forward."""
    if not compresses(cfg) and cfg.attention == "sdpa":
        return model
    c = cfg.compress
    every_block = c.layers is None  # merging: ToMe's r in every block (compress.num is r)
    try:
        repshift.patch(
            model,
            metric=cfg.metric,
            site=cfg.site,
            layers=None if every_block else tuple(c.layers) if compresses(cfg) else (),
            ratio=c.ratio if c.num is None else None,
            num=None if every_block else c.num,
            r=c.num if every_block else None,
            attention=cfg.attention,
            seed=cfg.seed,
            keep=c.keep,
            reading=cfg.reading,
            mode=c.get("mode", "sequence"),
            proportional=c.get("proportional", True),  # mode=merge: proportional attention (compress=vid_tldr)
        )
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"cannot apply compress={OmegaConf.to_container(c)} metric={cfg.metric} site={cfg.site} "
            f"reading={cfg.reading} "
            f"attention={cfg.attention} to model={cfg.model.name}: {error}"
        ) from error
    return model


def build(cfg: DictConfig):
    """``(model, weights)`` from the model config (its ``_target_`` names the builder)."""
    return build_model(OmegaConf.to_container(cfg.model, resolve=True))


# ------------------------------------------------------------------------------------------ the run folder

@contextlib.contextmanager
def run_log(run_dir: Path):
    """``run_dir/run.log`` receives everything logged while the block runs (and the traceback of a failure)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def settle_folder(cfg: DictConfig, run_dir: Path) -> None:
    """Make ``run_dir`` the run's folder: Hydra's ``runtime.output_dir`` (so ``train.output`` and W&B follow),
    and ``.hydra/`` with the composed config and the overrides, as Hydra writes them."""
    hydra_cfg = HydraConfig.get()
    with read_write(hydra_cfg.runtime), open_dict(hydra_cfg.runtime):
        hydra_cfg.runtime.output_dir = str(run_dir)
    saved = run_dir / ".hydra"
    saved.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, saved / "config.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, saved / "overrides.yaml")


def replace_finished(cfg: DictConfig, run_dir: Path, todo: list[str]) -> None:
    """``force=true`` on a finished run: its result.json and its trained checkpoint are moved aside
    (``*.replaced``), so the run starts over, training included, and shows as running until it ends."""
    moved = [run_dir / RESULT_NAME]
    if "train" in todo:
        moved.append(Path(cfg.train.output))
    for path in moved:
        if path.exists():
            path.replace(path.with_name(path.name + ".replaced"))
            log.info("force=true: moved %s aside (%s.replaced)", path, path.name)


# ------------------------------------------------------------------------------------------ the entry point

@hydra.main(version_base="1.3", config_path="pkg://repshift.configs", config_name="run")
def main(cfg: DictConfig) -> Optional[RunRecord]:
    outcome = Run(cfg, Path(HydraConfig.get().runtime.output_dir)).outcome()
    SWEEP.after(outcome, keep_going=cfg.get("keep_going") is True, sweep=HydraConfig.get().mode == RunMode.MULTIRUN)
    if isinstance(outcome, RunFailed):
        gc.collect()  # the failed run's model and data, now unreachable
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise outcome
    return outcome


#: What a run does before its first task, in order; a failure in one of them did no work (:class:`SweepGuard`).
EARLY_STAGES = ("checking the configuration", "checking the inputs", "building the model")


class Run:
    """One run (module docstring), with what it is doing now (``stage``) and where it writes (``run_dir``)."""

    def __init__(self, cfg: DictConfig, named: Path):
        self.cfg, self.named = cfg, named
        self.stage = EARLY_STAGES[0]
        self.run_dir: Optional[Path] = None
        self.rank = int(os.environ.get("RANK", 0))

    def outcome(self):
        """The run's record, or the :class:`RunFailed` to raise. It is returned, not raised, so that the
        failure's traceback, and the model its frames hold, are freed before the caller raises it."""
        with contextlib.ExitStack() as stack:
            try:
                return self.run(stack)
            except Exception as error:  # noqa: BLE001 - every failure ends alike: logged, marked, raised bare
                return self.failed(error, stack)

    def run(self, stack: contextlib.ExitStack) -> RunRecord:
        cfg = self.cfg
        check_merging(cfg)
        config = OmegaConf.to_container(cfg, resolve=True)
        settings.validate(config)
        todo = tasks.parse_tasks(config["task"])
        if "train" in todo:
            tasks.check_train_output(cfg)
        method = recorded_method(cfg)  # said before any work when it is not the method asked for
        self.rank, world, local_rank = distributed.init_from_env()
        stack.callback(distributed.cleanup)
        device = resolve_device(cfg.device, local_rank)

        self.stage = EARLY_STAGES[1]
        ident = identity.run_identity(config, todo, device_identity(device))
        finished = identity.find_finished(self.named, ident)
        if finished is not None and not cfg.force:
            log.info("skipping %s: it holds this run's result (identity %s; force=true re-runs it)", finished, ident.key)
            return RunRecord.read(finished)
        self.run_dir = identity.folder_for(self.named, ident)
        if self.run_dir != self.named:
            try:
                other = f"the result of another run (identity {RunRecord.read(self.named).identity.key})"
            except RecordError as error:  # reported with its path, kept as it is
                other = f"a result.json that is not a valid run record ({error.reason})"
            log.warning("%s holds %s; this run (identity %s) writes to %s", self.named, other, ident.key, self.run_dir)
        stack.enter_context(run_log(self.run_dir))
        if self.rank == 0:
            settle_folder(cfg, self.run_dir)
            if cfg.force:
                replace_finished(cfg, self.run_dir, todo)
            status.mark_running(self.run_dir, ident.key)
        distributed.barrier()

        logger = instantiate(cfg.logger) if self.rank == 0 else NullLogger()
        stack.callback(logger.finish)
        logger.start(config)
        record = self.execute(todo, device, world, ident, method, logger)
        if self.rank == 0:
            path = record.write(self.run_dir)
            status.clear_state(self.run_dir)
            log.info("wrote %s", path)
            logger.log_record(record)
        return record

    def execute(self, todo: list[str], device: torch.device, world: int, ident: Identity, method: dict,
                logger) -> RunRecord:
        """Build, load weights, compress, then train / evaluate / bench as asked; the run's record."""
        cfg = self.cfg
        self.stage = EARLY_STAGES[2]
        log.info("building model=%s (%s)", HydraConfig.get().runtime.choices.get("model"), cfg.model.name)
        torch.manual_seed(cfg.seed)  # random weights, the same on every rank and in every rerun
        model, weights = build(cfg)
        model.to(device).eval()
        evaluator = tasks.evaluator_of(cfg, model) if "evaluate" in todo else None
        compress_model(model, cfg)
        fields: dict[str, Any] = {}
        if "train" in todo:
            self.stage = "training"
            fields["train"] = tasks.run_train(model, cfg, device, lambda entry: _log_epoch(entry, logger))
            weights = {"real": True, "source": f"trained-here:{fields['train']['checkpoint']}", "initial": weights}
        if evaluator is not None:
            self.stage = "evaluating"
            fields["evaluator"] = cfg.dataset.evaluator
            fields["dataset"], fields["metrics"] = evaluator.run(model, cfg, device, self.run_dir)
        if "bench" in todo and self.rank == 0:
            self.stage = "benchmarking"
            fields["bench"], fields["gmacs"] = tasks.run_bench(model, cfg, device)
        patched = repshift.is_patched(model)
        return RunRecord.model_validate({
            "identity": ident.model_dump(),
            "experiment": cfg.experiment_name,
            "run_name": self.run_dir.name,
            "method": method,
            "model": {"name": HydraConfig.get().runtime.choices.get("model"), "arch": cfg.model.name,
                      "family": model.repshift.family if patched else None},
            "metric": cfg.metric,
            "metric_resolved": model.repshift.metric if patched else None,
            "site": cfg.site,
            "reading": cfg.reading,
            "attention": cfg.attention,
            "compress": OmegaConf.to_container(cfg.compress, resolve=True) if compresses(cfg) else None,
            "weights": weights,
            "tokens": list(model.repshift.tokens) if patched else [],
            "world_size": world,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "env": provenance.environment(),
            **fields,
        })

    def failed(self, error: Exception, stack: contextlib.ExitStack) -> RunFailed:
        """Log the traceback (console and run.log), mark the folder failed, and describe the failure."""
        folder = self.run_dir
        if folder is None and not (self.named / RESULT_NAME).exists():
            folder = self.named  # failed before settling: the named folder, unless it holds another run's result
            stack.enter_context(run_log(folder))
        log.error("run failed while %s: %s: %s", self.stage, type(error).__name__, error, exc_info=error)
        if folder is not None and self.rank == 0:
            status.mark_failed(folder, f"{type(error).__name__}: {_first_line(error)}")
        where = f" (traceback in {folder / 'run.log'})" if folder is not None else ""
        early = self.stage in EARLY_STAGES
        key = getattr(error, "key", None) or tuple(getattr(error, "problems", ()))  # InputError, ConfigError
        return RunFailed(f"run failed while {self.stage}: {type(error).__name__}: {error}{where}",
                         signature=(type(error).__name__, key or _first_line(error)), early=early, run_dir=folder)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _log_epoch(entry: dict, logger) -> None:
    log.info("epoch %d: train loss %.4f, val top-1 %s, lr %.2e", entry["epoch"], entry["train_loss"],
             "-" if entry["val_top1"] is None else f"{entry['val_top1']:.2f}", entry["lr"])
    logger.log_metrics({f"train/{k}": v for k, v in entry.items() if v is not None})


# ------------------------------------------------------------------------------------------ sweeps

class SweepStopped(SystemExit):
    """A sweep stopped by :class:`SweepGuard`: the interpreter prints its message (the summary) and exits with 1.
    A SystemExit, because Hydra turns an exception of a run (or of a callback) into one more failed run."""

    def __init__(self, summary: str):
        super().__init__(summary)


class SweepGuard:
    """A sequential sweep (``hydra/launcher=basic``, every run in this process) whose first :data:`STOP_AFTER`
    runs all fail the same way before doing any work stops with one summary, instead of failing the same way for
    every run. ``keep_going=true`` lets it go on. (Under submitit and SLURM each run is a process of its own;
    the SLURM launcher ends with a summary of every failure.)"""

    def __init__(self) -> None:
        self.failures: list[RunFailed] = []
        self.worked = False

    def after(self, outcome, keep_going: bool, sweep: bool) -> None:
        """Take note of a run's outcome (a record or a :class:`RunFailed`); :class:`SweepStopped` when it is time."""
        if not isinstance(outcome, RunFailed) or not outcome.early or self.worked:
            self.worked = True  # a run that did some work: later failures are not "the first runs"
            return
        self.failures.append(outcome)
        if len(self.failures) >= STOP_AFTER and len({f.signature for f in self.failures}) == 1 and sweep \
                and not keep_going:
            folders = "".join(f"\n  {f.run_dir}" for f in self.failures if f.run_dir is not None)
            raise SweepStopped(
                f"the first {len(self.failures)} runs of this sweep failed the same way before doing any work, "
                f"so the sweep stops here (keep_going=true runs the rest anyway):\n{self.failures[0]}{folders}")


#: The sweep this process runs (one per process: Hydra's basic launcher runs every run of a sweep here).
SWEEP = SweepGuard()


if __name__ == "__main__":
    # `python -m repshift.run` executes this file as __main__; run the module imported as repshift.run, so that
    # there is one SWEEP, and the RunFailed of a run is repshift.run.RunFailed wherever it is looked at
    from repshift.run import main as run_main

    run_main()
