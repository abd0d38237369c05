"""pedray: train and serve a Chinese pediatric medical assistant on Ray (PediatricsGPT recipe)."""

__version__ = "0.1.0"
