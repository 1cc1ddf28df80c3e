"""Black-box audit canaries in a node's data: each canary's slot holds it or a blank row.

``with_input_canaries`` returns the node's data with canary ``i``'s slot
(``common.audit_inputs.InputCanarySpec.slots``) holding canary ``i`` (its input and label)
when included, else a blank row (``BLANK_LABEL``, no gradient). The real example of a slot is
never trained on, whatever the bits: that part of the node's data is spent on the audit. The
row count, and so ``q`` and the steps the server's plan holds the node to, stay as they were;
the DP-SGD that trains on the result is unchanged.
"""

from __future__ import annotations

import dataclasses

import torch

from client.local_data import LocalData
from common.audit_inputs import BLANK_LABEL, InputCanarySpec


def with_input_canaries(data: LocalData, spec: InputCanarySpec) -> LocalData:
    """Return a copy of ``data`` whose slots hold the included canaries and blank rows.

    Args:
        data: the node's examples for the round (left unchanged).
        spec: the canaries the auditor asked for.

    Returns:
        Data of the same rows, dtype and device, slots replaced.

    """
    n = int(data.labels.shape[0])
    slots = torch.from_numpy(spec.slots(n))
    placed = slots.shape[0]
    included = torch.from_numpy(spec.included()[:placed])
    shape = tuple(data.inputs.shape[1:])
    canary_inputs = torch.from_numpy(spec.inputs(shape)[:placed])
    canary_labels = torch.from_numpy(spec.labels(data.num_classes)[:placed])
    inputs, labels = data.inputs.clone(), data.labels.clone()
    labels[slots] = BLANK_LABEL
    kept = slots[included]
    inputs[kept] = canary_inputs[included].to(inputs)
    labels[kept] = canary_labels[included].to(labels)
    return dataclasses.replace(data, inputs=inputs, labels=labels)
