"""The discriminator's augmentation must not hide the detail the discriminator judges."""

from __future__ import annotations

import torch

from idmrag_plugin.training.adversarial import augment_params, diff_augment


def _identity_colour(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**params, "brightness": torch.zeros_like(params["brightness"]),
            "saturation": torch.ones_like(params["saturation"]), "contrast": torch.ones_like(params["contrast"])}


def test_translation_moves_whole_pixels_and_never_resamples() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1  # pixel-level detail everywhere
    mask = torch.ones(8, 1, 32, 32)
    params = _identity_colour(augment_params(8, torch.device("cpu"), g, translation=0.2))
    assert params["shift"].abs().max() > 0.05  # the draw does move the images
    moved, moved_mask = diff_augment(image, mask, params)
    for i in range(8):
        dx, dy = (round(float(v)) for v in params["shift"][i] * torch.tensor([32.0, 32.0]) / 2)
        # sampling at x + dx: the output's pixel (r, c) is the input's (r + dy, c + dx)
        rows = slice(max(0, -dy), min(32, 32 - dy))
        cols = slice(max(0, -dx), min(32, 32 - dx))
        src_rows = slice(rows.start + dy, rows.stop + dy)
        src_cols = slice(cols.start + dx, cols.stop + dx)
        torch.testing.assert_close(moved[i, :, rows, cols], image[i, :, src_rows, src_cols], rtol=0, atol=1e-6)
        assert moved_mask[i, 0, rows, cols].eq(1).all()
        assert moved_mask[i].sum() < 32 * 32 or (dx, dy) == (0, 0)


def test_default_augmentation_keeps_the_image_s_fine_detail() -> None:
    g = torch.Generator().manual_seed(1)
    image = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
    mask = torch.ones(8, 1, 32, 32)
    params = augment_params(8, torch.device("cpu"), g)
    assert not params["shift"].any()
    out, out_mask = diff_augment(image, mask, params)
    assert torch.equal(out_mask, mask)
    # colour jitter is affine per image: high frequencies keep their share of the variation
    def detail(x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(dim=1)
        lap = grey[:, 1:-1, 1:-1] * 4 - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1] - grey[:, 1:-1, :-2] - grey[:, 1:-1, 2:]
        return lap.flatten(1).std(dim=1) / grey.flatten(1).std(dim=1).clamp(min=1e-6)

    kept = detail(out) / detail(image)
    assert ((kept > 0.8) & (kept < 1.25)).all(), kept
