"""``fedveil watermark verify MODEL --key KEY``: test a model file for the server's watermark.

Exit status: 0 when the watermark is detected (p-value below the threshold), 1 when it is not,
2 when the files cannot be checked (one line on stderr naming the file and the problem).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_DETECTED = 0
EXIT_NOT_DETECTED = 1
EXIT_ERROR = 2


def add_watermark_parser(sub: Any) -> None:
    """Add ``watermark verify`` to the CLI's subcommands."""
    from server.watermark import DETECTION_P

    wm = sub.add_parser("watermark", help="check a model for the server's watermark")
    wm_sub = wm.add_subparsers(dest="watermark_command", required=True)
    verify = wm_sub.add_parser(
        "verify",
        help="trigger-set accuracy and p-values; exit 0 detected, 1 not, 2 error",
    )
    verify.add_argument("model", type=Path, metavar="MODEL", help="a model.safetensors file")
    verify.add_argument("--key", type=Path, required=True, help="the run's watermark.key")
    verify.add_argument(
        "--task",
        help="the run's `task` when it is a user task module (its model's architecture); "
        "built-in models are recognised from the file",
    )
    verify.add_argument(
        "--threshold",
        type=float,
        default=DETECTION_P,
        help=f"largest joint p-value that counts as detected (default {DETECTION_P:g})",
    )


def cmd_watermark_verify(args: argparse.Namespace) -> int:
    """Run ``fedveil watermark verify``; print accuracy and p-value, return the exit status."""
    from common.task import TaskError, TaskSettings, load_task
    from server.watermark import WatermarkError, verify_model_file

    if not 0 < args.threshold < 1:
        print(
            f"fedveil: error: --threshold must be in (0, 1), got {args.threshold}", file=sys.stderr
        )
        return EXIT_ERROR
    try:
        if args.task:
            task = load_task(
                args.task, TaskSettings(seed=0, data_dir="", test_fraction=0.2, model="auto")
            )
            verdict = verify_model_file(
                args.model,
                args.key,
                threshold=args.threshold,
                task_model=task.build_model(),
                input_shape=task.input_shape,
            )
        else:
            verdict = verify_model_file(args.model, args.key, threshold=args.threshold)
    except (WatermarkError, TaskError) as exc:
        print(f"fedveil: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    state = "detected" if verdict.detected else "not detected"
    print(
        f"trigger accuracy {verdict.accuracy:.4f} ({verdict.correct}/{verdict.total})  "
        f"binomial p {verdict.binomial_p:.3g}  score p {verdict.score_p:.3g}  "
        f"p-value {verdict.p_value:.3g}  watermark {state}"
    )
    return EXIT_DETECTED if verdict.detected else EXIT_NOT_DETECTED
