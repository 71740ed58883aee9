"""`cls`: a classification expert chooses the expert (paper §3.2, classification-expert adaptation).

The classification expert is an SVF expert trained with `t2 train --task route --experts E1 E2 ...`
on the experts' own training questions (label = which expert). Pass 1 runs the same routing
prompt as `prompt` (numbered experts, calibrated; see `prompt`), with the classification expert's z
merged; the number it scores highest names the expert ("other" = the base weights). `route` lists each
training question's experts in its own cyclic order, so the expert learns the expert, not the place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import ExpertError
from ..experts.expert import Expert
from ..models.load import model_id
from ..tasks.base import TASKS
from ..tasks.route import expert_folders, read_meta
from .prompt import Classifier, RoutingSettings
from .registry import CLASSIFIER, StrategyConfig, StrategySpec, register_strategy


@dataclass
class ClsSettings(RoutingSettings):
    """Settings of `cls`."""

    expert: str | None = None  # folder of the classification expert (`t2 train --task route --experts ...`)


def check(settings: ClsSettings) -> list[str]:
    """What `cls` needs when chosen: its classification expert."""
    return [] if settings.expert else ["strategy cls needs --cls-expert DIR, its classification expert "
                                       "(cls.expert; train one with `t2 train --task route --experts ...`)"]


def build(am: Any, cfg: StrategyConfig) -> Classifier:
    """A Classifier under the classification expert's weights; checks it routes between these experts."""
    path = Path(str(cfg.section("cls").expert))
    e = Expert.load(path)
    if e.meta.task != "route":
        raise ExpertError(f"--cls-expert {path}: trained on task '{e.meta.task or 'none'}', not 'route' "
                          f"(train one with `t2 train --task route --experts ...`)")
    version = e.meta.provenance.get("task_version") or "1"  # experts from before versioning: route v1
    if version != TASKS.get("route").version:
        raise ExpertError(f"--cls-expert {path}: trained on routing prompts of version {version} (v1 listed the experts "
                          f"as letters); this version asks with version {TASKS.get('route').version}: retrain it "
                          f"with `t2 train --task route --experts ...`")
    e.check_base(model_id(am.model), am.svf.fingerprint)
    if e.meta.targets != am.targets:
        raise ExpertError(f"--cls-expert {path}: adapts other targets than the experts it routes between")
    train_cfg = e.meta.provenance.get("config", {})
    trained_for = [read_meta(f).get("label", "") for f in expert_folders(train_cfg.get("data"))]
    if trained_for != am.labels:
        raise ExpertError(f"--cls-expert {path}: trained to route between experts {trained_for}, "
                          f"not {am.labels} (give --experts in the same order)")
    z = {t: v.detach() for t, v in e.z().items()}
    chat = bool(train_cfg.get("chat", False))  # the prompt format it was trained on
    clf = Classifier(am, cfg, name="cls", z=z, chat=chat)
    clf.source = str(path)
    return clf


register_strategy(StrategySpec(
    "cls", build, ClsSettings, needs=CLASSIFIER, help="a classification expert names the expert for each request",
    check=check, runs=lambda s: [s.expert] if s.expert else [],
    given=lambda s, classifier: replace(s, expert=classifier)))
