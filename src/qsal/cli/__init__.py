"""``qsal`` command line: argparse sub-commands, each a thin layer over one library function.

``app`` holds the parser and the training/study commands, ``deploy`` quantize/export/bench,
``explain`` the saliency commands.
"""

from qsal.cli.app import build_parser, main

__all__ = ["main", "build_parser"]
