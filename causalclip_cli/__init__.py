"""causalclip: a forensic scanner for AI-generated images (CausalCLIP head over a frozen CLIP tower)."""

__version__ = "0.1.0"
