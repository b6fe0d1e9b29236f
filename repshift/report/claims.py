"""The claims ledger: every headline claim of the paper (``claims.yaml``), our measurement and a verdict.

    python -m repshift.report claims [--results outputs] [--out outputs/claims]      (make claims)

A verdict is ``reproduced``, ``not reproduced`` or ``not measured`` (with why), computed from run records
(:func:`repshift.record.scan` of the results roots) by the claim's rule (the head of ``claims.yaml`` defines
them). What may count as evidence:

- **Accuracy** claims read only records on real weights and real data: a random-weight or synthetic record
  (a SMOKE run) is never evidence; the row says what is missing.
- **Throughput** claims compare ratios (our speed-up against the paper's), never absolute rates, and only
  from one CUDA device on the paper's network and input; the row names the device and the kernels. A CPU
  ratio is shown and decides nothing.
- **GFLOPs** claims read any record of the paper's network and input: a count does not depend on weights or
  data (a SMOKE run of DeiT counts what DeiT counts; a SMOKE UMT is shrunk and does not).
- **Other settings** (the tiny ViT trained here on ShapeBench by ``make demo``; EfficientNet-Lite0 with real
  weights, ``make real-weights``) speak only where the claim lists them, only to its direction (a sign, which
  curve is on top, AUROC above chance), and in a row of their own whose verdict names the setting:
  ``not reproduced on ShapeBench tiny ViT``.

The real-weights tier writes no run record; its ``realweights.json`` is read through :class:`RealWeightsStudy`
(a typed view that names the file and the field when it does not validate).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from repshift.record import RecordProblem, RunRecord, scan
from repshift.report.core import Run, as_runs, dataset_of, first_layer, precedence

__all__ = ["CLAIMS_FILE", "VERDICTS", "SETTINGS", "Claim", "Selection", "Part", "Setting", "Row", "Ledger",
           "RealWeightsStudy", "load_claims", "evaluate", "ledger", "render_markdown", "render_csv", "render_html",
           "readme_block", "replace_readme_block", "README_BEGIN", "README_END"]

CLAIMS_FILE = Path(__file__).with_name("claims.yaml")
VERDICTS = ("reproduced", "not reproduced", "not measured")
#: The other settings a claim may allow, and how a verdict names them.
SETTINGS = {"shapebench": "ShapeBench tiny ViT", "realweights": "real-weights EfficientNet-Lite0"}
#: Where ``make real-weights`` writes its numbers, relative to a results root.
REALWEIGHTS_FILE = Path("realweights") / "realweights.json"
#: Keys of a model config that change the network itself (a SMOKE run shrinks UMT through them).
ARCHITECTURE_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "img_size", "num_layers")


# --------------------------------------------------------------------------- the claims file

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Selection(_Strict):
    """Which records a side of a comparison reads; every given field must match."""

    method: Optional[str] = None
    attention: Union[str, list[str], None] = None
    metric: Optional[str] = None
    site: Optional[str] = None
    keep: Optional[Literal["top", "bottom"]] = None

    def matches(self, r: RunRecord) -> bool:
        attention = [self.attention] if isinstance(self.attention, str) else self.attention
        keep = r.compress.keep if r.compress is not None else None
        return ((self.method is None or r.method.name == self.method)
                and (attention is None or r.attention in attention)
                and (self.metric is None or r.metric == self.metric)
                and (self.site is None or r.site == self.site)
                and (self.keep is None or keep == self.keep))


class Part(_Strict):
    """One number of a claim (one model, one comparison)."""

    label: str
    model: str
    paper: Optional[float] = None
    input: Optional[list[int]] = None  # the paper's input of one sample: its network is checked against it
    of: Optional[Selection] = None
    over: Optional[Selection] = None
    metric: Optional[str] = None  # ordering: the accuracy metric
    best: Optional[str] = None  # ordering: the candidate the paper puts on top
    candidates: Optional[dict[str, Selection]] = None


class Setting(_Strict):
    """Another setting that may speak to a claim's direction."""

    setting: Literal["shapebench", "realweights"]
    experiments: list[str] = []
    model: Optional[str] = None
    of: Optional[Selection] = None  # defaults: the claim's first part's
    over: Optional[Selection] = None


