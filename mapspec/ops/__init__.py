"""Actions: what each does to a tensor (normalisation, inference, execution, inverse)."""
