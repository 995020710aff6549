"""Shared pytest fixtures: small synthetic volumes, made fresh for every test that asks."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def oblique_image(rng: np.random.Generator) -> sitk.Image:
    """A small 3-D float image with anisotropic spacing, an off-axis direction and a non-zero origin."""
    image = sitk.GetImageFromArray(rng.normal(100.0, 20.0, size=(7, 11, 13)).astype(np.float32))
    image.SetSpacing((0.7, 0.8, 2.0))
    image.SetOrigin((-12.5, 30.0, 7.25))
    angle = np.deg2rad(10.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    image.SetDirection(tuple(rotation.ravel()))
    return image


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a shared two-core machine a second thread mostly waits for a busy core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
