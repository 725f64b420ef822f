import pytest
import torch

from digitrec.augment import augment_batch
from digitrec.config import AugmentConfig

STRONG = AugmentConfig(rotate=15, translate=0.1, scale=0.15, shear=10, elastic=2.0, stroke=0.2)


@pytest.fixture
def digits(small_mnist):
    return small_mnist.train_images[:64].unsqueeze(1).float() / 255  # (64, 1, 28, 28) in [0, 1]


def test_shapes_dtype_range_and_no_change_when_off(digits):
    out = augment_batch(digits, STRONG, torch.Generator().manual_seed(0))
    assert out.shape == digits.shape and out.dtype == digits.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert augment_batch(digits, AugmentConfig(), torch.Generator()) is digits


def test_reproducible_from_the_seed_and_different_across_seeds(digits):
    a = augment_batch(digits, STRONG, torch.Generator().manual_seed(1))
    b = augment_batch(digits, STRONG, torch.Generator().manual_seed(1))
    c = augment_batch(digits, STRONG, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a - digits).abs().mean() > 0.02  # it really distorts


@pytest.mark.parametrize("field", ["rotate", "translate", "scale", "shear", "elastic", "stroke"])
def test_each_distortion_moves_pixels_but_keeps_the_digit(digits, field):
    value = {"rotate": 10, "translate": 0.08, "scale": 0.1, "shear": 8, "elastic": 1.5, "stroke": 0.5}[field]
    out = augment_batch(digits, AugmentConfig(**{field: value}), torch.Generator().manual_seed(3))
    assert not torch.equal(out, digits)
    # mild distortions keep most of the ink and stay correlated with the original digit
    ink_ratio = out.sum(dim=(1, 2, 3)) / digits.sum(dim=(1, 2, 3))
    assert ((ink_ratio > 0.5) & (ink_ratio < 2.0)).all()
    flat_a, flat_b = out.flatten(1), digits.flatten(1)
    correlation = torch.nn.functional.cosine_similarity(flat_a, flat_b)
    assert correlation.median() > 0.5


def test_stroke_thickens_or_thins_each_chosen_image(digits):
    out = augment_batch(digits, AugmentConfig(stroke=0.5), torch.Generator().manual_seed(5))
    ink_ratio = out.sum(dim=(1, 2, 3)) / digits.sum(dim=(1, 2, 3))
    # With probability 0.5 each way, every image is either thickened or thinned, never left alone.
    thicker, thinner = ink_ratio > 1.1, ink_ratio < 0.9
    assert (thicker | thinner).all()
    assert 10 < int(thicker.sum()) < 54
    # Thickening only adds ink: no pixel gets darker.
    assert (out[thicker] >= digits[thicker] - 1e-6).all()
    assert (out[thinner] <= digits[thinner] + 1e-6).all()


@pytest.mark.parametrize(
    "settings",
    [
        {"stroke": 0.6},
        {"rotate": -5},
        {"elastic_sigma": 0},
        {"blur": 1},
        {"rotate": float("inf")},  # an infinite angle makes every grid NaN
        {"elastic_sigma": float("inf")},
        {"scale": float("nan")},
    ],
)
def test_bad_settings_are_refused(settings):
    from digitrec.config import TrainConfig
    from digitrec.errors import DigitrecError

    with pytest.raises(DigitrecError, match="bad augmentation settings"):
        TrainConfig(augment=settings).validate()


@pytest.mark.slow
def test_a_trained_model_still_reads_augmented_digits(mnist):
    """Labels are preserved: a model trained on clean MNIST still reads mildly distorted test digits."""
    from digitrec.config import recipe_config
    from digitrec.evaluation import score
    from digitrec.training import train

    result = train(recipe_config("fast"), dataset=mnist, save=False, log=None)
    x = mnist.test_images[:1000]
    mild = AugmentConfig(rotate=8, translate=0.05, scale=0.08, shear=5, elastic=1.0)
    warped = augment_batch(x.unsqueeze(1).float() / 255, mild, torch.Generator().manual_seed(4))
    warped_u8 = (warped[:, 0] * 255).round().to(torch.uint8)
    clean_acc = (score(result.model, x).argmax(1) == mnist.test_labels[:1000]).float().mean()
    warped_acc = (score(result.model, warped_u8).argmax(1) == mnist.test_labels[:1000]).float().mean()
    assert clean_acc > 0.95
    assert warped_acc > 0.9
