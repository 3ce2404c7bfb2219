"""The web UI's Chat tab with an image, in headless Chromium (see tests/test_webui_browser.py for how the
browser tests run): the tiny Qwen2-VL answers a message with an uploaded picture, and the same picture
sent to a text-only template comes back as that template's refusal, so the image does reach the engine."""

from __future__ import annotations

import time

import pytest

from .conftest import ANCHOR
from .test_webui_browser import (  # noqa: F401 (fixtures)
    browser,
    choose,
    click,
    element,
    fill,
    open_accordion,
    page,
    screenshot,
    server,
    set_number,
    text_of,
    wait_idle,
    wait_text,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vl_model():
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    return cached_tiny_model("qwen2_vl", "tiny")


def ask_with_image(page, question: str) -> None:
    element(page, "chat.image").locator("input[type=file]").set_input_files(str(ANCHOR / "mllm_demo_data" / "1.jpg"))
    page.wait_for_function("() => document.querySelector('#tf-chat-image img') !== null")  # the preview is up
    fill(page, "chat.query", question)
    click(page, "chat.submit")


def load(page, template: str) -> None:
    open_accordion(page, "top.advanced")
    choose(page, "top.template", template)
    click(page, "chat.load_btn")
    wait_text(page, "chat.info", "Loaded", 240)


def test_chat_tab_sends_an_image_to_a_vision_language_model(page, vl_model):
    fill(page, "top.model_path", str(vl_model))
    page.get_by_role("tab", name="Chat").click()
    wait_idle(page)
    set_number(page, "chat.temperature", 0)
    set_number(page, "chat.max_new_tokens", 8)
    load(page, "qwen2_vl")
    assert "template qwen2_vl" in text_of(page, "chat.info")
    ask_with_image(page, "Who are they?")
    chatbot = element(page, "chat.chatbot")
    deadline = time.time() + 120
    while chatbot.locator("img").count() < 1 or page.locator("#tf-chat-submit").is_disabled():
        assert time.time() < deadline, text_of(page, "chat.chatbot")
        page.wait_for_timeout(500)
    page.wait_for_timeout(1500)  # the streamed reply ends
    assert "error" not in text_of(page, "chat.chatbot").lower(), text_of(page, "chat.chatbot")
    assert "Who are they?" in text_of(page, "chat.chatbot")
    assert element(page, "chat.image").locator("img").count() == 0  # the picture went with the message
    screenshot(page, "chat-image")

    # a text-only template refuses the picture: the engine got it (it is not dropped on the way)
    load(page, "qwen")
    ask_with_image(page, "And now?")
    wait_text(page, "chat.chatbot", "cannot take images", 60)
