"""dn2-score: score images (or one group of images) against a bundle.

    dn2-score BUNDLE PATH... [--json] [--group] [--group-stat knn|cov_trace] [--[no-]jpeg-draft]

PATH: image files, folders (recursive) or globs. Per image: path, score, threshold, decision.
With ``--json`` one JSON object per line with keys ``path``, ``score``, ``threshold``,
``anomalous``, ``error`` (null when scored). A bad file gets a line with its error; the rest
are still scored. With ``--group`` all inputs form one set, scored by its pooled embedding
against the bundle's normal groups (one line; ``paths`` and ``errors`` added).

Exit codes (the table of every dn2 command, dn2.runtime.cliargs.EXIT_CODES):
  0  every input was scored
  1  some inputs could not be scored (their lines carry the error); the others were
  2  usage error, or the bundle is missing, half-written, tampered, inconsistent, or (with a
     trusted key: --trusted-key / DN2_TRUSTED_KEY) unsigned or altered after signing
  130 interrupted
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from typing import List, Optional

from .cliargs import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    engine_parser,
    new_parser,
    prog,
    report_error,
    start,
)
from .errors import Dn2Error
from .ray_inputs import RAY_PARAMS, add_ray_args, ray_address

EXIT_SOME_FAILED, EXIT_ERROR = EXIT_FAILED, EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("score", "Score images against a dn2 bundle.", engine_parser(batch=8))
    p.add_argument("bundle", help="bundle directory written by dn2-fit")
    p.add_argument("paths", nargs="+", help="images: files, folders (recursive), globs")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="T",
        help="decide with this threshold instead of the bundle's (as dn2-watch "
        "--threshold); dn2-threshold stores one in a bundle",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output on stdout: one JSON object per input",
    )
    p.add_argument(
        "--group",
        action="store_true",
        help="score all inputs as one group against the normal groups",
    )
    p.add_argument(
        "--group-stat",
        choices=("knn", "cov_trace"),
        default="knn",
        help="group statistic: kNN of the pooled embedding (default) or the "
        "covariance trace of paper 4.5",
    )
    p.add_argument(
        "--jpeg-draft",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode large JPEGs at reduced scale (default: as the bundle was "
        "fitted, manifest score.jpeg_draft)",
    )
    p.add_argument(
        "--maps",
        metavar="DIR",
        default=None,
        help="write per image DIR/STEM.png (heatmap overlay) and DIR/STEM.npy (raw "
        "float32 map at the image's own size); needs a bundle with the patch "
        "signal (dn2-fit --mode patch|both)",
    )
    p.add_argument(
        "--trusted-key",
        metavar="PUBKEY",
        help="score only with a bundle signed by this Ed25519 public key (PEM; "
        "default $DN2_TRUSTED_KEY); unsigned or altered bundles exit 2",
    )
    add_ray_args(p, score=True)
    return p


def _path_errors(exc: UnicodeEncodeError):
    """Codec error handler for printed paths: the file name's own bytes where it was not
    valid in the file system encoding (surrogateescape), a backslash escape for any other
    character the terminal cannot show. A file name never stops the output."""
    bad = exc.object[exc.start : exc.end]
    if all(0xDC80 <= ord(c) <= 0xDCFF for c in bad):
        return codecs.lookup_error("surrogateescape")(exc)
    return codecs.lookup_error("backslashreplace")(exc)


def _safe_stdout() -> None:
    codecs.register_error("dn2path", _path_errors)
    try:
        sys.stdout.reconfigure(errors="dn2path")
    except (AttributeError, ValueError):  # not a TextIOWrapper (captured, replaced)
        pass


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.6g}"


def _emit(obj: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj), flush=True)
    elif obj.get("error") and obj.get("score") is None:
        print(f"{obj['path']}\terror: {obj['error']}", flush=True)
    else:
        verdict = "ANOMALOUS" if obj["anomalous"] else "normal"
        print(
            f"{obj['path']}\t{_fmt(obj['score'])}\t{_fmt(obj['threshold'])}\t{verdict}", flush=True
        )


def _full_image(path: str, m):
    """The image at its own size (a draft-decoded JPEG is read again in full)."""
    from .images import read_image

    return read_image(path)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    a = start(parser, argv, "score")
    if isinstance(a, int):
        return a
    from .detector import Detector
    from .images import expand_inputs

    _safe_stdout()

    if a.ray is not None:
        return _score_on_ray(a, parser)
    try:
        det = Detector.load(
            a.bundle,
            providers=a.providers,
            threads=a.threads,
            batch_size=a.batch,
            jpeg_draft=a.jpeg_draft,
            trusted_key=a.trusted_key,
        )
        if a.threshold is not None:
            det.set_threshold(a.threshold)
        items = expand_inputs(a.paths)
        files = [p for p, why in items if why is None]
        problems = [(p, why) for p, why in items if why is not None]
        if not items:
            raise Dn2Error(f"expected images in {a.paths}, found none")
        failed = len(problems)
        if a.group:
            r = det.score_group_paths(files, statistic=a.group_stat) if files else None
            errors = [list(p) for p in problems] + ([list(e) for e in r.errors] if r else [])
            obj = {
                "path": f"<group of {len(files)}>",
                "paths": files,
                "score": r.score if r else None,
                "threshold": r.threshold if r else det.group_threshold_for(a.group_stat),
                "anomalous": r.anomalous if r else None,
                "error": (r.error if r else "no image found"),
                "statistic": a.group_stat,
                "n_images": r.n_images if r else 0,
                "errors": errors,
            }
            _emit(obj, a.json)
            if not a.json:
                for path, msg in errors:
                    print(f"{path}\terror: {msg}", file=sys.stderr)
            return EXIT_OK if not errors and obj["score"] is not None else EXIT_SOME_FAILED
        writer = None
        if a.maps:
            if not det.has_maps:
                raise Dn2Error(
                    f"--maps: expected a bundle with the patch signal (dn2-fit "
                    f"--mode patch|both with a model from dn2-export --patches), "
                    f"found mode {det.mode!r}"
                )
            from .heatmap import MapWriter

            writer = MapWriter(a.maps, det.view_scorer.pixel_threshold)
        # one line per input, in input order (duplicates too): score the files in batches,
        # then answer each input where it stood
        results = iter(det.analyze_paths(files, maps=writer is not None))
        for path, why in items:
            if why is not None:
                _emit(
                    {
                        "path": path,
                        "score": None,
                        "threshold": det.threshold,
                        "anomalous": None,
                        "error": why,
                        "norm_score": None,
                    },
                    a.json,
                )
                continue
            r = next(results)
            failed += r.error is not None
            d = r.to_dict()
            if writer is not None and r.map is not None:
                d.update(writer.write(r.path, _full_image(r.path, r.map), r.map, r.peak, r.box))
            _emit(d, a.json)
    except Dn2Error as exc:
        report_error("score", exc, parser)
        return EXIT_ERROR
    except KeyboardInterrupt:
        report_error("score", "interrupted")
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _score_on_ray(a, parser=None) -> int:
    """--ray: every input scored on the cluster, rows written as shards to --ray-output."""
    if a.group or a.json:
        report_error(
            "score",
            "--ray writes result shards to --ray-output; it does not take --group or --json",
        )
        return EXIT_ERROR
    if not a.ray_output:
        report_error("score", "--ray: expected --ray-output DIR for the result shards, found none")
        return EXIT_ERROR
    from .ray_score import score_ray

    try:
        s = score_ray(
            a.bundle,
            a.paths,
            a.ray_output,
            fmt=a.ray_format,
            address=ray_address(a.ray),
            workers=a.ray_workers,
            threads=a.threads,
            gpus=a.ray_gpus,
            num_cpus=a.ray_cpus,
            batch=a.batch,
            providers=a.providers,
            jpeg_draft=a.jpeg_draft,
            every=a.every,
            max_frames=a.max_frames,
            seconds=a.seconds,
            progress=not getattr(a, "quiet", False),
        )
    except Dn2Error as exc:
        report_error("score", exc, parser, RAY_PARAMS)
        return EXIT_ERROR
    print(
        f"{prog('score')}: {s['rows']} rows ({s['scored']} scored, {s['failed']} failed) in "
        f"{len(s['shards'])} shards in {s['out']}; {s['images_per_s']:.1f} img/s with "
        f"{s['actors']} actors",
        file=sys.stderr,
    )
    return EXIT_SOME_FAILED if s["failed"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
