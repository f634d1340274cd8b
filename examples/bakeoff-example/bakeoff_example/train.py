"""A plain training function, exactly as one would write it without bakeoff, plus one probe call per step.

Run it as an adapter: ``bakeoff run --task example-spirals --adapter bakeoff_example.train:train``
(or by its entry-point name, ``example-loop``).
"""

from __future__ import annotations


def train(model, loader, optimizer, loss_fn, steps, probe, precision=None, device="cpu"):
    step = 0
    model.train()
    while step < steps:
        for batch_inputs, batch_targets in loader:
            inputs, targets = batch_inputs.to(device), batch_targets.to(device)
            if precision is None:
                loss = loss_fn(model(inputs), targets)
                loss.backward()
                optimizer.step()
            else:  # bf16: the harness precision's autocast around forward and loss
                with precision.forward_context():
                    loss = loss_fn(model(inputs), targets)
                precision.backward(loss)
                precision.optimizer_step(optimizer)
            optimizer.zero_grad(set_to_none=True)
            probe.step_end(loss)
            step += 1
            if step == steps:
                return model
    return model
