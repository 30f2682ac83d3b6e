"""`anyloc` command line: build vocabularies, encode images, fit PCA, export ONNX, evaluate.

Every sub-command takes an encoder config (`--config FILE.yaml`) or a named preset
(`--preset NAME`); errors in inputs are reported in one line with a non-zero exit code.

The tools import what a sub-command runs inside the function that runs it (here and in the
other tools modules): every module is loaded to build the parser, and `anyloc --help`,
`anyloc params` or `make-bag` must not load torch, onnxruntime, faiss or rclpy.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config.encoder import PRESETS, EncoderConfig
from ..core.errors import AnyLocError
from .arg_types import non_negative_int, positive_int
from .encoder_args import add_encoder_args, encoder_config

log = logging.getLogger("anyloc")


def cmd_presets(args: argparse.Namespace) -> int:
    for name, preset in PRESETS.items():
        b, a = preset["backbone"], preset["aggregation"]
        print(f"{name:22s} backbone={b['type']}:{b.get('model', 'onnx')} layer={b.get('layer', '-')} "
              f"facet={b.get('facet', '-')} aggregation={a['type']}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    """The nodes' parameter table (the README's), or one node's defaults as a params file."""
    from ..core.config.params import markdown_table, node_specs, params_file_text

    if args.file:
        print(params_file_text(), end="")
        return 0
    if args.node is None:
        print(markdown_table())
        return 0
    import yaml

    values = {s.name: s.default for s in node_specs(args.node)}
    print(yaml.safe_dump({args.node: {"ros__parameters": values}}, sort_keys=False), end="")
    return 0


def cmd_build_vocab(args: argparse.Namespace) -> int:
    from ..core.encoding.encoder import build_backbone
    from ..core.encoding.images import list_images
    from ..core.encoding.vocabulary import build_vocabulary

    cfg = encoder_config(args)
    images = list_images(args.images)
    if args.max_images and len(images) > args.max_images:
        step = len(images) / args.max_images
        images = [images[int(i * step)] for i in range(args.max_images)]
    backbone = build_backbone(cfg)
    vocab = build_vocabulary(
        backbone, images, num_clusters=args.clusters or cfg.aggregation.num_clusters, samples_per_image=args.samples_per_image,
        max_samples=args.max_samples, niter=args.niter, seed=args.seed, batch_size=cfg.batch_size,
        progress=not args.quiet,
    )
    vocab.save(args.output)
    print(f"vocabulary: {vocab.num_clusters} x {vocab.feature_dim} from {vocab.metadata['images']} images "
          f"({vocab.metadata['samples']} samples) -> {args.output}")
    return 0


