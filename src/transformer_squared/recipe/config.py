"""The recipe's YAML, one dataclass per section (`t2 recipe run FILE`): what to train, evaluate and report.

`load_recipe` fills them from the file and `--section.key value` flags; `recipe/stages.py` turns them into
stages and `recipe/runner.py` runs those.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..adapt import CLASSIFIER, STRATEGIES, StrategyConfig
from ..baselines.peft_train import BaselineConfig
from ..config import load_config
from ..errors import ConfigError
from ..models.load import DEFAULT_MODEL
from ..training.train import TrainConfig

DESCRIPTIONS = {  # one sentence per category, read by prompt-based dispatch
    "STEM": "Questions in science, technology, engineering and mathematics.",
    "Social Science": "Questions in the social sciences: economics, geography, civic education, politics, sociology.",
    "Humanities": "Questions in the humanities: history, literature, law, culture, philosophy and logic.",
    "Other": "Professional and everyday questions: business, accounting, health and medicine, public service.",
}


@dataclass
class ModelSection:
    """The base model every system starts from."""

    name: str = DEFAULT_MODEL  # built-in name, local folder or hub id
    device: str = "auto"  # auto, cpu, cuda, mps
    dtype: str = "float32"  # model dtype (bfloat16 on a GPU)
    targets: str = "mlp"  # the matrices every SVF expert adapts: mlp, attn, all or a regex


@dataclass
class DataSection:
    """The labelled questions and the one split every system shares."""

    task: str = "vmlu"  # multiple-choice task in the registry
    path: str | None = None  # data folder/file or hub id (`--data` sets it; None: the task's default)
    splits: list[str] = field(default_factory=list)  # labelled splits pooled ([]: vmlu dev+valid, mmlu test)
    sample: int = 0  # draw this many labelled questions first, stratified by subject and seeded (0: all)
    val_fraction: float = 0.2  # share of each subject for validation (model selection)
    holdout_fraction: float = 0.4  # share of each subject for the reported numbers only
    seed: int = 0  # seeds the sample and the split
    test_split: str = ""  # unlabelled split to write one submission CSV per system for ('': none; vmlu: test)


@dataclass
class ExpertsSection:
    """One SVF expert per category, all trained with the same settings."""

    categories: list[str] = field(default_factory=list)  # [] : every category of the task
    descriptions: dict[str, str] = field(default_factory=lambda: dict(DESCRIPTIONS))  # category → one sentence
    train: TrainConfig = field(default_factory=TrainConfig)  # task, data, model, subset, split and label are set per expert


@dataclass
class RouterSection:
    """The classification expert of strategies that need one: an SVF expert trained (same RL recipe) to name
    the category expert that trained on a question, from the experts' own training and validation questions."""

    enabled: bool = True  # train it (needed by the strategies in eval.strategies that need a classifier)
    train: TrainConfig = field(default_factory=TrainConfig)  # task, data, model and label are set by the recipe


@dataclass
class BaselinesSection:
    """PEFT baselines trained on the same training part."""

    methods: list[str] = field(default_factory=lambda: ["lora", "ia3"])  # which of lora, ia3 to train
    lora: BaselineConfig = field(default_factory=lambda: BaselineConfig(method="lora"))  # LoRA settings
    ia3: BaselineConfig = field(default_factory=lambda: BaselineConfig(method="ia3"))  # IA3 settings


@dataclass
class EvalSection:
    """How every system is scored on the holdout part (and on the test split for submissions)."""

    protocol: str = "letter"  # the report's protocol: letter or generate (both are always measured)
    batch_size: int = 8  # prompts per forward pass
    limit: int = 0  # at most this many holdout questions, stratified by subject (0: all)
    chat: bool = False  # chat template around prompts (VMLU's official protocol: no)
    experts: bool = True  # a row for each expert alone
    strategies: list[str] = field(default_factory=STRATEGIES.in_order)  # Transformer² rows (default: every registered strategy)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)  # pass-1 settings: shared, and one section per strategy
    submissions: bool = True  # with data.test_split: one submission CSV per system


@dataclass
class ReportSection:
    """The comparison report and the free-form check."""

    quote: str | None = None  # add published rows (`seed`: tuyentn/self-adaptive-llm) to the report
    chart: bool = True  # draw report/chart.png
    n_boot: int = 10_000  # bootstrap resamples for the CIs of differences and entropies
    generate: list[str] = field(default_factory=list)  # prompts answered by the base model and each expert
    max_new_tokens: int = 48  # length of those answers


@dataclass
class RecipeConfig:
    """A whole comparison; YAML sections map onto the sections below."""

    name: str = "recipe"  # names the output folder runs/<name> unless `out` is set
    out: str = ""  # output folder ('': runs/<name>)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    experts: ExpertsSection = field(default_factory=ExpertsSection)
    router: RouterSection = field(default_factory=RouterSection)
    baselines: BaselinesSection = field(default_factory=BaselinesSection)
    eval: EvalSection = field(default_factory=EvalSection)
    report: ReportSection = field(default_factory=ReportSection)

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.data.val_fraction < 1 or not 0 < self.data.holdout_fraction < 1:
            problems.append("data.val_fraction in [0, 1) and data.holdout_fraction in (0, 1)")
        unknown = [m for m in self.baselines.methods if m not in ("lora", "ia3")]
        if unknown:
            problems.append(f"baselines.methods: '{unknown[0]}' is not lora or ia3")
        unknown = [x for x in self.eval.strategies if x not in STRATEGIES.names()]
        if unknown:
            problems.append(f"eval.strategies: '{unknown[0]}' is not one of {', '.join(STRATEGIES.names())}")
        for name in self.eval.strategies:
            if name in STRATEGIES and STRATEGIES.get(name).needs == CLASSIFIER and not self.router.enabled:
                problems.append(f"eval.strategies '{name}' needs router.enabled (the classification expert)")
        if self.eval.protocol not in ("letter", "generate"):
            problems.append(f"eval.protocol '{self.eval.protocol}': choose letter or generate")
        if self.eval.batch_size < 1 or self.eval.limit < 0 or self.data.sample < 0:
            problems.append("eval.batch_size ≥ 1, eval.limit ≥ 0 and data.sample ≥ 0")
        if problems:
            raise ConfigError("; ".join(problems))
        for section in (self.experts.train, self.router.train, self.baselines.lora, self.baselines.ia3, self.eval.strategy):
            section.__post_init__()  # nested sections filled from YAML are checked again

    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.name}")


def load_recipe(path: str | Path | None, flags: list[str] | None = None, data: str | None = None,
                out: str | None = None) -> RecipeConfig:
    """RecipeConfig from a YAML file, `--key value` flags (`--experts.train.lr 1e-3`), then --data and --out."""
    extra = [x for k, v in (("data.path", data), ("out", out)) if v is not None for x in (f"--{k}", str(v))]
    return load_config(RecipeConfig, path, list(flags or []) + extra)


def is_recipe(path: str | Path) -> bool:
    """Whether a YAML file is a pipeline recipe (has a `model:` or `experts:` section) rather than a TrainConfig."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return isinstance(data, dict) and any(isinstance(data.get(k), dict) for k in ("model", "data", "experts"))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"
