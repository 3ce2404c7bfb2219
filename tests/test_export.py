"""`tuneforge export`: merge a trained LoRA, save sharded safetensors + tokenizer + generation config +
Modelfile, verify; refuse empty adapters, merges that change nothing, quantized bases, and export
quantization no plugin can do."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tuneforge.errors import TuneforgeError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager

from .conftest import run_cli

ROWS = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."} for a in range(5) for b in range(5)]
PROBE = [[5, 17, 42, 99, 7, 1000, 3]]


@pytest.fixture(scope="module")
def trained_adapter(tiny_model, tmp_path_factory):
    """A LoRA adapter trained for a few steps at a high learning rate (its B matrices are not zero)."""
    from tuneforge.train.pipeline import run_training

    folder = tmp_path_factory.mktemp("lora")
    (folder / "sums.json").write_text(json.dumps(ROWS))
    (folder / "dataset_info.json").write_text(json.dumps({"sums": {"file_name": "sums.json"}}))
    values = dict(model_name_or_path=str(tiny_model), template="llama3", dataset="sums", dataset_dir=str(folder),
                  output_dir=str(folder / "adapter"), finetuning_type="lora", lora_rank=4, cutoff_len=64,
                  per_device_train_batch_size=4, max_steps=6, learning_rate=5e-3, report_to="none", disable_tqdm=True,
                  overwrite_output_dir=True, save_strategy='"no"')
    run_training(prepare(None, [f"{k}={v}" for k, v in values.items()], manager=PluginManager(autoload=False)))
    return folder / "adapter"


def peft_adapter(tiny_model, folder, *, zero_b=False, alpha=16, targets=("q_proj", "v_proj"), seed=0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=zero_b))
    model.save_pretrained(folder)
    return folder


def config_file(tmp_path, tiny_model, **values) -> str:
    values = {"model_name_or_path": str(tiny_model), "template": "llama3", "finetuning_type": "lora", **values}
    path = tmp_path / "export.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    return str(path)


def logits_of(model):
    with torch.no_grad():
        return model(input_ids=torch.tensor(PROBE)).logits


@pytest.mark.slow
def test_export_merges_a_trained_lora_and_verifies_it(tiny_model, trained_adapter, tmp_path):
    out = tmp_path / "merged"
    result = run_cli("export", config_file(tmp_path, tiny_model, adapter_name_or_path=trained_adapter, export_dir=out,
                                           export_size=0.004, default_system="You are Greatbot."))
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout
    assert re.search(r"merged weights vs base: \d+ of \d+ tensors changed, max \|diff\| [0-9.e+-]+", printed), printed
    assert re.search(r"logits vs base \+ adapter max \|diff\| [0-9.e+-]+ \(tolerance", printed), printed
    assert "verification passed" in printed and "renders prompts exactly as training did" in printed

    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (out / "model.safetensors.index.json").exists()
    report = json.loads((out / "export_verification.json").read_text())
    assert report["failures"] == [] and report["weights"]["changed"] > 0 and report["weights"]["max_abs_diff"] > 0
    assert report["logits_vs_adapter_max_abs_diff"] <= 1e-5 and report["chat_template_matches_training"] is True

    # independently of tuneforge: plain transformers + PEFT
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), trained_adapter).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    assert torch.allclose(logits_of(merged), logits_of(unmerged), atol=1e-5, rtol=0)
    assert (logits_of(merged) - logits_of(base)).abs().max() > 1e-3
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.padding_side == "left"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    eot, eom = tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|eom_id|>"])
    assert GenerationConfig.from_pretrained(out).eos_token_id == [eot, eom]
    modelfile = (out / "Modelfile").read_text()
    assert "FROM .\n" in modelfile and 'TEMPLATE """' in modelfile
    assert 'PARAMETER stop "<|eot_id|>"' in modelfile and 'SYSTEM """You are Greatbot."""' in modelfile


