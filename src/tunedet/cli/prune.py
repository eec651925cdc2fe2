"""``tunedet prune CKPT --method magnitude|l1-channel --ratio R``: prune a trained
checkpoint, fine-tune it, and print AP, parameters, FLOPs and CPU latency before and after
(``tunedet.deploy.prune``). The pruned checkpoint is written next to the input (never over
an existing file); ``tunedet eval``/``infer`` load it like any other."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch

from tunedet.deploy.prune import (
    METHODS,
    cpu_latency_ms,
    finetune,
    l1_channel_prune,
    magnitude_prune,
    nonzero_parameters,
    restore_pruned_structure,
)


def load_pruning_input(
    checkpoint: str, config: str | None, overrides: list[str]
) -> tuple[Any, torch.nn.Module, dict]:
    """(config, model with the checkpoint's weights on CPU, checkpoint state). The config
    is ``config`` or the one the checkpoint carries, with ``overrides`` applied."""
    from tunedet.config.loader import apply_override, load_config, validate
    from tunedet.engine.checkpoint import checkpoint_config, load_checkpoint, load_model_state
    from tunedet.models import build_detector
    from tunedet.models.pretrained import skip_backbone_init

    state = load_checkpoint(checkpoint, map_location="cpu")
    if config is not None:
        cfg = load_config(config, overrides)
    else:
        raw = copy.deepcopy(checkpoint_config(state, checkpoint))
        for override in overrides:
            apply_override(raw, override)
        cfg = validate(raw, checkpoint)
    model = build_detector(skip_backbone_init(cfg.model.model_dump()))
    restore_pruned_structure(model, state)
    weights = state["ema"]["model"] if "ema" in state else state.get("model", state)
    load_model_state(model, weights)
    return cfg, model.eval(), state


def measure(model: torch.nn.Module, cfg: Any, val_set: Any, repeats: int = 5) -> dict[str, float]:
    """AP (``eval.metric``'s headline number) on ``val_set``, nonzero parameters, forward
    FLOPs and CPU latency (fastest of ``repeats``) of one validation image."""
    from tunedet.analysis.flops import count_params_and_flops
    from tunedet.analysis.inputs import model_samples
    from tunedet.engine.build import eval_settings
    from tunedet.engine.evaluator import evaluate_results, predict_dataset

    device = torch.device("cpu")
    results = predict_dataset(model, val_set, eval_settings(cfg), device)
    metrics = evaluate_results(val_set.coco_ground_truth(), results, cfg.eval.metric)
    batch, _ = next(model_samples(cfg, val_set, [0], batch_size=1))
    rows = count_params_and_flops(model, batch.images, batch.image_sizes, depth=0)
    return {
        "AP": float(metrics["AP"] if "AP" in metrics else metrics["mAP"]),
        "AP50": float(metrics.get("AP50", metrics.get("mAP", 0.0))),
        "params": float(nonzero_parameters(model)),
        "flops": float(rows[0]["flops"]),
        "latency_ms": cpu_latency_ms(model, batch.images, batch.image_sizes, repeats),
    }


def prune_model(
    model: torch.nn.Module, method: str, ratio: float
) -> tuple[dict[str, torch.Tensor] | None, dict[str, int]]:
    """Prune ``model`` in place: (magnitude masks or None, channel widths or {})."""
    if method == "magnitude":
        return magnitude_prune(model, ratio), {}
    return None, l1_channel_prune(model, ratio)


def format_row(name: str, m: dict[str, float], base: dict[str, float]) -> str:
    return (
        f"| {name} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['params'] / 1e6:.3f} "
        f"({100 * m['params'] / base['params']:.0f}%) | {m['flops'] / 1e9:.3f} "
        f"({100 * m['flops'] / base['flops']:.0f}%) | {m['latency_ms']:.1f} |"
    )


TABLE_HEADER = (
    "| model | AP | AP50 | nonzero params (M) | GFLOPs | CPU latency (ms, 1 image) |\n"
    "|---|---|---|---|---|---|"
)


def free_path(path: Path) -> Path:
    """``path``, or ``stem-2.pt``, ``stem-3.pt``, ... when it exists (never overwrite)."""
    candidate, k = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        k += 1
    return candidate


def cmd_prune(args: argparse.Namespace) -> int:
    from tunedet.data.build import build_dataset
    from tunedet.engine.checkpoint import checkpoint_class_names, config_to_dict, save_checkpoint

    if not 0 <= args.ratio < 1:
        raise SystemExit(f"tunedet prune: --ratio must lie in [0, 1), got {args.ratio}")
    cfg, model, state = load_pruning_input(args.checkpoint, args.config, args.overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.data.val is None:
        raise SystemExit("tunedet prune: the config has no data.val to measure AP on")
    val_set = build_dataset(cfg.data.val)
    print(f"{args.checkpoint}: {args.method} pruning, ratio {args.ratio}")
    rows = [("trained", measure(model, cfg, val_set, args.repeats))]
    masks, widths = prune_model(model, args.method, args.ratio)
    if widths:
        print(
            f"{len(widths)} conv layers narrowed: "
            + ", ".join(f"{k}={v}" for k, v in widths.items())
        )
    rows.append((f"{args.method} {args.ratio:g}", measure(model, cfg, val_set, args.repeats)))
    if args.finetune_iters > 0:
        lr = args.lr if args.lr is not None else 0.1 * cfg.optim.lr
        finetune(model, cfg, args.finetune_iters, lr, torch.device("cpu"), masks)
        rows.append(
            (f"+ fine-tune {args.finetune_iters} it", measure(model, cfg, val_set, args.repeats))
        )
    print(TABLE_HEADER)
    for name, m in rows:
        print(format_row(name, m, rows[0][1]))
    source = Path(args.checkpoint)
    default = source.with_name(f"{source.stem}_{args.method}_{args.ratio:g}{source.suffix}")
    out = free_path(Path(args.out) if args.out else default)
    save_checkpoint(
        out,
        {
            "model": model.state_dict(),
            "config": config_to_dict(cfg),
            "class_names": checkpoint_class_names(state),
            "pruning": {"method": args.method, "ratio": args.ratio, "widths": widths},
        },
    )
    print(f"wrote {out}")
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prune", help="magnitude or L1-norm channel pruning of a checkpoint, then fine-tuning"
    )
    p.add_argument("checkpoint", help="a checkpoint written by tunedet train")
    p.add_argument("overrides", nargs="*", help="dotted overrides: data.val.num_images=50")
    p.add_argument("--config", help="config (default: the one the checkpoint carries)")
    p.add_argument("--method", choices=METHODS, default="l1-channel")
    p.add_argument("--ratio", type=float, default=0.3, help="fraction pruned per layer (0.3)")
    p.add_argument("--finetune-iters", type=int, default=0, help="fine-tuning steps after it")
    p.add_argument("--lr", type=float, help="fine-tuning lr (default: 0.1 x optim.lr)")
    p.add_argument("--repeats", type=int, default=5, help="latency runs, the fastest counts (5)")
    p.add_argument("--out", help="pruned checkpoint (default: next to CKPT, never overwritten)")
    p.set_defaults(func=cmd_prune)
