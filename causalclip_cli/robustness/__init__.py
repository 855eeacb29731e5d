"""Adversarial robustness: the pixel-space attack primitives shared by attacks and purifiers
(`primitives`), white-box attacks and their measurement (`adversarial`), and input purifiers with the
learned purifier's training (`purify`: the residual CNN and the issue-21 U-Net networks, loading by kind
and by shipped name), and the GPU training recipe of the U-Net purifier with pairs made on the fly
(`purifier_train`). It may import `training`, `inputs`, `evidence`, `model` and the shared base, never
`scanning`.
"""
