"""Multiple-choice benchmarks in the MMLU / C-Eval / CMMLU layout, scored as LLaMA-Factory scores them.

A task is a folder ``{task_dir}/{name}`` (or a zip ``{task_dir}/{name}/{name}.zip`` / ``{task_dir}/{name}.zip``
holding it, as LLaMA-Factory's evaluation folder ships them) with:

- ``mapping.json``: ``{subject: {"name": shown name, "category": "STEM" | ...}}``;
- one CSV per subject and split, found at ``[data/]{split}/{subject}_{split}.csv`` (MMLU, C-Eval)
  or ``{split}/{subject}.csv`` (CMMLU). Columns ``question, A, B, C, D, answer``, either as a
  header (any case: C-Eval's ``id``/``explanation`` and CMMLU's index column are ignored) or
  without one (MMLU's files).

``task: mmlu_test`` means the folder ``mmlu``, split ``test`` (``dev`` is the split few-shot
examples come from; ``val`` and ``validation`` name the same folder). Each question is asked in the
chat template as one user turn, after ``n_shot`` solved dev examples as earlier turns, with the
subject's system line (``lang: en`` or ``zh``) in front of the first turn. The model's choice is the
letter whose token gets the highest next-token logit right after the prompt (LLaMA-Factory's way).
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import TuneforgeError

CHOICES = ("A", "B", "C", "D")
SPLITS = {"test": ("test",), "dev": ("dev",), "train": ("dev", "train"), "val": ("val", "validation"),
          "validation": ("val", "validation")}


@dataclass(frozen=True)
class EvalTemplate:
    system: str
    choice: str
    answer: str

    def parse(self, row: dict) -> tuple[str, str]:
        choices = "".join(self.choice.format(choice=c, content=row[c]) for c in CHOICES)
        return row["question"] + choices + self.answer, row["answer"]

    def messages(self, row: dict, support: list[dict], subject: str) -> list[dict]:
        messages = []
        for example in support:
            prompt, answer = self.parse(example)
            messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        prompt, answer = self.parse(row)
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        messages[0]["content"] = self.system.format(subject=subject) + messages[0]["content"]
        return messages


EVAL_TEMPLATES = {
    "en": EvalTemplate(
        system="The following are multiple choice questions (with answers) about {subject}.\n\n",
        choice="\n{choice}. {content}", answer="\nAnswer:"),
    "zh": EvalTemplate(
        system="以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
        choice="\n{choice}. {content}", answer="\n答案："),
}


class TaskFiles:
    """Reads a task's files from a folder or a zip, whichever the task directory holds."""

    def __init__(self, task_dir: str, name: str):
        base = Path(task_dir)
        self.name = name
        self.root: Path | None = None
        self.zip: zipfile.ZipFile | None = None
        self.prefix = ""
        folder = base / name
        zips = [folder / f"{name}.zip", base / f"{name}.zip"]
        if (folder / "mapping.json").is_file() and any((folder / d).is_dir() for d in ("data", "dev", "test", "val", "validation")):
            self.root = folder
        elif any(z.is_file() for z in zips):
            path = next(z for z in zips if z.is_file())
            self.zip = zipfile.ZipFile(path)
            self.mapping_path = folder / "mapping.json"
            names = self.zip.namelist()
            # the zip may hold a top folder (mmlu/...) before data/ or dev/
            for candidate in ("", f"{name}/"):
                if any(n.startswith(candidate + d + "/") for n in names for d in ("data", "dev", "test", "val")):
                    self.prefix = candidate
                    break
        else:
            found = sorted(p.name for p in base.iterdir()) if base.is_dir() else []
            raise TuneforgeError(f"task folder {folder} not found (task_dir: {task_dir}, task: {name}_<split>); "
                                 + (f"{base} holds: {', '.join(found)}" if found else f"{base} does not exist")
                                 + " (docs/evaluation.md shows the layout)")

    def mapping(self) -> dict[str, dict]:
        candidates = [self.root / "mapping.json"] if self.root else [self.mapping_path]
        for path in candidates:
            if path.is_file():
                return json.loads(path.read_text(encoding="utf-8"))
        if self.zip is not None:
            for inner in (f"{self.prefix}mapping.json", "mapping.json"):
                if inner in self.zip.namelist():
                    return json.loads(self.zip.read(inner).decode("utf-8"))
        raise TuneforgeError(f"task {self.name}: mapping.json not found (it lists the subjects and their categories)")

    def _candidates(self, subject: str, split: str) -> list[str]:
        out = []
        for folder in SPLITS.get(split, (split,)):
            for base in (f"data/{folder}", folder):
                out += [f"{base}/{subject}_{folder}.csv", f"{base}/{subject}.csv"]
        return out

    def read(self, subject: str, split: str) -> list[dict]:
        for relative in self._candidates(subject, split):
            text = None
            if self.root is not None and (self.root / relative).is_file():
                text = (self.root / relative).read_text(encoding="utf-8-sig")
            elif self.zip is not None and self.prefix + relative in self.zip.namelist():
                text = self.zip.read(self.prefix + relative).decode("utf-8-sig")
            if text is not None:
                return _rows(text, relative)
        raise TuneforgeError(f"task {self.name}: no {split} file for subject '{subject}' (looked for {', '.join(self._candidates(subject, split)[:4])})")


