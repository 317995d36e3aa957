"""One finished (or running) training run as a comparison reads it: its evaluations, each placed at its training
position (step, tokens, training FLOPs, wall-clock) with its validation losses, from `<run>/metrics.jsonl` and the
resolved `<run>/config.yaml` the trainer writes.

metrics.jsonl holds one JSON object per line: training records ("kind": "train", or no "kind" in older runs) and
validation records ("kind": "valid", "valid/loss", "valid/loss/<modality>" (null when the held-out batch had no
token of it), "tokens_total", "flops_total", "train_time_s"). A resumed run may repeat a step; the last record of
each (kind, step) wins, as it is the one the resumed run produced.

Older runs lack the *_total fields. Then the position is taken from the training record of the same step if it
has them, else derived: tokens = step x global batch x seq len, FLOPs = tokens x
`flops.training_flops_per_token` of the config (dense-equivalent, 3 x forward, exactly what the trainer counts);
wall-clock has no derivation (logged steps are a sample, so step times cannot be summed) and stays None. Every
derivation is recorded in `notes`, so the report says so.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

OVERALL = "valid/loss"


class RunDataError(ValueError):
    """A run directory that cannot be compared; the message names the file and the fix (one line)."""


def loss_key(modality: Optional[str]) -> str:
    """The metrics.jsonl key of a modality's validation loss; None = the overall loss."""
    return OVERALL if modality is None else f"{OVERALL}/{modality}"


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: where training stood (time_s None when the run did not record wall-clock) and its
    losses by metrics key (None: no loss token of that modality, or a non-finite value)."""
    step: int
    tokens: float
    flops: float
    time_s: Optional[float]
    losses: Dict[str, Optional[float]]


@dataclass
class RunCurves:
    run_dir: str
    name: str                       # the run dir's name
    untie: List[str]                # model.untie: [] = dense
    modalities: List[str]
    evaluations: List[Evaluation]   # sorted by step, one per step
    notes: List[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name} ({'dense' if not self.untie else 'untie: ' + '+'.join(self.untie)})"


# ------------------------------------------------------------------------------------------ metrics.jsonl

def record_kind(rec: Dict) -> str:
    """Records without "kind" predate validation records, so they are training records (a bare "valid/loss"
    without "loss" is read as a validation record all the same, rather than silently dropped)."""
    kind = rec.get("kind")
    if kind is None:
        return "valid" if OVERALL in rec and "loss" not in rec else "train"
    if not isinstance(kind, str):
        raise RunDataError(f"a metrics record's \"kind\" must be a string (\"train\" or \"valid\"), got {kind!r:.60}")
    return kind


def read_records(path: str, notes: List[str]) -> Dict[tuple, Dict]:
    """{(kind, step): last record}. A last line without its newline is a write in progress (a live or killed
    run): skipped with a note. Any other unreadable line is an error naming it."""
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is named, like any other bad line
        lines = f.read().split(b"\n")
    last = len(lines) - 1      # "" after a final newline; otherwise an unfinished line
    out: Dict[tuple, Dict] = {}
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise RunDataError(f"{path}:{i}: not UTF-8 (byte 0x{e.object[e.start]:02x} at column {e.start + 1}); "
                               "fix or delete the line") from None
        except ValueError as e:  # bad JSON; also numbers too long to parse, nesting too deep (RecursionError)
            if i - 1 == last:
                notes.append(f"skipped an unfinished last line of {path}")
                continue
            raise RunDataError(f"{path}:{i}: not a JSON object ({getattr(e, 'msg', e)}); fix or delete the line"
                               ) from None
        except RecursionError:
            raise RunDataError(f"{path}:{i}: not a metrics record (nested too deeply); fix or delete the line") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int) or isinstance(rec["step"], bool):
            raise RunDataError(f"{path}:{i}: a metrics record must be a JSON object with an integer 'step'")
        try:
            out[(record_kind(rec), rec["step"])] = rec
        except RunDataError as e:
            raise RunDataError(f"{path}:{i}: {e}") from None
    return out


def finite(value) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# ------------------------------------------------------------------------------------------ config.yaml

def read_config(run_dir: str) -> Dict:
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        raise RunDataError(f"{path} not found: a run dir holds the resolved config the trainer writes there")
    with open(path, "rb") as f:
        try:
            cfg = yaml.safe_load(f.read().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise RunDataError(f"{path}: not UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
        except yaml.YAMLError as e:
            raise RunDataError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("modalities"), list) \
            or not isinstance(model.get("untie"), list):
        raise RunDataError(f"{path}: no model.modalities / model.untie lists; is this the resolved config.yaml "
                           "the trainer writes?")
    for name, section in list(cfg.items()):  # an old run's `train: null` means the defaults, as in load_config
        if section is None:
            cfg[name] = {}
        elif name != "base" and not isinstance(section, dict):
            raise RunDataError(f"{path}: section {name!r} must be a mapping, got {section!r:.60}")
    return cfg


class PositionDeriver:
    """tokens / FLOPs at a step for runs whose records lack the totals (see the module docstring)."""

    def __init__(self, run_dir: str, cfg: Dict, train_records: List[Dict]):
        self.run_dir, self.cfg, self.train_records = run_dir, cfg, train_records
        self._tokens_per_step: Optional[int] = None
        self._flops_per_token: Optional[float] = None

    def tokens_per_step(self) -> int:
        if self._tokens_per_step is None:
            self._tokens_per_step = self.global_batch() * self.seq_len()
        return self._tokens_per_step

    def seq_len(self) -> int:
        seq = self.cfg["model"].get("max_seq_len")
        if not isinstance(seq, int) or seq <= 0:
            raise RunDataError(f"{self.run_dir}/config.yaml: model.max_seq_len {seq!r} is not a positive integer, "
                               "and metrics.jsonl has no tokens_total to use instead")
        return seq

    def global_batch(self) -> int:
        """train.global_batch_size; when null (= micro batch x DP, and DP is not in the config) DeepSpeed's
        train_batch_size from <run>/deepspeed_config.json; else tokens/s x s/step of a training record."""
        gbs = self.cfg.get("train", {}).get("global_batch_size")
        if isinstance(gbs, int) and gbs > 0:
            return gbs
        ds_path = os.path.join(self.run_dir, "deepspeed_config.json")
        if os.path.isfile(ds_path):
            with open(ds_path) as f:
                try:
                    gbs = json.load(f).get("train_batch_size")
                except (json.JSONDecodeError, AttributeError):
                    raise RunDataError(f"{ds_path}: not a DeepSpeed JSON config (needed for the global batch, "
                                       "as metrics.jsonl has no tokens_total)") from None
            if isinstance(gbs, int) and gbs > 0:
                return gbs
        for rec in self.train_records:
            tps, st = finite(rec.get("tokens_per_s")), finite(rec.get("step_time_s"))
            if tps and st:
                return round(tps * st / self.seq_len())
        raise RunDataError(f"{self.run_dir}: metrics.jsonl has no tokens_total and the global batch is unknown "
                           "(config.yaml train.global_batch_size is null, no deepspeed_config.json, no "
                           "tokens_per_s in the training records); set train.global_batch_size in config.yaml")

    def flops_per_token(self) -> float:
        if self._flops_per_token is None:
            # Imported here: the model settings pull in torch, which only old-format runs need.
            from ...config import ConfigError, load_config
            from ...flops import training_flops_per_token
            from ...model.settings import ModelSettings
            path = os.path.join(self.run_dir, "config.yaml")
            try:
                cfg = load_config(path)
            except ConfigError as e:
                raise RunDataError(f"metrics.jsonl of {self.run_dir} has no flops_total, and deriving FLOPs "
                                   f"needs its config: {e}") from None
            self._flops_per_token = training_flops_per_token(ModelSettings.from_config(cfg), cfg.model.max_seq_len)
        return self._flops_per_token


# ------------------------------------------------------------------------------------------ the run

def _position(rec: Dict, train_rec: Optional[Dict], derive: PositionDeriver, notes: set) -> tuple:
    def pick(key):
        for source in (rec, train_rec or {}):
            if finite(source.get(key)) is not None:
                return finite(source[key])
        return None
    tokens, flops, time_s = pick("tokens_total"), pick("flops_total"), pick("train_time_s")
    if tokens is None:
        tokens = float(rec["step"] * derive.tokens_per_step())
        notes.add(f"tokens derived as step x global batch x seq len = step x {derive.tokens_per_step()} "
                  "(metrics.jsonl has no tokens_total)")
    if flops is None:
        flops = tokens * derive.flops_per_token()
        notes.add(f"FLOPs derived as tokens x {derive.flops_per_token():.4g} training FLOPs per token "
                  "(flops.training_flops_per_token of config.yaml; metrics.jsonl has no flops_total)")
    if time_s is None:
        notes.add("wall-clock n/a at some evaluations (metrics.jsonl has no train_time_s)")
    return tokens, flops, time_s


def load_run(run_dir: str) -> RunCurves:
    """Read one run dir; RunDataError (one line naming the file and the fix) when it cannot be compared."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isdir(run_dir):
        raise RunDataError(f"{run_dir}: no such run directory")
    if not os.path.isfile(path):
        raise RunDataError(f"{path} not found: is {run_dir} a run's output_dir (run.output_dir)?")
    notes: List[str] = []
    records = read_records(path, notes)
    cfg = read_config(run_dir)
    valid = sorted((k[1], r) for k, r in records.items() if k[0] == "valid")
    if not valid:
        raise RunDataError(f"{path} has no validation records (\"kind\": \"valid\"); evaluate the run "
                           "(train.eval_interval; the trainer also evaluates at the end of training)")
    train = {k[1]: r for k, r in records.items() if k[0] == "train"}
    derive = PositionDeriver(run_dir, cfg, [train[s] for s in sorted(train)])
    modalities = [str(m) for m in cfg["model"]["modalities"]]
    keys = [loss_key(None)] + [loss_key(m) for m in modalities]
    position_notes: set = set()
    evaluations = []
    for step, rec in valid:
        tokens, flops, time_s = _position(rec, train.get(step), derive, position_notes)
        evaluations.append(Evaluation(step, tokens, flops, time_s, {k: finite(rec.get(k)) for k in keys}))
    return RunCurves(run_dir, os.path.basename(os.path.normpath(run_dir)), [str(u) for u in cfg["model"]["untie"]],
                     modalities, evaluations, notes + sorted(position_notes))
