"""`tuneforge webui`: Train, Evaluate & Predict, Chat and Export in the browser (gradio).

The page is generated from the installed plugins: the method, stage, quantizer, template and engine
dropdowns list what the plugin manager found, and each selected plugin's config keys appear in an
accordion built from its spec. Every job runs as a `tuneforge` subprocess (see :mod:`.runner`).

gradio is an optional dependency (``pip install 'tuneforge[webui]'``); nothing in this package is
imported by the rest of tuneforge.
"""

from __future__ import annotations

#: What installs the web UI's dependencies.
INSTALL = "pip install 'tuneforge[webui]'"
