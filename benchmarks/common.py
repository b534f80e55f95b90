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
    """Peak resident memory of this process, or of its children (the Spark JVM): finished ones
    from rusage, live ones from their high-water mark in /proc."""
    if not children:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    for tasks in Path("/proc/self/task").glob("*/children"):
        for pid in tasks.read_text().split():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            hwm = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
            peak_kib = max(peak_kib, int(hwm.group(1)) if hwm else 0)
    return peak_kib / 2**20


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


def publish(section: str, lines: list[str], doc: Path = DOC) -> None:
    """A benchmark's report: its lines become the section ``## <section>`` of docs/benchmarks.md
    and are printed."""
    body = "\n".join(lines)
    update_doc(section, body, doc)
    print(body, flush=True)
