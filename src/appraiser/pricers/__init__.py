"""Pricers: anything that maps an item to a price (baselines, local LLM, API LLM, RAG, ensemble)."""

from appraiser.pricers.base import FunctionPricer, Prediction, Pricer, parse_price_text

__all__ = ["FunctionPricer", "Prediction", "Pricer", "parse_price_text"]