def _add_encode_folder_args(p: argparse.ArgumentParser) -> None:
    """The options of the commands that encode a folder of images (`_encode_folder`)."""
    add_encoder_args(p)
    p.add_argument("--images", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--skip-bad", action="store_true", help="skip (and report) unreadable images instead of stopping")
    p.add_argument("--quiet", action="store_true")


def _encode_folder(cfg: EncoderConfig, folder: str, quiet: bool, skip_bad: bool = False
                   ) -> tuple[np.ndarray, list[Path], Any]:
    """Descriptors of a folder's images; with skip_bad, unreadable images are left out and reported."""
    from ..core.encoding.encoder import Encoder
    from ..core.encoding.images import list_images
    from ..eval.evaluate import encode_images

    encoder = Encoder.from_config(cfg)
    paths = list_images(folder)
    skipped: list[tuple[Path, str]] | None = [] if skip_bad else None
    descriptors, _, _, _ = encode_images(encoder, paths, None, "encode", progress=not quiet, skipped=skipped)
    if skipped:
        for p, why in skipped:
            print(f"skipped {p}: {why}", file=sys.stderr)
        keep = np.isfinite(descriptors).all(axis=1)
        descriptors, paths = descriptors[keep], [p for p, k in zip(paths, keep, strict=True) if k]
        if not len(paths):
            raise AnyLocError(f"no readable images in {folder} ({len(skipped)} skipped)")
    return descriptors, paths, encoder


def cmd_encode(args: argparse.Namespace) -> int:
    from ..core.fileio import save_npz

    cfg = encoder_config(args)
    desc, paths, encoder = _encode_folder(cfg, args.images, args.quiet, args.skip_bad)
    meta = {"encoder": encoder.signature(), "images": [p.name for p in paths], "source": str(Path(args.images))}
    save_npz(args.output, meta, descriptors=desc)
    print(f"encoded {len(paths)} images -> {desc.shape[1]}-D descriptors in {args.output}")
    return 0


def cmd_fit_pca(args: argparse.Namespace) -> int:
    from ..core.encoding.projection import PCA

    cfg = encoder_config(args)
    cfg.projection.pca = None  # fit on the un-projected descriptors
    desc, paths, encoder = _encode_folder(cfg, args.images, args.quiet, args.skip_bad)
    pca = PCA.fit(desc, args.dim, whiten=args.whiten)
    pca.metadata["source_images"] = str(args.images)
    pca.metadata["fitted_on"] = encoder.pca_binding()  # so a PCA is never used with another vocabulary
    pca.save(args.output)
    print(f"PCA {pca.input_dim} -> {pca.output_dim} (whiten={args.whiten}) from {len(paths)} images -> {args.output}")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..core.encoding.backbones import Dinov2Backbone
    from ..core.encoding.encoder import build_backbone
    from ..core.encoding.onnx_backbone import export_dinov2_onnx

    cfg = encoder_config(args)
    cfg.backbone.device = "cpu"
    cfg.backbone.precision = "float32"
    backbone = build_backbone(cfg)
    if not isinstance(backbone, Dinov2Backbone):
        raise AnyLocError("export-onnx needs a dinov2 backbone config")
    h, w = args.height, args.width
    if h % backbone.patch_size or w % backbone.patch_size:
        raise AnyLocError(f"--height/--width must be multiples of the patch size {backbone.patch_size}")
    out = export_dinov2_onnx(backbone, args.output, h, w, opset=args.opset)
    print(f"exported {backbone.model_name} layer {backbone.layer} facet {backbone.facet} -> {out} "
          f"(+ {out.with_suffix('.json').name}); use it with backbone.type: onnx, output_layout: nhwc")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anyloc", description="AnyLoc visual place recognition tools")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--max-image-pixels", type=positive_int, default=50_000_000,
                        help="images declaring more pixels are refused before decoding (default 50 MP)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the named encoder presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("params", help="the nodes' parameters (markdown table), or one node's defaults as YAML")
    p.add_argument("node", nargs="?", help="encoder_node, mapping_node, recognition_node or anyloc_pipeline")
    p.add_argument("--file", action="store_true", help="every parameter of every node as one commented params "
                   "file (config/anyloc.yaml)")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("build-vocab", help="build a VLAD vocabulary (k-means on dense features of a folder of images)")
    add_encoder_args(p)
    p.add_argument("--images", required=True, help="folder of images from the target domain")
    p.add_argument("--clusters", type=positive_int, help="vocabulary size (default: the config's aggregation.num_clusters, 32)")
    p.add_argument("--output", required=True, help="vocabulary file (.npz)")
    p.add_argument("--samples-per-image", type=positive_int, default=1000)
    p.add_argument("--max-samples", type=positive_int, default=200_000, help="reservoir size: bounds memory")
    p.add_argument("--max-images", type=non_negative_int, default=0, help="use at most this many images (evenly spaced)")
    p.add_argument("--niter", type=positive_int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_build_vocab)

    p = sub.add_parser("encode", help="encode a folder of images into global descriptors (.npz)")
    _add_encode_folder_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("fit-pca", help="fit a PCA projection of the encoder's descriptors")
    _add_encode_folder_args(p)
    p.add_argument("--dim", type=positive_int, default=512)
    p.add_argument("--whiten", action=argparse.BooleanOptionalAction, default=True,
                   help="scale each component to unit variance, as AnyLoc does (default); --no-whiten keeps the "
                        "variances (better when fitted on few images: see README, Encoders)")
    p.set_defaults(func=cmd_fit_pca)

    p = sub.add_parser("export-onnx", help="export the configured DINOv2 layer/facet extractor to ONNX")
    add_encoder_args(p)
    p.add_argument("--output", required=True)
    p.add_argument("--height", type=positive_int, default=322)
    p.add_argument("--width", type=positive_int, default=434)
    p.add_argument("--opset", type=positive_int, default=17)
    p.set_defaults(func=cmd_export_onnx)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[Any], None]]:
    """Sub-commands defined in other modules (imported lazily: they may need ROS)."""
    from . import bags, demo, eval_cli, map_cli, replay

    return [eval_cli.register, bags.register, replay.register, demo.register, map_cli.register]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        from ..core.encoding.images import set_max_image_pixels
        from ..core.threads import single_threaded_numpy_blas

        single_threaded_numpy_blas()

        set_max_image_pixels(args.max_image_pixels)
        return int(args.func(args) or 0)
    except AnyLocError as exc:
        print(f"anyloc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a file or input no check anticipated: one line, never a traceback
        log.debug("traceback", exc_info=True)
        print(f"anyloc {args.command}: error: {type(exc).__name__}: {exc} (unexpected input; run with -v for "
              "details)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
