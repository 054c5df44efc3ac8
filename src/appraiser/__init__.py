"""Appraiser: price a product from its text description with fine-tuned language models."""

from appraiser.items import Item

__version__ = "0.1.0"
__all__ = ["Item", "__version__"]