def _rows(text: str, where: str) -> list[dict]:
    """question/A/B/C/D/answer rows from a CSV with or without a header."""
    table = [r for r in csv.reader(io.StringIO(text)) if r]
    if not table:
        return []
    header = [h.strip().lower() for h in table[0]]
    if "question" in header and "answer" in header and all(c.lower() in header for c in CHOICES):
        columns = {name: header.index(name) for name in ("question", "answer", *[c.lower() for c in CHOICES])}
        body = table[1:]
    else:
        if len(table[0]) < 6:
            raise TuneforgeError(f"{where}: expected the columns question,A,B,C,D,answer, got {len(table[0])} column(s)")
        columns = {"question": 0, "a": 1, "b": 2, "c": 3, "d": 4, "answer": 5}
        body = table
    rows = []
    for number, record in enumerate(body, 1):
        row = {"question": record[columns["question"]], "answer": record[columns["answer"]].strip().upper()}
        row.update({c: record[columns[c.lower()]] for c in CHOICES})
        if row["answer"] not in CHOICES:
            raise TuneforgeError(f"{where}: row {number}: answer must be one of A, B, C, D, got {row['answer']!r}")
        rows.append(row)
    return rows


def parse_task(task: str) -> tuple[str, str]:
    name, _, split = task.rpartition("_")
    if name and split in SPLITS:
        return name, split
    raise TuneforgeError(f"task {task!r} must be <folder>_<split>, e.g. mmlu_test, ceval_validation, cmmlu_test "
                         f"(split: one of {', '.join(SPLITS)})")


def choice_token_ids(tokenizer) -> list[int]:
    """The token of each letter as an answer's first token (LLaMA-Factory's ``encode(letter)[-1]``)."""
    ids = [tokenizer.encode(c, add_special_tokens=False)[-1] for c in CHOICES]
    if len(set(ids)) != len(ids):
        raise TuneforgeError(f"the tokenizer does not give A, B, C and D distinct tokens ({ids})")
    return ids