class Needs(_Strict):
    weights: Optional[str] = None
    data: Optional[str] = None


class Claim(_Strict):
    id: str
    statement: str
    where: str
    quote: str
    quantity: str
    rule: Literal["speedup", "difference", "ordering", "value", "foreground"]
    tolerance: float = 0.0
    positive: bool = False
    metric: Optional[str] = None
    experiments: list[str]
    make: str
    needs: Needs = Needs()
    datasets: Optional[list[str]] = None
    blocks: Optional[list[int]] = None
    parts: list[Part] = []
    settings: list[Setting] = []


class _ClaimsFile(_Strict):
    claims: list[Claim]


def load_claims(path: Union[str, os.PathLike] = CLAIMS_FILE) -> list[Claim]:
    """The claims of ``path``; a file that does not validate fails with its path and the field."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        claims = _ClaimsFile.model_validate(data).claims
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: {error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        raise ValueError(f"{path}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    ids = [c.id for c in claims]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: claim ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
    return claims


# --------------------------------------------------------------------------- the real-weights tier's numbers

class _StudyAuroc(BaseModel):
    model_config = ConfigDict(extra="ignore")
    stages: list[str]
    rows: dict[str, list[list[float]]]  # score -> per stage -> per photo


class RealWeightsStudy(BaseModel):
    """What the ledger reads of ``realweights.json`` (:mod:`repshift.realweights`)."""

    model_config = ConfigDict(extra="ignore")
    label: str
    photos: list[str]
    masked: list[str]
    auroc: Optional[_StudyAuroc] = None

    @classmethod
    def read(cls, path: Union[str, os.PathLike]) -> "RealWeightsStudy":
        try:
            return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:  # ValidationError and JSONDecodeError are ValueErrors
            reason = error.errors()[0] if isinstance(error, ValidationError) else None
            where = f"{'.'.join(str(p) for p in reason['loc'])}: {reason['msg']}" if reason else str(error)
            raise RecordProblemError(str(path), where) from None


class RecordProblemError(ValueError):
    def __init__(self, path: str, reason: str):
        self.problem = RecordProblem(path=path, reason=reason)
        super().__init__(f"{path}: {reason}")


# --------------------------------------------------------------------------- verdicts

@dataclass
class Row:
    """One line of the ledger: a claim in the paper's setting, or in another setting that has evidence."""

    claim: str
    statement: str
    where: str
    setting: str  # "paper" or a key of SETTINGS
    paper: str
    ours: str
    verdict: str
    why: str
    evidence: list[str] = field(default_factory=list)

    @property
    def verdict_text(self) -> str:
        if self.setting == "paper" or self.verdict == "not measured":
            return self.verdict
        return f"{self.verdict} on {SETTINGS[self.setting]}"


@dataclass
class Ledger:
    rows: list[Row]
    problems: list[RecordProblem]
    roots: list[str]

    def to_json(self) -> dict:
        return {"roots": self.roots, "rows": [asdict(r) for r in self.rows],
                "problems": [p.model_dump() for p in self.problems]}

    @classmethod
    def from_json(cls, data: dict) -> "Ledger":
        return cls([Row(**r) for r in data["rows"]], [RecordProblem(**p) for p in data.get("problems", [])],
                   data.get("roots", []))


@dataclass
class _Outcome:
    """One part's measurement: a value and whether it meets the rule (None: not measured), why, which files."""

    ours: Optional[float]
    passed: Optional[bool]
    text: str
    why: str = ""  # without the part's label: parts with the same reason are named together
    evidence: list[str] = field(default_factory=list)
    label: str = ""


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def _paper_text(claim: Claim) -> str:
    if claim.rule in ("speedup",):
        return ", ".join(f"×{p.paper:.2f} ({p.label})" for p in claim.parts)
    if claim.rule == "difference":
        return ", ".join(f"{_signed(p.paper)} ({p.label})" for p in claim.parts)
    if claim.rule == "value":
        return ", ".join(f"{p.paper:.1f} ({p.label})" for p in claim.parts)
    if claim.rule == "ordering":
        return ", ".join(f"{p.best} on top ({p.label})" for p in claim.parts)
    return "maps without a number"


