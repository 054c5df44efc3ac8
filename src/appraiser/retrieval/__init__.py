"""Retrieval: an index of the training pool for similar items and their prices (knn pricer, RAG prompts)."""
