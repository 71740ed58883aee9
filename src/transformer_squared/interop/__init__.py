"""Interop with other tools: `export` (merged Hugging Face checkpoint, PEFT LoRA adapter),
`model_card` (README of an export), `lm_eval_adapter` (lm-evaluation-harness backend),
`vllm_backend` (serving with vLLM). Importing the package loads nothing heavy.
"""