def architecture_problem(r: RunRecord, paper_input: Optional[list[int]]) -> Optional[str]:
    """Why ``r`` did not run the paper's network on the paper's input (None when it did)."""
    model = r.config.get("model") or {}
    size = model.get("input_size")
    if paper_input is not None and size is not None and [int(d) for d in size] != list(paper_input):
        return f"input {list(size)}, not the paper's {paper_input}"
    changed = {k: v for k, v in (model.get("kwargs") or {}).items() if k in ARCHITECTURE_KEYS}
    for tower in ("vision", "text"):
        changed.update({f"{tower}.{k}": v for k, v in (model.get(tower) or {}).items()})
    if changed:
        return "a shrunk network (" + ", ".join(f"model.{k}={v}" for k, v in sorted(changed.items())) + ")"
    return None


def _is_gpu(r: RunRecord) -> bool:
    return r.identity.device.startswith("cuda")


def _pick(runs: list[Run]) -> Optional[Run]:
    """Of several records for one thing, the tables' choice (:func:`repshift.report.core.precedence`)."""
    return max(runs, key=precedence) if runs else None


def _in_experiments(runs: list[Run], experiments: Iterable[str], model: Optional[str]) -> list[Run]:
    experiments = set(experiments)
    return [run for run in runs
            if run.record.experiment in experiments and (model is None or run.record.model.name == model)]


def _speedup(claim: Claim, part: Part, runs: list[Run]) -> _Outcome:
    runs = _in_experiments(runs, claim.experiments, part.model)
    timed = [run for run in runs if run.record.bench is not None]
    if not timed:
        return _Outcome(None, None, "—", f"no timed run ({', '.join(claim.experiments)})")
    shrunk = [(run, architecture_problem(run.record, part.input)) for run in timed]
    faithful = [run for run, problem in shrunk if problem is None]
    if not faithful:
        return _Outcome(None, None, "—", f"{shrunk[0][1]}: not the paper's network",
                        [run.path for run, _ in shrunk])
    datasets = claim.datasets or [None]
    ratios, used, devices = [], [], set()
    for gpu in (True, False):
        ratios, used = [], []
        by_device: dict[str, list[Run]] = {}
        for run in faithful:
            if _is_gpu(run.record) == gpu:
                by_device.setdefault(run.record.bench.device, []).append(run)
        for device, group in by_device.items():
            over = _pick([r for r in group if part.over.matches(r.record)])
            found = []
            for dataset in datasets:
                of = _pick([r for r in group if part.of.matches(r.record)
                            and (dataset is None or dataset_of(r.record) == dataset)])
                if of is not None and over is not None:
                    found.append(of)
            if over is not None and len(found) == len(datasets):
                ratios = [of.record.bench.throughput / over.record.bench.throughput for of in found]
                used = [*found, over]
                devices = {device}
                break
        if ratios:
            break
    if not ratios:
        return _Outcome(None, None, "—", f"no pair of runs ({part.of.method} and {part.over.method}) "
                        "timed on one device" + (f" for all {len(datasets)} benchmarks" if claim.datasets else ""),
                        [run.path for run in faithful])
    ours = sum(ratios) / len(ratios)
    kernels = " / ".join(",".join(run.record.bench.kernel) for run in (used[0], used[-1]))
    where = f"{next(iter(devices))}, {kernels}"
    text = f"×{ours:.2f} ({part.label}; {where})"
    paths = [run.path for run in used]
    if not _is_gpu(used[0].record):
        return _Outcome(ours, None, text, "needs a GPU: timed on a CPU only", paths)
    return _Outcome(ours, ours >= part.paper * (1 - claim.tolerance), text, evidence=paths)


def _accuracy_value(claim: Claim, selection: Selection, runs: list[Run], metric: str,
                    groups: list[Optional[str]], key) -> tuple[Optional[float], list[Run], list[str]]:
    """The mean of ``metric`` over the records of ``selection``, one per group (a dataset or a block)."""
    picked, missing = [], []
    for group in groups:
        run = _pick([r for r in runs if selection.matches(r.record) and key(r.record) == group
                     and r.record.metric_value(metric) is not None])
        if run is None:
            missing.append(str(group))
        else:
            picked.append(run)
    if missing:
        return None, picked, missing
    return sum(r.record.metric_value(metric) for r in picked) / len(picked), picked, []


