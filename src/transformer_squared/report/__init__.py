"""Comparison tables, paired tests and charts from results files."""
