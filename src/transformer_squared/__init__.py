"""transformer-squared: Transformer² (Sakana AI, ICLR 2025) for any Hugging Face causal LM.

SVF experts rescale the singular values of chosen weight matrices (paper §3.1); a two-pass
inference picks or mixes experts per prompt (paper §3.2).
"""

__version__ = "0.1.0"
