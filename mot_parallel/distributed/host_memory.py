"""This process's resident host memory, from /proc (Linux): now, the kernel's high-water mark, and resetting
that mark. Read by the reshard-on-resume report (training/reshard.py) and the planner's memory check
(testing/measured_memory.py)."""
from __future__ import annotations

import os
import re


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) * 1024


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
