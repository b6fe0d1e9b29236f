"""The runner's settings, checked before anything is built: one schema for the resolved run config.

``python -m repshift.run`` composes ``repshift/configs/run.yaml`` with Hydra, resolves it and calls
:func:`validate` before it builds a model, reads data or writes a file. The schema is a set of strict
pydantic models rather than Hydra structured configs, because OmegaConf's typed nodes convert text to
booleans (``no``, ``off`` and ``"false"`` all become ``False``) where a safety switch must accept only a real
YAML boolean; strict models refuse anything else, and one message lists every wrong key, its value and what
is accepted::

    invalid run configuration (2 keys):
      model.unsafe_full_unpickle='no': expected true or false (a YAML boolean: text such as no, off or "false" is refused)
      bench.cpu.repeats=0: expected a whole number >= 1

Groups whose keys depend on the option (model, dataset, train, logger) check the keys the runner reads and
let the others through to their builders, which check their own.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError
from pydantic import field_validator

import repshift.scores as scores
from repshift.attention import BACKENDS
from repshift.bench import AMP_DTYPES
from repshift.data.video import READERS
from repshift.patch import ADAPTERS, MODES, READINGS
from repshift.select import KEEP
from repshift.tasks import EVALUATORS, TASKS

__all__ = ["ConfigError", "validate", "check_folder_name", "SITES"]

#: Every site some adapter measures (which one a model accepts is its adapter's business, checked at patch time).
SITES = tuple(sorted({site for adapter in ADAPTERS for site in adapter.sites}))

Count = Annotated[StrictInt, Field(ge=1)]
NonNegative = Annotated[StrictInt, Field(ge=0)]
Number = Union[StrictInt, StrictFloat]


class ConfigError(ValueError):
    """A run config the runner refuses; ``problems`` holds one ``key=value: expected ...`` line per wrong key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"invalid run configuration: {problems[0]}")
        else:
            super().__init__(f"invalid run configuration ({len(problems)} keys):\n  " + "\n  ".join(problems))


