"""Images in API requests: OpenAI's ``image_url`` content parts turned into files the engine reads.

- ``data:`` URLs (``data:image/png;base64,...``): always accepted; decoded, checked to be an image;
- a local path (``/srv/pics/cat.jpg``, ``file:///srv/pics/cat.jpg``, or relative to the folder):
  only under ``API_MEDIA_DIR``, the one folder the server is told it may read (symbolic links are
  followed before the check, so none leads out of it); refused when it is not set;
- ``http(s)://`` URLs: refused unless ``API_ALLOW_REMOTE_MEDIA=1`` (the server would otherwise fetch
  whatever a client names, from wherever it runs); then fetched with a timeout and a size limit.

Every refusal is a :class:`MessageError` naming the part (``messages[0].content[1]``), which the app
answers with a 400. A text-only model refuses every image part the same way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from pathlib import Path
from urllib.parse import unquote, urlparse

from tuneforge.chat.tools import MessageError

#: Decoded images kept on disk at once (the oldest go first); a request's are read while it runs.
KEEP_FILES = 256
FETCH_TIMEOUT = 10


class ImageParts:
    """``image(part, where) -> path`` for :func:`tuneforge.chat.tools.from_openai`."""

    def __init__(self, engine, folder: Path, *, media_dir: str | None = None, allow_remote: bool = False,
                 max_bytes: int = 4 * 1024 * 1024):
        self.modalities = tuple(getattr(engine, "media_modalities", ()) or ())
        template = getattr(getattr(engine, "template", None), "name", None)
        self.who = f"template '{template}'" if template else f"engine '{getattr(engine, 'name', '?')}'"
        self.folder = Path(folder)
        self.media_dir = Path(media_dir).resolve() if media_dir else None
        self.allow_remote = allow_remote
        self.max_bytes = max_bytes

    def __call__(self, part: dict, where: str) -> str:
        if "images" not in self.modalities:
            raise MessageError(where, f"this server's model is text-only ({self.who}): it cannot take images; serve a "
                                      "vision-language model with its multimodal template (e.g. template: qwen2_vl)")
        url = str((part.get("image_url") or {}).get("url") or "")
        where = f"{where}.image_url.url"
        scheme = urlparse(url).scheme.lower() if "://" in url or url.startswith("data:") else ""
        if url.startswith("data:"):
            return self._store(self._data_url(url, where), where)
        if scheme in ("http", "https"):
            if not self.allow_remote:
                raise MessageError(where, "remote image URLs are refused by this server: send the image as a data: URL "
                                          "(data:image/png;base64,...), or start the server with API_ALLOW_REMOTE_MEDIA=1 "
                                          "to let it fetch http(s) URLs")
            return self._store(self._fetch(url, where), where)
        if scheme in ("", "file"):
            return self._local(unquote(urlparse(url).path) if scheme == "file" else url, where)
        raise MessageError(where, f"unsupported image URL scheme '{scheme}': send a data: URL, a file path under "
                                  "API_MEDIA_DIR, or (if the server allows them) an http(s) URL")

    # -- the three sources

    def _data_url(self, url: str, where: str) -> bytes:
        head, sep, payload = url[len("data:"):].partition(",")
        if not sep or not head.endswith(";base64"):
            raise MessageError(where, "a data: URL must be base64-encoded: data:image/png;base64,<data>")
        if len(payload) * 3 // 4 > self.max_bytes:
            raise MessageError(where, f"the image is larger than {self.max_bytes} bytes")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise MessageError(where, "the data: URL is not valid base64") from None

    def _fetch(self, url: str, where: str) -> bytes:
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:  # noqa: S310 (http(s) only, allowed by the operator)
                data = response.read(self.max_bytes + 1)
        except Exception as exc:
            raise MessageError(where, f"could not fetch {url}: {type(exc).__name__}: {exc}") from None
        if len(data) > self.max_bytes:
            raise MessageError(where, f"the image at {url} is larger than {self.max_bytes} bytes")
        return data

    def _local(self, name: str, where: str) -> str:
        if self.media_dir is None:
            raise MessageError(where, "local image paths are refused by this server: send the image as a data: URL, or "
                                      "start the server with API_MEDIA_DIR=<folder> to let it read images under that folder")
        try:
            path = (Path(name) if Path(name).is_absolute() else self.media_dir / name).resolve()
        except (OSError, ValueError) as exc:  # a NUL byte, a link loop
            raise MessageError(where, f"is not a usable file path ({exc})") from None
        if not path.is_relative_to(self.media_dir):
            raise MessageError(where, f"'{name}' is outside API_MEDIA_DIR ({self.media_dir}): this server reads images "
                                      "only under that folder")
        try:
            data = path.read_bytes() if path.is_file() else None
        except OSError as exc:  # a name too long, no permission
            raise MessageError(where, f"'{name}' cannot be read ({exc.strerror or exc})") from None
        if data is None:
            raise MessageError(where, f"'{name}' does not exist under API_MEDIA_DIR ({self.media_dir})")
        self._check_image(data, where)
        return str(path)

    # -- storage

    def _check_image(self, data: bytes, where: str) -> str:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
                return (image.format or "img").lower()
        except Exception as exc:  # PIL raises many kinds
            raise MessageError(where, f"is not a readable image ({type(exc).__name__}: {exc})") from None

    def _store(self, data: bytes, where: str) -> str:
        kind = self._check_image(data, where)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{hashlib.sha256(data).hexdigest()[:32]}.{kind}"
        if not path.exists():
            path.write_bytes(data)
            files = sorted(self.folder.iterdir(), key=lambda p: p.stat().st_mtime)
            for old in files[:-KEEP_FILES]:
                old.unlink(missing_ok=True)
        return str(path)
