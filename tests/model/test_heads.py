"""The CausalCLIP head's parts do what the method needs them to do."""

from __future__ import annotations

import torch

from causalclip_cli.model.heads import (
    CausalHead,
    LinearHead,
    bernoulli_kl,
    grad_reverse,
    gumbel_sigmoid,
    hsic,
    make_head,
)


def test_hsic_near_zero_for_independent_and_large_for_dependent() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = torch.randn(256, 8, generator=g)
    independent = float(hsic(x, y))
    dependent = float(hsic(x, x + 0.1 * torch.randn(256, 8, generator=g)))
    assert independent < 0.002
    assert dependent > 10 * independent
    assert float(hsic(x, x)) > dependent  # more dependence, larger value


def test_hsic_stable_across_batch_sizes() -> None:
    g = torch.Generator().manual_seed(1)
    for n in (2, 3, 16, 257, 1024):
        x = torch.randn(n, 32, generator=g)
        y = x.clone().requires_grad_(True)
        v = hsic(x, y)
        v.backward()
        assert torch.isfinite(v) and v >= -1e-6
        assert torch.isfinite(y.grad).all()
    # identical points: zero distances must not give NaN bandwidths
    same = torch.ones(8, 4)
    assert torch.isfinite(hsic(same, same))


def test_grad_reverse_flips_and_scales_gradient() -> None:
    x = torch.randn(5, 3, requires_grad=True)
    (grad_reverse(x, 0.5) * 2.0).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -1.0))
    y = torch.randn(5, 3, requires_grad=True)
    assert torch.equal(grad_reverse(y, 1.0), y)


def test_gumbel_sigmoid_inference_is_deterministic_and_training_is_noisy() -> None:
    logits = torch.linspace(-3, 3, 50)
    a = gumbel_sigmoid(logits, 0.5, training=False)
    b = gumbel_sigmoid(logits, 0.5, training=False)
    assert torch.equal(a, b)
    assert torch.allclose(a, torch.sigmoid(logits / 0.5))
    g = torch.Generator().manual_seed(0)
    n1 = gumbel_sigmoid(logits, 0.5, training=True, generator=g)
    n2 = gumbel_sigmoid(logits, 0.5, training=True, generator=g)
    assert not torch.equal(n1, n2)
    assert ((n1 >= 0) & (n1 <= 1)).all()


def test_head_eval_forward_is_deterministic() -> None:
    torch.manual_seed(0)
    head = CausalHead(32).eval()
    x = torch.randn(10, 32)
    assert torch.equal(head(x), head(x))
    assert head(x).shape == (10,)


def test_adversary_gradient_reaches_mask_reversed() -> None:
    """The mask net gets the adversary's gradient with the opposite sign (−α·L_adv)."""
    torch.manual_seed(0)
    cfg = {"alpha": 1.0, "beta": 0.0, "lambda1": 0.0, "lambda2": 0.0, "dropout": 0.0}
    head = make_head("causalclip", 16, cfg).train()
    x, y = torch.randn(32, 16), torch.randint(0, 2, (32,))
    g = torch.Generator().manual_seed(3)
    losses = head.losses(x, y, generator=g)
    mask_params = list(head.mask_net.parameters())
    adv_grad = torch.autograd.grad(losses["adv"], mask_params, retain_graph=True)
    # Without reversal the mask would descend L_adv; with it, the stored graph gives −α·∂L_adv.
    head2 = make_head("causalclip", 16, cfg).train()
    head2.load_state_dict(head.state_dict())
    g2 = torch.Generator().manual_seed(3)
    l2 = head2.losses(x, y, generator=g2)
    e = torch.nn.functional.normalize(x, dim=-1) * 4.0
    m = head2.mask(e, torch.Generator().manual_seed(3))
    plain = torch.nn.functional.binary_cross_entropy_with_logits(head2.adversary((1 - m) * e).squeeze(-1), y.float())
    plain_grad = torch.autograd.grad(plain, list(head2.mask_net.parameters()))
    assert torch.allclose(l2["adv"], plain, atol=1e-6)
    for a, b in zip(adv_grad, plain_grad, strict=True):
        assert torch.allclose(a, -b, atol=1e-6)


def test_bernoulli_kl_zero_for_equal_and_positive_otherwise() -> None:
    p = torch.tensor([-2.0, 0.0, 3.0])
    assert float(bernoulli_kl(p, p)) == 0.0
    assert float(bernoulli_kl(p, p + 1.0)) > 0.0
    assert torch.isfinite(bernoulli_kl(torch.tensor([80.0]), torch.tensor([-80.0])))


def test_causal_head_learns_a_separable_problem() -> None:
    torch.manual_seed(0)
    x = torch.randn(400, 24)
    y = (x[:, 0] > 0).long()
    for head in (make_head("causalclip", 24), LinearHead(24)):
        opt = torch.optim.Adam(head.parameters(), lr=1e-2)
        head.train()
        for _ in range(300):
            loss = head.losses(x, y)["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        acc = float(((head(x) > 0).long() == y).float().mean())
        assert acc > 0.9, (head.kind, acc)


def test_mask_ablation_keeps_every_feature_and_leaves_the_default_masking() -> None:
    """`use_mask=False` (the ablation) multiplies by ones; the default learns a mask that is not all ones."""
    torch.manual_seed(0)
    x = torch.randn(8, 16)
    off = make_head("causalclip", 16, {"use_mask": False}).eval()
    e = off.inputs(x)
    assert torch.equal(off.mask(e), torch.ones_like(e))
    assert torch.allclose(off(x), off.classifier(e).squeeze(-1))
    on = make_head("causalclip", 16, {}).eval()
    assert on.config.use_mask
    assert not torch.equal(on.mask(on.inputs(x)), torch.ones_like(e))
    # The flag travels in the plain config dict a checkpoint stores.
    from causalclip_cli.model.heads import head_config_dict

    assert head_config_dict(off)["use_mask"] is False
    assert make_head("causalclip", 16, head_config_dict(off)).config.use_mask is False


def test_info_names_the_method_and_each_component_of_a_causalclip_head() -> None:
    from causalclip_cli.model.inspect import _head_text

    full = {"kind": "causalclip", "embed_dim": 8192, "config": {"lambda2": 1.0, "alpha": 0.1, "beta": 1.0,
                                                                  "drop_p": 0.2, "mask_hidden": 64}}
    text = _head_text(full)
    assert text.startswith("CausalCLIP (Gumbel-sigmoid mask, HSIC") and "hidden width 64" in text
    off = _head_text({**full, "config": {"use_mask": False, "lambda2": 0.0, "alpha": 0.0, "beta": 0.0}})
    assert "no mask" in off and "no HSIC" in off and "no adversary" in off and "no counterfactual" in off
    assert _head_text({"kind": "linear", "embed_dim": 512}) == "linear probe on 512-dim features"
