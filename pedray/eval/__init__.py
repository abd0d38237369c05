"""Evaluation: the paper's text metrics and objective-answer accuracy (batch generation and reports: #6)."""