def test_an_empty_adapter_is_refused_before_anything_is_written(tiny_model, tmp_path):
    adapter = peft_adapter(tiny_model, tmp_path / "untrained", zero_b=True)
    out = tmp_path / "merged"
    result = run_cli("export", config_file(tmp_path, tiny_model, adapter_name_or_path=adapter, export_dir=out))
    assert result.returncode == 2, result.stdout
    assert f"adapter {adapter} is empty: all 4 lora_B matrices are zero" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def test_a_merge_that_changes_nothing_fails_loudly(tiny_model, tmp_path):
    """lora_alpha 0 scales a non-zero adapter to nothing: the files would silently be the base model."""
    adapter = peft_adapter(tiny_model, tmp_path / "alpha0", alpha=0)
    out = tmp_path / "merged"
    result = run_cli("export", config_file(tmp_path, tiny_model, adapter_name_or_path=adapter, export_dir=out))
    assert result.returncode == 2, result.stdout
    assert "export verification failed" in result.stderr and "the merge changed nothing" in result.stderr
    assert "merged weights vs base: 0 of" in result.stdout
    report = json.loads((out / "export_verification.json").read_text())
    assert any("changed nothing" in f for f in report["failures"])


def export_problems(overrides, manager) -> str:
    """What stops an export, from the config alone: the plan's checks (a quantizer plugin may know
    about exports) or the exporter's own."""
    from tuneforge.errors import ConfigError
    from tuneforge.plugins.apps.export.exporter import problems_before_loading

    try:
        prepared = prepare(None, overrides, manager=manager)
    except ConfigError as exc:
        return str(exc)
    return "\n".join(problems_before_loading(prepared))


def test_merging_onto_a_quantized_base_is_refused_with_the_fix(tiny_model, tmp_path, manager):
    from tuneforge.plugins.apps.export.exporter import problems_before_loading

    adapter = peft_adapter(tiny_model, tmp_path / "adapter")
    base = [f"model_name_or_path={tiny_model}", "template=llama3", f"adapter_name_or_path={adapter}", f"export_dir={tmp_path / 'out'}"]
    problem = export_problems([*base, "quantization_bit=4"], manager)
    assert "quantized" in problem and "remove quantization_bit" in problem and "unquantized base" in problem
    # the exporter's own check, whatever the quantizer plugins say
    prepared = prepare(None, base, manager=manager)
    prepared.config.values["quantization_bit"] = 4
    (problem,) = problems_before_loading(prepared)
    assert "cannot be merged exactly into quantized weights" in problem
    assert "remove quantization_bit" in problem and "export from the unquantized base model" in problem
    # a checkpoint that is quantized already (its config.json says so)
    quantized = tmp_path / "gptq-model"
    quantized.mkdir()
    config = json.loads((tiny_model / "config.json").read_text())
    (quantized / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "gptq", "bits": 4}}))
    problem = export_problems([f"model_name_or_path={quantized}", "template=llama3", f"adapter_name_or_path={adapter}",
                               f"export_dir={tmp_path / 'out'}"], manager)
    assert "gptq" in problem and "unquantized" in problem


