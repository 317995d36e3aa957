"""One place picks the device and backend: no other source file names the CUDA device or NCCL."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALLOWED = {ROOT / "mot_parallel" / "distributed" / "device.py"}
PATTERN = re.compile(r"""\.cuda\(|["']nccl["']|["']cuda(:\d+)?["']""")


def test_no_device_literals_outside_device_py():
    offenders = []
    for folder in ("mot_parallel", "launch", "tools"):
        for path in (ROOT / folder).rglob("*.py"):
            if path in ALLOWED:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if PATTERN.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "use mot_parallel.distributed.device instead:\n" + "\n".join(offenders)