def _groups(claim: Claim) -> tuple[list, Any]:
    if claim.datasets:
        return list(claim.datasets), dataset_of
    if claim.blocks:
        return list(claim.blocks), lambda r: first_layer(r) if r.compress and len(r.compress.layers or ()) == 1 else None
    return [None], lambda r: None


def _why_not_real(claim: Claim, runs: list[Run]) -> str:
    """Why the records of a comparison (``runs``: those its selections match) cannot speak to an accuracy claim."""
    needs = [n for n in (claim.needs.weights, claim.needs.data) if n]
    what = "; needs " + " and ".join(needs) if needs else ""
    if not runs:
        return f"no run ({', '.join(claim.experiments)}){what}"
    random = any(not r.record.weights.real for r in runs)
    synthetic = any(r.record.dataset is not None and r.record.dataset.synthetic for r in runs)
    kinds = " and ".join(k for k, hit in (("random weights", random), ("synthetic data", synthetic)) if hit)
    return f"only runs on {kinds or 'other data'}{what}"


def _difference(claim: Claim, part: Part, runs: list[Run], of: Selection, over: Selection, setting: bool) -> _Outcome:
    real = runs if setting else [r for r in runs if not r.record.tainted]
    groups, key = _groups(claim)
    if setting and claim.blocks:  # another network: every block both sides ran
        blocks = {key(r.record) for r in real if of.matches(r.record)} & {key(r.record) for r in real
                                                                          if over.matches(r.record)}
        groups = sorted(b for b in blocks if b is not None)
    metric = claim.metric
    a, a_runs, a_missing = _accuracy_value(claim, of, real, metric, groups or [None], key)
    b, b_runs, b_missing = _accuracy_value(claim, over, real, metric, groups or [None], key)
    if a is None or b is None or not groups:
        relevant = [r for r in runs if of.matches(r.record) or over.matches(r.record)]
        if not setting and not [r for r in relevant if not r.record.tainted]:
            return _Outcome(None, None, "—", _why_not_real(claim, relevant), [r.path for r in relevant])
        missing = sorted(set(a_missing) | set(b_missing))
        return _Outcome(None, None, "—", f"missing {', '.join(missing) or 'runs'}",
                        [r.path for r in a_runs + b_runs])
    ours = a - b
    text = f"{_signed(ours)} ({part.label}: {a:.2f} vs {b:.2f})"
    paths = [r.path for r in a_runs + b_runs]
    if setting:
        return _Outcome(ours, ours > 0, text, evidence=paths)
    passed = ours >= part.paper - claim.tolerance and (ours > 0 or not claim.positive)
    return _Outcome(ours, passed, text, evidence=paths)


def _ordering(claim: Claim, part: Part, runs: list[Run], setting: bool) -> _Outcome:
    real = runs if setting else [r for r in runs if not r.record.tainted]
    single = [r for r in real if r.record.compress is not None and len(r.record.compress.layers or ()) == 1
              and r.record.metric_value(part.metric) is not None]
    per_block: dict[str, dict[int, Run]] = {}
    for name, selection in part.candidates.items():
        chosen: dict[int, list[Run]] = {}
        for run in single:
            if selection.matches(run.record):
                chosen.setdefault(first_layer(run.record), []).append(run)
        per_block[name] = {block: _pick(group) for block, group in chosen.items()}
    shared = set.intersection(*(set(b) for b in per_block.values())) if per_block else set()
    if not shared:
        relevant = [r for r in runs if any(s.matches(r.record) for s in part.candidates.values())]
        if not setting and not [r for r in relevant if not r.record.tainted]:
            return _Outcome(None, None, "—", _why_not_real(claim, relevant), [r.path for r in relevant])
        return _Outcome(None, None, "—", f"no pruned block that every score ({', '.join(per_block)}) "
                        + ("ran" if setting else "ran on real weights and data"), [r.path for r in single])
    means = {name: sum(blocks[b].record.metric_value(part.metric) for b in shared) / len(shared)
             for name, blocks in per_block.items()}
    others = max(v for name, v in means.items() if name != part.best)
    tolerance = 0.0 if setting else claim.tolerance
    text = ", ".join(f"{name} {value:.2f}" for name, value in sorted(means.items(), key=lambda kv: -kv[1]))
    text = f"{part.label}: {text} (mean over blocks {', '.join(str(b) for b in sorted(shared))})"
    paths = [blocks[b].path for blocks in per_block.values() for b in sorted(shared)]
    return _Outcome(means[part.best], means[part.best] >= others - tolerance, text, evidence=paths)


