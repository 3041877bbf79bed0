"""A training loop of your own, searched by hps (spaces/own_loop.yaml): label smoothing, a cosine
learning rate, and an exponential moving average (EMA) of the weights, which is what is scored,
kept and exported. Killed, it resumes from its last checkpoint."""

import copy
import math

import torch
import torch.nn.functional as F


def fit(ctx, ema_decay: float = 0.99, smoothing: float = 0.1):
    model, lr_max = ctx.model, ctx.config.optimizer.lr
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=lr_max, momentum=0.9, nesterov=True,
                          weight_decay=ctx.config.optimizer.weight_decay)
    steps = ctx.epochs * (len(ctx.data.train) // min(ctx.config.train.batch_size, len(ctx.data.train)))
    if (state := ctx.resume()) is not None:  # a killed trial's retry goes on from its last checkpoint
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
    step = ctx.last_epoch * steps // ctx.epochs
    for epoch in range(ctx.last_epoch + 1, ctx.epochs + 1):
        model.train()
        for x, y in ctx.batches():
            for group in opt.param_groups:
                group["lr"] = lr_max * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss = F.cross_entropy(model(x), y, label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            d = min(ema_decay, (1 + step) / (10 + step))  # the average warms up over the first steps
            with torch.no_grad():
                for e, p in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
                    e.copy_(e * d + p * (1 - d) if e.dtype.is_floating_point else p)
        val_loss, val_acc = ctx.evaluate(ema)
        ctx.report(epoch, val_acc, val_loss=val_loss, train_loss=loss.item(), lr=opt.param_groups[0]["lr"])
        ctx.checkpoint({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict()})
    return ema