def test_export_quantization_goes_through_a_quantizer_plugin(tiny_model, trained_adapter, tmp_path):
    from tuneforge import QuantizerSpec, hookimpl
    from tuneforge.plugins.apps.export.exporter import ExportError, run_export

    overrides = [f"model_name_or_path={tiny_model}", "template=llama3", f"adapter_name_or_path={trained_adapter}",
                 f"export_dir={tmp_path / 'q'}", "export_quantization_bit=4"]
    # no plugin can: a clear reason, before any loading
    bare = PluginManager(autoload=False, blocked=[e.record.name for e in PluginManager(autoload=False).entries("quantizer")
                                                  if e.spec.export_quantize is not None])
    with pytest.raises(ExportError) as info:
        run_export(prepare(None, [*overrides, "export_quantization_dataset=alpaca_en_demo"], manager=bare))
    assert "no installed quantizer plugin can quantize an export to 4 bits" in str(info.value)
    with pytest.raises(ExportError, match="needs export_quantization_dataset"):
        run_export(prepare(None, overrides, manager=bare))

    calls = []

    def export_quantize(ctx, model_dir, out_dir):
        from pathlib import Path

        calls.append((ctx.config.export_quantization_bit, sorted(p.name for p in Path(model_dir).iterdir())))
        (Path(out_dir) / "model.safetensors").write_bytes((Path(model_dir) / "model.safetensors").read_bytes())
        (Path(out_dir) / "quantize_config.json").write_text('{"bits": 4}')

    class FakeQuant:
        @hookimpl
        def tuneforge_quantizers(self):
            return [QuantizerSpec(name="fakeq", description="copies", bits=(4,), export_quantize=export_quantize)]

    manager = PluginManager(autoload=False, extra_plugins=[("fakeq", FakeQuant())],
                            blocked=[e.record.name for e in PluginManager(autoload=False).entries("quantizer")])
    report = run_export(prepare(None, [*overrides, "export_quantization_dataset=alpaca_en_demo", "quantization_method=fakeq"],
                                manager=manager))
    assert report["quantized"] == {"bits": 4, "quantizer": "fakeq"}
    (bits, merged_files), = calls
    assert bits == 4 and "model.safetensors" in merged_files and "Modelfile" in merged_files
    q = tmp_path / "q"
    assert {"quantize_config.json", "model.safetensors", "tokenizer.json", "Modelfile", "generation_config.json",
            "export_verification.full_precision.json"} <= {p.name for p in q.iterdir()}
    assert not list(tmp_path.glob(".merged-*"))  # the full-precision temporary folder is gone
    with pytest.raises(TuneforgeError, match="quantizer 'fakeq' exports 4-bit models, not 8-bit"):
        run_export(prepare(None, [*overrides[:-1], "export_quantization_bit=8", "export_quantization_dataset=x",
                                  "quantization_method=fakeq"], manager=manager))


def test_stacked_adapters_and_legacy_bin_format(tiny_model, tmp_path, manager, capsys):
    from tuneforge.plugins.apps.export.exporter import run_export

    first = peft_adapter(tiny_model, tmp_path / "a1", targets=("q_proj", "o_proj"), seed=1)
    second = peft_adapter(tiny_model, tmp_path / "a2", targets=("v_proj", "down_proj"), seed=2)
    out = tmp_path / "merged"
    report = run_export(prepare(None, [f"model_name_or_path={tiny_model}", "template=llama3",
                                       f"adapter_name_or_path={first},{second}", f"export_dir={out}",
                                       "export_legacy_format=true", "export_size=0.004"], manager=manager))
    assert report["files"] == sorted(p.name for p in out.glob("pytorch_model-*.bin")) and len(report["files"]) >= 2
    assert not list(out.glob("*.safetensors")) and (out / "pytorch_model.bin.index.json").exists()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    both = AutoModelForCausalLM.from_pretrained(tiny_model)
    both = PeftModel.from_pretrained(both, first).merge_and_unload()
    both = PeftModel.from_pretrained(both, second).merge_and_unload().eval()
    assert torch.allclose(logits_of(AutoModelForCausalLM.from_pretrained(out).eval()), logits_of(both), atol=1e-5, rtol=0)
    assert report["weights"]["changed"] == 8  # q, o, v, down in each of the 2 layers
    # exporting again into the same folder replaces the earlier weights instead of mixing with them
    run_export(prepare(None, [f"model_name_or_path={tiny_model}", "template=llama3", f"adapter_name_or_path={first}",
                              f"export_dir={out}"], manager=manager))
    assert "removed the weights of an earlier export" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.bin")) == [] and (out / "model.safetensors").exists()


# ---------------------------------------------------------------- the Modelfile's Go template


