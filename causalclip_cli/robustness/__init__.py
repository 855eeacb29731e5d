"""Adversarial robustness: the pixel-space attack primitives shared by attacks and purifiers
(`primitives`), white-box attacks and their measurement (`adversarial`), and input purifiers with the
learned purifier's training (`purify`). It may import `training`, `inputs`, `evidence`, `model` and the
shared base, never `scanning`.
"""
