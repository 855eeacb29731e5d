"""The laundering journeys: the sizes and re-encoding web images go through, both classes alike."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from causalclip_cli.errors import UsageError
from causalclip_cli.inputs.transforms import JOURNEYS, launder, parse_perturbations


def _image(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(("journey", "size"), [("s512-q92", (683, 512)), ("half-q75", (400, 300)),
                                               ("l1080-q85", (1080, 810))])
def test_journeys_resize_and_recompress(journey: str, size: tuple[int, int]) -> None:
    img = _image(800, 600)
    out = launder(journey)(img)
    assert out.size == size and out.mode == "RGB"
    # Re-encoded: not the plain resize of the same size; and the same every time.
    plain = np.asarray(img.resize(size, Image.Resampling.LANCZOS), dtype=np.int16)
    assert np.abs(np.asarray(out, dtype=np.int16) - plain).mean() > 1.0
    again = np.asarray(launder(journey)(img), dtype=np.int16)
    assert np.array_equal(again, np.asarray(out, dtype=np.int16))
    assert launder(journey).name == f"launder-{journey}"  # part of the feature-cache key


def test_launder_is_an_eval_perturbation_and_unknown_names_are_refused() -> None:
    (t,) = parse_perturbations("launder:half-q75")
    assert t.name == "launder-half-q75"
    with pytest.raises(UsageError, match="unknown journey"):
        launder("instagram")
    assert set(JOURNEYS) == {"s512-q92", "half-q75", "l1080-q85"}
