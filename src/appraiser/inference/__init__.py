"""Reading prices out of language models (see `decode`)."""

from appraiser.inference.decode import METHODS, PriceDistribution, predict_prices

__all__ = ["METHODS", "PriceDistribution", "predict_prices"]
