"""Generate docs/reference.md from the specs, the same source as `--help`:  python -m contrastive_cli.docs"""

from __future__ import annotations

import sys
from pathlib import Path

from .flags import collect
from .spec import (ExportSpec, InspectSpec, KnnSpec, LinearProbeSpec, NeighboursSpec, PlotSpec, PretrainSpec,
                   TransferSpec)

COMMANDS = [("pretrain", PretrainSpec, ("kind",)), ("knn-eval", KnnSpec, ("kind", "checkpoint")),
            ("linear-probe", LinearProbeSpec, ("kind", "checkpoint")), ("transfer", TransferSpec, ("kind", "checkpoint")),
            ("inspect-collapse", InspectSpec, ("kind", "checkpoint")), ("export", ExportSpec, ("kind", "checkpoint")),
            ("plot", PlotSpec, ("kind", "runs")), ("neighbours", NeighboursSpec, ("kind", "checkpoint"))]


def reference() -> str:
    lines = ["# Option reference", "",
             "Generated from the run specs (`python -m contrastive_cli.docs`); `--help` shows the same text. "
             "Every option can also be set in a `--config` YAML/JSON file under the spec path shown "
             "(e.g. `optim: {lr: 0.3}`); flags override the file. 'recipe' means the method's paper recipe "
             "fills the value (see [methods.md](methods.md)); `--print-spec` shows the resolved values.", ""]
    for name, model, skip in COMMANDS:
        lines += [f"## `contrastive {name}`", ""]
        section = None
        for f in collect(model, skip=skip):
            if f.section != section:
                section = f.section
                lines += ["", f"### {section}", "", "| flag | spec path | default | meaning |", "|---|---|---|---|"]
            flag = f"`{f.flag}`" + (f" / `--no-{f.flag[2:]}`" if f.kind is bool else "") + "".join(
                f" / `{alias}`" for alias in f.aliases)
            help_ = f.help.replace("|", "\\|")
            lines.append(f"| {flag} | `{'.'.join(f.path)}` | {f.default or '–'} | {help_} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    target = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
    text = reference()
    if "--check" in sys.argv:
        return 0 if target.exists() and target.read_text() == text else 1
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
