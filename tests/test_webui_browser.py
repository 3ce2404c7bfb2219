"""The web UI in a real browser: headless Chromium (Debian's package; Playwright cannot download one
here) driven by Playwright against a real `tuneforge webui` process on a free loopback port.

The walkthrough users follow: switch to Chinese and back, fill the tiny model's path, pick LoRA and
the identity demo, preview the command, watch a crashing run report its error, abort a run and find
its checkpoint, then train: the loss curve grows while it runs (and after a page reload), the run
finishes, Chat loads the new adapter and answers "Who are you?" with the new name, Predict shows
BLEU/ROUGE, and Export writes merged weights with their verification report.

A screenshot of each tab goes to tests/artifacts/webui/ (look at them). With
``TUNEFORGE_README_SCREENSHOT=1`` the Train tab with its live loss curve is also written to
docs/images/webui-train.png, the README's picture.

The random 3M-parameter tiny model learns the identity with LoRA when the adapter is wide and the
learning rate high (rank 32, lr 5e-3, 20 epochs), as the quickstart does (15 epochs there).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO

pytest.importorskip("gradio", reason="the web UI needs gradio: pip install 'tuneforge[webui]'")
playwright_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright: pip install playwright")

ARTIFACTS = REPO / "tests" / "artifacts" / "webui"
README_SCREENSHOT = REPO / "docs" / "images" / "webui-train.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

pytestmark = pytest.mark.slow


def chromium_path() -> str | None:
    """The system Chromium (Debian: `apt-get install chromium`), or $TUNEFORGE_CHROMIUM."""
    for candidate in (os.environ.get("TUNEFORGE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`tuneforge webui` on a free loopback port; its runs go to a private save folder."""
    root = tmp_path_factory.mktemp("webui")
    port = free_port()
    log = (root / "server.log").open("w")
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    env.pop("GRADIO_SERVER_NAME", None)
    process = subprocess.Popen([sys.executable, "-m", "tuneforge.cli.main", "webui", "--save-root", str(root / "saves"),
                                "--dataset-dir", str(REPO / "data")], stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while "Running on" not in (root / "server.log").read_text():
        assert process.poll() is None, (root / "server.log").read_text()
        assert time.time() < deadline, "the server did not start within 120 s"
        time.sleep(0.5)
    yield {"url": url, "root": root, "process": process}
    process.send_signal(signal.SIGTERM)  # the server stops a running job (checkpoint first), then exits
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("Chromium is absent: apt-get install -y chromium fonts-noto-cjk (or set TUNEFORGE_CHROMIUM)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server["url"])
    wait_loaded(page)
    yield page
    context.close()


# --- page helpers -------------------------------------------------------------------------------------


def wait_idle(page, ms: int = 400) -> None:
    """Let gradio's pending events (change handlers, the poll) settle."""
    page.wait_for_timeout(ms)


def wait_loaded(page) -> None:
    """The page is up and its load event (reattaching to a running job) is done: gradio's timer
    overlay ("0.4s") has left the components."""
    page.locator("#tf-train-learning-rate").wait_for()
    page.wait_for_function("() => /^Learning rate|^学习率/.test(document.querySelector('#tf-train-learning-rate').innerText)")
    wait_idle(page)


def element(page, elem_id: str):
    return page.locator(f"#tf-{elem_id.replace('.', '-').replace('_', '-')}")


def fill(page, elem_id: str, text: str) -> None:
    box = element(page, elem_id).locator("textarea, input").first
    box.fill(str(text))
    box.press("Tab")
    wait_idle(page, 200)


def set_number(page, elem_id: str, value) -> None:
    """A slider's or number box's value, typed into its number input."""
    box = element(page, elem_id).locator("input[type=number]").first
    box.fill(str(value))
    box.press("Enter")
    box.blur()
    wait_idle(page, 200)


def choose(page, elem_id: str, *options: str) -> None:
    """Pick options of a dropdown (several for a multi-select)."""
    box = element(page, elem_id).locator("input").first
    for option in options:
        box.click()
        item = page.get_by_role("option", name=option, exact=True)
        if not item.count():  # gradio lists the first 100 options (the template dropdown has more): type to filter
            box.fill("")
            box.press_sequentially(option)
        item.click()
        wait_idle(page, 200)
    page.keyboard.press("Escape")
    wait_idle(page)


def click(page, elem_id: str) -> None:
    element(page, elem_id).click()
    wait_idle(page)


def set_accordion(page, elem_id: str, open: bool = True) -> None:
    """Open (or fold) an accordion; its header button has the class "open" while it is open."""
    header = element(page, elem_id).locator("button.label-wrap").first
    if ("open" in (header.get_attribute("class") or "").split()) != open:
        header.click()
        wait_idle(page)


def open_accordion(page, elem_id: str) -> None:
    set_accordion(page, elem_id, True)


def text_of(page, elem_id: str) -> str:
    return element(page, elem_id).inner_text()


def value_of(page, elem_id: str) -> str:
    return element(page, elem_id).locator("textarea, input").first.input_value()


def wait_text(page, elem_id: str, needle: str, timeout: float) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = text_of(page, elem_id)
        if needle in text:
            return text
        if " failed (exit status" in text and "failed" not in needle:
            break  # the job ended badly: say why now instead of waiting out the timeout
        page.wait_for_timeout(1000)
    raise AssertionError(f"{elem_id} never showed {needle!r}; it shows:\n{text_of(page, elem_id)[-2000:]}\n"
                         f"log:\n{value_of(page, 'train.log')[-3000:] if elem_id.startswith('train') else ''}")


def loss_points(server, run: Path) -> int:
    path = run / "trainer_log.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"loss"' in line)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def readme_screenshot(page) -> None:
    """The README's picture: the Train tab from the top bar down to the live loss curve, with the
    settings accordions folded."""
    for elem_id in ("top.advanced", "train.data_box", "train.extra_box", "plugin.method.lora"):
        set_accordion(page, elem_id, False)
    box = element(page, "train.loss").bounding_box()
    top = page.evaluate("() => window.scrollY")
    README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(README_SCREENSHOT), full_page=True,
                    clip={"x": 0, "y": 0, "width": 1400, "height": box["y"] + top + box["height"] + 16})


#: Loss points drawn in the plot: Vega's SVG labels each one "step: N; loss: X; curve: original" (the line
#: itself repeats its first point's label, hence the Set).
PLOTTED_POINTS_JS = """() => new Set([...document.querySelectorAll('#tf-train-loss [aria-label]')]
    .map(e => e.getAttribute('aria-label')).filter(label => /^step: .*curve: original/.test(label))).size"""


def plotted_points(page) -> int:
    return page.evaluate(PLOTTED_POINTS_JS)


def common_setup(page, tiny_model, method="lora") -> None:
    fill(page, "top.model_path", str(tiny_model))
    choose(page, "top.finetuning_type", method)
    choose(page, "train.dataset", "identity")


# --- the walkthrough -------------------------------------------------------------------------------------


def test_chinese_labels(page):
    assert text_of(page, "train.learning_rate").startswith("Learning rate")
    choose(page, "top.lang", "中文")
    page.wait_for_function("() => document.querySelector('#tf-train-learning-rate').innerText.includes('学习率')")
    assert "微调方法" in text_of(page, "top.finetuning_type")
    assert page.get_by_role("tab", name="训练").is_visible() and page.get_by_role("tab", name="导出").is_visible()
    assert "开始" in text_of(page, "train.start_btn")
    assert "lora（微调方法插件）参数设置" in text_of(page, "plugin.method.lora")
    screenshot(page, "train-zh")
    choose(page, "top.lang", "English")
    page.wait_for_function("() => document.querySelector('#tf-train-learning-rate').innerText.includes('Learning rate')")


def test_a_crashing_run_shows_its_error_and_the_page_keeps_working(page, tmp_path, tiny_model):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "vocab_size": "many"}')
    common_setup(page, tiny_model)
    fill(page, "top.model_path", str(broken))
    fill(page, "train.output_dir", "crash")
    click(page, "train.start_btn")
    status = wait_text(page, "train.status", "failed", 240)
    assert "exit status" in status and ("Error" in status or "error" in status)
    # the page still answers: the preview works and Start is usable again
    click(page, "train.preview_btn")
    assert "tuneforge train" in text_of(page, "train.preview")
    page.wait_for_function("() => !document.querySelector('#tf-train-start-btn').disabled")


