"""What every benchmark shares: the machine description and the docs/benchmarks.md update."""

from __future__ import annotations

import os
import platform
import re
import resource
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"


def machine() -> str:
    cores = os.cpu_count() or 0
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cores} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}, "
            f"{platform.system()}")


def peak_rss_gib(children: bool = False) -> float:
    """Peak resident memory of this process (or of its finished children: the Spark JVM)."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 2**20


def update_doc(section: str, body: str, doc: Path = DOC) -> None:
    """Replace (or append) the section ``## <section>`` of docs/benchmarks.md."""
    heading = f"## {section}"
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    block = f"{heading}\n\n{body.strip()}\n"
    if heading in text:
        text = re.sub(rf"{re.escape(heading)}\n.*?(?=\n## |\Z)", lambda _: block, text,
                      flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