def check_folder_name(value: str, key: str = "experiment_name") -> str:
    """``value`` when it is one plain folder name (no ``/``, not ``.`` or ``..``), else :class:`ConfigError`."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+=,-]*", value) or value in (".", ".."):
        raise ConfigError([f"{key}={value!r}: expected one folder name inside the outputs folder (letters, digits "
                           "and _ . + = , -; no / and not . or ..)"])
    return value


class _Node(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class _Closed(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class BenchDevice(_Closed):
    batch_size: Count
    warmup: NonNegative
    iters: Count
    repeats: Count


class Bench(BenchDevice):
    amp_dtype: Optional[Literal[tuple(k for k in AMP_DTYPES if k)]]  # type: ignore[misc]
    cpu: BenchDevice
    compile: StrictBool = False  # torch.compile(model, fullgraph=True) before timing


class Compress(_Closed):
    layers: Optional[list[NonNegative]]  # null: every block (merging)
    ratio: Optional[Annotated[Number, Field(ge=0, lt=1)]] = None
    num: Union[None, NonNegative, list[NonNegative]] = None
    keep: Literal[KEEP]  # type: ignore[valid-type]
    mode: Literal[MODES] = "sequence"  # type: ignore[valid-type]
    proportional: StrictBool = True


class Model(_Node):
    name: StrictStr
    pretrained: StrictBool = False
    checkpoint: Optional[StrictStr] = None
    #: the safety switch: only a real boolean opens it
    unsafe_full_unpickle: StrictBool = False
    #: resample position / patch embeddings of a file trained at another size (recorded in the result)
    resample_embeddings: StrictBool = False
    input_size: list[Count]
    unit: StrictStr
    family: Optional[StrictStr] = None
    num_frames: Optional[Count] = None
    part: Optional[StrictStr] = None
    tokenizer: Optional[StrictStr] = None
    kwargs: dict[str, Any] = {}


class Dataset(_Node):
    evaluator: Literal[tuple(EVALUATORS)]  # type: ignore[misc]
    name: StrictStr
    root: StrictStr
    split: StrictStr
    synthetic: StrictBool
    batch_size: Count
    num_workers: NonNegative
    limit: Optional[Count] = None
    skip_corrupt: StrictBool = False
    img_size: Count
    num_frames: Optional[Count] = None
    k_test: Optional[Count] = None
    itm: StrictBool = True
    video_reader: Optional[Literal[READERS]] = None  # type: ignore[valid-type]
    anno_files: Optional[dict[str, StrictStr]] = None
    answer_list: Optional[StrictStr] = None
    generate: Optional[dict[str, Any]] = None


class Train(_Node):
    output: StrictStr
    epochs: Count
    batch_size: Count
    lr: Annotated[Number, Field(gt=0)]
    weight_decay: Annotated[Number, Field(ge=0)]
    warmup_epochs: Annotated[Number, Field(ge=0)]
    label_smoothing: Annotated[Number, Field(ge=0, lt=1)]


class Method(_Node):
    name: Optional[StrictStr] = None
    label: Optional[StrictStr] = None


class Logger(_Node):
    target: StrictStr = Field(alias="_target_")
    init_timeout: Optional[Annotated[Number, Field(gt=0)]] = None
    call_timeout: Optional[Annotated[Number, Field(gt=0)]] = None


class Run(_Node):
    task: list[Literal[TASKS]]  # type: ignore[valid-type]
    experiment_name: StrictStr
    metric: Literal[scores.METRICS]  # type: ignore[valid-type]
    site: Literal[SITES]  # type: ignore[valid-type]
    attention: Literal[BACKENDS]  # type: ignore[valid-type]
    reading: Literal[READINGS]  # type: ignore[valid-type]
    device: StrictStr
    seed: StrictInt
    force: StrictBool
    progress: StrictBool
    keep_going: StrictBool = False
    model: Model
    dataset: Dataset
    compress: Compress
    bench: Bench
    train: Train
    method: Method
    logger: Logger

    @field_validator("task", mode="before")
    @classmethod
    def _task_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # task=evaluate is task=[evaluate]

    @field_validator("experiment_name")
    @classmethod
    def _one_folder(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+=,-]*", value):
            raise ValueError("one folder name inside the outputs folder (letters, digits and _ . + = , -; no /)")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("auto, cpu, cuda, cuda:<index> or mps")
        return value


_ACCEPTED = {
    "bool_type": 'true or false (a YAML boolean: text such as no, off or "false" is refused)',
    "int_type": "a whole number",
    "float_type": "a number",
    "string_type": "text",
    "list_type": "a list",
    "dict_type": "a mapping",
    "missing": "a value (the key is missing)",
}


def _accepted(error: dict) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _ACCEPTED:
        return _ACCEPTED[kind]
    if kind == "literal_error":
        return f"one of {ctx['expected']}"
    if kind == "extra_forbidden":
        return "no such key here"
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        return f"{'a whole number' if (kind, bound) == ('greater_than_equal', 1) else 'a number'} {bounds[kind]} {bound}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return error["msg"]


#: What pydantic puts in an error's location for the branch of a Union it tried (not a key of the config).
_BRANCHES = {"int", "float", "str", "bool", "none"}


def _key(loc: tuple) -> str:
    """The config key an error location names (``compress.num[1]``), without pydantic's Union branch tags."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part) and part not in _BRANCHES:
            key += f".{part}" if key else part
    return key


def validate(config: dict) -> None:
    """Check the resolved run config; :class:`ConfigError` naming every wrong key, its value and what is accepted."""
    try:
        Run.model_validate(config)
    except ValidationError as error:
        found: dict[str, dict] = {}
        for item in error.errors():
            found.setdefault(_key(item["loc"]), item)  # a Union reports each branch it tried: keep the first
        # and a wrong element of a list is told, not the list as a whole (compress.num[1], not compress.num)
        keys = [k for k in found if not any(other.startswith((f"{k}[", f"{k}.")) for other in found)]
        raise ConfigError([f"{k}={found[k].get('input')!r}: expected {_accepted(found[k])}" for k in keys]) from None
