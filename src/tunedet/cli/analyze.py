"""``tunedet analyze NAME ...``: the analysis tools.

Each module in ``tunedet.analysis`` that defines ``add_analyze_command(subparsers)``
contributes one subcommand; that function adds its parser and sets
``func(args) -> int`` as the parser default. Modules are found by listing the
package, so adding a tool means adding one file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import tunedet.analysis


def add_analyze_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("analyze", help="analysis tools that write PNGs (lr, ...)")
    tools = parser.add_subparsers(dest="tool", required=True, metavar="TOOL")
    for info in sorted(pkgutil.iter_modules(tunedet.analysis.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"tunedet.analysis.{info.name}")
        add = getattr(module, "add_analyze_command", None)
        if add is not None:
            add(tools)