class GoTemplate:
    """Just enough of Go's text/template to run the TEMPLATE tuneforge writes (as Ollama would)."""

    TOKEN = re.compile(r"\{\{(.*?)\}\}", re.S)

    def __init__(self, source: str):
        self.items = []
        pos = 0
        for m in self.TOKEN.finditer(source):
            if m.start() > pos:
                self.items.append(("text", source[pos:m.start()]))
            action = m.group(1)
            assert not action.startswith("-") and not action.endswith("-"), "whitespace trimming would eat slot text"
            self.items.append(("action", action.strip()))
            pos = m.end()
        self.items.append(("text", source[pos:]))

    def render(self, data: dict) -> str:
        self.pos, self.vars, self.data = 0, {}, data
        out = self._block(data, None)
        return out

    def _value(self, expr: str, dot):
        expr = expr.strip()
        if expr.startswith('"'):
            return json.loads(expr)
        if expr in ("true", "false"):
            return expr == "true"
        if expr.startswith("$."):
            return self.data.get(expr[2:])
        if expr.startswith("$"):
            return self.vars[expr]
        if expr.startswith("."):
            return dot.get(expr[1:])
        raise ValueError(expr)

    def _cond(self, expr: str, dot) -> bool:
        words = re.findall(r'"[^"]*"|\S+', expr)
        if words[0] == "eq":
            return self._value(words[1], dot) == self._value(words[2], dot)
        if words[0] == "and":
            return all(self._value(w, dot) for w in words[1:])
        return bool(self._value(expr, dot))

    def _block(self, dot, _stop):
        """Run items until an else/end at this level; returns the text (and leaves pos on that item)."""
        out = ""
        while self.pos < len(self.items):
            kind, value = self.items[self.pos]
            if kind == "text":
                out += value
                self.pos += 1
                continue
            if value == "end" or value.startswith("else"):
                return out
            self.pos += 1
            if value.startswith("if "):
                out += self._if(value[3:], dot)
            elif value.startswith("range "):
                m = re.fullmatch(r"range (\$\w+), (\$\w+) := (\S+)", value)
                start = self.pos
                items = self._value(m.group(3), dot) or []
                for index, item in enumerate(items):
                    self.pos = start
                    self.vars[m.group(1)], self.vars[m.group(2)] = index, item
                    out += self._block(item, "end")
                if not items:
                    self._skip()
                self.pos += 1  # the range's end
            elif ":=" in value or re.fullmatch(r"\$\w+ = .+", value):
                name, _, expr = value.partition(":=") if ":=" in value else value.partition("=")
                self.vars[name.strip()] = self._value(expr, dot)
            else:
                shown = self._value(value, dot)
                out += "" if shown is None else str(shown)
        return out

    def _if(self, cond, dot) -> str:
        taken, out = False, ""
        while True:
            if not taken and self._cond(cond, dot):
                taken = True
                out = self._block(dot, None)
            else:
                self._skip()
            kind, value = self.items[self.pos]
            self.pos += 1
            if value == "end":
                return out
            cond = value[len("else if "):] if value.startswith("else if ") else "true"

    def _skip(self) -> None:
        depth = 0
        while True:
            kind, value = self.items[self.pos]
            if kind == "action":
                if value.startswith(("if ", "range ")):
                    depth += 1
                elif value == "end" or value.startswith("else"):
                    if depth == 0:
                        return
                    if value == "end":
                        depth -= 1
            self.pos += 1


@pytest.mark.parametrize("name", ["llama3", "qwen", "mistral", "gemma", "chatml", "default", "alpaca"])
def test_modelfile_template_renders_what_training_rendered(name, tiny_model, manager):
    from transformers import AutoTokenizer

    from tuneforge.data.template import Template
    from tuneforge.plugins.apps.export.modelfile import go_template, ollama_modelfile

    template = Template.from_definition(name, manager.template(name).definition)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    go = GoTemplate(go_template(template, tokenizer))
    conversation = [{"role": "user", "content": "Who are you? {{not a template}}"}, {"role": "assistant", "content": "A model."},
                    {"role": "user", "content": "你好"}]
    for system in ("Be brief.", None):
        expected = template.render_prompt(tokenizer, conversation, system)
        ollama_messages = ([{"Role": "system", "Content": system}] if system else []) + \
                          [{"Role": m["role"], "Content": m["content"]} for m in conversation]
        assert go.render({"System": system or template.default_system or "", "Messages": ollama_messages}) == expected
    modelfile = ollama_modelfile(template, tokenizer)
    assert modelfile.count('TEMPLATE """') == 1
    stops = re.findall(r'^PARAMETER stop "(.*)"$', modelfile, flags=re.M)
    assert stops and all(tokenizer.convert_tokens_to_ids(s) in template.stop_token_ids(tokenizer) or s in template.stop_words for s in stops)
