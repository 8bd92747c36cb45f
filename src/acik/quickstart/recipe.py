"""The quickstart's recipe (`recipes/quickstart.yaml`) and its stages: what `acik.quickstart.pipeline` runs and
`acik.quickstart.report` describes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from acik.data.recipe import DataRecipe
from acik.quant.cli import QuantizeRecipe
from acik.quickstart.qa import QASettings
from acik.recipe import RecipeError, apply_overrides, from_dict, read_yaml, to_dict
from acik.train.finetune import FinetuneRecipe
from acik.train.loop import TrainSettings

PACKAGED_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"

# Each stage and the stages it reads, in the order they run.
STAGES: dict[str, list[str]] = {
    "data": [],
    "tokenizer": ["data"],
    "tokens": ["data", "tokenizer"],
    "pretrain": ["tokens"],
    "qa": ["data", "tokenizer"],
    "finetune": ["pretrain", "qa"],
    "int8": ["finetune"],
    "eval": ["pretrain", "finetune", "int8", "qa", "tokens"],
    "report": ["data", "tokens", "pretrain", "qa", "finetune", "int8", "eval"],
}
MODEL_STAGES = {"pretrain": "pretrained", "finetune": "fine-tuned", "int8": "fine-tuned, int8"}


@dataclass
class TokenizerSettings:
    vocab_size: int = 4096
    min_frequency: int = 2


@dataclass
class EvalSettings:
    batch_size: int = 16


@dataclass
class QuickstartRecipe:
    """`recipes/quickstart.yaml`: every stage's settings. `seed` is the one seed of the whole run; it
    replaces the stages' own seed fields. `fast` (in the YAML only) holds overrides `--fast` applies."""

    seed: int = 0
    name: str = "acik-quickstart"
    data: DataRecipe = field(default_factory=DataRecipe)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    pretrain: TrainSettings = field(default_factory=TrainSettings)
    qa: QASettings = field(default_factory=QASettings)
    finetune: FinetuneRecipe = field(default_factory=FinetuneRecipe)
    quantize: QuantizeRecipe = field(default_factory=QuantizeRecipe)
    eval: EvalSettings = field(default_factory=EvalSettings)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_quickstart_recipe(path: str | Path | None = None, *, fast: bool = False, seed: int | None = None,
                           overrides: list[str] | None = None) -> QuickstartRecipe:
    path = Path(path) if path else PACKAGED_RECIPE
    raw = read_yaml(path)
    fast_overrides = raw.pop("fast", None) or {}
    if not isinstance(fast_overrides, dict):
        raise RecipeError(f"recipe {path}: 'fast' must be a mapping of overrides")
    if fast:
        raw = _merge(raw, fast_overrides)
    raw = apply_overrides(raw, overrides)
    if seed is not None:
        raw["seed"] = seed
    r = from_dict(QuickstartRecipe, raw, where=f"recipe {path}")
    # One seed for the run: every stage's own seed follows it.
    r.data = dataclasses.replace(r.data, seed=r.seed, inputs=["python-env"])
    r.pretrain = dataclasses.replace(r.pretrain, seed=r.seed)
    r.finetune = dataclasses.replace(r.finetune, seed=r.seed, method="full", prompt_field="question",
                                     response_field="answer")
    return r


def stage_settings(r: QuickstartRecipe, stage: str) -> dict:
    """The part of the recipe a stage depends on (what its 'already done' check compares)."""
    parts = {"data": ["data"], "tokenizer": ["tokenizer"], "tokens": ["data"], "pretrain": ["pretrain"],
             "qa": ["qa"], "finetune": ["finetune"], "int8": ["quantize"], "eval": ["eval"], "report": ["name"]}
    d = to_dict(r)
    return {"seed": r.seed, **{k: d[k] for k in parts[stage]}}
