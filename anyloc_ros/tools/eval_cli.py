"""CLI sub-commands of the evaluation tools: eval, compare, make-bag, replay."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..core.errors import AnyLocError
from .arg_types import non_negative_int, positive_float


def load_dataset(args: argparse.Namespace):
    from ..eval.datasets import load_folder_dataset, load_tum_dataset, load_vg_dataset, read_vprbench_npy

    if args.database_trajectory or args.query_trajectory:
        if not (args.database_trajectory and args.query_trajectory):
            raise AnyLocError("--database-trajectory and --query-trajectory go together")
        return load_tum_dataset(args.database, args.database_trajectory, args.queries, args.query_trajectory,
                                args.radius if args.radius is not None else 1.0, args.max_angle)
    gt = args.ground_truth
    if gt is None or gt == "vg":
        return load_vg_dataset(args.database, args.queries, args.radius if args.radius is not None else 25.0)
    if str(gt).endswith(".npy"):
        from ..core.encoding.images import list_images
        from ..eval.datasets import PlaceDataset

        db, q = list_images(args.database), list_images(args.queries)
        return PlaceDataset(Path(args.database).parent.name, db, q, read_vprbench_npy(gt, len(q)),
                            {"format": "vpr-bench", "ground_truth": str(gt)})
    return load_folder_dataset(args.database, args.queries, gt)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..core.encoding.encoder import build_backbone
    from ..core.encoding.vocabulary import build_vocabulary
    from ..eval.evaluate import evaluate, print_table
    from .encoder_args import encoder_config

    ds = load_dataset(args)
    cfg = encoder_config(args)
    out = Path(args.output)
    if cfg.aggregation.type == "vlad" and not cfg.aggregation.vocabulary:
        if not args.build_vocab:
            raise AnyLocError("VLAD needs a vocabulary: pass --vocabulary FILE or --build-vocab K (fitted on the "
                              "database images)")
        vocab = out / f"vocab_k{args.build_vocab}.npz"
        if not vocab.is_file():
            out.mkdir(parents=True, exist_ok=True)
            build_vocabulary(build_backbone(cfg), ds.database, args.build_vocab, progress=not args.quiet).save(vocab)
        cfg.aggregation.vocabulary = str(vocab.resolve())
    cache = Path(args.cache_dir) if args.cache_dir else out / "cache"
    result = evaluate(ds, cfg, out, cache, progress=not args.quiet, label=args.label,
                      settings=pipeline_settings(args))
    print_table([result])
    print(f"results: {out / 'results.json'}; plots: recall_at_k.png, pr_curve.png, similarity.png")
    return 0


def pipeline_settings(args: argparse.Namespace):
    """The recognition pipeline the nodes would run with `--params-file` (their defaults without)."""
    import dataclasses

    from ..core.config.nodes import EncoderNodeSettings
    from ..core.config.params import NodeParameters
    from ..core.config.recognition import LoopClosureConfig, SequenceConfig
    from ..eval.evaluate import EvalSettings

    if args.params_file:
        enc = NodeParameters.from_file(args.params_file, "encoder_node").get(EncoderNodeSettings)
        rec = NodeParameters.from_file(args.params_file, "recognition_node")
        loop, seq = rec.get(LoopClosureConfig), rec.get(SequenceConfig)
    else:
        enc, loop, seq = EncoderNodeSettings(), LoopClosureConfig(), SequenceConfig()
    if args.no_rerank:
        loop = dataclasses.replace(loop, rerank=False)
    return EvalSettings(loop, seq, enc)


def cmd_compare(args: argparse.Namespace) -> int:
    import numpy as np

    from ..eval import plots
    from ..eval.evaluate import load_result, print_table

    results = [load_result(p) for p in args.results]
    names = [f"{r.get('label', '?')} ({Path(p).parent.name})" for r, p in zip(results, args.results, strict=True)]
    print_table(results, names)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        for r, n in zip(results, names, strict=True):
            r["label"] = n
        plots.recall_curve(results, out / "recall_at_k.png")
        plots.pr_curve([(n, np.array(r["pr_curve"]["recall"]), np.array(r["pr_curve"]["precision"]))
                        for r, n in zip(results, names, strict=True)], out / "pr_curve.png")
        print(f"plots in {out}")
    return 0


def register(sub: Any) -> None:
    from .encoder_args import add_encoder_args

    p = sub.add_parser("eval", help="Recall@K, precision-recall, timing and plots on a labelled dataset")
    add_encoder_args(p)
    p.add_argument("--database", required=True, help="folder of map (database) images")
    p.add_argument("--queries", required=True, help="folder of query images")
    p.add_argument("--ground-truth", help="CSV (query_index,matching_ref_indices), VPR-Bench .npy, or 'vg' "
                                          "(positives from @UTM_east@UTM_north@ names within --radius)")
    p.add_argument("--radius", type=positive_float, default=None, help="positive radius (m): VG 25, TUM 1")
    p.add_argument("--database-trajectory", help="TUM trajectory of the database sequence (images named by time)")
    p.add_argument("--query-trajectory", help="TUM trajectory of the query sequence")
    p.add_argument("--max-angle", type=positive_float, default=30.0, help="TUM: maximum heading difference (deg)")
    p.add_argument("--build-vocab", type=non_negative_int, default=0, metavar="K",
                   help="fit a K-cluster vocabulary on the database images when none is given")
    p.add_argument("--output", default="results/eval")
    p.add_argument("--cache-dir", help="descriptor cache (default OUTPUT/cache)")
    p.add_argument("--label", help="name of this run in tables and plots")
    p.add_argument("--params-file", help="the nodes' ROS parameters file: the recognition pipeline (top_k, "
                                         "loop.rerank, sequence.*) and patch settings are taken from it")
    p.add_argument("--no-rerank", action="store_true", help="single-frame pipeline without mutual-NN re-ranking")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="one table (and plots) from several eval result JSON files")
    p.add_argument("results", nargs="+")
    p.add_argument("--output", help="folder for combined plots")
    p.set_defaults(func=cmd_compare)
