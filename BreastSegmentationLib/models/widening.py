"""Growing a trained network's input: more input channels, the network still computing what it did."""

from __future__ import annotations

import torch

from ..errors import InputError


def widen_inputs(state: dict[str, torch.Tensor], old_inputs: list[str], new_inputs: list[str],
                 target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state``, trained on ``old_inputs``, for a network of ``target``'s shapes that reads ``new_inputs`` (all of
    the old ones, in any order, and more: the tensors that read the input are told apart by their shapes).

    The weights that read the input channels keep each old input's weights and get zeros for the new inputs, so the
    widened network starts out computing exactly what the trained one did, and fine-tuning learns what the new
    inputs add. Neither torch nor MONAI offers this growth of a trained network's input, hence written here.
    """
    if not set(old_inputs) < set(new_inputs):
        raise InputError(f"cannot widen inputs {old_inputs} to {new_inputs}: the new inputs must be the old ones "
                         "and more")
    columns = [old_inputs.index(name) if name in old_inputs else None for name in new_inputs]
    widened = {}
    for key, value in state.items():
        shape = target[key].shape
        if value.shape == shape:
            widened[key] = value
            continue
        if value.ndim < 2 or (value.shape[1], shape[1]) != (len(old_inputs), len(new_inputs)) \
                or value.shape[:1] + value.shape[2:] != shape[:1] + shape[2:]:
            raise InputError(f"cannot widen the inputs of '{key}' from {tuple(value.shape)} to {tuple(shape)}")
        grown = value.new_zeros(shape)
        for new_column, old_column in enumerate(columns):
            if old_column is not None:
                grown[:, new_column] = value[:, old_column]
        widened[key] = grown
    return widened
