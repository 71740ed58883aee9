"""`t2 recipe run`: a YAML recipe as stages, skipping the complete ones."""
