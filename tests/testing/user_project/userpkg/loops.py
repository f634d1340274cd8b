"""The user's own training loops, each called by bakeoff with one probe call per optimizer step."""


def train(model, loader, optimizer, loss_fn, steps, probe, precision):
    """The loop the user trusts: the native loop's math, with the harness precision."""
    done = 0
    while True:
        for inputs, targets in loader:
            with precision.forward_context():
                loss = loss_fn(model(inputs), targets)
            precision.backward(loss)
            precision.optimizer_step(optimizer)
            optimizer.zero_grad(set_to_none=True)
            probe.step_end(loss)
            done += 1
            if done == steps:
                return model


def drifting_train(model, loader, optimizer, loss_fn, steps, probe):
    """A refactor gone wrong: from step 3 on, a learning-rate schedule nobody asked for."""
    done = 0
    while True:
        for inputs, targets in loader:
            if done >= 3:
                for group in optimizer.param_groups:
                    group["lr"] *= 1.05
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            probe.step_end(loss)
            done += 1
            if done == steps:
                return model