def _value(claim: Claim, part: Part, runs: list[Run]) -> _Outcome:
    runs = [r for r in _in_experiments(runs, claim.experiments, part.model)
            if part.of.matches(r.record) and r.record.gmacs is not None]
    if not runs:
        return _Outcome(None, None, "—", f"no run with a GMACs count ({', '.join(claim.experiments)})")
    faithful = [r for r in runs if architecture_problem(r.record, part.input) is None]
    if not faithful:
        return _Outcome(None, None, "—", f"{architecture_problem(runs[0].record, part.input)}: not the "
                        "paper's network", [r.path for r in runs])
    run = _pick(faithful)
    ours = run.record.gmacs
    bound = max(0.05, claim.tolerance * part.paper)  # the paper gives GFLOPs to one decimal
    return _Outcome(ours, abs(ours - part.paper) <= bound + 1e-9, f"{ours:.2f} ({part.label})", evidence=[run.path])


def _mask_auroc(runs: list[Run], setting: Setting) -> _Outcome:
    """ShapeBench: the demo's mask record of the default score (L2, MLP, literal), first and middle block."""
    found = [r for r in _in_experiments(runs, setting.experiments, setting.model)
             if r.record.metric == "l2" and r.record.site == "mlp" and r.record.reading == "literal"]
    run = _pick(found)
    if run is None:
        return _Outcome(None, None, "—", "no mask-agreement record (make demo)")
    aurocs = {int(k[len("auroc_block"):]): run.record.metric_value(k) for k in run.record.metrics
              if re.fullmatch(r"auroc_block\d+", k)}
    if not aurocs:
        return _Outcome(None, None, "—", f"{run.path}: no auroc_block<k> metrics", [run.path])
    depth = max(aurocs) + 1
    blocks = sorted({0, depth // 2 - 1})
    values = [aurocs[b] for b in blocks]
    text = ", ".join(f"block {b}: {v:.3f}" for b, v in zip(blocks, values)) + f" (of {depth}; 0.5 = chance)"
    return _Outcome(min(values), all(v > 0.5 for v in values), text, evidence=[run.path])


def _realweights_auroc(study: Optional[RealWeightsStudy], path: str) -> _Outcome:
    if study is None or study.auroc is None:
        return _Outcome(None, None, "—", "no realweights.json with masks (make real-weights)")
    score = "shift l2, mlp site, literal"
    per_stage = study.auroc.rows.get(score)
    if per_stage is None:
        return _Outcome(None, None, "—", f"{path}: no row {score!r}", [path])
    means = [sum(v for v in photos if not math.isnan(v)) / max(1, sum(not math.isnan(v) for v in photos))
             for photos in per_stage]
    text = ", ".join(f"{s} {m:.3f}" for s, m in zip(study.auroc.stages, means))
    text += f" (mean of {len(study.masked)} photo(s); 0.5 = chance)"
    return _Outcome(min(means), all(m > 0.5 for m in means), text, evidence=[path])


def _combine(outcomes: list[_Outcome]) -> tuple[str, str]:
    """A claim's verdict from its parts': any measured part failing -> not reproduced; all passing -> reproduced;
    otherwise not measured, with why (parts with one reason named together)."""
    if any(o.passed is False for o in outcomes):
        failed = [o.text for o in outcomes if o.passed is False]
        return "not reproduced", "below the rule: " + "; ".join(failed)
    if outcomes and all(o.passed for o in outcomes):
        return "reproduced", ""
    reasons: dict[str, list[str]] = {}
    for o in outcomes:
        if o.passed is None and o.why:
            reasons.setdefault(o.why, []).append(o.label)
    return "not measured", "; ".join((", ".join(filter(None, labels)) + ": " if any(labels) else "") + why
                                     for why, labels in reasons.items())


def evaluate(claim: Claim, runs: list[Run], study: Optional[RealWeightsStudy] = None,
             study_path: str = "") -> list[Row]:
    """The ledger rows of one claim: its paper setting, then each allowed setting that has evidence."""
    rows = []
    if claim.rule == "speedup":
        outcomes = [_speedup(claim, p, runs) for p in claim.parts]
    elif claim.rule == "difference":
        outcomes = [_difference(claim, p, _in_experiments(runs, claim.experiments, p.model), p.of, p.over, False)
                    for p in claim.parts]
    elif claim.rule == "ordering":
        outcomes = [_ordering(claim, p, _in_experiments(runs, claim.experiments, p.model), False) for p in claim.parts]
    elif claim.rule == "value":
        outcomes = [_value(claim, p, runs) for p in claim.parts]
    else:
        outcomes = [_Outcome(None, None, "—", "the paper shows maps without masks; measured only in other settings")]
    for part, outcome in zip(claim.parts, outcomes):
        outcome.label = part.label
    verdict, why = _combine(outcomes)
    if verdict == "not measured" and claim.experiments:
        why += f" (make {' / make '.join(claim.make.split())})"
    rows.append(Row(claim.id, claim.statement, claim.where, "paper", _paper_text(claim),
                    "; ".join(o.text for o in outcomes if o.ours is not None) or "—", verdict,
                    why if verdict != "not measured" or why else "no evidence",
                    sorted({p for o in outcomes for p in o.evidence})))
    for setting in claim.settings:
        if setting.setting == "realweights":
            outcome = _realweights_auroc(study, study_path)
        elif claim.rule == "foreground":
            outcome = _mask_auroc(runs, setting)
        else:
            found = [r for r in _in_experiments(runs, setting.experiments, setting.model) if r.record.weights.real]
            part = claim.parts[0]
            if claim.rule == "difference":
                outcome = _difference(claim, part.model_copy(update={"label": SETTINGS[setting.setting]}), found,
                                      setting.of or part.of, setting.over or part.over, True)
            else:
                outcome = _ordering(claim, part.model_copy(update={"label": SETTINGS[setting.setting]}), found, True)
        if outcome.ours is None and not outcome.evidence:
            continue  # no evidence in this setting: no row
        verdict = "not measured" if outcome.passed is None else "reproduced" if outcome.passed else "not reproduced"
        direction = {"difference": "the direction only (> 0)", "ordering": "which score is on top",
                     "foreground": "AUROC above chance (0.5)"}[claim.rule]
        rows.append(Row(claim.id, claim.statement, claim.where, setting.setting, direction, outcome.text, verdict,
                        outcome.why, outcome.evidence))
    return rows


def ledger(roots: Iterable[Union[str, os.PathLike]], realweights: Optional[Union[str, os.PathLike]] = None,
           claims: Optional[list[Claim]] = None) -> Ledger:
    """Every claim's rows from the records under ``roots`` (recursively) and the real-weights numbers at
    ``realweights`` (default: ``<first root>/realweights/realweights.json`` when it exists)."""
    roots = [str(r) for r in roots]
    runs, problems = [], []
    for root in roots:
        found = scan(root)
        runs += as_runs(found.records)
        problems += found.problems
    study, study_path = None, ""
    candidate = Path(realweights) if realweights else (Path(roots[0]) / REALWEIGHTS_FILE if roots else None)
    if candidate is not None and candidate.is_file():
        study_path = str(candidate)
        try:
            study = RealWeightsStudy.read(candidate)
        except RecordProblemError as error:
            problems.append(error.problem)
    elif realweights:
        problems.append(RecordProblem(path=str(realweights), reason="no such file"))
    rows = [row for claim in (claims if claims is not None else load_claims()) for row in
            evaluate(claim, runs, study, study_path)]
    return Ledger(rows, problems, roots)


# --------------------------------------------------------------------------- rendering

COLUMNS = ("claim", "paper", "ours", "verdict", "evidence")


def _evidence_text(paths: list[str], limit: int = 2) -> str:
    if not paths:
        return "—"
    shown = ", ".join(paths[:limit])
    return shown + (f" (+{len(paths) - limit} more)" if len(paths) > limit else "")


def _cells(row: Row, evidence_limit: int = 2) -> list[str]:
    claim = row.claim if row.setting == "paper" else f"{row.claim} @ {SETTINGS[row.setting]}"
    verdict = row.verdict_text + (f": {row.why}" if row.verdict != "reproduced" and row.why else "")
    return [claim, row.paper, row.ours, verdict, _evidence_text(row.evidence, evidence_limit)]


def render_markdown(result: Ledger) -> str:
    from tabulate import tabulate

    counts = {v: sum(r.verdict == v for r in result.rows) for v in VERDICTS}
    lines = ["## Claims ledger: the paper's headline claims, our measurement, a verdict", "",
             f"From the run records under {', '.join(result.roots) or '(none)'}. "
             + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".", "",
             tabulate([_cells(r) for r in result.rows], headers=COLUMNS, tablefmt="github", disable_numparse=True), ""]
    lines += _statements(result)
    if result.problems:
        lines += ["", f"{len(result.problems)} result file(s) could not be used:"]
        lines += [f"- {p.path}: {p.reason}" for p in result.problems]
    return "\n".join(lines).rstrip() + "\n"


def _statements(result: Ledger) -> list[str]:
    seen, lines = set(), ["Claims:"]
    for row in result.rows:
        if row.claim not in seen:
            seen.add(row.claim)
            lines.append(f"- {row.claim} ({row.where}): {row.statement}")
    return lines


def render_csv(result: Ledger) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["claim", "setting", "statement", "where", "paper", "ours", "verdict", "why", "evidence"])
    for r in result.rows:
        writer.writerow([r.claim, r.setting, r.statement, r.where, r.paper, r.ours, r.verdict_text, r.why,
                         ";".join(r.evidence)])
    return out.getvalue()


def render_html(result: Ledger) -> str:
    import html

    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = []
    for row in result.rows:
        cells = _cells(row, evidence_limit=len(row.evidence))
        cells[0] = f'<span title="{html.escape(row.statement)}">{html.escape(cells[0])}</span>'
        body.append(f'<tr class="{row.verdict.replace(" ", "-")}">' + "".join(
            f"<td>{c if i == 0 else html.escape(c)}</td>" for i, c in enumerate(cells)) + "</tr>")
    problems = "".join(f"<li>{html.escape(p.path)}: {html.escape(p.reason)}</li>" for p in result.problems)
    return ("<h2>Claims ledger</h2>\n<p>Each headline claim of the paper, what we measured and a verdict "
            "(python -m repshift.report claims). Accuracy claims read only real weights and real data; speed "
            "claims compare speed-ups measured on one GPU with the paper's; other settings speak only to a "
            f"claim's direction and are named.</p>\n<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
            "</tbody></table>"
            + (f"\n<p>{len(result.problems)} result file(s) could not be used:</p><ul>{problems}</ul>"
               if problems else ""))


# --------------------------------------------------------------------------- the README's block

README_BEGIN = "<!-- claims ledger: generated by `make claims-readme`; do not edit by hand -->"
README_END = "<!-- end of claims ledger -->"


def readme_block(result: Ledger) -> str:
    """The README's results section: every row, without evidence paths (they live in docs/claims.json)."""
    from tabulate import tabulate

    rows = [[c for i, c in enumerate(_cells(r)) if COLUMNS[i] != "evidence"] for r in result.rows]
    counts = ", ".join(f"{sum(r.verdict == v for r in result.rows)} {v}" for v in VERDICTS)
    return "\n".join([README_BEGIN, "",
                      f"Generated from the run records under {', '.join(result.roots) or '(none)'}: {counts}.", "",
                      tabulate(rows, headers=COLUMNS[:-1], tablefmt="github", disable_numparse=True), "",
                      README_END])


def replace_readme_block(text: str, block: str) -> str:
    """``text`` with the block between :data:`README_BEGIN` and :data:`README_END` replaced by ``block``."""
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"no claims block in the README: add the lines {README_BEGIN!r} and {README_END!r} first")
    return text[:start] + block + text[end + len(README_END):]
