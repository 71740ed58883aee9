"""Load a model, run it (batched scoring and generation), full-size random weights, memory plans."""
