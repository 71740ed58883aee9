"""One chat policy for task prompts and free generation: True needs a template (an error naming the model),
None uses it if there is one, False never does."""

from __future__ import annotations

import pytest
import torch

from transformer_squared.errors import ConfigError
from transformer_squared.tasks import Example, get_task
from transformer_squared.tasks.base import chat_format, uses_chat


class PlainTokenizer:
    """A base model's tokenizer: no chat template."""

    chat_template = None
    name_or_path = "org/base-model-7b"


@pytest.mark.parametrize("chat, with_template, plain_tokenizer", [
    (True, True, ConfigError), (None, True, False), (False, False, False)])
def test_the_policy(chat, with_template, plain_tokenizer, chat_tokenizer):
    assert uses_chat(chat_tokenizer, chat) is with_template
    if plain_tokenizer is ConfigError:
        with pytest.raises(ConfigError, match="^org/base-model-7b: chat=True needs a chat template"):
            uses_chat(PlainTokenizer(), chat)
    else:
        assert uses_chat(PlainTokenizer(), chat) is plain_tokenizer


def test_chat_format_wraps_each_text_as_one_user_turn(chat_tokenizer):
    assert chat_format(["a", "b"], chat_tokenizer, True) == ["<user>a</user><assistant>", "<user>b</user><assistant>"]
    assert chat_format(["a"], chat_tokenizer, None) == ["<user>a</user><assistant>"]
    assert chat_format(["a"], chat_tokenizer, False) == chat_format(["a"], PlainTokenizer(), None) == ["a"]


def test_a_task_asked_for_chat_on_a_model_without_template_names_the_model():
    """The old tasks/base.chat_format raised without saying which model lacked the template."""
    ex = [Example("1", "Q?", "A", ("x", "y"))]
    with pytest.raises(ConfigError, match="org/base-model-7b") as exc:
        get_task("mcq").format(ex, PlainTokenizer(), chat=True)
    assert "\n" not in str(exc.value)


def test_generation_follows_the_same_policy(tiny):
    """engine.chat_prompts passed the text through when asked for chat on a model without a template."""
    from transformer_squared.experts.adapted import AdaptedModel

    model, tok = tiny
    tok.chat_template = None
    am = AdaptedModel(model, tok)
    with pytest.raises(ConfigError, match="chat=True needs a chat template"):
        am.generate(["Hi"], max_new_tokens=2, chat=True)
    torch.manual_seed(0)
    assert am.generate(["Hi"], max_new_tokens=2) == am.generate(["Hi"], max_new_tokens=2, chat=False)  # None: plain


def test_generation_uses_the_template_where_there_is_one(tiny, monkeypatch):
    from transformer_squared.experts.adapted import AdaptedModel
    from transformer_squared.models import engine

    model, tok = tiny
    seen = []
    monkeypatch.setattr(engine.HFEngine, "generate", lambda self, prompts, *a, **k: seen.extend(prompts) or [""] * len(prompts))
    AdaptedModel(model, tok).generate(["Hi"], max_new_tokens=2)
    expected = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert seen == [expected] and expected != "Hi"
