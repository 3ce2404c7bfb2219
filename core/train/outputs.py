"""Files a run leaves in output_dir, named as LLaMA-Factory names them so its users find them."""

from __future__ import annotations

import json
import time
from pathlib import Path

LOG_FILE = "trainer_log.jsonl"
#: Trainer log keys the record already holds under LLaMA-Factory's names.
_MAPPED_LOG_KEYS = {"loss", "eval_loss", "learning_rate", "grad_norm", "epoch"}


_CALLBACK_CLASS = None


def trainer_log_callback(output_dir: Path):
    """A transformers TrainerCallback writing trainer_log.jsonl (transformers is imported only here)."""
    global _CALLBACK_CLASS
    if _CALLBACK_CLASS is None:
        from transformers import TrainerCallback

        _CALLBACK_CLASS = type("TrainerLogCallback", (TrainerLog, TrainerCallback), {})
    return _CALLBACK_CLASS(output_dir)


class TrainerLog:
    """Appends one JSON line per log event: step, loss, lr, epoch, percentage, times, tokens/s.

    Times and throughput count this session only (a resumed run does not divide by steps it did not
    run). On a resume, lines after the checkpoint's step (written by the interrupted run after its
    last checkpoint) are dropped, so the file holds each step once.
    """

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / LOG_FILE
        self.start = time.time()
        self.first_step = 0
        self.first_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        self.first_step = state.global_step
        self.first_tokens = state.num_input_tokens_seen or 0
        if not state.is_world_process_zero or not self.path.exists():
            return
        if state.global_step == 0:
            self.path.unlink()
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("current_steps", 0) <= state.global_step:
                    kept.append(line)
            except ValueError:
                continue  # a line cut short when the process was killed
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or ("loss" not in logs and "eval_loss" not in logs):
            return  # the end-of-training summary goes to train_results.json
        elapsed = time.time() - self.start
        total = max(state.max_steps, 1)
        done = state.global_step - self.first_step
        remaining = elapsed / done * (total - state.global_step) if done > 0 else None
        tokens = (state.num_input_tokens_seen or 0) - self.first_tokens
        record = {
            "current_steps": state.global_step,
            "total_steps": state.max_steps,
            "loss": logs.get("loss"),
            "eval_loss": logs.get("eval_loss"),
            "lr": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "epoch": logs.get("epoch", state.epoch),
            "percentage": round(state.global_step / total * 100, 2),
            "elapsed_time": _hms(elapsed),
            "remaining_time": _hms(remaining) if remaining is not None else None,
        }
        if state.num_input_tokens_seen:
            speed = round(tokens / max(elapsed, 1e-9), 2)
            record["tokens_per_second"] = speed
            record["throughput"] = speed  # LLaMA-Factory's name for the same figure
            record["total_tokens"] = state.num_input_tokens_seen
        # The trainer's other figures under their own names: a stage's metrics (grpo's reward and
        # rewards/<name>/mean, dpo's rewards/margins, ppo's kl, ...).
        record.update({k: v for k, v in logs.items() if k not in _MAPPED_LOG_KEYS and k not in record
                       and isinstance(v, (int, float)) and not isinstance(v, bool)})
        record = {k: v for k, v in record.items() if v is not None}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def plot_loss(output_dir: Path, keys=("loss", "eval_loss")) -> list[Path]:
    """training_loss.png (and training_eval_loss.png) from trainer_state.json; needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_loss: matplotlib is not installed (pip install matplotlib); no plot written")
        return []
    state_file = Path(output_dir) / "trainer_state.json"
    if not state_file.exists():
        return []
    history = json.loads(state_file.read_text())["log_history"]
    written = []
    for key in keys:
        points = [(h["step"], h[key]) for h in history if key in h]
        if not points:
            if key == "loss":
                print("plot_loss: no training loss was logged (logging_steps is larger than the steps run); no plot written")
            continue
        steps, values = zip(*points)
        fig = plt.figure()
        plt.plot(steps, values, color="#1f77b4", alpha=0.4, label="original")
        if len(values) > 1:
            plt.plot(steps, smooth_curve(values), color="#1f77b4", label="smoothed")
        plt.title(f"{key} of {output_dir}")
        plt.xlabel("step")
        plt.ylabel(key)
        plt.legend()
        name = "training_loss.png" if key == "loss" else f"training_{key}.png"
        fig.savefig(Path(output_dir) / name, format="png", dpi=100)
        plt.close(fig)
        written.append(Path(output_dir) / name)
    return written


def smooth_curve(values) -> list[float]:
    """The plots' smoothed curve: a centred moving average whose window grows with the number of points
    (about a tenth of them, odd; narrower near the ends). Few points are drawn almost as they are, and
    being centred it does not lag behind a falling loss as an exponential average does."""
    values = [float(v) for v in values]
    half = len(values) // 20
    out = []
    for i in range(len(values)):
        reach = min(half, i, len(values) - 1 - i)  # symmetric at the ends too, so the ends are not pulled inward
        window = values[i - reach : i + reach + 1]
        out.append(sum(window) / len(window))
    return out


def save_metrics(output_dir: Path, split: str, metrics: dict) -> None:
    """{split}_results.json plus the merged all_results.json, as the HF Trainer names them."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{split}_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    all_path = output_dir / "all_results.json"
    merged = json.loads(all_path.read_text()) if all_path.exists() else {}
    merged.update(metrics)
    all_path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
