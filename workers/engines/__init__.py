"""Inference engines (vLLM and the transformers fallback), the pool that shards work over them."""