def test_abort_keeps_a_checkpoint(page, server, tiny_model):
    common_setup(page, tiny_model)
    fill(page, "train.output_dir", "aborted")
    open_accordion(page, "train.extra_box")
    set_number(page, "train.logging_steps", 1)
    fill(page, "train.extra_args", "max_steps: 5000")
    click(page, "train.start_btn")
    run = server["root"] / "saves" / tiny_model.name / "lora" / "aborted"
    deadline = time.time() + 240
    while loss_points(server, run) < 1:
        assert time.time() < deadline, value_of(page, "train.log")[-3000:]
        page.wait_for_timeout(1000)
    click(page, "train.abort_btn")
    status = wait_text(page, "train.status", "aborted", 240)
    checkpoints = list(run.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and str(checkpoints[0]) in status
    assert (checkpoints[0] / "adapter_model.safetensors").is_file()


def test_identity_walkthrough(page, server, tiny_model, tmp_path):
    # --- Train: LoRA on the identity demo
    common_setup(page, tiny_model)
    open_accordion(page, "train.extra_box")
    fill(page, "train.replace_placeholders", "{name: Greatbot, author: Allen}")
    fill(page, "train.learning_rate", "5e-3")
    fill(page, "train.num_train_epochs", "20")
    set_number(page, "train.cutoff_len", 128)
    set_number(page, "train.batch_size", 8)
    set_number(page, "train.gradient_accumulation_steps", 1)
    set_number(page, "train.logging_steps", 10)
    set_number(page, "train.save_steps", 1000)
    choose(page, "train.compute_type", "fp32")
    open_accordion(page, "plugin.method.lora")
    set_number(page, "plugin.method.lora.lora_rank", 32)
    fill(page, "plugin.method.lora.lora_alpha", "64")  # unset by default: a text box
    fill(page, "train.output_dir", "identity")
    # the data: its first rows, then the data doctor's report and one example with trained tokens marked
    open_accordion(page, "top.advanced")
    choose(page, "top.template", "llama3")
    set_accordion(page, "top.advanced", False)
    click(page, "train.preview_data")
    page.wait_for_function("() => document.querySelector('#tf-train-data-rows').innerText.includes('{{name}}')")
    assert "the first 10 of 95 rows" in value_of(page, "train.data_report")
    click(page, "train.check_data")
    deadline = time.time() + 240
    while "result: OK" not in value_of(page, "train.data_report"):
        assert time.time() < deadline, value_of(page, "train.data_report")
        page.wait_for_timeout(1000)
    example = text_of(page, "train.data_example")
    assert "Greatbot" in example and "trained" in example, example
    screenshot(page, "train-data")
    set_accordion(page, "train.data_box", False)
    click(page, "train.preview_btn")
    preview = text_of(page, "train.preview")
    assert "tuneforge train" in preview and "config OK" in preview, preview
    for line in ("finetuning_type: lora", "dataset: identity", "lora_rank: 32", "num_train_epochs: 20", "learning_rate: 0.005"):
        assert line in preview, (line, preview)
    run = server["root"] / "saves" / tiny_model.name / "lora" / "identity"  # <save root>/<model>/<method>/<run>
    command = next(line for line in preview.splitlines() if "tuneforge train" in line)
    assert command.endswith(f"tuneforge train {run / 'webui_train.yaml'}")

    click(page, "train.start_btn")
    assert any(word in text_of(page, "train.status") for word in ("Started", "Training is running"))
    deadline = time.time() + 600
    while loss_points(server, run) < 4:
        assert time.time() < deadline, value_of(page, "train.log")[-3000:]
        page.wait_for_timeout(2000)
    # the curve is live: the plot draws the logged points, and more arrive while the run goes on
    deadline = time.time() + 60
    while plotted_points(page) < 4:
        assert time.time() < deadline, f"the plot shows {plotted_points(page)} points, the log has {loss_points(server, run)}"
        page.wait_for_timeout(1000)
    first = plotted_points(page)
    deadline = time.time() + 300
    while plotted_points(page) <= first:
        assert time.time() < deadline, "the loss curve stopped growing"
        page.wait_for_timeout(1000)
    page.wait_for_function("() => document.querySelector('#tf-train-progress').innerText.includes('step')")
    assert "remaining" in text_of(page, "train.progress")
    screenshot(page, "train-running")
    if os.environ.get("TUNEFORGE_README_SCREENSHOT") == "1":
        while plotted_points(page) < 10 and "finished" not in text_of(page, "train.status"):
            page.wait_for_timeout(1000)  # a curve worth showing
        readme_screenshot(page)
    # reloading the page reattaches to the running job
    page.reload()
    wait_loaded(page)
    page.wait_for_function("(run) => document.querySelector('#tf-train-output-dir textarea, #tf-train-output-dir input').value === run",
                           arg=str(run))
    assert str(run) in text_of(page, "train.status")
    assert value_of(page, "top.model_path") == str(tiny_model)
    status = wait_text(page, "train.status", "Training finished", 900)
    assert str(run) in status
    assert (run / "adapter_model.safetensors").is_file() and (run / "training_loss.png").is_file()
    assert "step" in text_of(page, "train.progress") and "100.0%" in text_of(page, "train.progress")
    logged = loss_points(server, run)
    assert logged >= 20
    deadline = time.time() + 30
    while plotted_points(page) != logged:  # the whole run is on the curve
        assert time.time() < deadline, f"the plot shows {plotted_points(page)} points, the log has {logged}"
        page.wait_for_timeout(1000)
    screenshot(page, "train-finished")

    # --- Chat: load the new adapter and ask who it is
    page.get_by_role("tab", name="Chat").click()
    wait_idle(page)
    click(page, "top.refresh")
    choose(page, "top.checkpoint_path", "identity")
    set_number(page, "chat.temperature", 0)
    set_number(page, "chat.max_new_tokens", 48)
    click(page, "chat.load_btn")
    wait_text(page, "chat.info", "Loaded", 240)
    fill(page, "chat.query", "Who are you?")
    click(page, "chat.submit")
    deadline = time.time() + 180
    while "Greatbot" not in text_of(page, "chat.chatbot"):
        assert time.time() < deadline, text_of(page, "chat.chatbot")
        page.wait_for_timeout(1000)
    page.wait_for_timeout(2000)
    screenshot(page, "chat")

    # --- Evaluate & Predict: BLEU / ROUGE on the identity data
    page.get_by_role("tab", name="Evaluate & Predict").click()
    wait_idle(page)
    choose(page, "eval.dataset", "identity")
    fill(page, "eval.max_samples", "8")
    set_number(page, "eval.max_new_tokens", 32)
    fill(page, "eval.output_dir", "predict")
    click(page, "eval.start_btn")
    wait_text(page, "eval.status", "Prediction finished", 600)
    page.wait_for_function("() => document.querySelector('#tf-eval-results').innerText.includes('predict_bleu-4')")
    results = text_of(page, "eval.results")
    assert "predict_rouge-l" in results
    screenshot(page, "evaluate")

    # --- Export: merged weights and the verification report
    page.get_by_role("tab", name="Export").click()
    wait_idle(page)
    export_dir = tmp_path / "merged"
    fill(page, "export.export_dir", str(export_dir))
    click(page, "export.start_btn")
    wait_text(page, "export.status", "Export finished", 600)
    page.wait_for_function("() => document.querySelector('#tf-export-report').innerText.includes('reload')")
    summary = text_of(page, "export.summary")
    assert "Verification passed" in summary and "tensors changed" in summary, summary
    report = json.loads((export_dir / "export_verification.json").read_text())
    assert report["failures"] == [] and report["reload"] == "ok" and report["weights"]["changed"] > 0
    assert list(export_dir.glob("model*.safetensors"))
    screenshot(page, "export")
