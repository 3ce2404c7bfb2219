"""Request bodies of the OpenAI chat API, validated strictly with pydantic.

Strict, as OpenAI is: ``"stream": "true"`` or ``"n": "2"`` are type errors, not values coerced
behind the client's back. A field that takes several shapes (``content``, ``stop``) is checked by a
validator of its own, so the error names the field (``messages[0].content``) rather than pydantic's
union branches. The app turns every error into a 400 in OpenAI's error shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Model):
    """A content part: ``text``, or ``image_url`` (``{"url": "data:..." | path | "http(s)://..."}``)."""

    type: str
    text: str | None = None
    image_url: dict[str, Any] | None = None


class FunctionCall(_Model):
    name: str
    arguments: Any = "{}"

    @field_validator("arguments")
    @classmethod
    def _arguments(cls, value):
        if not isinstance(value, (str, dict)):
            raise ValueError(f"must be a JSON string (or an object), got {_kind(value)}")
        return value


class ToolCall(_Model):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


def _kind(value) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


class ChatMessage(_Model):
    # role and tool_calls come first: the content validator reads them (pydantic validates in order).
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    tool_calls: list[ToolCall] | None = None
    content: Any = Field(None, validate_default=True)
    tool_call_id: str | None = None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value, info: ValidationInfo):
        if value is None:
            # OpenAI: content is required, except on an assistant message that carries tool_calls.
            if info.data.get("role") == "assistant" and info.data.get("tool_calls"):
                return None
            raise ValueError("must be a string or a list of content parts; null is allowed only on an assistant message "
                             "with tool_calls")
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            parts = []
            for i, part in enumerate(value):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise ValueError(f"part {i} must be an object with a 'type' (e.g. {{'type': 'text', 'text': '...'}}), "
                                     f"got {_kind(part)}")
                text = part.get("text")
                if part["type"] == "text" and not isinstance(text, str):
                    raise ValueError(f"part {i} of type 'text' needs 'text' to be a string, got {_kind(text)}")
                image_url = part.get("image_url")
                if part["type"] == "image_url":
                    if isinstance(image_url, str):  # a bare URL: accepted, as several OpenAI-compatible servers do
                        image_url = {"url": image_url}
                    if not isinstance(image_url, dict) or not isinstance(image_url.get("url"), str):
                        raise ValueError(f"part {i} of type 'image_url' needs 'image_url': {{'url': '...'}} (a data: URL, "
                                         f"an allowed file path or http(s) URL), got {_kind(image_url)}")
                parts.append(TextPart(type=part["type"], text=text if isinstance(text, str) else None,
                                      image_url=image_url if part["type"] == "image_url" else None))
            return parts
        raise ValueError(f"must be a string or a list of content parts, got {_kind(value)}")


class FunctionSchema(_Model):
    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)


class Tool(_Model):
    type: Literal["function"] = "function"
    function: FunctionSchema


class StreamOptions(_Model):
    include_usage: bool = False


class ChatCompletionRequest(_Model):
    model: str = ""
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Any = None
    #: LLaMA-Factory's extension: sample (true) or decode greedily (false); unset: the config's do_sample.
    do_sample: bool | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)
    stop: Any = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    top_k: int | None = Field(None, ge=0)
    seed: int | None = None
    user: str | None = None

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, value):
        if value is None or value in ("none", "auto", "required") or isinstance(value, dict):
            return value
        raise ValueError(f"must be 'none', 'auto', 'required' or an object naming a function, got {value!r}")

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            return value
        raise ValueError(f"must be a string or a list of strings, got {_kind(value)}")
