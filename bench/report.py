"""Write one benchmark's section of docs/benchmarks.md, keeping the other benchmarks' sections."""

import os
import platform
from pathlib import Path

HEADER = "# Benchmarks\n\nEach section below is written by its own `make` target; the command and machine are in it.\n"


def write_section(path: Path, name: str, text: str) -> None:
    """Replace the section ``name`` of ``path`` with ``text`` (or append it), leaving the others alone."""
    begin, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    block = f"{begin}\n{text.strip()}\n{end}\n"
    current = path.read_text() if path.exists() else HEADER
    if begin in current and end in current:
        before = current[: current.index(begin)]
        after = current[current.index(end) + len(end):].lstrip("\n")
        current = before + block + ("\n" + after if after else "")
    else:
        if not current.startswith("# Benchmarks"):
            current = HEADER
        current = current.rstrip("\n") + "\n\n" + block
    path.write_text(current)


def machine_description(*extras: str) -> str:
    """Return the processor, CPU count, Python, ``extras`` (such as a database version) and kernel, for a header."""
    processor = platform.processor() or "unknown processor"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    software = ", ".join([f"Python {platform.python_version()}", *extras, f"{platform.system()} {platform.release()}"])
    return f"{processor}, {os.cpu_count()} logical CPUs; {software}"
