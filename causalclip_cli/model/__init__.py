"""The detector itself: CLIP backbones and their offline recovery, intermediate-layer taps, the CausalCLIP
and linear heads, precision modes, image preprocessing, the checkpoint format with `Detector`, the
familiarity reference that lets a head abstain on images unlike its training data (`familiarity`), and the
environment report (`inspect`). Open-clip model configs ship in `model_configs/`. This package may import
only the shared base (`causalclip_cli.errors`, `causalclip_cli.settings`, `causalclip_cli.__version__`).
"""