def evaluate(ctx, *, progress=print) -> dict:
    """Score the model of ``ctx`` (loaded, eval mode) on the config's task; returns the results.

    ``{"task", "split", "n_shot", "lang", "subjects": {subject: accuracy}, "categories": {category:
    accuracy}, "average": accuracy, "predictions": {subject: {"0": "A", ...}}, "counts": ...}``;
    accuracies are percentages.
    """
    import torch

    config = ctx.config
    if not config.task:
        raise TuneforgeError("set task: <folder>_<split> (e.g. mmlu_demo_test) and task_dir: the folder holding it")
    name, split = parse_task(config.task)
    template = EVAL_TEMPLATES[config.lang]
    files = TaskFiles(config.task_dir, name)
    mapping = files.mapping()
    model, tokenizer = ctx.model, ctx.tokenizer
    choice_ids = choice_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch_size = max(1, int(config.batch_size))
    predictions: dict[str, dict[str, str]] = {}
    correct: dict[str, list[bool]] = {}
    for subject in sorted(mapping):
        info = mapping[subject]
        rows = files.read(subject, split)
        support = files.read(subject, "dev")[: config.n_shot] if config.n_shot > 0 else []
        prompts = []
        for row in rows:
            prompt_ids, _ = ctx.template.encode_oneturn(tokenizer, template.messages(row, support, info.get("name", subject)))
            prompts.append(prompt_ids)
        chosen: list[str] = []
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            width = max(len(p) for p in batch)
            # right padding: each row's own positions are those of an unpadded run
            input_ids = torch.tensor([p + [pad] * (width - len(p)) for p in batch], device=model.device)
            mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in batch], device=model.device)
            with torch.inference_mode():
                logits = model(input_ids=input_ids, attention_mask=mask).logits
            last = torch.stack([logits[i, len(p) - 1] for i, p in enumerate(batch)])
            picks = torch.argmax(last[:, choice_ids].float(), dim=-1).tolist()
            chosen += [CHOICES[i] for i in picks]
        predictions[subject] = {str(i): c for i, c in enumerate(chosen)}
        correct[subject] = [c == row["answer"] for c, row in zip(chosen, rows)]
        progress(f"{subject}: {sum(correct[subject])}/{len(rows)} correct")
    return summarize(config.task, split, config, mapping, predictions, correct)


def summarize(task, split, config, mapping, predictions, correct) -> dict:
    def pct(values: list[bool]) -> float:
        return round(100 * sum(values) / len(values), 2) if values else 0.0

    categories: dict[str, list[bool]] = {}
    for subject, marks in correct.items():
        categories.setdefault(mapping[subject].get("category", "Other"), []).extend(marks)
    everything = [m for marks in correct.values() for m in marks]
    return {
        "task": task, "split": split, "n_shot": config.n_shot, "lang": config.lang,
        "average": pct(everything),
        "categories": {name: pct(marks) for name, marks in sorted(categories.items())},
        "subjects": {subject: pct(marks) for subject, marks in correct.items()},
        "counts": {subject: [sum(marks), len(marks)] for subject, marks in correct.items()},
        "predictions": predictions,
    }


def score_table(results: dict) -> str:
    """The printed (and results.log) table: Average, each category, then each subject."""
    rows = [("Average", results["average"])] + list(results["categories"].items())
    lines = [f"{name:>15}: {value:.2f}" for name, value in rows]
    lines.append("")
    lines += [f"{subject:>15}: {value:.2f}  ({results['counts'][subject][0]}/{results['counts'][subject][1]})"
              for subject, value in results["subjects"].items()]
    return "\n".join(lines)


def save_results(results: dict, save_dir: str) -> list[Path]:
    """LLaMA-Factory's results.json (predictions per subject) and results.log (the table), plus
    scores.json (every accuracy, machine-readable)."""
    out = Path(save_dir)
    if (out / "results.json").exists():
        raise TuneforgeError(f"save_dir {out} already holds results.json; choose another save_dir or remove it")
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "results.log", out / "scores.json"]
    written[0].write_text(json.dumps(results["predictions"], indent=2) + "\n", encoding="utf-8")
    written[1].write_text(score_table(results) + "\n", encoding="utf-8")
    scores = {k: v for k, v in results.items() if k != "predictions"}
    written[2].write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return written
