"""Models: tokenizer training, the embedded default model, loading, adapters."""
