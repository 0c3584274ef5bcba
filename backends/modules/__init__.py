"""The real modules people run: torch.nn, Hugging Face transformers, Flax and Equinox blocks."""
