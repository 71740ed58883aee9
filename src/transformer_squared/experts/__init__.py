"""SVF experts: the SVD cache, the singular-value parametrisation, the Expert type, the adapted model."""
