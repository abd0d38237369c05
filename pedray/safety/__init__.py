"""Safety: triage of a parent's messages for pediatric danger signs, and its labelled evaluation."""

from pedray.safety.signs import Sign, Triage, red_flags, triage

__all__ = ["Sign", "Triage", "red_flags", "triage"]
