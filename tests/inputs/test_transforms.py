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


@pytest.mark.parametrize("full", [True, False])
def test_journeys_see_the_files_own_pixels(tmp_path, full: bool) -> None:
    """A large JPEG is decoded at reduced DCT scale for the model, but never before a journey: halving an image
    that the decoder already halved would be a quarter."""
    from causalclip_cli.inputs.data import ScanDataset
    from causalclip_cli.inputs.transforms import PixelTransform
    from causalclip_cli.model.preprocess import Preprocess

    _image(1000, 800).save(tmp_path / "big.jpg", quality=90)
    seen = []
    t = PixelTransform("probe", lambda im: seen.append(im.size) or im, full_resolution=full)
    pre = Preprocess(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    item = ScanDataset([str(tmp_path / "big.jpg")], pre, pixel_transform=t)[0]
    assert item["error"] is None
    assert seen == ([(1000, 800)] if full else [(500, 400)])
