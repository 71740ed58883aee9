"""Baselines the experts are compared with, trained and scored on the same split.

`peft_train` (LoRA and IA3 adapters trained with PEFT by next-token loss on the answer letter),
`adapter` (load a PEFT adapter onto a base model; its identity for results files). The reference
row of the tables (the best constant answer) is `reference.py`.
"""
